"""PIL's bicubic upscale in float: how FlashVSR's low-quality input is brought to the output size.

Upstream resizes with PIL (8-bit); here the same kernel (a = -0.5) runs as two matrix
products on any device without rounding to 8 bits.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=16)
def _bicubic_weights(size_in: int, size_out: int) -> torch.Tensor:
    """[size_out, size_in] resampling matrix of PIL's BICUBIC filter (a = -0.5) for upscaling."""
    a = -0.5
    ratio = size_in / size_out
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    support = 2.0 * max(1.0, ratio)
    for i in range(size_out):
        center = (i + 0.5) * ratio
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), size_in)
        x = (torch.arange(lo, hi, dtype=torch.float64) - center + 0.5) / max(1.0, ratio)
        ax = x.abs()
        w = torch.where(ax < 1, ((a + 2) * ax - (a + 3)) * ax * ax + 1,
                        torch.where(ax < 2, (((ax - 5) * ax + 8) * ax - 4) * a, torch.zeros_like(ax)))
        weights[i, lo:hi] = w / w.sum()
    return weights


def bicubic_resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize [T, C, h, w] frames with PIL's bicubic kernel, in float (no 8-bit rounding)."""
    _, _, h, w = frames.shape
    rows = _bicubic_weights(h, height).to(frames.device, frames.dtype)
    cols = _bicubic_weights(w, width).to(frames.device, frames.dtype)
    return torch.matmul(torch.matmul(rows, frames), cols.t())
