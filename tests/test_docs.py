"""The user documentation stays short and self-contained: README.md within 200 lines, every
relative link in README.md and docs/*.md leads to a file (and heading) of this repository, and no
page points outside the repository (a user of the published pack has only the pack)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 200

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)
PARENT_PATH = re.compile(r"(?:\.\./)+[^\s)`'\"\]<>|,;]*")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", flags=re.I)


def pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M)}


def inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def problems(page: Path, root: Path = ROOT) -> list[str]:
    """Everything on `page` that points outside `root` or at nothing."""
    text = page.read_text(encoding="utf-8")
    found = []
    if "../shared" in text:
        found.append("mentions ../shared, a folder outside the repository")
    for match in PARENT_PATH.finditer(text):
        if not inside(page.parent / match.group(0), root):
            found.append(f"path {match.group(0)!r} leads outside the repository")
    for target in LINK.findall(FENCE.sub("", text)):
        if SCHEME.match(target):
            continue
        path_part, _, fragment = target.partition("#")
        if path_part.startswith("/"):
            found.append(f"link {target!r} is an absolute path")
            continue
        linked = (page.parent / path_part) if path_part else page
        if not inside(linked, root):
            found.append(f"link {target!r} leads outside the repository")
        elif not linked.exists():
            found.append(f"link {target!r} names a file that does not exist")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            found.append(f"link {target!r}: {linked.name} has no heading with anchor #{fragment}")
    return found


def test_readme_is_at_most_200_lines():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move topics to docs/"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_links_stay_inside_the_repository_and_exist(page):
    assert problems(page) == []


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(README.read_text(encoding="utf-8"))
              if not SCHEME.match(t)}
    orphans = [p.name for p in pages()[1:] if p.resolve() not in linked]
    assert orphans == [], f"docs pages not linked from README.md: {orphans}"


@pytest.mark.parametrize("text,expected", [
    ("see [the footage](../shared/footage/a.mp4)", "../shared"),
    ("run `python x.py ../../elsewhere/clip.mp4`", "leads outside"),
    ("[gone](missing.md)", "does not exist"),
    ("[abs](/etc/passwd)", "absolute path"),
    ("[anchor](other.md#nowhere)", "no heading with anchor"),
])
def test_the_scan_catches_each_kind_of_bad_reference(tmp_path, text, expected):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n", encoding="utf-8")
    page = tmp_path / "docs" / "page.md"
    page.write_text(text + "\n", encoding="utf-8")
    assert any(expected in problem for problem in problems(page, tmp_path)), problems(page, tmp_path)


def test_the_scan_accepts_good_references(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## The CPU path\n", encoding="utf-8")
    (tmp_path / "BENCH.md").write_text("# Bench\n", encoding="utf-8")
    page = tmp_path / "docs" / "page.md"
    page.write_text("[a](other.md#the-cpu-path) [b](../BENCH.md) [c](https://example.org/x) [d](#top)\n\n# Top\n",
                    encoding="utf-8")
    assert problems(page, tmp_path) == []
