"""FlashVSR Tiny and Tiny-Long: one-step streaming video super-resolution, frame- and size-exact.

The model runs on the low-quality video upscaled (bicubic) to the output size, in latent
chunks (`chunks` plans which frames each reads and outputs); exactly as many frames come
out as go in, each aligned with its input frame. Frame sizes are padded to multiples of
128 and cropped back, so any W x H gives exactly scale*W x scale*H.

Tiny decodes all latents at the end (whole clip in memory, as upstream); Tiny-Long
decodes and colour-fixes each chunk as it is produced, so memory stays bounded: the
self-attention cache holds at most a few time slices, and only the ~12 input frames a
chunk needs are kept. Both give the same frames. Large frames can be processed in
overlapping spatial tiles, each a separate stream (`streams.TileStream`), blended with
feathered weights (`engines.tiling`); a first chunk that runs out of memory starts over on
smaller tiles, which the rest of the stream keeps.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ..progress import Progress
from ..tiling import (
    BlendWeights,
    Tile,
    TileBlender,
    free_cached_memory,
    is_out_of_memory,
    pad_to,
    round_up,
    smaller_tile,
)
from .bicubic import bicubic_resize
from .chunks import ChunkPlan, FrameWindow, chunk_count, plan_chunk
from .colorfix import color_fix as apply_color_fix
from .lq_proj import LQProjector
from .noise import NoiseSource, SeededNoise
from .settings import SIZE_MULTIPLE, StreamSettings, model_size, plan_tiles
from .sparse_attention import SparseSettings
from .streams import TileStream
from .tcdecoder import TCDecoder
from .wan_dit import StreamContext, WanDiT

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _ChunkInputs:
    """What one chunk reads, for the whole padded frame: the projector's frames (and frame 0 alone
    first, for chunk 0), the decoder's condition frames, and the latent noise."""

    lq: torch.Tensor
    warm_up: torch.Tensor | None
    cond: torch.Tensor
    noise: torch.Tensor


@dataclasses.dataclass
class _Run:
    """One `FlashVSRPipeline.stream` call: its settings, the padded frame size, the content size
    to crop to, and one stream per tile with the tiles' blend weights (`FlashVSRPipeline._tile`)."""

    settings: StreamSettings
    size: tuple[int, int]
    content: tuple[int, int]
    progress: Progress | None
    streams: list[TileStream] = dataclasses.field(default_factory=list)
    weights: BlendWeights | None = None


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

    @torch.no_grad()
    def upscale(self, chunks: Iterable[torch.Tensor], scale: int, settings: StreamSettings | None = None, *,
                noise: NoiseSource | None = None, progress: Progress | None = None) -> Iterator[torch.Tensor]:
        """Upscale RGB frames [T, h, w, 3] (0..1, any chunking) to [T, scale*h, scale*w, 3] (0..1).

        Exactly as many frames come out as go in, each aligned with its input.
        """
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

        for out in self.stream(lq_frames(), (height, width), settings, noise=noise, progress=progress):
            yield out.add(1).div(2).clamp(0, 1).permute(0, 2, 3, 1).to("cpu", torch.float32)

    @torch.no_grad()
    def stream(self, lq_chunks: Iterable[torch.Tensor], content_size: tuple[int, int] | None = None,
               settings: StreamSettings | None = None, *, noise: NoiseSource | None = None,
               progress: Progress | None = None) -> Iterator[torch.Tensor]:
        """Run the model on LQ frames [T, 3, H, W] in -1..1 already at the output size.

        H and W must be multiples of 128 (pad first). The output [T, 3, h, w] is cropped
        to `content_size` (h, w) (default: all of H x W) before the colour fix, and holds
        exactly as many frames as came in; it is in -1..1 after a colour fix, and in the
        decoder's range (soft-clamped to about +-3) with colour fix "none". `noise`
        defaults to `SeededNoise(seed)`.
        """
        settings = settings or StreamSettings()
        settings.validate()
        window = FrameWindow(lq_chunks)
        window.fill(1)
        if window.total == 0:
            return
        first = window.get(0, 1)
        padded_h, padded_w = int(first.shape[-2]), int(first.shape[-1])
        if padded_h % SIZE_MULTIPLE or padded_w % SIZE_MULTIPLE:
            raise ValueError(f"model-size frames must be multiples of {SIZE_MULTIPLE}, got {padded_w}x{padded_h}")
        noise = noise or SeededNoise(settings.seed, self.dit.in_dim)
        run = _Run(settings, (padded_h, padded_w), content_size or (padded_h, padded_w), progress)
        tiny = settings.mode == "tiny"
        kept_lq: list[torch.Tensor] = []
        emitted = 0
        for index in itertools.count():
            plan = plan_chunk(index)
            window.fill(plan.output_start + 1)
            # Once the clip's end is known (reading up to this chunk's first output settles whether
            # it still has frames), it takes chunk_count chunks; before that, every chunk is needed.
            if window.total is not None and index >= chunk_count(window.total):
                break
            if progress is not None:
                progress.check_cancel()
            inputs = _ChunkInputs(window.get(plan.lq_start, plan.lq_stop), window.get(0, 1) if index == 0 else None,
                                  window.get(plan.output_start, plan.output_stop),
                                  noise(plan.latent_start, plan.latent_count, padded_h // 8, padded_w // 8))
            frames = self._first_chunk(run, plan, inputs) if index == 0 else self._chunk(run, plan, inputs)
            window.release_before(plan.output_stop)
            if frames is None:
                kept_lq.append(inputs.cond)
                continue
            # Reading this chunk's look-ahead settled whether the clip ends inside its outputs.
            keep = frames.shape[0] if window.total is None else min(frames.shape[0], window.total - emitted)
            yield from self._finish(frames, inputs.cond, keep, run)
            emitted += keep
        if tiny and kept_lq:
            cond = torch.cat(kept_lq, dim=0)
            kept_lq.clear()
            blender = TileBlender(run.weights, cond.shape[0], 3)
            for stream in run.streams:
                stream.unpark(self.device)
                self._decode(stream, cond, blender)
                stream.park()
            yield from self._finish(blender.frames(), cond, window.total, run)

    def _first_chunk(self, run: _Run, plan: ChunkPlan, inputs: _ChunkInputs) -> torch.Tensor | None:
        """Chunk 0 on the tiles of `settings.tile_size`; out of memory, on ever smaller tiles
        (`tiling.smaller_tile`), which the rest of the stream keeps. Later chunks need less memory."""
        settings = run.settings
        tile_size = settings.tile_size
        minimum = max(SIZE_MULTIPLE, round_up(2 * settings.tile_overlap, SIZE_MULTIPLE))
        while True:
            self._tile(run, tile_size)
            try:
                return self._chunk(run, plan, inputs)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                smaller = smaller_tile(tile_size, max(run.size), minimum, SIZE_MULTIPLE)
                if smaller is None:
                    raise
            run.streams, run.weights = [], None
            free_cached_memory(self.device)
            logger.warning("FlashVSR ran out of memory on %s; continuing with %d px tiles",
                           f"{tile_size} px tiles" if tile_size else "whole frames", smaller)
            tile_size = smaller

    def _chunk(self, run: _Run, plan: ChunkPlan, inputs: _ChunkInputs) -> torch.Tensor | None:
        """One chunk on every tile; the blended frames [T, 3, H, W], or None in Tiny mode (which
        decodes at the end)."""
        blender = None if run.settings.mode == "tiny" else TileBlender(run.weights, inputs.cond.shape[0], 3)
        for stream in run.streams:
            stream.unpark(self.device)
            self._denoise(stream, plan, inputs)
            if blender is not None:
                self._decode(stream, inputs.cond, blender)
            stream.park()
        return None if blender is None else blender.frames()

    def _tile(self, run: _Run, tile_size: int) -> None:
        """Open one stream per tile of `tile_size` (0: the whole frame) for `run`."""
        tiles = plan_tiles(*run.size, tile_size, run.settings.tile_overlap)
        run.streams = self._open_streams(tiles, run.settings)
        run.weights = BlendWeights(tiles, self.device)

    def _open_streams(self, tiles: list[Tile], settings: StreamSettings) -> list[TileStream]:
        """One stream per tile; idle tiles wait in RAM when there are several on an accelerator."""
        parking = self.park_tiles if self.park_tiles is not None else self.device.type != "cpu"
        park = torch.device("cpu") if len(tiles) > 1 and parking else None
        streams = []
        for tile in tiles:
            sparse = SparseSettings.from_ratios(tile.height, tile.width, settings.sparse_ratio, settings.kv_ratio,
                                                settings.local_range, settings.topk_ratio)
            context = StreamContext(self.time, self.prompt, sparse, self.attention_backend)
            streams.append(TileStream(tile, context, park))
        return streams

    def _denoise(self, stream: TileStream, plan: ChunkPlan, inputs: _ChunkInputs) -> None:
        """One chunk of one tile: LQ tokens, the DiT's one step; the denoised latents wait in the stream."""
        device = self.device

        def as_video(frames: torch.Tensor) -> torch.Tensor:
            return stream.crop(frames).to(device).permute(1, 0, 2, 3)[None]

        if inputs.warm_up is not None:
            self.lq_proj.stream(as_video(inputs.warm_up), stream.projector_state)
        tokens = self.lq_proj.stream(as_video(inputs.lq), stream.projector_state)
        noisy = stream.crop_latents(inputs.noise).to(device)
        prediction, stream.caches = self.dit.forward_chunk(noisy, tokens, stream.caches, plan.latent_start,
                                                           stream.context)
        stream.latents.append(noisy.float() - prediction.float())

    def _decode(self, stream: TileStream, cond: torch.Tensor, blender: TileBlender) -> None:
        """Decode a tile's pending latents with its LQ frames as condition into the blend."""
        latents = torch.cat(stream.latents, dim=2)
        stream.latents.clear()
        tile_cond = stream.crop(cond).to(self.device).permute(1, 0, 2, 3)[None]
        video = self.decoder.decode(latents, tile_cond, stream.decoder_state)
        blender.add(stream.tile, video[0].transpose(0, 1))

    def _finish(self, frames: torch.Tensor, cond: torch.Tensor, keep: int, run: _Run) -> Iterator[torch.Tensor]:
        """Crop the blended frames [T, 3, H, W] to the content, colour-fix them against the LQ
        frames, and yield the first `keep` in pieces of `out_chunk_frames`."""
        height, width = run.content
        frames = frames[..., :height, :width]
        cond = cond[..., :height, :width].to(frames.device)
        step = max(1, run.settings.out_chunk_frames)
        for start in range(0, keep, step):
            stop = min(keep, start + step)
            yield apply_color_fix(frames[start:stop], cond[start:stop].float(), run.settings.color_fix)
            if run.progress is not None:
                run.progress.advance(stop - start)
