"""File-system safety: paths stay inside allowed folders, outputs appear whole or not at all."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

from .errors import InputError

TEMP_MARK = ".vsrkit-partial-"


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


def publish(temp: Path, final: Path, overwrite: bool = False) -> Path:
    """Move the finished `temp` to `final`; never replaces an existing file unless `overwrite`."""
    if overwrite:
        os.replace(temp, final)
        return final
    if temp.is_dir():
        if final.exists():
            raise InputError(f"output '{final}' already exists; choose another name (vsrkit never overwrites)")
        os.rename(temp, final)
        return final
    try:
        os.link(temp, final)
    except FileExistsError as exc:
        raise InputError(f"output '{final}' already exists; choose another name (vsrkit never overwrites)") from exc
    except OSError:
        if final.exists():
            raise InputError(f"output '{final}' already exists; choose another name (vsrkit never overwrites)") from None
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
