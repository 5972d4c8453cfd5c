"""FlashVSR's streaming chunk plan: which input frames each chunk reads and which it outputs.

The first chunk covers 6 latent frames (21 output frames), every later chunk 2 latent
frames (8 output frames). Chunk c reads its input 4 frames ahead of the frames it outputs,
so a clip of N frames is padded with copies of its last frame to F = 8k + 1 frames
(F - 4 >= N, F >= 25); the outputs are trimmed back to exactly N, each aligned with its
input frame. `FrameWindow` gives a chunk its frames from a stream of frame chunks while
holding only what later chunks still need.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch

from .lq_proj import FRAMES_PER_LATENT

FIRST_CHUNK_LATENTS = 6
NEXT_CHUNK_LATENTS = 2
LOOKAHEAD_FRAMES = 4
MIN_PADDED_FRAMES = 25


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
    """How many chunks a clip of `frames` frames takes."""
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
    """The frames chunk `index` reads and writes."""
    if index == 0:
        frames = FIRST_CHUNK_LATENTS * FRAMES_PER_LATENT
        return ChunkPlan(0, 0, FIRST_CHUNK_LATENTS, 1, frames + 1, 0, frames - 3)
    first_latent = FIRST_CHUNK_LATENTS - 2 + NEXT_CHUNK_LATENTS * index
    lq_start = FRAMES_PER_LATENT * first_latent + 1
    lq_stop = lq_start + NEXT_CHUNK_LATENTS * FRAMES_PER_LATENT
    return ChunkPlan(index, first_latent, NEXT_CHUNK_LATENTS, lq_start, lq_stop,
                     lq_start - LOOKAHEAD_FRAMES, lq_stop - LOOKAHEAD_FRAMES)


class FrameWindow:
    """Indexed access to a stream of frame chunks, padded past its end with the last frame.

    Holds only the frames not yet released, so memory depends on the look-ahead, not on
    the clip's length. `total` is the clip's frame count once its end has been read.
    """

    def __init__(self, chunks: Iterable[torch.Tensor]):
        self._chunks = iter(chunks)
        self._frames: dict[int, torch.Tensor] = {}
        self._read = 0
        self.total: int | None = None

    def fill(self, stop: int) -> None:
        """Read until frame `stop - 1` is held or the clip has ended."""
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
        """Forget frames before `index` (the last frame read is kept for padding)."""
        keep_last = self._read - 1
        for key in [k for k in self._frames if k < index and k != keep_last]:
            del self._frames[key]
