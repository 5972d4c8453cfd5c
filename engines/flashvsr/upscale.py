"""FlashVSR Tiny as a streaming clip stage: `upscale_clip`, used by the nodes and the CLI.

The stage pulls the input clip chunk by chunk and emits upscaled frames as soon as each
streaming chunk is decoded (Tiny-Long), so memory stays bounded whatever the clip's
length. Every input frame gives exactly one output frame, at exactly scale x its size.
An alpha channel, which the model does not see, is resized with the same bicubic kernel.
At each scene cut (scdet on the input frames) a new stream starts, with a fresh attention cache
and decoder state, so each shot is upscaled exactly as if it were a clip of its own.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..clip import Clip
from ..errors import InputError
from ..progress import Progress, open_progress
from ..video.scenes import DEFAULT_SCENE_THRESHOLD, SCENE_THRESHOLD, detector_for, split_shots
from .pipeline import (
    FlashVSRPipeline,
    StreamSettings,
    bicubic_resize,
    model_size,
)

SCALES = (2, 3, 4)
AUTO_TILE_PIXELS = 1536 * 1536
AUTO_TILE_SIZE = 1024
DEFAULT_OVERLAP = 128


def auto_tile_size(height: int, width: int) -> int:
    """Tile size for an output of height x width: none up to about 2.4 MP, else 1024 px tiles."""
    padded_h, padded_w = model_size(height, width)
    return 0 if padded_h * padded_w <= AUTO_TILE_PIXELS else AUTO_TILE_SIZE


def upscale_clip(clip: Clip, models: Any, *, scale: int = 4, mode: str = "tiny-long",
                 sparse_ratio: float = 2.0, kv_ratio: float = 3.0, local_range: int = 11,
                 color_fix: str = "adain", seed: int = 0, tile_size: int = 0,
                 tile_overlap: int = DEFAULT_OVERLAP,
                 progress_factory: Callable[[int | None, str], Progress] | None = None,
                 attention_backend: str = "auto", scene_threshold: float = DEFAULT_SCENE_THRESHOLD) -> Clip:
    """A clip of `clip` upscaled by FlashVSR Tiny (`models` from `loader.load_flashvsr`).

    mode "tiny-long" streams with bounded memory; "tiny" decodes the whole clip at the end
    (same frames, memory grows with length). tile_size 0 picks tiling automatically for
    large outputs. `progress_factory(total, desc)` opens a progress bar for each pass; it
    advances by output frames and is asked for cancellation between chunks. `scene_threshold`
    is scdet's cut score (0: one stream for the whole clip). Nothing runs until the returned
    clip is pulled.
    """
    scene_threshold = SCENE_THRESHOLD.check(scene_threshold, "FlashVSR")
    if scale not in SCALES:
        raise InputError(f"FlashVSR scale must be one of {SCALES}, got {scale}")
    settings = StreamSettings(mode=mode, sparse_ratio=sparse_ratio, kv_ratio=kv_ratio, local_range=local_range,
                              color_fix=color_fix, seed=seed, tile_overlap=tile_overlap, tile_size=tile_size)
    settings.validate()
    info = clip.info
    if info.channels not in (3, 4):
        raise InputError(f"FlashVSR needs RGB or RGBA frames, got {info.channels} channels")
    out_h, out_w = info.height * scale, info.width * scale
    tile = tile_size or auto_tile_size(out_h, out_w)
    if tile and tile_overlap > tile // 2:
        raise InputError(f"tile overlap {tile_overlap} px is more than half the automatic {tile} px tiles of a "
                         f"{out_w}x{out_h} output; set tile_overlap to at most {tile // 2}, or choose tile_size")
    settings = dataclasses.replace(settings, tile_size=tile)

    def stage(chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        pipeline = FlashVSRPipeline.from_models(models, attention_backend)
        alphas: deque[torch.Tensor] = deque()

        def colour(chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
            for chunk in chunks:
                if chunk.shape[-1] == 4:
                    alphas.extend(chunk[..., 3:].unbind(0))
                yield chunk[..., :3]

        with open_progress(progress_factory, info.frame_count or None, "FlashVSR") as bar:
            shots = split_shots(colour(chunks), detector_for(clip, scene_threshold))
            for frames in (out for shot in shots for out in pipeline.upscale(shot, scale, settings, progress=bar)):
                if alphas:
                    alpha = torch.stack([alphas.popleft() for _ in range(frames.shape[0])])
                    alpha = bicubic_resize(alpha.permute(0, 3, 1, 2).float(), out_h, out_w).clamp(0, 1)
                    frames = torch.cat([frames, alpha.permute(0, 2, 3, 1)], dim=-1)
                yield frames

    return clip.then(stage, width=out_w, height=out_h)

