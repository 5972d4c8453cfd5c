"""Real-ESRGAN on streaming clips: the clip-level entry points used by the nodes and the CLI."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..clip import Clip, chunk_frames_for, rechunk
from ..errors import InputError
from ..progress import ConsoleProgress, Progress
from .inference import Upscaler, default_device, resolve_precision
from .models import DEFAULT_MODEL_FOR_SCALE, RealESRGANModel, load_model, standalone_model_dir


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Exact output size: each side times `scale`, rounded (so x2, x3, x4 give exactly k x the input)."""
    return round(height * scale), round(width * scale)


def upscale_clip(clip: Clip, model: RealESRGANModel, *, scale: float | None = None, tile: int = 0,
                 overlap: int | None = None, precision: str = "auto", device: str | torch.device | None = None,
                 batch: int | None = None, progress: Progress | None = None,
                 progress_factory: Callable[[int | None, str], Progress] | None = None,
                 cpu_kernels: bool = True) -> Clip:
    """A lazy clip upscaled by `model`; `scale` (default: the model's) resizes the model's output.

    `cpu_kernels=False` runs fp32 CPU inference with PyTorch's default algorithms only (see
    `cpu_kernels.py`).

    The network is moved to the device when the clip is pulled, not before. Frames go through it
    in batches; output chunks are regrouped so each stays within the clip's chunk memory budget
    at the new size. `progress_factory(total, desc)` opens a progress bar for each pass.
    """
    target = float(scale) if scale else model.scale
    if target <= 0:
        raise InputError(f"scale must be positive, got {scale}")
    info = clip.info
    out_h, out_w = output_size(info.height, info.width, target)
    if out_h < 1 or out_w < 1:
        raise InputError(f"scale {scale} makes {info.width}x{info.height} frames empty")
    target_device = torch.device(device) if device else default_device()
    if target_device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {target_device} was asked for, but this PyTorch has no CUDA device; use cpu")
    resolve_precision(precision, target_device)
    in_batch = max(1, min(8, chunk_frames_for(out_w, out_h, info.channels)))
    out_chunk = chunk_frames_for(out_w, out_h, info.channels)

    def stage(chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        upscaler = Upscaler(model, scale=target, device=device, precision=precision, tile=tile, overlap=overlap,
                            batch=batch, cpu_kernels=cpu_kernels)
        bar = progress_factory(info.frame_count or None, "Real-ESRGAN") if progress_factory else progress

        def batches() -> Iterator[torch.Tensor]:
            for batch_frames in rechunk(chunks, in_batch):
                if bar is not None:
                    bar.check_cancel()
                yield batch_frames

        def outputs() -> Iterator[torch.Tensor]:
            for result in upscaler.stream(batches()):
                if bar is not None:
                    bar.advance(result.shape[0])
                yield result

        try:
            yield from rechunk(outputs(), out_chunk)
        finally:
            if progress_factory and bar is not None:
                bar.close()

    return clip.then(stage, width=out_w, height=out_h)


def upscale_images(images: torch.Tensor, model: RealESRGANModel, **options) -> torch.Tensor:
    """An IMAGE batch [B, H, W, C] upscaled, batch by batch (for the nodes' IMAGE path)."""
    clip = Clip.from_tensor(images, fps=1)
    return upscale_clip(clip, model, **options).to_tensor()


def _console_factory(quiet: bool):
    def factory(total: int | None, desc: str, unit: str) -> Progress:
        if unit == "bytes":
            return _ByteProgress(total, desc, quiet=quiet)
        return ConsoleProgress(total, desc, unit=unit, quiet=quiet)

    return factory


class _ByteProgress(ConsoleProgress):
    """A console bar counting bytes, shown in MB."""

    def __init__(self, total: int | None, desc: str, quiet: bool = False):
        super().__init__(None if total is None else max(1, total // 2**20), desc, unit="MB", quiet=quiet)
        self._bytes = 0

    def advance(self, n: int = 1) -> None:
        self._bytes += n
        self.done = self._bytes // 2**20
        self._report()

    def set_total(self, total: int | None) -> None:
        super().set_total(None if total is None else max(1, total // 2**20))


def upscale_clip_cli(clip: Clip, args: argparse.Namespace) -> Clip:
    """`vsrkit upscale --engine realesrgan`: resolve the model (default realesr-animevideov3 at --scale),
    say which one and where it came from, and return the lazily upscaled clip."""
    quiet = bool(getattr(args, "quiet", False))
    scale = int(args.scale) if getattr(args, "scale", None) else 2
    name = args.model
    if not name:
        if scale not in DEFAULT_MODEL_FOR_SCALE:
            raise InputError(f"--scale {scale}: the default model realesr-animevideov3 comes in x2, x3 and x4; "
                             "choose one of those or pass --model")
        name = DEFAULT_MODEL_FOR_SCALE[scale]
    search_dirs = [Path(d) for d in getattr(args, "model_dirs", None) or [standalone_model_dir()]]
    model = load_model(name, search_dirs, progress=_console_factory(quiet))
    if not quiet:
        print(f"model: {model.describe()}\n  source: {model.origin}", file=sys.stderr)
    device = getattr(args, "device", None)
    if str(device or default_device().type).startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    tile = int(getattr(args, "tile", 0) or 0)
    return upscale_clip(clip, model, scale=scale, tile=tile, precision=getattr(args, "precision", "auto") or "auto",
                        device=device)
