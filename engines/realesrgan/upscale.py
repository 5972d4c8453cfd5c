"""Real-ESRGAN on streaming clips: the clip stage used by the nodes and the CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..clip import Clip, chunk_frames_for, rechunk
from ..device import resolve_device
from ..errors import InputError
from ..progress import Progress, open_progress
from .backend import choose_backend
from .inference import MAX_BATCH, Upscaler, network_precision, output_size
from .loading import RealESRGANModel


def upscale_clip(clip: Clip, model: RealESRGANModel, *, scale: float | None = None, tile: int = 0,
                 overlap: int | None = None, precision: str = "auto", device: str | torch.device | None = None,
                 batch: int | None = None,
                 progress_factory: Callable[[int | None, str], Progress] | None = None,
                 cpu_backend: str = "auto") -> Clip:
    """A lazy clip upscaled by `model`; `scale` (default: the model's) resizes the model's output.

    `cpu_backend` picks how fp32 CPU inference runs (`backend.CPU_BACKENDS`): by default with
    vsrkit's native kernel where a C++ compiler is found, else with PyTorch.

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
    target_device = resolve_device(device)
    choose_backend(model.net, target_device, network_precision(precision, target_device), cpu_backend)
    in_batch = batch or max(1, min(MAX_BATCH, chunk_frames_for(out_w, out_h, info.channels)))
    out_chunk = chunk_frames_for(out_w, out_h, info.channels)

    def stage(chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        upscaler = Upscaler(model, scale=target, device=device, precision=precision, tile=tile, overlap=overlap,
                            batch=batch, cpu_backend=cpu_backend, bit_depth=info.bit_depth)
        with open_progress(progress_factory, info.frame_count or None, "Real-ESRGAN") as bar:

            def batches() -> Iterator[torch.Tensor]:
                for batch_frames in rechunk(chunks, in_batch):
                    bar.check_cancel()
                    yield batch_frames

            def outputs() -> Iterator[torch.Tensor]:
                for result in upscaler.stream(batches()):
                    bar.advance(result.shape[0])
                    yield result

            yield from rechunk(outputs(), out_chunk)

    return clip.then(stage, width=out_w, height=out_h)
