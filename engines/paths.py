"""File-system safety: paths stay inside allowed folders, outputs appear whole or not at all."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

from .errors import InputError

TEMP_MARK = ".vsrkit-partial-"


def user_data_dir() -> Path:
    """Standalone home for models, outputs and caches: $VSRKIT_HOME, else ~/.cache/vsrkit."""
    root = os.environ.get("VSRKIT_HOME")
    if root:
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vsrkit"


def resolve_inside(path: str | os.PathLike, roots: Iterable[str | os.PathLike], *,
                   what: str = "file") -> Path:
    """`path` resolved (symlinks followed) if it lies inside one of `roots`, else InputError.

    A relative path is taken relative to each root in turn, first existing match wins.
    """
    root_list = [Path(r).expanduser().resolve() for r in roots]
    raw = Path(os.fspath(path)).expanduser()
    candidates = [raw] if raw.is_absolute() else [root / raw for root in root_list]
    resolved = [c.resolve() for c in candidates]
    inside = [c for c in resolved if any(c == root or root in c.parents for root in root_list)]
    for candidate in inside:
        if candidate.exists():
            return candidate
    if inside:
        return inside[0]
    folders = ", ".join(str(r) for r in root_list) or "(none)"
    raise InputError(
        f"{what} '{path}' is outside the folders vsrkit may use ({folders}); "
        "move it into ComfyUI's input folder (or output/temp) and pick it from there"
    )


def partial_path(final: Path) -> Path:
    """A hidden temporary name beside `final`, keeping its extension so the muxer picks the format."""
    return final.with_name(f"{TEMP_MARK}{secrets.token_hex(4)}-{final.name}")


def output_taken(final: Path) -> InputError:
    """The error for an output name that is already in use."""
    return InputError(f"output '{final}' already exists; choose another name (vsrkit never overwrites)")


def publish(temp: Path, final: Path, overwrite: bool = False) -> Path:
    """Move the finished `temp` to `final`; never replaces an existing file unless `overwrite`."""
    if overwrite:
        os.replace(temp, final)
        return final
    if temp.is_dir():
        if final.exists():
            raise output_taken(final)
        os.rename(temp, final)
        return final
    try:
        os.link(temp, final)
    except FileExistsError as exc:
        raise output_taken(final) from exc
    except OSError:
        if final.exists():
            raise output_taken(final) from None
        os.rename(temp, final)
        return final
    temp.unlink()
    return final


def discard(temp: Path) -> None:
    """Remove a partial output (file or folder) if it is there."""
    try:
        if temp.is_dir():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)
    except OSError:
        pass


VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".ts", ".m2ts", ".mts",
                    ".wmv", ".flv", ".3gp", ".ogv", ".gif", ".y4m", ".mxf", ".dv", ".vob")


def video_files(folder: str | os.PathLike) -> list[str]:
    """Names of the video files directly in `folder`, for a loader's list."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(path.name for path in root.iterdir()
                  if path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(TEMP_MARK)
                  and path.is_file())


def numbered_output(output_folder: str | os.PathLike, filename_prefix: str, extension: str) -> tuple[Path, str]:
    """The next free `<prefix>_<00001>_.<ext>` in `output_folder` (ComfyUI's naming) and its sub-folder.

    The prefix may name a sub-folder ("vsrkit/clip"); it must stay inside `output_folder`.
    """
    root = Path(output_folder).resolve()
    prefix = Path(os.path.normpath(filename_prefix or "vsrkit"))
    folder = (root / prefix.parent).resolve()
    if folder != root and root not in folder.parents:
        raise InputError(f"filename_prefix '{filename_prefix}' points outside the output folder {root}; "
                         "use a plain name or a sub-folder name")
    folder.mkdir(parents=True, exist_ok=True)
    stem = prefix.name
    counter = 1
    pattern = f"{stem}_"
    for existing in folder.iterdir():
        name = existing.name
        if name.startswith(pattern):
            digits = name[len(pattern):].split("_")[0].split(".")[0]
            if digits.isdigit():
                counter = max(counter, int(digits) + 1)
    subfolder = "" if folder == root else folder.relative_to(root).as_posix()
    suffix = f".{extension}" if extension else ""
    while True:
        candidate = folder / f"{stem}_{counter:05}_{suffix}"
        if not candidate.exists():
            return candidate, subfolder
        counter += 1
