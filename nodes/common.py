"""Small helpers shared by the upscale nodes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ..engines.clip import Clip, chunk_frames_for


def output_linked(prompt: Any, unique_id: Any, index: int) -> bool:
    """Whether output `index` of node `unique_id` feeds any node of the API `prompt`."""
    if not isinstance(prompt, dict) or unique_id is None:
        return False
    for node in prompt.values():
        inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
        for value in inputs.values():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(unique_id) \
                    and value[1] == index:
                return True
    return False


def in_memory_clip(like: Clip, frames: torch.Tensor) -> Clip:
    """A clip of already-computed frames that keeps `like`'s metadata (frame rate, audio, colour)."""
    step = chunk_frames_for(like.info.width, like.info.height, like.info.channels)

    def source() -> Iterator[torch.Tensor]:
        for start in range(0, frames.shape[0], step):
            yield frames[start:start + step]

    return Clip(like.info.replace(frame_count=int(frames.shape[0])), source)
