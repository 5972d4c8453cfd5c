"""Other optical flows for the stabiliser, for `bench/temporal.py --flows`: DIS with other
parameters, flows derived from DIS 'medium' (smoothed in space or along time), and variants of
the 'two-scale' flow the stage uses by default. Not a benchmark itself.

Each variant replaces the stage's `DenseFlow` for one run (`flow_in_stage`); the stage is
otherwise at its defaults. The flows see what the stage gives DIS: the input's luma resized to
the output's size, current frame first. The presets the stage offers ('medium', 'fast') are
measured through its settings instead (`bench/temporal.py --variants`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from vsrkit.engines.video import stabilize
from vsrkit.engines.video.flow import COARSE_SETTINGS, DETAILED_SETTINGS, DenseFlow, dis, flow_tensor, opencv


class _Flow:
    """A `DenseFlow` stand-in: `compute(current, previous)` gives an [H, W, 2] numpy flow."""

    def __init__(self, compute: Callable[[np.ndarray, np.ndarray], np.ndarray]):
        self._compute = compute

    def __call__(self, first: np.ndarray, second: np.ndarray) -> torch.Tensor:
        return flow_tensor(self._compute(first, second))


Factory = Callable[[tuple[int, int]], Any]


def dis_with(settings: dict[str, Any]) -> Factory:
    """DIS `medium` with these parameters changed (OpenCV setter names without 'set')."""
    def make(check_size: tuple[int, int]) -> _Flow:
        flow = dis("medium", settings)
        return _Flow(lambda a, b: flow.calc(a, b, None))
    return make


def smoothed(sigma: float) -> Factory:
    """DIS `medium`, then a Gaussian blur of the flow field (sigma in output pixels)."""
    def make(check_size: tuple[int, int]) -> _Flow:
        flow = dis()
        return _Flow(lambda a, b: opencv().GaussianBlur(flow.calc(a, b, None), (0, 0), sigma))
    return make


def along_time(share: float, tolerance: float) -> Factory:
    """DIS `medium`, pulled by up to `share` toward the previous frame's flow carried along it
    (constant velocity); the pull falls to 0 where the two differ by `tolerance` pixels."""
    def make(check_size: tuple[int, int]) -> _Flow:
        cv2, medium, last = opencv(), dis(), [None]

        def compute(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            flow = medium.calc(a, b, None)
            if last[0] is not None:
                ys, xs = np.indices(flow.shape[:2], dtype=np.float32)
                carried = cv2.remap(last[0], xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)
                change = carried - flow
                size = np.sqrt((change ** 2).sum(-1, keepdims=True))
                flow = flow + share * np.clip(1 - size / tolerance, 0, 1) * change
            last[0] = flow
            return flow
        return _Flow(compute)
    return make


class _CoarseWhereRough(DenseFlow):
    """'two-scale', taking the coarse flow only where the detailed one is also rough: its spread
    around its own 3x3 mean on the check grid above `roughness` input pixels (fully at twice that)."""

    roughness = 0.03

    def _coarse_share(self, first: np.ndarray, second: np.ndarray, coarse: np.ndarray,
                      detailed: np.ndarray) -> np.ndarray:
        cv2 = opencv()
        keep = super()._coarse_share(first, second, coarse, detailed)
        height, width = first.shape
        small_height, small_width = self._check_size
        small = cv2.resize(detailed, (small_width, small_height), interpolation=cv2.INTER_AREA)
        small *= np.array([small_width / width, small_height / height], dtype=np.float32)
        spread = np.sqrt(cv2.blur(((small - cv2.blur(small, (3, 3))) ** 2).sum(-1), (3, 3)))
        rough = np.clip(spread / self.roughness - 1, 0, 1).astype(np.float32)
        return keep * cv2.resize(rough, (width, height), interpolation=cv2.INTER_LINEAR)


class _CoarseAtEveryScale(DenseFlow):
    """'two-scale' as before the coarse flow was limited to outputs 4x the input: both flows run at
    any scale (at x2 the coarse one is matched on a grid half the input's)."""

    def _coarse_fits(self, shape: tuple[int, ...]) -> bool:
        return self._check_size is not None


FLOW_VARIANTS: dict[str, Factory] = {
    "coarse DIS alone (finest scale 2, variational 10)": dis_with(COARSE_SETTINGS),
    "detailed DIS alone (the two-scale flow's other half)": dis_with(DETAILED_SETTINGS),
    "DIS medium, variational alpha 40, delta 2": dis_with({"VariationalRefinementAlpha": 40,
                                                          "VariationalRefinementDelta": 2}),
    "DIS medium, smoothed (sigma 8 px)": smoothed(8.0),
    "DIS medium, along time (0.7, 1 px)": along_time(0.7, 1.0),
    "two-scale, coarse only where the detailed flow is rough": lambda size: _CoarseWhereRough("two-scale", size),
    "two-scale, the coarse flow below 4x too": lambda size: _CoarseAtEveryScale("two-scale", size),
}


@contextlib.contextmanager
def flow_in_stage(make: Factory) -> Iterator[None]:
    """Within this block, the stabiliser computes its flow with `make(check_size)`."""
    original = stabilize.DenseFlow
    stabilize.DenseFlow = lambda preset="two-scale", check_size=None: make(check_size)
    try:
        yield
    finally:
        stabilize.DenseFlow = original
