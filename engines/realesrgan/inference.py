"""Running a Real-ESRGAN network on frame batches: precision, tiling, resizing, memory.

Tiles (`engines.tiling`) carry `overlap` input pixels of context on every side. Each tile's
result is used only over its own core plus a feather band of `overlap // 4` pixels, where it is
cross-faded with the neighbour's. For SRVGGNetCompact, whose
receptive field is one pixel per convolution, an overlap of at least `radius * 4 / 3` makes the
tiled result equal to the untiled one (up to float rounding); the automatic overlap is chosen so.
For RRDBNet the receptive field is far wider, but its influence decays fast; 32 pixels (ComfyUI's
default) keeps tiled and untiled within one 8-bit level on real footage.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import torch
from torch.nn import functional as F

from ..device import resolve_device, resolve_precision
from ..errors import InputError
from ..tiling import (
    BlendWeights,
    Tile,
    TileBlender,
    core_spans,
    free_cached_memory,
    grid,
    is_out_of_memory,
    pad_to_multiple,
    smaller_tile,
)
from .backend import choose_backend
from .loading import RealESRGANModel

MIN_TILE = 32
CPU_BUDGET_BYTES = 1536 * 1024 * 1024
MAX_BATCH = 16


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Exact output size: each side times `scale`, rounded (so x2, x3, x4 give exactly k x the input)."""
    return round(height * scale), round(width * scale)


def network_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype a Real-ESRGAN network runs in (`engines.device.resolve_precision`; "auto" is fp16
    on CUDA). PyTorch has no fp16 convolutions on the CPU, so fp16 there is refused."""
    dtype = resolve_precision(precision, device, torch.float16)
    if dtype == torch.float16 and device.type == "cpu":
        raise InputError("precision fp16 is not supported on the CPU; use fp32 (default) or bf16")
    return dtype


def auto_overlap(model: RealESRGANModel) -> int:
    radius = model.context_radius
    if radius is None:
        return 32
    overlap = math.ceil(radius * 4 / 3)
    return (overlap + 3) // 4 * 4


def bytes_per_input_pixel(model: RealESRGANModel, dtype: torch.dtype) -> int:
    """Rough peak working memory of one input pixel through the network (for tile and batch sizing)."""
    elem = torch.tensor([], dtype=dtype).element_size()
    net = model.net
    feat = getattr(net, "num_feat", 64)
    if model.arch == "SRVGGNetCompact":
        channels = 3 * feat + 2 * 3 * model.net_scale ** 2
    else:
        lr_channels = 6 * feat
        unshuffle = getattr(net, "unshuffle", 1)
        hr_pixels = (4 / unshuffle) ** 2
        channels = lr_channels / unshuffle ** 2 + 3 * feat * hr_pixels
    return int(channels * elem) + 3 * 4 * int(model.net_scale ** 2)


@dataclasses.dataclass
class TilePlan:
    tile: int
    overlap: int
    batch: int


def plan_tiles(model: RealESRGANModel, height: int, width: int, frames: int, dtype: torch.dtype,
               device: torch.device, tile: int = 0, overlap: int | None = None, batch: int | None = None,
               budget_bytes: int | None = None) -> TilePlan:
    """Pick tile size (0 = whole frame) and batch so one step fits the memory budget; on the CPU the
    batch is one frame."""
    if overlap is None:
        overlap = auto_overlap(model)
    if budget_bytes is None:
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            budget_bytes = int(free * 0.6)
        else:
            budget_bytes = CPU_BUDGET_BYTES
    per_pixel = bytes_per_input_pixel(model, dtype)
    if tile == 0:
        frame_cost = height * width * per_pixel
        if frame_cost <= budget_bytes:
            fit = max(1, budget_bytes // max(1, frame_cost))
            # On the CPU a batch that one network call works through as a whole only adds memory
            # traffic (measured 2x slower per frame at 3).
            most = MAX_BATCH if device.type == "cuda" else 1
            return TilePlan(0, overlap, batch or int(min(most, fit, max(1, frames))))
        side = int(math.sqrt(budget_bytes / per_pixel)) - 2 * overlap
        tile = max(MIN_TILE, side // 16 * 16)
    elif tile < 0:
        tile = 0
    return TilePlan(tile, overlap, batch or 1)


def network_tiles(model: RealESRGANModel, height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles of at most `tile` input pixels over a padded height x width frame, read with `overlap`
    pixels of context (whole multiples of the network's size multiple) and kept over their core
    plus a cross-fade band of `overlap // 4` (`tiling.core_spans`)."""
    multiple = model.size_multiple
    context = overlap // multiple * multiple if multiple > 1 else overlap
    return grid(core_spans(height, tile, context, overlap // 4, multiple),
                core_spans(width, tile, context, overlap // 4, multiple))


def run_network(net: torch.nn.Module, x: torch.Tensor, weights: BlendWeights | None) -> torch.Tensor:
    """The network's output for NCHW `x` (padded to the network's size multiple): whole, or tile by
    tile blended with `weights` (`network_tiles` at the network's scale)."""
    if weights is None:
        return net(x)
    blender = TileBlender(weights, x.shape[0], x.shape[1])
    for tile in weights.tiles:
        blender.add(tile, net(tile.crop(x)))
    return blender.frames()


def resize_output(y: torch.Tensor, model: RealESRGANModel, out_height: int, out_width: int) -> torch.Tensor:
    """Bring the network output to the requested size.

    The model's own output resize (ncnn's bicubic Interp) is reproduced exactly when it gives the
    requested size; any other size uses antialiased bicubic (a proper low-pass for downscaling).
    """
    height, width = y.shape[-2:]
    if (height, width) == (out_height, out_width):
        return y
    if model.output_scale and (int(height * model.output_scale), int(width * model.output_scale)) == (
            out_height, out_width):
        return F.interpolate(y.float(), scale_factor=model.output_scale, mode=model.output_resample,
                             align_corners=False, recompute_scale_factor=False)
    return F.interpolate(y.float(), size=(out_height, out_width), mode="bicubic", align_corners=False,
                         antialias=out_height < height or out_width < width)


class Upscaler:
    """Upscales [B, H, W, C] frame batches with one model on one device.

    Output is exactly `round(H * scale)` x `round(W * scale)`. Batches and tiles shrink on
    out-of-memory and stay shrunk for the following batches.
    """

    def __init__(self, model: RealESRGANModel, *, scale: float | None = None, device: str | torch.device | None = None,
                 precision: str = "auto", tile: int = 0, overlap: int | None = None, batch: int | None = None,
                 budget_bytes: int | None = None, cpu_backend: str = "auto", bit_depth: int = 8):
        self.model = model
        # Output values are rounded to the source's levels (255 for 8-bit, 1023 for 10-bit...), so a
        # deep source keeps its precision and the CPU and GPU paths give the same values.
        self.levels = (1 << max(8, bit_depth)) - 1
        self.device = resolve_device(device)
        self.dtype = network_precision(precision, self.device)
        self.scale = float(scale) if scale else model.scale
        if self.scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.tile = tile
        self.overlap = overlap
        self.batch = batch
        self.budget_bytes = budget_bytes
        self.plan: TilePlan | None = None
        self._weights: tuple[tuple[int, ...], BlendWeights] | None = None
        self.backend = choose_backend(model.net, self.device, self.dtype, cpu_backend)
        self.net = model.prepared(self.device, self.dtype, self.backend)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return output_size(height, width, self.scale)

    def _plan(self, height: int, width: int, frames: int) -> TilePlan:
        if self.plan is None:
            self.plan = plan_tiles(self.model, height, width, frames, self.dtype, self.device, self.tile,
                                   self.overlap, self.batch, self.budget_bytes)
        return self.plan

    def _shrink(self, height: int, width: int) -> None:
        """Halve the batch, then the tile (starting from half the frame's longer side)."""
        plan = self.plan
        assert plan is not None
        if plan.batch > 1:
            plan.batch = max(1, plan.batch // 2)
            return
        tile = smaller_tile(plan.tile, max(height, width), MIN_TILE)
        if tile is None:
            raise MemoryError(f"out of memory even with one frame and {MIN_TILE}-pixel tiles; free memory "
                              "on the device or use a smaller model")
        plan.tile = tile

    def _blend_weights(self, height: int, width: int, plan: TilePlan) -> BlendWeights | None:
        """The tiles' blend weights for a padded height x width frame (None when untiled), kept while
        the frame size and plan stay the same."""
        if plan.tile <= 0 or (height <= plan.tile and width <= plan.tile):
            return None
        key = (height, width, plan.tile, plan.overlap)
        if self._weights is None or self._weights[0] != key:
            tiles = network_tiles(self.model, height, width, plan.tile, plan.overlap)
            self._weights = (key, BlendWeights(tiles, self.device, self.model.net_scale))
        return self._weights[1]

    @torch.inference_mode()
    def process_device(self, frames: torch.Tensor) -> torch.Tensor:
        """NCHW RGB in 0..1 on the device -> NCHW float at the output size, clamped to 0..1."""
        height, width = frames.shape[-2:]
        out_h, out_w = self.output_size(height, width)
        x = pad_to_multiple(frames.to(self.dtype), self.model.size_multiple)
        # The PyTorch module is fastest channels-last; the native kernel takes NCHW.
        x = x.contiguous(memory_format=torch.channels_last if self.backend == "pytorch" else torch.contiguous_format)
        plan = self._plan(height, width, frames.shape[0])
        while True:
            try:
                weights = self._blend_weights(x.shape[-2], x.shape[-1], plan)
                pieces = [run_network(self.net, x[i:i + plan.batch], weights) for i in range(0, x.shape[0], plan.batch)]
                break
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                pieces = []
                free_cached_memory(self.device)
                self._shrink(height, width)
        y = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        s = self.model.net_scale
        y = y[:, :, :height * s, :width * s]
        return resize_output(y, self.model, out_h, out_w).clamp_(0, 1)

    def _alpha(self, alpha: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
        return F.interpolate(alpha, size=(out_h, out_w), mode="bicubic", align_corners=False,
                             antialias=out_h < alpha.shape[-2]).clamp_(0, 1)

    def to_uint8(self, y: torch.Tensor) -> torch.Tensor:
        return y.mul(255).round_().to(torch.uint8)

    def to_levels(self, y: torch.Tensor) -> torch.Tensor:
        """Values in 0..1 as integer levels in the smallest type that holds them, for the copy back."""
        if self.levels == 255:
            return self.to_uint8(y)
        levels = y.mul(self.levels).round_()
        return levels.to(torch.int16) if self.levels < 1 << 15 else levels

    def upscale(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] float 0..1 (C = 3 or 4) on the CPU -> [B, H', W', C] float32 on the CPU.

        Values are rounded to the source's levels (`bit_depth`) on the device before the copy back.
        """
        return next(self.stream(iter([frames])))

    def stream(self, batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Upscale a stream of [B, H, W, C] batches; on CUDA the next batch's upload and the previous
        batch's download overlap the current batch's compute."""
        if self.device.type != "cuda":
            for frames in batches:
                yield self._finish(self._compute(frames.to(self.device)))
            return
        copy_stream = torch.cuda.Stream(self.device)
        compute_stream = torch.cuda.current_stream(self.device)
        pending: tuple[torch.Tensor, torch.cuda.Event] | None = None
        upload = self._upload(next(batches, None), copy_stream)
        while upload is not None:
            frames_dev, ready = upload
            compute_stream.wait_event(ready)
            frames_dev.record_stream(compute_stream)
            result = self._compute(frames_dev)
            upload = self._upload(next(batches, None), copy_stream)
            done = torch.cuda.Event()
            done.record(compute_stream)
            host = torch.empty(result.shape, dtype=result.dtype, pin_memory=True)
            with torch.cuda.stream(copy_stream):
                copy_stream.wait_event(done)
                host.copy_(result, non_blocking=True)
                result.record_stream(copy_stream)
                copied = torch.cuda.Event()
                copied.record(copy_stream)
            if pending is not None:
                yield self._host_float(*pending)
            pending = (host, copied)
        if pending is not None:
            yield self._host_float(*pending)

    def _upload(self, frames: torch.Tensor | None, stream: torch.cuda.Stream):
        if frames is None:
            return None
        pinned = frames.pin_memory()
        with torch.cuda.stream(stream):
            on_device = pinned.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(stream)
        return on_device, ready

    def _host_float(self, host: torch.Tensor, copied: torch.cuda.Event) -> torch.Tensor:
        copied.synchronize()
        return host.float().div_(self.levels)

    @torch.inference_mode()
    def _compute(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] on the device -> [B, H', W', C] integer levels (GPU) or float (CPU) on the device."""
        nchw = frames.permute(0, 3, 1, 2).float()
        rgb = self.process_device(nchw[:, :3]).float()
        if nchw.shape[1] == 4:
            rgb = torch.cat([rgb, self._alpha(nchw[:, 3:], *rgb.shape[-2:])], dim=1)
        out = rgb.permute(0, 2, 3, 1)
        if self.device.type == "cuda":
            return self.to_levels(out).contiguous()
        return out.mul(self.levels).round_().div_(self.levels).contiguous()

    @staticmethod
    def _finish(result: torch.Tensor) -> torch.Tensor:
        return result.cpu()
