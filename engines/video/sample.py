"""A small synthetic sample video with audio, for the quick start and tests on a fresh machine.

Cartoon-like content (flat colours, hard edges, thin lines, a moving disc and a scrolling stripe
pattern) of the kind Real-ESRGAN's animevideov3 model is made for, plus a stereo tone, so a
newcomer can try `vsrkit upscale` without finding a video first.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import torch

from ..clip import AudioTrack, Clip, ClipInfo, chunk_frames_for
from ..progress import Progress
from .encode import EncodeOptions, save_clip

SAMPLE_RATE = 48000


def sample_frame(index: int, count: int, width: int, height: int) -> torch.Tensor:
    """Frame `index` of the sample as [H, W, 3] float in 0..1."""
    ys = torch.linspace(0, 1, height)[:, None].expand(height, width)
    xs = torch.linspace(0, 1, width)[None, :].expand(height, width)
    t = index / max(1, count)
    sky = torch.stack([0.35 + 0.3 * ys, 0.55 + 0.25 * ys, torch.full_like(ys, 0.9)], dim=-1)
    ground = (ys > 0.7 + 0.05 * torch.sin(6.28 * (xs + t))).float()[..., None]
    frame = sky * (1 - ground) + torch.tensor([0.25, 0.6, 0.2]) * ground
    cx, cy, radius = 0.15 + 0.7 * t, 0.4 + 0.15 * math.sin(6.28 * t), 0.12
    aspect = width / height
    dist = torch.sqrt(((xs - cx) * aspect) ** 2 + (ys - cy) ** 2)
    disc = (dist < radius).float()[..., None]
    outline = ((dist >= radius) & (dist < radius + 0.02)).float()[..., None]
    frame = frame * (1 - disc) + torch.tensor([0.95, 0.75, 0.2]) * disc
    frame = frame * (1 - outline)
    stripes = ((torch.floor((xs + ys + 0.5 * t) * 24) % 2) == 0).float()[..., None]
    band = ((ys > 0.08) & (ys < 0.16)).float()[..., None]
    frame = frame * (1 - band) + band * (0.2 + 0.7 * stripes)
    return frame.clamp(0, 1)


def sample_clip(width: int = 160, height: int = 96, frames: int = 48, fps: int = 24) -> Clip:
    """The sample as a lazy clip with a stereo tone as its audio."""
    duration = frames / fps
    samples = torch.arange(int(duration * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.2 * torch.sin(2 * math.pi * 440 * samples)
    waveform = torch.stack([tone, 0.2 * torch.sin(2 * math.pi * 660 * samples)])
    audio = AudioTrack(waveform=waveform, sample_rate=SAMPLE_RATE, channels=2)
    info = ClipInfo(width=width, height=height, fps=Fraction(fps), frame_count=frames, audio=audio)
    step = chunk_frames_for(width, height)

    def source() -> Iterator[torch.Tensor]:
        for start in range(0, frames, step):
            stop = min(frames, start + step)
            yield torch.stack([sample_frame(i, frames, width, height) for i in range(start, stop)])

    return Clip(info, source)


def write_sample(path: str | os.PathLike, width: int = 160, height: int = 96, frames: int = 48, fps: int = 24,
                 progress: Progress | None = None) -> Path:
    """Write the sample to `path` (H.264 + AAC in MP4 by default); never overwrites."""
    return save_clip(sample_clip(width, height, frames, fps), path, EncodeOptions(codec="h264", crf=18),
                     progress=progress)
