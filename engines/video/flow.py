"""Dense optical flow with OpenCV's DIS, warping with torch, and the checks that say where flow holds.

OpenCV ships as four wheels (opencv-python, opencv-python-headless, opencv-contrib-python and
its headless twin) that all install the same `cv2` module and break each other when two of
them are installed side by side, which has broken ComfyUI installs before. Every variant has
DIS, so vsrkit uses whichever `cv2` is there, imports it only when flow is needed, and names
the package to install when there is none; it declares no OpenCV dependency of its own.

Flow here is a [N, 2, H, W] float tensor of (dx, dy) in pixels: `flow` from frame A to frame
B says that A(x) is seen at B(x + flow(x)). `warp(B, flow)` therefore brings B onto A's grid.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MissingDependencyError

OPENCV_INSTALL = "pip install opencv-python-headless"
FLOW_PRESETS = ("ultrafast", "fast", "medium", "two-scale")
# 'two-scale': DIS matched down to a grid 4x coarser than the frame and refined 10 times (for the
# input upscaled 4x, the input's own grid: smooth, not misled by its aliasing) beside DIS 'medium'
# with a patch stride of 4, 12 descent steps and 3 refinements (matched down to a grid 2x coarser
# than the frame); the coarse flow is kept wherever it explains the input as well, within
# COARSE_ALLOWANCE grey levels (docs/temporal.md). Where the frames are less than COARSE_SCALE
# times the input, the detailed flow's own grid is already as coarse as the input's and it runs alone.
COARSE_SETTINGS = {"FinestScale": 2, "VariationalRefinementIterations": 10}
DETAILED_SETTINGS = {"PatchStride": 4, "GradientDescentIterations": 12, "VariationalRefinementIterations": 3}
COARSE_ALLOWANCE = 1.0
COARSE_SCALE = 4
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# The checks of Ruder et al. 2016 that Lai et al. 2018 use for their warping error.
CONSISTENCY_RELATIVE = 0.01
CONSISTENCY_ABSOLUTE = 0.5
BOUNDARY_RELATIVE = 0.01
BOUNDARY_ABSOLUTE = 0.002


def opencv() -> Any:
    """The installed `cv2` module (any of the four OpenCV wheels), or an error saying what to install."""
    try:
        import cv2
    except ImportError as exc:
        raise MissingDependencyError(
            "optical flow (the temporal stabiliser and the flicker measure) needs OpenCV, which is not "
            f"installed in this Python ({exc}); install one OpenCV wheel, e.g. `{OPENCV_INSTALL}` (use "
            "the variant your environment already has, if any: two OpenCV wheels side by side break "
            "each other)") from exc
    if not hasattr(cv2, "DISOpticalFlow_create"):
        raise MissingDependencyError(
            f"the installed OpenCV ({getattr(cv2, '__version__', '?')}) has no DIS optical flow; "
            f"upgrade it, e.g. `{OPENCV_INSTALL} --upgrade` (or the OpenCV variant already installed)")
    return cv2


_beside: ThreadPoolExecutor | None = None


def side_thread() -> ThreadPoolExecutor:
    """One worker thread, shared by every stabiliser, for single-threaded work that can run while
    the calling thread computes a flow (OpenCV and NumPy release the GIL): the two-scale flow's
    coarse DIS, the edge floor's edge picking. Less waiting than one after the other, and a second
    core used where OpenCV runs single-threaded."""
    global _beside
    if _beside is None:
        _beside = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vsrkit-flow")
    return _beside


def dis(preset: str = "medium", settings: dict[str, int] | None = None) -> Any:
    """An OpenCV DIS flow object at one of its presets, with these parameters changed (OpenCV's
    setter names without 'set', e.g. {"FinestScale": 2})."""
    cv2 = opencv()
    code = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
            "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}[preset]
    flow = cv2.DISOpticalFlow_create(code)
    for name, value in (settings or {}).items():
        getattr(flow, "set" + name)(value)
    return flow


class DenseFlow:
    """DIS optical flow between two grey frames at one of OpenCV's presets, or 'two-scale'.

    `check_size` (height, width): the low-resolution input's grid, when the frames are that input
    upscaled. 'two-scale' runs its coarse flow only where the frames are at least COARSE_SCALE times
    that size, and compares there how well its two flows explain the input; without it, or on
    smaller frames, it is the detailed flow alone.
    """

    def __init__(self, preset: str = "medium", check_size: tuple[int, int] | None = None):
        if preset not in FLOW_PRESETS:
            raise ValueError(f"flow preset must be one of {FLOW_PRESETS}, got {preset!r}")
        two_scale = preset == "two-scale"
        self._dis = dis("medium", DETAILED_SETTINGS) if two_scale else dis(preset)
        self._two_scale = two_scale
        self._check_size = check_size
        self._grid: np.ndarray | None = None

    def __call__(self, first: np.ndarray, second: np.ndarray) -> torch.Tensor:
        """Flow [1, 2, H, W] from `first` to `second` (uint8 [H, W] grey frames)."""
        if not self._two_scale or not self._coarse_fits(first.shape):
            flow = self._dis.calc(first, second, None)
        else:
            # A new DIS each time: one kept across calls at this finest scale gave results that
            # depended on the frames it saw before (64x80 frames, OpenCV 5.0.0), and a shot
            # after a cut must come out as if alone. Creating it costs about 0.1 ms.
            pending = side_thread().submit(lambda: dis("medium", COARSE_SETTINGS).calc(first, second, None))
            flow = self._dis.calc(first, second, None)
            coarse = pending.result()
            share = self._coarse_share(first, second, coarse, flow)
            flow = opencv().blendLinear(coarse, flow, share, 1.0 - share)
        return flow_tensor(flow)

    def _coarse_fits(self, shape: tuple[int, ...]) -> bool:
        """Whether the coarse flow's grid, COARSE_SCALE times coarser than the frames, is no coarser
        than the check grid (the input's)."""
        return self._check_size is not None and all(
            frame >= COARSE_SCALE * check for frame, check in zip(shape[:2], self._check_size, strict=True))

    def _coarse_share(self, first: np.ndarray, second: np.ndarray, coarse: np.ndarray,
                      detailed: np.ndarray) -> np.ndarray:
        """[H, W] 1 where the coarse flow explains the frames as well as the detailed one (compared
        on the check grid, averaged over 3x3 of its pixels), 0 elsewhere, bilinear in between."""
        cv2 = opencv()
        height, width = first.shape
        small_height, small_width = self._check_size

        def shrink(image: np.ndarray) -> np.ndarray:
            small = cv2.resize(image, (small_width, small_height), interpolation=cv2.INTER_AREA)
            return small.astype(np.float32, copy=False)

        now, before = shrink(first), shrink(second)
        if self._grid is None or self._grid[0].shape != (small_height, small_width):
            self._grid = np.indices((small_height, small_width), dtype=np.float32)[::-1]
        xs, ys = self._grid
        scale_x, scale_y = small_width / width, small_height / height

        def mismatch(flow: np.ndarray) -> np.ndarray:
            small = shrink(flow)
            moved = cv2.remap(before, xs + scale_x * small[..., 0], ys + scale_y * small[..., 1], cv2.INTER_CUBIC,
                              borderMode=cv2.BORDER_REPLICATE)
            return cv2.blur(cv2.absdiff(moved, now), (3, 3))

        keep = (mismatch(coarse) <= mismatch(detailed) + COARSE_ALLOWANCE).astype(np.float32)
        return cv2.resize(keep, (width, height), interpolation=cv2.INTER_LINEAR)


def flow_tensor(flow: np.ndarray) -> torch.Tensor:
    """OpenCV's [H, W, 2] flow as this module's [1, 2, H, W] tensor (contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1)))[None]


def grey_u8(frame: torch.Tensor) -> np.ndarray:
    """A [H, W, C] float RGB(A) frame in 0..1 as uint8 BT.601 luma, contiguous, for DIS."""
    rgb = np.clip(frame[..., :3].float().cpu().numpy(), 0.0, 1.0)  # NumPy: no thread pool left spinning
    luma = rgb @ np.asarray(LUMA_WEIGHTS, dtype=np.float32)
    return np.ascontiguousarray(np.rint(luma * 255.0).astype(np.uint8))


def grey_resized(grey: np.ndarray, height: int, width: int) -> np.ndarray:
    """A uint8 grey frame resized (bicubic, pixel centres aligned) to height x width, for DIS on the
    input at the output's size; resizing one 8-bit channel costs a fraction of resizing RGB floats."""
    if grey.shape == (height, width):
        return grey
    return opencv().resize(grey, (width, height), interpolation=opencv().INTER_CUBIC)


def pixel_centres(height: int, width: int, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[1, H, W, 2] the pixel centres in grid_sample's normalised coordinates (align_corners=False)."""
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) * (2.0 / height) - 1.0
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) * (2.0 / width) - 1.0
    return torch.stack(torch.broadcast_tensors(xs.view(1, width), ys.view(height, 1)), dim=-1)[None]


def sampling_grid(flow: torch.Tensor, centres: torch.Tensor | None = None) -> torch.Tensor:
    """grid_sample's normalised grid [N, H, W, 2] for the points x + flow(x); `centres` (from
    `pixel_centres`) may be passed in when many flows of one size are sampled."""
    _, _, height, width = flow.shape
    if centres is None:
        centres = pixel_centres(height, width, flow.device, flow.dtype)
    step = torch.tensor([2.0 / width, 2.0 / height], device=flow.device, dtype=flow.dtype)
    # addcmul from the contiguous centres gives a contiguous grid: grid_sample reads a permuted one
    # at twice the CPU time.
    return torch.addcmul(centres, flow.permute(0, 2, 3, 1), step)


def sample(images: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """`images` [N, C, H, W] read at the points of a `sampling_grid` (the frame's edge extends outward).
    `mode`: grid_sample's 'bilinear', 'bicubic' (Keys, a = -0.75) or 'nearest', or 'bspline'."""
    if mode == "bspline":
        return _bspline_sample(images, grid.to(images.dtype))
    if mode == "bicubic" and images.device.type == "cpu" and images.shape[0] == 1:
        return _banded_bicubic(images, grid.to(images.dtype))
    return F.grid_sample(images, grid.to(images.dtype), mode=mode, padding_mode="border", align_corners=False)


def _banded_bicubic(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bicubic grid_sample of one CPU image, its output rows cut into one band per torch thread and
    sampled as a batch: torch's CPU bicubic kernel runs a batch's images in parallel but one image on
    one thread, while the other threads spin, still burning CPU, after the parallel op before it.
    The same values as one call."""
    height = grid.shape[1]
    bands = min(torch.get_num_threads(), height)
    if bands == 1:
        return F.grid_sample(image, grid, mode="bicubic", padding_mode="border", align_corners=False)
    rows = -(-height // bands)
    padded = F.pad(grid, (0, 0, 0, 0, 0, rows * bands - height), mode="replicate") if rows * bands != height else grid
    batch = padded.reshape(bands, rows, *grid.shape[2:])
    out = F.grid_sample(image.expand(bands, *image.shape[1:]), batch, mode="bicubic", padding_mode="border",
                        align_corners=False)
    return out.permute(1, 0, 2, 3).reshape(1, image.shape[1], rows * bands, -1)[:, :, :height]


_BSPLINE_POLE = 3 ** 0.5 - 2
_BSPLINE_TAPS = 6
_BSPLINE_PAD = _BSPLINE_TAPS + 2


def _bspline_coefficients(images: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline coefficients of `images`, edge-extended by `_BSPLINE_PAD` pixels: the inverse
    of the B-spline's [1, 4, 1] / 6 sampling filter, its two-sided geometric impulse response
    truncated to +-6 taps."""
    taps = torch.tensor([_BSPLINE_POLE ** abs(i) for i in range(-_BSPLINE_TAPS, _BSPLINE_TAPS + 1)],
                        dtype=images.dtype, device=images.device)
    taps /= taps.sum()
    channels = images.shape[1]
    padded = F.pad(images, (_BSPLINE_PAD,) * 4, mode="replicate")
    rows = F.conv2d(F.pad(padded, (_BSPLINE_TAPS, _BSPLINE_TAPS, 0, 0), mode="replicate"),
                    taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(F.pad(rows, (0, 0, _BSPLINE_TAPS, _BSPLINE_TAPS), mode="replicate"),
                    taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _bspline_axis(position: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Along one axis, the cubic B-spline's four weights folded into two linear reads: (weight of
    the first, weight of the second, their normalised grid coordinates), `position` in padded pixels."""
    index = torch.floor(position)
    f = position - index
    f2, f3 = f * f, f * f * f
    w0 = (1 - 3 * f + 3 * f2 - f3) / 6
    w1 = (4 - 6 * f2 + 3 * f3) / 6
    w3 = f3 / 6
    first, second = w0 + w1, 1 - w0 - w1
    at_first = index - 1 + w1 / first
    at_second = index + 1 + w3 / second.clamp_min(1e-12)
    return first, second, (at_first + 0.5) * (2 / size) - 1, (at_second + 0.5) * (2 / size) - 1


def _bspline_sample(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline interpolation (exact at the pixels, no overshoot between them) by four
    bilinear reads of its coefficients (Sigg and Hadwiger 2005)."""
    coefficients = _bspline_coefficients(images)
    height, width = images.shape[-2:]
    pad = _BSPLINE_PAD
    xs = _bspline_axis((grid[..., 0] + 1) * (width / 2) - 0.5 + pad, width + 2 * pad)
    ys = _bspline_axis((grid[..., 1] + 1) * (height / 2) - 0.5 + pad, height + 2 * pad)
    out = None
    for x_weight, x_at in ((xs[0], xs[2]), (xs[1], xs[3])):
        for y_weight, y_at in ((ys[0], ys[2]), (ys[1], ys[3])):
            read = F.grid_sample(coefficients, torch.stack([x_at, y_at], -1), mode="bilinear",
                                 padding_mode="border", align_corners=False).mul_((x_weight * y_weight)[:, None])
            out = read if out is None else out.add_(read)
    return out


def warp(images: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """`images` [N, C, H, W] sampled at x + flow(x): the frame the flow points into, brought back."""
    return sample(images, sampling_grid(flow.to(images.dtype)), mode)


def inside_frame(flow: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] bool: x + flow(x) lands inside the frame (within the outer pixel centres)."""
    _, _, height, width = flow.shape
    ys = torch.arange(height, device=flow.device, dtype=flow.dtype).view(1, height, 1)
    xs = torch.arange(width, device=flow.device, dtype=flow.dtype).view(1, 1, width)
    x, y = xs + flow[:, 0], ys + flow[:, 1]
    return ((x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1))[:, None]


def resize_flow(flow: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flow [N, 2, h, w] at another frame size, vectors scaled to the new pixels: resampled bilinearly
    to enlarge it, averaged over each new pixel's footprint to shrink it."""
    _, _, h, w = flow.shape
    if (h, w) == (height, width):
        return flow
    if height <= h and width <= w and h % height == 0 and w % width == 0:
        resized = F.avg_pool2d(flow, (h // height, w // width))
    else:
        mode = "area" if height <= h and width <= w else "bilinear"
        resized = F.interpolate(flow, size=(height, width), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    scale = torch.tensor([width / w, height / h], dtype=flow.dtype, device=flow.device).view(1, 2, 1, 1)
    return resized * scale


def consistency_ratio(flow: torch.Tensor, reverse: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W]: the forward-backward error over its allowance (above 1 fails the check).

    error |F(x) + R(x + F(x))|^2, allowance 0.01 (|F|^2 + |R(x + F(x))|^2) + 0.5, where R is the
    flow back from the second frame to the first.
    """
    back = warp(reverse, flow)
    error = (flow + back).square().sum(1, keepdim=True)
    allowance = CONSISTENCY_RELATIVE * (flow.square().sum(1, keepdim=True) + back.square().sum(1, keepdim=True))
    return error / (allowance + CONSISTENCY_ABSOLUTE)


def differences(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences of [N, C, H, W] along x and along y; 0 on the outer columns and rows."""
    dx = torch.zeros_like(image)
    dy = torch.zeros_like(image)
    dx[..., :, 1:-1] = (image[..., :, 2:] - image[..., :, :-2]) / 2
    dy[..., 1:-1, :] = (image[..., 2:, :] - image[..., :-2, :]) / 2
    return dx, dy


def boundary_ratio(flow: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W]: the flow's squared gradient over 0.01 |F|^2 + 0.002 (above 1: a motion boundary)."""
    dx, dy = differences(flow)
    gradient = (dx.square() + dy.square()).sum(1, keepdim=True)
    return gradient / (BOUNDARY_RELATIVE * flow.square().sum(1, keepdim=True) + BOUNDARY_ABSOLUTE)


def reliable(flow: torch.Tensor, reverse: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] bool: where `flow` passes the forward-backward check, is off motion boundaries
    and stays inside the frame (the mask M of Lai et al. 2018)."""
    return (consistency_ratio(flow, reverse) <= 1) & (boundary_ratio(flow) <= 1) & inside_frame(flow)
