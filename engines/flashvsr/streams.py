"""The state one spatial tile carries from chunk to chunk of a FlashVSR stream."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..tiling import Tile
from .lq_proj import ProjectorState
from .sparse_attention import WindowKVCache
from .tcdecoder import DecoderState
from .wan_dit import StreamContext


def moved(value: Any, device: torch.device) -> Any:
    """`value` (tensors, caches, and dicts and lists of them) on `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, WindowKVCache):
        return WindowKVCache(moved(value.k, device), moved(value.v, device), value.windows_per_slice)
    if isinstance(value, dict):
        return {key: moved(item, device) for key, item in value.items()}
    if isinstance(value, list):
        return [moved(item, device) for item in value]
    return value


class TileStream:
    """Projector, DiT cache and decoder memory of one spatial tile across chunks.

    With several tiles on an accelerator, a tile's state waits in RAM while the other
    tiles run (`park`), so device memory holds one tile's caches at a time.
    """

    def __init__(self, tile: Tile, context: StreamContext, park_device: torch.device | None = None):
        self.tile = tile
        self.context = context
        self.park_device = park_device
        self.projector_state = ProjectorState()
        self.decoder_state = DecoderState()
        self.caches: list[WindowKVCache | None] | None = None
        self.latents: list[torch.Tensor] = []

    def crop(self, frames: torch.Tensor) -> torch.Tensor:
        """[..., H, W] of the padded frame -> this tile's region."""
        return self.tile.crop(frames)

    def crop_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[..., H/8, W/8] latents of the padded frame -> this tile's region."""
        t = self.tile
        return latents[..., t.y0 // 8:(t.y0 + t.height) // 8, t.x0 // 8:(t.x0 + t.width) // 8]

    def park(self) -> None:
        if self.park_device is not None:
            self._move(self.park_device)

    def unpark(self, device: torch.device) -> None:
        if self.park_device is not None:
            self._move(device)

    def _move(self, device: torch.device) -> None:
        self.caches = moved(self.caches, device)
        for state in (self.projector_state, self.decoder_state):
            for field in dataclasses.fields(state):
                setattr(state, field.name, moved(getattr(state, field.name), device))
