"""Bad input: each case gets an error naming the file and what to do, and leaves no output behind.

Run through the `vsrkit transcode` command (in process) and the Load Video node.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import testsrc
from vsrkit.cli import main as cli_main
from vsrkit.engines.errors import InputError
from vsrkit.nodes.video import LoadVideo


def _missing(folder: Path) -> Path:
    return folder / "nowhere.mp4"


def _empty(folder: Path) -> Path:
    path = folder / "empty.mp4"
    path.write_bytes(b"")
    return path


def _text(folder: Path) -> Path:
    path = folder / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    return path


def _truncated(folder: Path) -> Path:
    """An interrupted download: the index (moov) at the end never arrived."""
    full = testsrc.write_video(folder / "whole.mp4", (testsrc.pattern_rgb(i, 32, 32) for i in range(30)), 25)
    data = Path(full).read_bytes()
    path = folder / "truncated.mp4"
    path.write_bytes(data[: len(data) * 2 // 3])
    Path(full).unlink()
    return path


def _audio_only(folder: Path) -> Path:
    return Path(testsrc.write_audio_only(folder / "song.m4a", testsrc.tone(0.5)))


CASES = {
    "missing": (_missing, "does not exist"),
    "zero-byte": (_empty, "empty"),
    "text-named-mp4": (_text, "not a video"),
    "truncated": (_truncated, "damaged|incomplete|truncated"),
    "audio-only": (_audio_only, "audio-only"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_a_clear_error_and_no_output(tmp_path, capsys, case):
    make, expected = CASES[case]
    source_dir = tmp_path / "in"
    source_dir.mkdir()
    source = make(source_dir)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = cli_main(["transcode", str(source), "-o", str(out_dir / "result.mp4"), "--quiet"])
    message = capsys.readouterr().err
    assert code == 1
    assert source.name in message
    assert re.search(expected, message), message
    assert any(word in message for word in ("check", "Re-export", "re-download", "copy it again", "Pick", "pick"))
    assert list(out_dir.iterdir()) == []


def test_path_outside_allowed_folders_is_refused(tmp_path, monkeypatch):
    inside = tmp_path / "comfy"
    inside.mkdir()
    monkeypatch.chdir(inside)
    monkeypatch.setenv("VSRKIT_HOME", str(tmp_path / "home"))
    outside = testsrc.write_video(tmp_path / "private.mp4", (testsrc.pattern_rgb(i, 16, 16) for i in range(2)), 25)
    with pytest.raises(InputError, match="private.mp4.*outside"):
        LoadVideo().load("", path=str(outside))
    with pytest.raises(InputError, match="outside"):
        LoadVideo().load("", path="../private.mp4")
    link = inside / "link.mp4"
    link.symlink_to(outside)
    with pytest.raises(InputError, match="outside"):
        LoadVideo().load("link.mp4")
