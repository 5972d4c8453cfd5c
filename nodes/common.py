"""Small helpers shared by the upscale nodes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..engines.clip import Clip, chunk_frames_for
from ..engines.errors import InputError
from ..engines.video.scenes import DEFAULT_SCENE_THRESHOLD
from . import host

IMAGE_OUTPUT_LIMIT = 16 * 2**30


def scene_threshold_input(restart: str) -> tuple[str, dict]:
    """The scene-cut widget of every node whose stage starts afresh at cuts; `restart` says what it does there."""
    return ("FLOAT", {"default": DEFAULT_SCENE_THRESHOLD, "min": 0.0, "max": 100.0, "step": 0.5,
                      "tooltip": f"scdet score (0-100) that marks a scene cut in the input; {restart} there. "
                                 "0: never."})


def upscale_outputs(result: Clip, images_input: bool, node: str) -> tuple[Clip, torch.Tensor]:
    """An upscale node's (clip, images) outputs.

    The IMAGE output is filled only when the input was an IMAGE batch. ComfyUI caches a node by
    its inputs, not by what its outputs feed, so filling it "only when connected" would hand a
    stale empty batch to an output connected after the first run; a clip goes to IMAGE through
    Clip to Images, with its own memory limit.
    """
    info = result.info
    if not images_input:
        return result, torch.zeros((0, info.height, info.width, info.channels))
    try:
        frames = result.to_tensor(max_bytes=IMAGE_OUTPUT_LIMIT)
    except MemoryError as exc:
        raise InputError(
            f"the upscaled frames as an IMAGE batch would exceed {IMAGE_OUTPUT_LIMIT // 2**30} GiB: feed {node} a "
            "clip and use its clip output (e.g. into Save Video), or take fewer frames") from exc
    return in_memory_clip(result, frames), frames


def in_memory_clip(like: Clip, frames: torch.Tensor) -> Clip:
    """A clip of already-computed frames that keeps `like`'s metadata (frame rate, audio, colour)."""
    step = chunk_frames_for(like.info.width, like.info.height, like.info.channels)

    def source() -> Iterator[torch.Tensor]:
        for start in range(0, frames.shape[0], step):
            yield frames[start:start + step]

    return Clip(like.info.replace(frame_count=int(frames.shape[0])), source)


def around_each_pull(clip: Clip, before: Callable[[], None], after: Callable[[], None] | None = None) -> Clip:
    """`clip`, calling `before()` each time it is pulled (the clip is lazy) and `after()` when that
    pass ends, finished, failed or abandoned."""

    def source() -> Iterator[torch.Tensor]:
        before()
        try:
            yield from clip.chunks()
        finally:
            if after is not None:
                after()

    return Clip(clip.info, source)


def on_device(clip: Clip, managed: host.ManagedModel, memory: int, offload_after_run: bool = False) -> Clip:
    """`clip` with `managed`'s module made resident on its device (with `memory` bytes of working
    memory kept free) before each pull, and offloaded after it when `offload_after_run`."""
    return around_each_pull(clip, lambda: managed.load(memory), managed.offload if offload_after_run else None)
