"""Reading weight files without running code: safetensors, or torch pickles loaded weights-only.

Both engines read their checkpoints through here. Before a pickle reaches `torch.load`
its first bytes are checked, so a Git LFS pointer or a file that is no checkpoint at all
(an HTML error page, a truncated download) gets a message saying so, and only a pickle
that really asks to import or call something is reported as refused for safety.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .errors import InputError

LFS_POINTER = b"version https://git-lfs"
ZIP_MAGIC = b"PK"  # torch.save's default (zip) format
PICKLE_MAGIC = b"\x80"  # a pickle of protocol 2 or later: torch.save's legacy format, or a bare pickle


class UnsafeWeightsError(InputError):
    """A pickle that asks to import or call something other than tensors; `reason` names what."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def describe(path: Path) -> str:
    return f"{path.name} in {path.parent}"


def check_header(path: str | os.PathLike, *, checkpoint: bool) -> bytes:
    """The first bytes of `path`; `InputError` if it is a Git LFS pointer or, when `checkpoint`
    (a torch pickle is expected), if it starts like neither a zip nor a pickle."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read {describe(path)}: {exc}") from exc
    if head.startswith(LFS_POINTER):
        raise InputError(
            f"{describe(path)} is a Git LFS pointer ({size} bytes), not the weights: fetch the real file "
            "(`git lfs pull` in the cloned repository, or download the file itself from the model page)"
        )
    if checkpoint and not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        raise InputError(
            f"{describe(path)} is not a PyTorch checkpoint ({size} bytes, starting {head[:16]!r}): "
            "truncated or wrong download? Download it again"
        )
    return head


def open_safetensors(path: str | os.PathLike) -> Any:
    """A `safetensors.safe_open` handle (a context manager) on the CPU; `InputError` naming the file."""
    from safetensors import safe_open

    path = Path(path)
    check_header(path, checkpoint=False)
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:
        raise InputError(f"{describe(path)} is not a readable safetensors file "
                         f"(truncated or wrong download?): {exc}") from exc


def load_pickle(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, memory-mapped when `mmap` and the file
    is in the zip format. `UnsafeWeightsError` when the pickle would run code, `InputError`
    when the file is no readable checkpoint."""
    path = Path(path)
    head = check_header(path, checkpoint=True)
    extra = {"mmap": True} if mmap and head.startswith(ZIP_MAGIC) else {}
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **extra)
    except pickle.UnpicklingError as exc:
        reason = _unsafe_reason(exc)
        if reason is None:
            raise InputError(f"{describe(path)} is not a readable PyTorch checkpoint (truncated or damaged?): "
                             f"{_detail(exc)}") from exc
        raise UnsafeWeightsError(
            f"refusing to load {describe(path)}: it is not a plain weights file ({reason}; a weights-only "
            "load stops at anything that could run code). Use the official checkpoint or a safetensors copy.",
            reason,
        ) from exc
    except Exception as exc:
        raise InputError(f"{describe(path)} is not a readable PyTorch checkpoint (truncated or damaged?): "
                         f"{_detail(exc)}") from exc


def _unsafe_reason(exc: Exception) -> str | None:
    """The line of torch's weights-only refusal naming the global the file wanted, or None when
    the refusal is about something else (an unknown opcode: a damaged file, not code)."""
    for line in str(exc).splitlines():
        lowered = line.lower()
        if "unsupported global" in lowered or ("global" in lowered and "blocked" in lowered):
            reason = line.strip().removeprefix("WeightsUnpickler error:").strip()
            return reason.split(". ")[0].rstrip(".")
    return None


def _detail(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if "unsupported operand" in line.lower()), lines[0] if lines else "")
    return detail.removeprefix("WeightsUnpickler error:").strip()[:300] or type(exc).__name__


__all__ = ["UnsafeWeightsError", "check_header", "load_pickle", "open_safetensors"]
