"""Where a model runs and in what precision: one choice for both engines, the nodes and the CLI.

A device is named as torch names it ("cpu", "cuda", "cuda:1", ...) or "auto": the host's
device when a host chooses (ComfyUI's, through the nodes), else CUDA when present, else the
CPU. A precision is "auto", "fp32", "fp16" or "bf16" (or a torch dtype): "auto" is, on
CUDA, the half precision the model prefers (Real-ESRGAN fp16, FlashVSR bf16, which falls
back to fp16 on GPUs without bf16), and fp32 elsewhere.
"""

from __future__ import annotations

import torch

from .errors import InputError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_device() -> torch.device:
    """CUDA when this PyTorch has a CUDA device, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_choices() -> list[str]:
    """The devices a user may pick here: auto, cpu and each CUDA device."""
    return ["auto", "cpu", *(f"cuda:{index}" for index in range(torch.cuda.device_count()))]


def resolve_device(device: str | torch.device | None, auto: torch.device | None = None) -> torch.device:
    """`device` as a torch device; None or "auto" give `auto` (the host's choice) or `default_device()`.

    A name torch does not know, or CUDA asked for where there is none, is an `InputError` saying so.
    """
    if device is None or str(device) == "auto":
        return torch.device(auto) if auto is not None else default_device()
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device must be auto, cpu or a torch device such as cuda:0, got {device!r}") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {chosen} was asked for, but this PyTorch has no CUDA device; use cpu")
    return chosen


def resolve_precision(precision: str | torch.dtype, device: torch.device,
                      prefer: torch.dtype = torch.float16) -> torch.dtype:
    """The dtype for `precision` on `device`; "auto" is `prefer` on CUDA (bf16 falls back to fp16
    on GPUs without it) and fp32 elsewhere."""
    if isinstance(precision, torch.dtype):
        if precision not in DTYPES.values():
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision}")
        return precision
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return DTYPES[precision]
    if device.type != "cuda":
        return torch.float32
    if prefer == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return torch.float16
    return prefer


def precision_name(dtype: torch.dtype) -> str:
    """"fp32", "fp16" or "bf16" for a dtype (its torch name otherwise)."""
    return next((name for name, value in DTYPES.items() if value == dtype), str(dtype))
