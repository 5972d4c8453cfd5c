"""Colour fix: pull the decoded frames' colours back to the low-quality input's.

The one-step model can shift global colour; FlashVSR corrects each output frame
against the upscaled LQ frame it came from. Both methods work frame by frame, so
fixing a clip chunk by chunk gives the same result as fixing it whole.

* AdaIN (the default, as in the released Tiny pipelines): per frame and channel,
  match mean and standard deviation (biased variance + 1e-5) to the LQ frame's.
* Wavelet: keep the output's high frequencies and take the LQ frame's low
  frequencies, split with 5 levels of a dilated 3x3 binomial blur.

Tensors are videos [B, C, T, H, W] or frame batches [N, C, H, W] in -1..1. Both methods
compute in float32 and clamp their result to -1..1; "none" returns the input as it is,
unclamped (the pipeline clamps when it converts to 0..1 pixels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

METHODS = ("adain", "wavelet", "none")
ADAIN_EPS = 1e-5
WAVELET_LEVELS = 5


def _as_frames(video: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B*T, C, H, W]; [N, C, H, W] as is."""
    if video.ndim == 5:
        b, c, t, h, w = video.shape
        return video.transpose(1, 2).reshape(b * t, c, h, w)
    if video.ndim == 4:
        return video
    raise ValueError(f"expected a [B, C, T, H, W] video or [N, C, H, W] frames, got {tuple(video.shape)}")


def _like(frames: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    if video.ndim == 5:
        b, c, t, h, w = video.shape
        return frames.reshape(b, t, c, h, w).transpose(1, 2)
    return frames


def _mean_std(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = frames.flatten(2)
    mean = flat.mean(dim=2)[..., None, None]
    std = (flat.var(dim=2, unbiased=False) + ADAIN_EPS).sqrt()[..., None, None]
    return mean, std


def adain(frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-frame, per-channel mean/std transfer from `reference` to `frames` ([N, C, H, W])."""
    mean, std = _mean_std(frames)
    ref_mean, ref_std = _mean_std(reference)
    return (frames - mean) / std * ref_std + ref_mean


def _binomial_blur(frames: torch.Tensor, dilation: int) -> torch.Tensor:
    kernel = torch.tensor([1.0, 2.0, 1.0], dtype=frames.dtype, device=frames.device)
    kernel = (kernel[:, None] * kernel[None, :]) / 16
    channels = frames.shape[1]
    weight = kernel.expand(channels, 1, 3, 3)
    padded = F.pad(frames, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, weight, dilation=dilation, groups=channels)


def _split_frequencies(frames: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    high = torch.zeros_like(frames)
    low = frames
    for level in range(levels):
        blurred = _binomial_blur(low, 2 ** level)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet(frames: torch.Tensor, reference: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """`frames`' high frequencies over `reference`'s low frequencies ([N, C, H, W])."""
    high, _ = _split_frequencies(frames, levels)
    _, low = _split_frequencies(reference, levels)
    return high + low


def color_fix(video: torch.Tensor, reference: torch.Tensor, method: str = "adain") -> torch.Tensor:
    """Colour-correct `video` against `reference` (same shape) with `method` ("adain", "wavelet" or "none")."""
    if method not in METHODS:
        raise ValueError(f"colour fix must be one of {METHODS}, got {method!r}")
    if video.shape != reference.shape:
        raise ValueError(f"colour fix needs matching shapes, got {tuple(video.shape)} and {tuple(reference.shape)}")
    if method == "none":
        return video
    frames = _as_frames(video).float()
    ref = _as_frames(reference).to(frames.device, torch.float32)
    fixed = adain(frames, ref) if method == "adain" else wavelet(frames, ref)
    return _like(fixed.clamp(-1.0, 1.0), video).to(video.dtype)
