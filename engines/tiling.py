"""Tiled processing, shared by the engines: tile plans with context margins, feathered blend
weights, padding to a multiple, and smaller tiles after an out-of-memory error.

A tile is a window of the (padded) input frame that the network reads. Only part of its
output enters the result, its *kept* region, weighted by linear cross-fades where it hands
over to its neighbours; the blend divides by the sum of the weights, so every output
pixel is a weighted mean of the tiles that keep it. Along each axis a tile is a `Span`;
a plan is the grid of row spans by column spans. Two layouts exist:

* `core_spans` (Real-ESRGAN, whose network takes any size): the axis is cut into
  near-equal cores, each read with `context` pixels of margin on both sides and kept
  over its core plus a `feather` band, cross-faded across the core edges.
* `overlapping_spans` (FlashVSR, whose tiles are streams of one fixed size): equal
  windows on an alignment grid, overlapping by at least `overlap`, each kept whole and
  cross-faded across the overlaps with its neighbours.

Cross-fades of core spans are complementary (where one tile fades out its neighbour fades
in), so their weights sum to one by construction: `BlendWeights` keeps only each tile's axis
weights and the blend needs no division. Overlapping windows may overlap more than their
neighbours; their blend keeps whole weight maps and divides by the weights' sum. Weights are
computed in float64 and used in float32; Real-ESRGAN's output scale enters as `scale`:
weights cover the kept region's output pixels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class Fade:
    """A linear cross-fade across input pixels [start, stop): the weight rises from 0 to 1
    over it (`rising`), or falls from 1 to 0."""

    start: int
    stop: int
    rising: bool


@dataclasses.dataclass(frozen=True)
class Span:
    """One tile along one axis, in input pixels: the network reads [start, stop); its output
    over [keep_start, keep_stop) enters the blend, weighted by `fades`, which are
    `complementary` when the neighbours' fades add up to one."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int
    fades: tuple[Fade, ...] = ()
    complementary: bool = False

    @property
    def size(self) -> int:
        return self.stop - self.start

    def weights(self, scale: int = 1) -> torch.Tensor:
        """float64 weights over the kept region's output pixels (`scale` per input pixel)."""
        positions = torch.arange(self.keep_start * scale, self.keep_stop * scale, dtype=torch.float64) + 0.5
        weight = torch.ones_like(positions)
        for fade in self.fades:
            width = (fade.stop - fade.start) * scale
            if fade.rising:
                ramp = (positions - fade.start * scale) / width
            else:
                ramp = (fade.stop * scale - positions) / width
            weight = torch.minimum(weight, ramp.clamp(0, 1))
        return weight


@dataclasses.dataclass(frozen=True)
class Tile:
    """A window of the frame (`rows` by `cols`) and the part of its output the blend keeps."""

    rows: Span
    cols: Span

    @property
    def y0(self) -> int:
        return self.rows.start

    @property
    def x0(self) -> int:
        return self.cols.start

    @property
    def height(self) -> int:
        return self.rows.size

    @property
    def width(self) -> int:
        return self.cols.size

    @property
    def complementary(self) -> bool:
        return self.rows.complementary and self.cols.complementary

    def crop(self, frames: torch.Tensor) -> torch.Tensor:
        """The window of [..., H, W] frames that this tile reads."""
        return frames[..., self.rows.start:self.rows.stop, self.cols.start:self.cols.stop]

    def axis_weights(self, scale: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 weights along the rows and the columns of the kept region's output pixels."""
        return self.rows.weights(scale).float(), self.cols.weights(scale).float()

    def weights(self, scale: int = 1) -> torch.Tensor:
        """[h, w] float32 blend weights over the kept region's output pixels: the product of the
        axis weights (in float32 for complementary tiles, which keep only those)."""
        if self.complementary:
            rows, cols = self.axis_weights(scale)
        else:
            rows, cols = self.rows.weights(scale), self.cols.weights(scale)
        return (rows[:, None] * cols[None, :]).float()


def grid(rows: Sequence[Span], cols: Sequence[Span]) -> list[Tile]:
    """Every row span with every column span, row by row."""
    return [Tile(row, col) for row in rows for col in cols]


def whole(length: int) -> list[Span]:
    """One span over the whole axis."""
    return [Span(0, length, 0, length, complementary=True)]


def overlapping_spans(length: int, size: int, overlap: int, align: int = 1) -> list[Span]:
    """Windows of `size` (the whole axis when `size` is 0 or at least `length`) overlapping by at
    least `overlap`, starting on multiples of `align`, the last one flush with the end; each
    is kept whole, cross-fading across its overlaps with every window it overlaps."""
    if size <= 0 or size >= length:
        return whole(length)
    count = math.ceil((length - overlap) / (size - overlap))
    starts = [round(i * (length - size) / (count - 1) / align) * align for i in range(count)]
    starts[-1] = length - size
    starts = sorted(set(starts))
    spans = []
    for start in starts:
        fades = []
        for other in starts:
            if other < start < other + size:
                fades.append(Fade(start, other + size, rising=True))
            elif start < other < start + size:
                fades.append(Fade(other, start + size, rising=False))
        spans.append(Span(start, start + size, start, start + size, tuple(fades)))
    return spans


def cores(length: int, tile: int, multiple: int = 1) -> list[tuple[int, int]]:
    """Split [0, length) into near-equal parts of at most `tile` (edges on multiples of `multiple`)."""
    count = max(1, math.ceil(length / tile))
    edges = [0]
    for index in range(1, count):
        edge = round(index * length / count) // multiple * multiple
        if edge > edges[-1]:
            edges.append(edge)
    edges.append(length)
    return list(zip(edges[:-1], edges[1:], strict=True))


def core_spans(length: int, tile: int, context: int, feather: int, multiple: int = 1) -> list[Span]:
    """Cores of at most `tile` (edges on multiples of `multiple`), each read with `context`
    pixels of margin and kept over the core plus `feather` pixels, cross-faded across
    2 * feather pixels centred on each core edge.

    The feather is cut to half the smallest core, so the cross-fades never overlap.
    """
    parts = cores(length, tile, multiple)
    feather = min(feather, min(stop - start for start, stop in parts) // 2)
    spans = []
    for low, high in parts:
        start, stop = max(0, low - context), min(length, high + context)
        fades = []
        if feather > 0 and low > 0:
            fades.append(Fade(low - feather, low + feather, rising=True))
        if feather > 0 and high < length:
            fades.append(Fade(high - feather, high + feather, rising=False))
        spans.append(Span(start, stop, max(start, low - feather), min(stop, high + feather), tuple(fades),
                          complementary=True))
    return spans


class BlendWeights:
    """The tiles' blend weights on one device: for complementary tiles each tile's axis weights,
    otherwise each tile's weight map and their sum over the output frame (`total`).

    Computed once per frame size and shared by the blenders of every batch or chunk.
    """

    def __init__(self, tiles: Sequence[Tile], device: torch.device | str, scale: int = 1):
        self.tiles = list(tiles)
        self.scale = scale
        self.device = torch.device(device)
        self.height = max(tile.rows.keep_stop for tile in self.tiles) * scale
        self.width = max(tile.cols.keep_stop for tile in self.tiles) * scale
        self.complementary = all(tile.complementary for tile in self.tiles)
        self.axes: dict[Tile, tuple[torch.Tensor, torch.Tensor]] = {}
        self.maps: dict[Tile, torch.Tensor] = {}
        self.total: torch.Tensor | None = None
        if len(self.tiles) == 1:
            return
        if self.complementary:
            for tile in self.tiles:
                rows, cols = tile.axis_weights(scale)
                self.axes[tile] = (rows.to(self.device), cols.to(self.device))
            return
        self.total = torch.zeros(self.height, self.width, device=self.device)
        for tile in self.tiles:
            self.maps[tile] = tile.weights(scale).to(self.device)
            self.total[self.kept(tile)] += self.maps[tile]

    def weight(self, tile: Tile) -> torch.Tensor:
        """`tile`'s [h, w] weights on the device (`Tile.weights`)."""
        if self.complementary:
            rows, cols = self.axes[tile]
            return rows[:, None] * cols[None, :]
        return self.maps[tile]

    def kept(self, tile: Tile) -> tuple[slice, slice]:
        """The output rows and columns that `tile` contributes to."""
        rows, cols, scale = tile.rows, tile.cols, self.scale
        return slice(rows.keep_start * scale, rows.keep_stop * scale), slice(cols.keep_start * scale,
                                                                               cols.keep_stop * scale)


class TileBlender:
    """Accumulates tiles' outputs [N, C, h, w] into whole frames [N, C, H, W], weighted by
    their `BlendWeights` (and divided by the weights' sum unless they are complementary).
    One tile passes through as float."""

    def __init__(self, weights: BlendWeights, frames: int, channels: int):
        self.weights = weights
        self.single = len(weights.tiles) == 1
        self.sum = None if self.single else torch.zeros(frames, channels, weights.height, weights.width,
                                                        device=weights.device)
        self.result: torch.Tensor | None = None

    def add(self, tile: Tile, output: torch.Tensor) -> None:
        """Blend in `tile`'s output over its whole window (at the weights' scale)."""
        if self.single:
            self.result = output.float()
            return
        scale = self.weights.scale
        rows, cols = tile.rows, tile.cols
        part = output[..., (rows.keep_start - rows.start) * scale:(rows.keep_stop - rows.start) * scale,
                      (cols.keep_start - cols.start) * scale:(cols.keep_stop - cols.start) * scale]
        weight = self.weights.weight(tile).to(part.device)
        rows_out, cols_out = self.weights.kept(tile)
        self.sum[:, :, rows_out, cols_out] += part.float() * weight

    def frames(self) -> torch.Tensor:
        """The blended frames (float32)."""
        if self.single:
            return self.result
        if self.weights.total is None:
            return self.sum
        return self.sum / self.weights.total.clamp_min(1e-12)


def round_up(length: int, multiple: int) -> int:
    """`length` rounded up to a multiple of `multiple`."""
    return math.ceil(length / multiple) * multiple


def pad_to(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad [..., h, w] on the bottom and right to height x width: mirrored where possible, else edge."""
    h, w = frames.shape[-2:]
    pad_h, pad_w = height - h, width - w
    if pad_h == 0 and pad_w == 0:
        return frames
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(frames, (0, pad_w, 0, pad_h), mode=mode)


def pad_to_multiple(frames: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad [..., h, w] on the bottom and right to the next multiples of `multiple` (`pad_to`)."""
    if multiple <= 1:
        return frames
    h, w = frames.shape[-2:]
    return pad_to(frames, round_up(h, multiple), round_up(w, multiple))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says a device or the host ran out of memory."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def smaller_tile(tile: int, frame_side: int, minimum: int, multiple: int = 1) -> int | None:
    """The tile size to retry with after running out of memory: half of `tile` (of `frame_side`,
    the frame's longer side, when `tile` is 0, untiled), rounded down to a multiple of `multiple`,
    at least `minimum`; None when that is no smaller."""
    current = tile if 0 < tile < frame_side else frame_side
    smaller = max(minimum, current // 2 // multiple * multiple)
    return smaller if smaller < current else None


def free_cached_memory(device: torch.device) -> None:
    """Return the caching allocator's unused blocks on `device` to the driver (after an out-of-memory
    error, before retrying smaller)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
