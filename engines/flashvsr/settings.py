"""What shapes a FlashVSR run besides the models: `StreamSettings`, checked once with the
ranges users see, and the padded frame size and spatial tiles the model runs on."""

from __future__ import annotations

import dataclasses

from ..errors import InputError
from ..tiling import Tile, grid, overlapping_spans, round_up
from .colorfix import METHODS as COLOR_FIX_METHODS

SIZE_MULTIPLE = 128
TILE_ALIGN = 16
MODES = ("tiny", "tiny-long")


def model_size(height: int, width: int) -> tuple[int, int]:
    """The padded frame size the model runs at: both sides rounded up to multiples of 128."""
    return round_up(height, SIZE_MULTIPLE), round_up(width, SIZE_MULTIPLE)


def check_tiling(tile_size: int, overlap: int) -> None:
    """Raise `InputError` unless tile_size is 0 or a positive multiple of 128 px and overlap a
    multiple of 16 px, at most half the tile (the rule `StreamSettings.validate` applies)."""
    if tile_size < 0 or tile_size % SIZE_MULTIPLE:
        raise InputError(f"tile size must be 0 (automatic) or a positive multiple of {SIZE_MULTIPLE} pixels, "
                         f"got {tile_size}")
    if overlap < 0 or overlap % TILE_ALIGN or (tile_size and overlap > tile_size // 2):
        raise InputError(f"tile overlap must be a multiple of {TILE_ALIGN} pixels, at most half the tile size, "
                         f"got {overlap}")


def plan_tiles(height: int, width: int, tile_size: int = 0, overlap: int = 128) -> list[Tile]:
    """Overlapping tiles covering a padded height x width frame (both multiples of 128).

    tile_size 0 (or one at least the frame) gives a single tile. Tiles are multiples of
    128 and start on multiples of 16 pixels, so the latent noise and token grids line up.
    """
    check_tiling(tile_size, overlap)
    return grid(overlapping_spans(height, tile_size, overlap, TILE_ALIGN),
                overlapping_spans(width, tile_size, overlap, TILE_ALIGN))


@dataclasses.dataclass
class StreamSettings:
    """Everything that shapes a run besides the models; see `FlashVSRPipeline.upscale`."""

    mode: str = "tiny-long"
    sparse_ratio: float = 2.0
    kv_ratio: float = 3.0
    local_range: int = 11
    topk_ratio: float | None = None
    color_fix: str = "adain"
    seed: int = 0
    tile_size: int = 0
    tile_overlap: int = 128
    out_chunk_frames: int = 8

    def validate(self) -> None:
        """Raise `InputError` (a ValueError) naming the first setting out of range."""
        if self.mode not in MODES:
            raise InputError(f"FlashVSR mode must be one of {MODES}, got {self.mode!r}")
        if not 0.5 <= self.sparse_ratio <= 8.0:
            raise InputError(f"sparse_ratio must be between 0.5 and 8 (1.5 faster, 2.0 steadier), "
                             f"got {self.sparse_ratio}")
        if not 1.0 <= self.kv_ratio <= 16.0:
            raise InputError(f"kv_ratio must be between 1 and 16 (cached time slices), got {self.kv_ratio}")
        if not 1 <= self.local_range <= 64:
            raise InputError(f"local_range must be between 1 and 64 blocks (9 sharper, 11 steadier), "
                             f"got {self.local_range}")
        if self.color_fix not in COLOR_FIX_METHODS:
            raise InputError(f"colour fix must be one of {COLOR_FIX_METHODS}, got {self.color_fix!r}")
        check_tiling(self.tile_size, self.tile_overlap)
