"""Scene cuts, found streaming with libavfilter's scdet, and a chunk stream split into its shots.

Stages that carry state from frame to frame (the temporal stabiliser, FlashVSR's attention
cache and decoder, the temporal denoisers) would carry the last shot into the next one across
a cut. They look for cuts on the low-resolution frames they receive and start fresh at each,
so every shot comes out as if it had been processed alone.

scdet scores each frame against the previous one (0-100: how much of the picture changed,
less the change the frame before already had) and marks a cut where the score reaches the
threshold. It decides on each frame as it arrives, so detection adds no delay.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction

import av
import numpy as np
import torch

from ..clip import Clip
from .filters import LAYOUT_8, FilterRunner, Param, make_step, time_base_for, to_ints

DEFAULT_SCENE_THRESHOLD = 10.0
"""scdet's own default."""
SCENE_THRESHOLD = Param("scene_threshold", float, 0.0, 100.0,
                        help="scdet score that marks a cut (0 turns cut detection off)")


class SceneDetector:
    """scdet over a stream of float RGB chunks: for each frame, whether a new shot starts there.

    The first frame of the stream is never a cut. `threshold` 0 turns detection off.
    """

    def __init__(self, threshold: float, width: int, height: int, fps: Fraction | None = None):
        self.threshold = SCENE_THRESHOLD.check(threshold, "scene detection")
        self._runner = None
        if self.threshold > 0:
            step = make_step("scdet", {"threshold": self.threshold}, owner="scene detection")
            self._runner = FilterRunner([step], width, height, "gbrp", time_base_for(fps))
        self._frames = 0

    def __call__(self, chunk: torch.Tensor) -> list[bool]:
        """Cut flags for the frames of `chunk` [T, H, W, C], in order."""
        count = int(chunk.shape[0])
        if self._runner is None:
            self._frames += count
            return [False] * count
        levels = to_ints(chunk[..., :3].float(), LAYOUT_8)
        flags = []
        for frame in levels:
            out = self._runner.push(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="gbrp"))
            if len(out) != 1:
                raise RuntimeError(f"scdet returned {len(out)} frames for one; it is expected to pass each through")
            flags.append(self._frames > 0 and "lavfi.scd.time" in out[0].metadata)
            self._frames += 1
        return flags


def detector_for(clip: Clip, threshold: float) -> SceneDetector:
    """A detector for the frames of `clip`."""
    return SceneDetector(threshold, clip.info.width, clip.info.height, clip.info.fps)


def scene_cuts(clip: Clip, threshold: float = DEFAULT_SCENE_THRESHOLD) -> list[int]:
    """Indices of the frames of `clip` where a new shot starts (a pass over the clip, streaming)."""
    detector = detector_for(clip, threshold)
    cuts: list[int] = []
    index = 0
    for chunk in clip.chunks():
        cuts.extend(index + offset for offset, cut in enumerate(detector(chunk)) if cut)
        index += int(chunk.shape[0])
    return cuts


class _Shots:
    """The shared state behind `split_shots`: the chunk not yet handed out and its cut flags."""

    def __init__(self, chunks: Iterable[torch.Tensor], detector: SceneDetector | None):
        self._source = iter(chunks)
        self._detector = detector
        self._pending: torch.Tensor | None = None
        self._flags: list[bool] = []

    def _pull(self) -> bool:
        while self._pending is None:
            chunk = next(self._source, None)
            if chunk is None:
                return False
            if chunk.shape[0]:
                self._pending = chunk
                self._flags = self._detector(chunk) if self._detector else [False] * int(chunk.shape[0])
        return True

    def shots(self) -> Iterator[Iterator[torch.Tensor]]:
        while self._pull():
            shot = self._shot()
            yield shot
            for _ in shot:  # what the consumer left of this shot
                pass

    def _shot(self) -> Iterator[torch.Tensor]:
        first = True
        while self._pull():
            cut = next((i for i in range(1 if first else 0, len(self._flags)) if self._flags[i]), None)
            first = False
            chunk = self._pending
            if cut is None:
                self._pending = None
                yield chunk
                continue
            if cut:
                yield chunk[:cut]
            self._pending, self._flags = chunk[cut:], self._flags[cut:]
            return


def split_shots(chunks: Iterable[torch.Tensor], detector: SceneDetector | None) -> Iterator[Iterator[torch.Tensor]]:
    """The chunk stream as a stream of shots, each an iterator over that shot's frames in chunks.

    Chunks are split at the cuts `detector` finds (None: one shot). Read each shot before asking
    for the next; what is left of a shot is skipped. Nothing is read ahead of the frames handed out.
    """
    return _Shots(chunks, detector).shots()
