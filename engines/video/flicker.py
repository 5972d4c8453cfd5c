"""Measures for comparing upscales of one clip: flicker (warping error), edge sharpness, detail and PSNR.

Warping error (Lai et al. 2018, "Learning Blind Video Temporal Consistency"):

    E = mean over t of  sum_x M_t(x) |O_t(x) - O_{t+1}(x + F_t(x))|^2 / (3 sum_x M_t(x))

with RGB in 0..1, F_t the forward flow from frame t to t+1 of a reference video (the ground truth
when there is one, else the input scaled to size), and M_t zero where the flow fails the
forward-backward check, on motion boundaries and where x + F_t(x) leaves the frame (`flow.reliable`).
Lower is steadier, but blur lowers it too, so guards go beside it: edge sharpness, the mean
gradient magnitude (BT.601 luma) over the strongest 5% of edges of the bicubic upscale of the
input, to be compared as a ratio against the per-frame output; detail, the same gradient averaged
over every pixel, which also sees texture smoothed away between those edges; and PSNR against the
reference when the reference is a ground truth at the candidates' size.

Every clip is read once, in lockstep, frame by frame, so memory does not grow with the clip.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..clip import Clip
from ..errors import InputError
from ..progress import Progress
from .edges import luma
from .flow import DenseFlow, differences, grey_u8, reliable, warp

EDGE_FRACTION = 0.05
MEASURE_FLOW_PRESET = "medium"


@dataclasses.dataclass(frozen=True)
class FlickerReport:
    """One candidate's figures. `psnr` is None when the reference is not at the candidate's size;
    `edge_ratio` and `detail_ratio` are this candidate's edge sharpness and detail over the first
    candidate's."""

    warping_error: float
    edge_sharpness: float
    detail: float
    psnr: float | None
    frames: int
    edge_ratio: float = 1.0
    detail_ratio: float = 1.0

    def to_dict(self) -> dict[str, float | int | None]:
        return dataclasses.asdict(self)


def _frames(clip: Clip) -> Iterator[torch.Tensor]:
    for chunk in clip.chunks():
        yield from chunk.unbind(0)


def _nchw(frame: torch.Tensor) -> torch.Tensor:
    return frame[..., :3].float().permute(2, 0, 1)[None]


def _to_size(frame: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[1, 3, h, w] resized (bicubic) to height x width, or as it is."""
    if tuple(frame.shape[-2:]) == (height, width):
        return frame
    return F.interpolate(frame, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)


def luma_gradient(frame: torch.Tensor) -> torch.Tensor:
    """[1, 1, H, W] gradient magnitude (central differences) of a [1, 3, H, W] frame's luma."""
    return torch.hypot(*differences(luma(frame)))


def strongest_edges(frame: torch.Tensor, fraction: float = EDGE_FRACTION) -> torch.Tensor:
    """[1, 1, H, W] bool: the `fraction` of pixels with the largest luma gradient."""
    gradient = luma_gradient(frame)
    values = gradient.flatten()
    keep = max(1, int(round(values.numel() * fraction)))
    return gradient >= torch.kthvalue(values, values.numel() - keep + 1).values


class _Tally:
    """Running sums for one candidate."""

    def __init__(self) -> None:
        self.warping = 0.0
        self.pairs = 0
        self.edges = 0.0
        self.edge_pixels = 0
        self.detail = 0.0
        self.detail_pixels = 0
        self.squared = 0.0
        self.values = 0


def measure_flicker(candidates: Sequence[Clip], reference: Clip, source: Clip | None = None,
                    flow_preset: str = MEASURE_FLOW_PRESET, progress: Progress | None = None) -> list[FlickerReport]:
    """Warping error, edge sharpness, detail and PSNR of each candidate (same size and frame count).

    `reference` gives the flow (and the PSNR target when it has the candidates' size); it is
    resized bicubically to their size when it is smaller (e.g. the input itself). The edges are
    those of `source` (the low-resolution input) upscaled bicubically; without it, the reference's.
    """
    if not candidates:
        raise InputError("give at least one video to measure")
    height, width = candidates[0].info.height, candidates[0].info.width
    for clip in candidates:
        if (clip.info.height, clip.info.width) != (height, width):
            raise InputError(f"the videos to compare must have one size; got {clip.info.width}x{clip.info.height} "
                             f"beside {width}x{height}")
    ground_truth = (reference.info.height, reference.info.width) == (height, width)
    flow = DenseFlow(flow_preset)
    tallies = [_Tally() for _ in candidates]
    streams = [_frames(clip) for clip in (reference, *candidates, *([source] if source is not None else []))]
    previous: tuple[torch.Tensor, list[torch.Tensor]] | None = None
    previous_grey = None
    frames = 0
    while True:
        row = [next(stream, None) for stream in streams]
        if all(frame is None for frame in row):
            break
        if any(frame is None for frame in row):
            raise InputError(f"the videos end at different frames (one ended after {frames}); compare upscales "
                             "of the same frames")
        if progress is not None:
            progress.check_cancel()
        ref = _to_size(_nchw(row[0]), height, width)
        outputs = [_nchw(frame) for frame in row[1:1 + len(candidates)]]
        edge_source = _to_size(_nchw(row[-1]), height, width) if source is not None else ref
        mask = strongest_edges(edge_source)
        grey = grey_u8(ref[0].permute(1, 2, 0))
        for tally, output in zip(tallies, outputs, strict=True):
            gradient = luma_gradient(output)
            tally.edges += float(gradient[mask].sum())
            tally.edge_pixels += int(mask.sum())
            tally.detail += float(gradient.sum())
            tally.detail_pixels += gradient.numel()
            if ground_truth:
                tally.squared += float((output - ref).square().sum())
                tally.values += output.numel()
        if previous is not None:
            forward = flow(previous_grey, grey)
            backward = flow(grey, previous_grey)
            valid = reliable(forward, backward).float()
            count = float(valid.sum())
            for tally, before, output in zip(tallies, previous[1], outputs, strict=True):
                if count > 0:
                    difference = (before - warp(output, forward)).square().sum(1, keepdim=True)
                    tally.warping += float((difference * valid).sum()) / (3 * count)
                    tally.pairs += 1
        previous, previous_grey = (ref, outputs), grey
        frames += 1
        if progress is not None:
            progress.advance(1)
    if frames == 0:
        raise InputError("the videos to compare have no frames")
    reports = []
    for tally in tallies:
        psnr = None
        if ground_truth and tally.values:
            mse = tally.squared / tally.values
            psnr = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
        reports.append(FlickerReport(warping_error=tally.warping / tally.pairs if tally.pairs else 0.0,
                                     edge_sharpness=tally.edges / max(1, tally.edge_pixels),
                                     detail=tally.detail / max(1, tally.detail_pixels), psnr=psnr, frames=frames))
    edges, detail = reports[0].edge_sharpness, reports[0].detail
    return [dataclasses.replace(r, edge_ratio=r.edge_sharpness / edges if edges else math.nan,
                                detail_ratio=r.detail / detail if detail else math.nan) for r in reports]
