"""FlashVSR Tiny and Tiny-Long: one-step streaming video super-resolution, frame- and size-exact.

The model runs on the low-quality video upscaled (bicubic) to the output size, in latent
chunks: the first chunk covers 6 latent frames (21 output frames), every later chunk 2
latent frames (8 output frames). Chunk c reads its input 4 frames ahead of the frames it
outputs, so a clip of N frames is padded with copies of its last frame to F = 8k + 1
frames (F - 4 >= N, F >= 25); the outputs are trimmed back to exactly N, each aligned
with its input frame. Frame sizes are padded to multiples of 128 and cropped back, so
any W x H gives exactly scale*W x scale*H.

Tiny decodes all latents at the end (whole clip in memory, as upstream); Tiny-Long
decodes and colour-fixes each chunk as it is produced, so memory stays bounded: the
self-attention cache holds at most a few time slices, and only the ~12 input frames a
chunk needs are kept. Both give the same frames. Large frames can be processed in
overlapping spatial tiles, each a separate stream, blended with feathered weights.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..progress import Progress
from .colorfix import METHODS as COLOR_FIX_METHODS
from .colorfix import color_fix as apply_color_fix
from .lq_proj import FRAMES_PER_LATENT, LQProjector, ProjectorState
from .sparse_attention import SparseSettings, WindowKVCache
from .tcdecoder import DecoderState, TCDecoder
from .wan_dit import WanDiT

FIRST_CHUNK_LATENTS = 6
NEXT_CHUNK_LATENTS = 2
LOOKAHEAD_FRAMES = 4
MIN_PADDED_FRAMES = 25
SIZE_MULTIPLE = 128
TILE_ALIGN = 16
MODES = ("tiny", "tiny-long")
Trace = dict[str, Any]


def padded_frame_count(frames: int) -> int:
    """F: the smallest 8k+1 with F - 4 >= frames and F >= 25 (the frames the model is run on)."""
    if frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {frames}")
    need = max(frames + LOOKAHEAD_FRAMES, MIN_PADDED_FRAMES)
    return (need - 1 + 7) // 8 * 8 + 1


def pad_index(frames: int) -> list[int]:
    """Input frame index for each of the F frames the model sees (the last frame repeated)."""
    return [min(i, frames - 1) for i in range(padded_frame_count(frames))]


def chunk_count(frames: int) -> int:
    return (padded_frame_count(frames) - 1) // 8 - 2


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    """What one streaming chunk reads and writes, in (padded) input frame indices.

    The projector gets frames [lq_start, lq_stop) (chunk 0 also gets frame 0 alone first);
    the chunk denoises latents [latent_start, latent_start + latent_count) and outputs
    frames [output_start, output_stop), decoded with those same frames as condition.
    """

    index: int
    latent_start: int
    latent_count: int
    lq_start: int
    lq_stop: int
    output_start: int
    output_stop: int


def plan_chunk(index: int) -> ChunkPlan:
    if index == 0:
        frames = FIRST_CHUNK_LATENTS * FRAMES_PER_LATENT
        return ChunkPlan(0, 0, FIRST_CHUNK_LATENTS, 1, frames + 1, 0, frames - 3)
    first_latent = FIRST_CHUNK_LATENTS - 2 + NEXT_CHUNK_LATENTS * index
    lq_start = FRAMES_PER_LATENT * first_latent + 1
    lq_stop = lq_start + NEXT_CHUNK_LATENTS * FRAMES_PER_LATENT
    return ChunkPlan(index, first_latent, NEXT_CHUNK_LATENTS, lq_start, lq_stop,
                     lq_start - LOOKAHEAD_FRAMES, lq_stop - LOOKAHEAD_FRAMES)


def model_size(height: int, width: int) -> tuple[int, int]:
    """The padded frame size the model runs at: both sides rounded up to multiples of 128."""
    return (math.ceil(height / SIZE_MULTIPLE) * SIZE_MULTIPLE, math.ceil(width / SIZE_MULTIPLE) * SIZE_MULTIPLE)


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


def pad_to(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad [T, C, h, w] on the bottom and right to height x width: mirrored where possible, else edge."""
    _, _, h, w = frames.shape
    pad_h, pad_w = height - h, width - w
    if pad_h == 0 and pad_w == 0:
        return frames
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(frames, (0, pad_w, 0, pad_h), mode=mode)


# ---------------------------------------------------------------- spatial tiles


@dataclasses.dataclass(frozen=True)
class Tile:
    """A region of the padded frame, in pixels: rows y0..y0+height, columns x0..x0+width."""

    y0: int
    x0: int
    height: int
    width: int


def _axis_tiles(length: int, tile: int, overlap: int) -> list[int]:
    if tile <= 0 or tile >= length:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    starts = [round(i * (length - tile) / (count - 1) / TILE_ALIGN) * TILE_ALIGN for i in range(count)]
    starts[-1] = length - tile
    return sorted(set(starts))


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
    tile_h = min(tile_size, height) if tile_size else height
    tile_w = min(tile_size, width) if tile_size else width
    return [Tile(y, x, tile_h, tile_w)
            for y in _axis_tiles(height, tile_h, overlap) for x in _axis_tiles(width, tile_w, overlap)]


def _axis_feather(start: int, size: int, others: list[int]) -> torch.Tensor:
    """Weights along one axis: 1 inside, linear ramps across the overlaps with the neighbouring
    tiles starting at `others` (all tiles along an axis are `size` long)."""
    weight = torch.ones(size, dtype=torch.float64)
    position = torch.arange(start, start + size, dtype=torch.float64) + 0.5
    for other in others:
        if other < start < other + size:
            ramp = (position - start) / (other + size - start)
            weight = torch.minimum(weight, ramp.clamp(0, 1))
        elif start < other < start + size:
            ramp = (start + size - position) / (start + size - other)
            weight = torch.minimum(weight, ramp.clamp(0, 1))
    return weight


def feather_weights(tile: Tile, tiles: list[Tile]) -> torch.Tensor:
    """[height, width] blend weights of `tile` among `tiles`; they sum to 1 over the frame."""
    rows = sorted({t.y0 for t in tiles})
    cols = sorted({t.x0 for t in tiles})
    wy = _axis_feather(tile.y0, tile.height, [r for r in rows if r != tile.y0])
    wx = _axis_feather(tile.x0, tile.width, [c for c in cols if c != tile.x0])
    return (wy[:, None] * wx[None, :]).float()


def tile_weights(tiles: list[Tile], device: torch.device) -> dict[Tile, torch.Tensor]:
    """Each tile's `feather_weights` on `device`, for `TileBlender`s of every chunk to share."""
    return {tile: feather_weights(tile, tiles).to(device) for tile in tiles}


class TileBlender:
    """Accumulates tiles' frames [T, C, h, w] into whole frames with feathered weights.

    `weights` come from `tile_weights`, computed once per stream and shared by the blenders of
    successive chunks; a single tile needs none (None).
    """

    def __init__(self, tiles: list[Tile], frames: int, channels: int, height: int, width: int,
                 device: torch.device, weights: dict[Tile, torch.Tensor] | None):
        self.tiles = tiles
        self.single = len(tiles) == 1
        if weights is None and not self.single:
            raise ValueError("several tiles need their blend weights (tile_weights)")
        self.sum = None if self.single else torch.zeros(frames, channels, height, width, device=device)
        self.norm = None if self.single else torch.zeros(height, width, device=device)
        self.weights = weights
        self.result: torch.Tensor | None = None

    def add(self, tile: Tile, frames: torch.Tensor) -> None:
        if self.single:
            self.result = frames.float()
            return
        weight = self.weights[tile].to(frames.device)
        rows = slice(tile.y0, tile.y0 + tile.height)
        cols = slice(tile.x0, tile.x0 + tile.width)
        self.sum[:, :, rows, cols] += frames.float() * weight
        self.norm[rows, cols] += weight

    def frames(self) -> torch.Tensor:
        if self.single:
            return self.result
        return self.sum / self.norm.clamp_min(1e-12)


# ---------------------------------------------------------------- noise


class SeededNoise:
    """Gaussian latent noise for the whole padded frame, drawn chunk after chunk from one seed.

    Drawn on the CPU, so a seed gives the same video on every device.
    """

    def __init__(self, seed: int, channels: int = 16):
        self.generator = torch.Generator().manual_seed(int(seed))
        self.channels = channels
        self.next_latent = 0

    def __call__(self, latent_start: int, count: int, height: int, width: int) -> torch.Tensor:
        if latent_start != self.next_latent:
            raise ValueError(f"noise is drawn in order: expected latent {self.next_latent}, got {latent_start}")
        self.next_latent += count
        return torch.randn(1, self.channels, count, height, width, generator=self.generator)


class FixedNoise:
    """Latent noise taken from a given tensor [1, C, T, H/8, W/8] (tests, reproductions)."""

    def __init__(self, noise: torch.Tensor):
        self.noise = noise

    def __call__(self, latent_start: int, count: int, height: int, width: int) -> torch.Tensor:
        piece = self.noise[:, :, latent_start:latent_start + count, :height, :width]
        if piece.shape[2] != count or tuple(piece.shape[-2:]) != (height, width):
            raise ValueError(f"the fixed noise {tuple(self.noise.shape)} does not cover latents "
                             f"{latent_start}..{latent_start + count} at {height}x{width}")
        return piece.float()


NoiseSource = Callable[[int, int, int, int], torch.Tensor]


# ---------------------------------------------------------------- frame window


class _FrameWindow:
    """Indexed access to a stream of frame chunks, padded past its end with the last frame.

    Holds only the frames not yet released, so memory depends on the look-ahead, not on
    the clip's length.
    """

    def __init__(self, chunks: Iterable[torch.Tensor]):
        self._chunks = iter(chunks)
        self._frames: dict[int, torch.Tensor] = {}
        self._read = 0
        self.total: int | None = None

    def fill(self, stop: int) -> None:
        while self.total is None and self._read < stop:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self.total = self._read
                break
            for frame in chunk:
                self._frames[self._read] = frame
                self._read += 1

    def get(self, start: int, stop: int) -> torch.Tensor:
        """Frames [start, stop) stacked; indices past the end give the last frame."""
        self.fill(stop)
        if self.total == 0:
            raise ValueError("the clip has no frames")
        last = self._read - 1
        return torch.stack([self._frames[min(i, last)] for i in range(start, stop)])

    def release_before(self, index: int) -> None:
        keep_last = self._read - 1
        for key in [k for k in self._frames if k < index and k != keep_last]:
            del self._frames[key]


# ---------------------------------------------------------------- streams


def _moved(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, WindowKVCache):
        return WindowKVCache(_moved(value.k, device), _moved(value.v, device), value.windows_per_slice)
    if isinstance(value, dict):
        return {key: _moved(item, device) for key, item in value.items()}
    if isinstance(value, list):
        return [_moved(item, device) for item in value]
    return value


class _TileStream:
    """Projector, DiT cache and decoder memory of one spatial tile across chunks.

    With several tiles on an accelerator, a tile's state waits in RAM while the other
    tiles run (`park`), so device memory holds one tile's caches at a time.
    """

    def __init__(self, tile: Tile, sparse: SparseSettings, park_device: torch.device | None = None):
        self.tile = tile
        self.sparse = sparse
        self.park_device = park_device
        self.projector_state = ProjectorState()
        self.decoder_state = DecoderState()
        self.caches: list[WindowKVCache | None] | None = None
        self.latents: list[torch.Tensor] = []

    def crop(self, frames: torch.Tensor) -> torch.Tensor:
        """[..., H, W] of the padded frame -> this tile's region."""
        t = self.tile
        return frames[..., t.y0:t.y0 + t.height, t.x0:t.x0 + t.width]

    def park(self) -> None:
        if self.park_device is not None:
            self._move(self.park_device)

    def unpark(self, device: torch.device) -> None:
        if self.park_device is not None:
            self._move(device)

    def _move(self, device: torch.device) -> None:
        self.caches = _moved(self.caches, device)
        for state in (self.projector_state, self.decoder_state):
            for field in dataclasses.fields(state):
                setattr(state, field.name, _moved(getattr(state, field.name), device))


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


class FlashVSRPipeline:
    """The Tiny / Tiny-Long pipeline over a DiT, an LQ projector, a TCDecoder and the prompt context.

    The models stay where they are (device, dtype); this object holds only what is
    derived once from them: the fixed timestep's embedding and the prompt's
    cross-attention keys and values. Stream state lives in each run, so one pipeline
    can run several clips, one after the other or interleaved.
    """

    def __init__(self, dit: WanDiT, lq_proj: LQProjector, decoder: TCDecoder,
                 prompt_context: torch.Tensor, attention_backend: str = "auto"):
        self.dit = dit
        self.lq_proj = lq_proj
        self.decoder = decoder
        self.attention_backend = attention_backend
        # Keep idle tiles' stream state in RAM: None = on accelerators only.
        self.park_tiles: bool | None = None
        self.time = dit.embed_time()
        self.prompt = dit.embed_prompt(prompt_context)

    @classmethod
    def from_models(cls, models: Any, attention_backend: str = "auto") -> FlashVSRPipeline:
        """A pipeline over a loaded `FlashVSRModels` (see `loader.load_flashvsr`)."""
        return cls(models.dit, models.lq_proj, models.tcdecoder, models.prompt, attention_backend)

    @property
    def device(self) -> torch.device:
        return self.dit.device

    # -------------------------------------------------------------- pixels in, pixels out

    @torch.no_grad()
    def upscale(self, chunks: Iterable[torch.Tensor], scale: int, settings: StreamSettings | None = None,
                noise: NoiseSource | None = None, progress: Progress | None = None,
                trace: Trace | None = None) -> Iterator[torch.Tensor]:
        """Upscale RGB frames [T, h, w, 3] (0..1, any chunking) to [T, scale*h, scale*w, 3] (0..1).

        Exactly as many frames come out as go in, each aligned with its input.
        """
        settings = settings or StreamSettings()
        source = iter(chunks)
        first = next(source, None)
        if first is None:
            return
        height, width = int(first.shape[1]) * scale, int(first.shape[2]) * scale
        padded_h, padded_w = model_size(height, width)
        device = self.device

        def lq_frames() -> Iterator[torch.Tensor]:
            for chunk in itertools.chain((first,), source):
                if tuple(chunk.shape[1:3]) != tuple(first.shape[1:3]):
                    raise ValueError(f"all frames must have the same size; got {tuple(chunk.shape[1:3])} "
                                     f"after {tuple(first.shape[1:3])}")
                frames = chunk[..., :3].to(device, torch.float32).permute(0, 3, 1, 2)
                upscaled = bicubic_resize(frames, height, width).mul(2).sub(1).clamp(-1, 1)
                yield pad_to(upscaled, padded_h, padded_w)

        for out in self.stream(lq_frames(), (height, width), settings, noise, progress, trace):
            yield out.add(1).div(2).clamp(0, 1).permute(0, 2, 3, 1).to("cpu", torch.float32)

    # -------------------------------------------------------------- model-size LQ in, video out

    @torch.no_grad()
    def stream(self, lq_chunks: Iterable[torch.Tensor], content_size: tuple[int, int] | None = None,
               settings: StreamSettings | None = None, noise: NoiseSource | None = None,
               progress: Progress | None = None, trace: Trace | None = None) -> Iterator[torch.Tensor]:
        """Run the model on LQ frames [T, 3, H, W] in -1..1 already at the output size.

        H and W must be multiples of 128 (pad first). The output [T, 3, h, w] is cropped
        to `content_size` (h, w) (default: all of H x W) before the colour fix, and holds
        exactly as many frames as came in; it is in -1..1 after a colour fix, and in the
        decoder's range (soft-clamped to about +-3) with colour fix "none". `noise` defaults to `SeededNoise(seed)`.
        `trace`, when given, receives per-chunk intermediates under the golden fixture's names
        (first tile only).
        """
        settings = settings or StreamSettings()
        settings.validate()
        window = _FrameWindow(lq_chunks)
        window.fill(1)
        if window.total == 0:
            return
        first = window.get(0, 1)
        padded_h, padded_w = int(first.shape[-2]), int(first.shape[-1])
        if padded_h % SIZE_MULTIPLE or padded_w % SIZE_MULTIPLE:
            raise ValueError(f"model-size frames must be multiples of {SIZE_MULTIPLE}, got {padded_w}x{padded_h}")
        noise = noise or SeededNoise(settings.seed, self.dit.in_dim)
        tiles = plan_tiles(padded_h, padded_w, settings.tile_size, settings.tile_overlap)
        parking = self.park_tiles if self.park_tiles is not None else self.device.type != "cpu"
        park = torch.device("cpu") if len(tiles) > 1 and parking else None
        streams = [_TileStream(tile, self._sparse_for(tile, settings), park) for tile in tiles]
        weights = tile_weights(tiles, self.device) if len(tiles) > 1 else None
        tiny = settings.mode == "tiny"
        content = content_size or (padded_h, padded_w)
        kept_lq: list[torch.Tensor] = []
        emitted = 0
        index = 0
        while True:
            plan = plan_chunk(index)
            window.fill(plan.output_start + 1)
            # Once the clip's end is known (reading up to this chunk's first output settles whether
            # it still has frames), it takes chunk_count chunks; before that, every chunk is needed.
            if window.total is not None and index >= chunk_count(window.total):
                break
            if progress is not None:
                progress.check_cancel()
            lq = window.get(plan.lq_start, plan.lq_stop)
            warm_up = window.get(0, 1) if index == 0 else None
            cond = window.get(plan.output_start, plan.output_stop)
            noise_chunk = noise(plan.latent_start, plan.latent_count, padded_h // 8, padded_w // 8)
            blender = None if tiny else self._blender(tiles, cond, weights)
            for number, stream in enumerate(streams):
                stream.unpark(self.device)
                self._denoise(stream, plan, lq, warm_up, noise_chunk, trace if number == 0 else None)
                if blender is not None:
                    self._decode(stream, cond, blender)
                stream.park()
            window.release_before(plan.output_stop)
            index += 1
            if blender is None:
                kept_lq.append(cond)
                continue
            frames = self._blended(blender, trace)
            # Reading this chunk's look-ahead settled whether the clip ends inside its outputs.
            keep = frames.shape[0] if window.total is None else min(frames.shape[0], window.total - emitted)
            yield from self._finish(frames, cond, keep, content, settings, progress, trace)
            emitted += keep
        if tiny and kept_lq:
            cond = torch.cat(kept_lq, dim=0)
            kept_lq.clear()
            blender = self._blender(tiles, cond, weights)
            for stream in streams:
                stream.unpark(self.device)
                self._decode(stream, cond, blender)
                stream.park()
            frames = self._blended(blender, trace)
            yield from self._finish(frames, cond, window.total, content, settings, progress, trace)

    def _sparse_for(self, tile: Tile, settings: StreamSettings) -> SparseSettings:
        return SparseSettings.from_ratios(tile.height, tile.width, settings.sparse_ratio, settings.kv_ratio,
                                          settings.local_range, settings.topk_ratio)

    def _denoise(self, stream: _TileStream, plan: ChunkPlan, lq: torch.Tensor, warm_up: torch.Tensor | None,
                 noise_chunk: torch.Tensor, trace: Trace | None) -> torch.Tensor:
        """One chunk of one tile: LQ tokens, the DiT's one step; returns the denoised latents."""
        device = self.device

        def as_video(frames: torch.Tensor) -> torch.Tensor:
            return stream.crop(frames).to(device).permute(1, 0, 2, 3)[None]

        if warm_up is not None:
            self.lq_proj.stream(as_video(warm_up), stream.projector_state)
        tokens = self.lq_proj.stream(as_video(lq), stream.projector_state)
        tile = stream.tile
        noisy = noise_chunk[..., tile.y0 // 8:(tile.y0 + tile.height) // 8,
                            tile.x0 // 8:(tile.x0 + tile.width) // 8].to(device)
        record: dict[str, torch.Tensor] | None = {} if trace is not None else None
        prediction, stream.caches = self.dit.forward_chunk(
            noisy, tokens, self.time, self.prompt, stream.caches, plan.latent_start, stream.sparse,
            self.attention_backend, record)
        denoised = noisy.float() - prediction.float()
        if trace is not None:
            prefix = f"chunk{plan.index}."
            trace[prefix + "lq_latents"] = tokens[0].float().cpu()
            trace[prefix + "noise_pred"] = prediction.float().cpu()
            trace[prefix + "denoised"] = denoised.cpu()
            for key, value in record.items():
                trace[prefix + key] = value
            for number, cache in enumerate(stream.caches):
                trace[f"{prefix}self_attn_cache_k.block{number}"] = cache.k.float().cpu()
                trace[f"{prefix}self_attn_cache_v.block{number}"] = cache.v.float().cpu()
        stream.latents.append(denoised)
        return denoised

    def _blender(self, tiles: list[Tile], cond: torch.Tensor,
                 weights: dict[Tile, torch.Tensor] | None) -> TileBlender:
        return TileBlender(tiles, cond.shape[0], 3, int(cond.shape[-2]), int(cond.shape[-1]), self.device,
                           weights)

    def _decode(self, stream: _TileStream, cond: torch.Tensor, blender: TileBlender) -> None:
        """Decode a tile's pending latents with its LQ frames as condition into the blend."""
        latents = torch.cat(stream.latents, dim=2)
        stream.latents.clear()
        tile_cond = stream.crop(cond).to(self.device).permute(1, 0, 2, 3)[None]
        video = self.decoder.decode(latents, tile_cond, stream.decoder_state)
        blender.add(stream.tile, video[0].transpose(0, 1))

    def _blended(self, blender: TileBlender, trace: Trace | None) -> torch.Tensor:
        """The blended frames [T, 3, H, W] in -1..1."""
        frames = blender.frames()
        if trace is not None:
            trace.setdefault("video_pre_colorfix", []).append(frames.float().cpu())
        return frames

    def _finish(self, frames: torch.Tensor, cond: torch.Tensor, keep: int, content: tuple[int, int],
                settings: StreamSettings, progress: Progress | None, trace: Trace | None) -> Iterator[torch.Tensor]:
        """Crop to the content, colour-fix against the LQ frames, keep the first `keep` frames."""
        height, width = content
        frames = frames[..., :height, :width]
        cond = cond[..., :height, :width].to(frames.device)
        step = max(1, settings.out_chunk_frames)
        for start in range(0, keep, step):
            stop = min(keep, start + step)
            fixed = apply_color_fix(frames[start:stop], cond[start:stop].float(), settings.color_fix)
            if trace is not None:
                trace.setdefault("video_out", []).append(fixed.float().cpu())
            yield fixed
            if progress is not None:
                progress.advance(stop - start)
