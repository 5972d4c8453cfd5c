"""Edges: luma and footprint means (the flicker measure and the blend use them too) and the
stabiliser's edge floor.

A GAN redraws an edge a little differently in every frame; the stabiliser's blend averages those
versions, and the average is softer than any one of them (on a slow shot of foliage with
realesrgan-x4plus, as soft as the ground truth, which is softer than the model draws). `EdgeFloor`
keeps the strongest edges at least `floor` times as crisp as the per-frame output's, by raising
the stabilised frame's fine band there: what it holds beyond its own means over the input's pixels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from .flow import LUMA_WEIGHTS, sample

EDGE_SHARE = 0.05  # the strongest edges: this share of the pixels of the upscaled input
GAIN_FADE_SHARE = 0.10  # the gain fades in over the next strongest, up to this share
MAX_GAIN = 2.0  # at most twice the fine band
GAIN_SMOOTHING = 0.3  # weight of a frame's own gain in the running gain
NEGLIGIBLE_GAIN = 0.005  # a running gain closer than this to 1 is 1: no raise
SAMPLES = 16_384  # inner pixels, drawn at random once per frame size, that the edges are picked from
BISECTION_STEPS = 8


def luma(frames: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] BT.601 luma of [N, 3, H, W] RGB (one pass per channel, no [N, 3, H, W] temporary)."""
    red, green, blue = LUMA_WEIGHTS
    return (frames[:, 0:1] * red).add_(frames[:, 1:2], alpha=green).add_(frames[:, 2:3], alpha=blue)


def footprint_mean(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, C, H, W] averaged over each pixel's footprint of a `size` grid (area resampling)."""
    height, width = frames.shape[-2:]
    if height % size[0] == 0 and width % size[1] == 0:  # the same, by a cheaper kernel
        return F.avg_pool2d(frames, (height // size[0], width // size[1]))
    return F.interpolate(frames, size=size, mode="area")


@dataclasses.dataclass(frozen=True)
class Edges:
    """What `EdgeFloor.pick` found in one guide: the guide, a sample of its strongest edges' pixels
    (flat indices), and the edge strengths from which the gain fades in and at which it is full."""

    guide: np.ndarray
    where: np.ndarray
    fade_from: int
    strongest: int

    def fade(self, strength: np.ndarray) -> np.ndarray:
        """The gain's share (0 to 1) for pixels of edge `strength` (`_strength`'s units)."""
        return np.clip((strength - self.fade_from) / max(self.strongest - self.fade_from, 1), 0.0, 1.0,
                       dtype=np.float32, casting="unsafe")


class EdgeFloor:
    """Raises a stabilised frame's fine band (the frame less its means over the input's pixels,
    resized back bilinearly) on the input's strongest edges, by one gain per frame, until their
    mean luma gradient is at least `floor` times the per-frame output's. The gain is smoothed over
    the frames of a shot so that it does not flicker itself. Edges are picked and the gain solved
    on a sample of pixels, in NumPy; only a raise touches the whole frame."""

    def __init__(self, floor: float, source_size: tuple[int, int]):
        self.floor = floor
        self.source_size = source_size
        self._gain: float | None = None
        self._samples: tuple[tuple[int, int], np.ndarray] | None = None  # (frame size, flat indices)

    def reset(self) -> None:
        """A new shot: forget the running gain."""
        self._gain = None

    def pick(self, guide: np.ndarray) -> Edges | None:
        """The edges of `guide`, the input upscaled to the output's size as 8-bit luma; None where
        it has none (or the floor is 0). NumPy alone: it can run beside a flow."""
        if self.floor == 0:
            return None
        samples = self._samples_for(guide.shape)
        if samples.size == 0:  # a frame under 3 pixels high or wide has no inner pixels
            return None
        strength = _strength(guide, samples)
        ranks = [min(strength.size - 1, round(strength.size * (1 - share))) for share in (GAIN_FADE_SHARE, EDGE_SHARE)]
        fade_from, strongest = (int(value) for value in np.partition(strength, ranks)[ranks])
        if strongest <= 0:
            return None
        return Edges(guide, samples[strength >= strongest], fade_from, strongest)

    def _samples_for(self, size: tuple[int, int]) -> np.ndarray:
        """Up to SAMPLES inner pixels of a frame of `size`, the same for every frame (flat indices)."""
        if self._samples is None or self._samples[0] != size:
            height, width = size
            rows, cols = np.mgrid[1:max(1, height - 1), 1:max(1, width - 1)]
            inner = (rows * width + cols).ravel()
            count = min(inner.size, SAMPLES)
            self._samples = (size, np.sort(np.random.default_rng(0).choice(inner, count, replace=False)))
        return self._samples[1]

    def __call__(self, edges: Edges | None, per_frame: torch.Tensor, blended: torch.Tensor) -> torch.Tensor:
        """`blended` [1, 3, H, W], its edges raised in place where needed. `edges` is what `pick`
        found in the input, `per_frame` the frame before stabilising."""
        if edges is None:
            return blended
        width = edges.guide.shape[1]
        where = edges.where
        around = np.concatenate([where + 1, where - 1, where + width, where - width])
        rows, cols = _pixels(around, width, blended.device)

        def slopes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Central differences at `where` from values at its four neighbours."""
            right, left, below, above = values.reshape(4, -1)
            return (right - left) / 2, (below - above) / 2

        target = self.floor * float(np.hypot(*slopes(_luma_at(per_frame, rows, cols))).mean())
        blended_luma = _luma_at(blended, rows, cols)
        coarse = _numpy(_bilinear_at(footprint_mean(luma(blended), self.source_size), rows, cols, edges.guide.shape))
        fine = blended_luma - coarse.ravel()
        gain = _solve_gain(slopes(blended_luma), slopes(fine * edges.fade(_strength(edges.guide, around))), target)
        running = gain if self._gain is None else self._gain + GAIN_SMOOTHING * (gain - self._gain)
        self._gain = running if running >= 1.0 + NEGLIGIBLE_GAIN else 1.0  # the smoothing ends at 1
        if self._gain > 1.0:
            self._raise(edges, blended)
        return blended

    def _raise(self, edges: Edges, blended: torch.Tensor) -> None:
        """Add the running gain less 1 times the fine band to `blended`, in place, where the fade
        is above 0."""
        height, width = edges.guide.shape
        strength = _full_strength(edges.guide).ravel()
        reached = np.flatnonzero(strength > edges.fade_from)
        rows, cols = _pixels(reached, width, blended.device)
        weight = torch.from_numpy(edges.fade(strength[reached])).to(blended.device, blended.dtype).mul_(self._gain - 1.0)
        values = blended[0, :, rows, cols]
        fine = values - _bilinear_at(footprint_mean(blended, self.source_size), rows, cols, (height, width))[0]
        blended[0, :, rows, cols] = values.add_(fine.mul_(weight)).clamp_(0.0, 1.0)


def _strength(guide: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Squared central differences (in 8-bit steps) of `guide` at flat pixel indices; 0 on the
    outer pixels."""
    values = guide.ravel()
    height, width = guide.shape
    rows, cols = np.divmod(flat, width)
    inner = (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)
    flat = np.where(inner, flat, width + 1)  # any inner pixel; its strength is dropped below
    dx = values[flat + 1].astype(np.int32) - values[flat - 1]
    dy = values[flat + width].astype(np.int32) - values[flat - width]
    return np.where(inner, dx * dx + dy * dy, 0)


def _full_strength(guide: np.ndarray) -> np.ndarray:
    """`_strength` at every pixel of `guide`, 0 on the outer ones."""
    grey = guide.astype(np.int16)
    strength = np.zeros(guide.shape, np.int32)
    dx = grey[1:-1, 2:] - grey[1:-1, :-2]
    dy = grey[2:, 1:-1] - grey[:-2, 1:-1]
    strength[1:-1, 1:-1] = np.square(dx, dtype=np.int32) + np.square(dy, dtype=np.int32)
    return strength


def _pixels(flat: np.ndarray, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) of flat pixel indices, as tensors on `device`."""
    rows, cols = np.divmod(flat, width)
    return torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)


def _bilinear_at(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[1, C, K]: `images` [1, C, h, w] resized bilinearly to `size` (as F.interpolate does,
    corners unaligned), read at the K pixels (rows, cols) only."""
    height, width = size
    grid = torch.stack([(2 * cols + 1) / width - 1, (2 * rows + 1) / height - 1], -1).to(images.dtype)
    return sample(images, grid.view(1, 1, -1, 2), "bilinear")[:, :, 0]


def _numpy(values: torch.Tensor) -> np.ndarray:
    return values.float().cpu().numpy()


def _luma_at(frames: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> np.ndarray:
    """The luma of [1, 3, H, W] at the pixels (rows, cols), in NumPy."""
    return _numpy(luma(frames[..., rows, cols][..., None]).flatten())


def _solve_gain(base: tuple[np.ndarray, np.ndarray], added: tuple[np.ndarray, np.ndarray], target: float) -> float:
    """The least gain g in [1, MAX_GAIN] for which the mean magnitude of base + (g - 1) added
    reaches `target` (bisection; the mean grows with g once it is past the target's side)."""
    def sharpness(gain: float) -> float:
        return float(np.hypot(base[0] + (gain - 1) * added[0], base[1] + (gain - 1) * added[1]).mean())

    low, high = 1.0, MAX_GAIN
    if sharpness(low) >= target:
        return low
    if sharpness(high) <= target:
        return high
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if sharpness(middle) < target:
            low = middle
        else:
            high = middle
    return (low + high) / 2
