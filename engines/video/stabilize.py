"""Temporal stabilisation of per-frame upscales: the previous result, moved along the optical flow
of the low-resolution input, blended into each new frame where it can be trusted.

An image upscaler run frame by frame invents its fine texture anew in every frame, which shows as
shimmer on video. For each frame t this stage measures the flow from input frame t back to t-1
(OpenCV's DIS on the input upscaled to the output size, `flow.py`), moves the previous stabilised
output along it, and blends it into the new per-frame output by `strength` times a per-pixel
trust. Trust is zero where the flow leaves the frame, falls where the input's colours do not
match along the flow beyond resampling noise (something appeared, was uncovered or changed) and
where the carried and the new frame differ by more than invented texture does once averaged over
an input pixel's footprint (a misplaced edge, a real change), so moving objects leave no ghost.
Where the blend leaves the input's strongest edges softer than the per-frame output's, the edge
floor (`edges.py`) raises them back. At scene cuts (scdet, `scenes.py`) the stage starts afresh:
the first frame of a shot is the per-frame output.

It streams: it keeps only the previous input and output frame, so chunked output equals the whole
clip's bit for bit and memory does not grow with the clip. Strength 0 returns the per-frame frames
untouched. Resampling and blending run with torch on the chosen device; flow runs in OpenCV on the
CPU. docs/temporal.md says how the defaults were chosen.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..clip import Clip, chunk_frames_for, rechunk
from ..errors import InputError, MissingDependencyError
from ..progress import Progress, open_progress
from .edges import EdgeFloor, footprint_mean
from .filters import Param
from .flow import (
    FLOW_PRESETS,
    DenseFlow,
    boundary_ratio,
    consistency_ratio,
    grey_resized,
    grey_u8,
    opencv,
    pixel_centres,
    resize_flow,
    sample,
    sampling_grid,
    side_thread,
)
from .scenes import DEFAULT_SCENE_THRESHOLD, SCENE_THRESHOLD, SceneDetector

DEFAULT_STRENGTH = 0.9
STRENGTH = Param("strength", float, 0.0, 0.95, help="share of the previous frame blended in where flow holds")
FLOW_AT = ("input", "output")
INTERPOLATIONS = ("bilinear", "bicubic", "bspline")


@dataclasses.dataclass(frozen=True)
class StabilizeSettings:
    """How to stabilise. Users set `strength` and `scene_threshold`; the rest are the defaults chosen
    by measurement (docs/temporal.md, BENCHMARKS.md), kept as settings so that the benchmark can
    measure the alternatives.

    strength: weight of the warped previous result where it is fully trusted (0 = off).
    scene_threshold: scdet score that marks a cut (0: never restart).
    flow_at: 'output' runs DIS on the input upscaled (bicubic) to the output size; 'input' on the
    input at its own size, the vectors scaled up (cheaper, coarser).
    flow_preset: DIS preset, or 'two-scale' (two DIS flows, the coarse one kept where it explains
    the input as well; below 4x, where the flow runs on frames under 4x the input, the detailed
    one alone; `flow.py`). flow_checks: also drop trust where the flow fails its
    forward-backward check or lies on a motion boundary (a second flow per frame).
    colour_noise: mean RGB mismatch (0-1) of the input along the flow that still counts as a match:
    resampling a small 8-bit input leaves this much where the flow holds. Trust falls linearly
    from 1 there to 0 at colour_tolerance.
    colour_tolerance: mean RGB mismatch (0-1) of the input along the flow at which trust is 0.
    colour_reach: how far (in input pixels, up to 0.5) the colour check looks for a match: each
    input pixel is compared with the range of values its neighbour on the other frame takes within
    that distance (Birchfield and Tomasi's sampling-insensitive dissimilarity at 0.5), so that
    flow off by a fraction of a pixel on fine or aliased detail is not taken for a change. 0
    compares pixel with pixel.
    change_tolerance: mean RGB difference (0-1) between the carried and the new frame, averaged
    over each input pixel's footprint, up to which trust is full; it falls to 0 at twice that.
    Invented texture differs pixel by pixel and averages out; a misplaced edge or a real change
    does not. 0 turns the check off.
    low_frequency: share of the weight given to the coarse part of the difference (what the input
    resolution can show); 1 blends all frequencies alike.
    interpolation: how the previous result is resampled along the flow.
    edge_floor: share of the per-frame output's edge contrast (mean luma gradient on the input's
    strongest 5% of edges) that each stabilised frame keeps at least (`edges.EdgeFloor`); 0 off.
    history_clamp: where trust is low, blend the carried frame in anyway at the weight trust
    withheld, clamped to the new frame's local colour range (`_local_range`), as games' temporal
    anti-aliasing keeps its history. Steadier on fast non-rigid motion, but it lets edges move:
    moving objects and changing content ghost (BENCHMARKS.md, seventh pass), so it is off.
    """

    strength: float = DEFAULT_STRENGTH
    scene_threshold: float = DEFAULT_SCENE_THRESHOLD
    flow_at: str = "output"
    flow_preset: str = "two-scale"
    flow_checks: bool = False
    colour_noise: float = 0.015
    colour_tolerance: float = 0.15
    colour_reach: float = 0.0
    change_tolerance: float = 0.06
    low_frequency: float = 0.7
    interpolation: str = "bicubic"
    edge_floor: float = 0.96
    history_clamp: bool = False

    def validate(self) -> StabilizeSettings:
        """These settings with checked, clean values; InputError naming the bad one."""
        owner = "temporal stabilise"
        clean = {
            "strength": STRENGTH.check(self.strength, owner),
            "scene_threshold": SCENE_THRESHOLD.check(self.scene_threshold, owner),
            "colour_tolerance": Param("colour_tolerance", float, 0.001, 1.0).check(self.colour_tolerance, owner),
            "colour_noise": Param("colour_noise", float, 0.0, 1.0).check(self.colour_noise, owner),
            "colour_reach": Param("colour_reach", float, 0.0, 0.5).check(self.colour_reach, owner),
            "change_tolerance": Param("change_tolerance", float, 0.0, 1.0).check(self.change_tolerance, owner),
            "low_frequency": Param("low_frequency", float, 0.0, 1.0).check(self.low_frequency, owner),
            "edge_floor": Param("edge_floor", float, 0.0, 1.0).check(self.edge_floor, owner),
        }
        for name, value, options in (("flow_at", self.flow_at, FLOW_AT), ("flow_preset", self.flow_preset, FLOW_PRESETS),
                                     ("interpolation", self.interpolation, INTERPOLATIONS)):
            if value not in options:
                raise InputError(f"{owner} parameter '{name}' must be one of {', '.join(options)}; got {value!r}")
        if clean["colour_noise"] >= clean["colour_tolerance"]:
            raise InputError(f"{owner} parameter 'colour_noise' ({clean['colour_noise']:g}) must be below "
                             f"'colour_tolerance' ({clean['colour_tolerance']:g})")
        for name in ("flow_checks", "history_clamp"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{owner} parameter '{name}' must be true or false; got {getattr(self, name)!r}")
        return dataclasses.replace(self, **clean)


def _require_flow(strength: float) -> None:
    """Fail before any frame is read when OpenCV is missing, saying how to run without it."""
    try:
        opencv()
    except MissingDependencyError as exc:
        raise MissingDependencyError(
            f"stabilize strength {strength:g}: {exc}; or set the strength to 0 (the node's stabilize or "
            "strength input, the CLI's --stabilize 0) for the plain per-frame output") from exc


def _as_nchw(frame: torch.Tensor, device: torch.device) -> torch.Tensor:
    return frame[..., :3].to(device, torch.float32).permute(2, 0, 1)[None]


def _ramp(ratio: torch.Tensor) -> torch.Tensor:
    """Trust 1 up to ratio 1, falling linearly to 0 at ratio 2."""
    return (2.0 - ratio).clamp_(0.0, 1.0)


def _resized(frames: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    if tuple(frames.shape[-2:]) == size:
        return frames
    return F.interpolate(frames, size=size, mode=mode, align_corners=False)


def _reach(images: torch.Tensor, reach: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The lowest and highest value each pixel of [N, C, H, W] takes between itself and the points
    `reach` pixels toward its four neighbours (linear interpolation; the edge extends outward)."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    centre = padded[..., 1:-1, 1:-1]
    lowest, highest = centre.clone(), centre.clone()
    for neighbour in (padded[..., 1:-1, :-2], padded[..., 1:-1, 2:], padded[..., :-2, 1:-1], padded[..., 2:, 1:-1]):
        between = torch.lerp(centre, neighbour, reach)
        lowest = torch.minimum(lowest, between)
        highest = torch.maximum(highest, between)
    return lowest, highest


def _dissimilarity(first: torch.Tensor, second: torch.Tensor, reach: float) -> torch.Tensor:
    """Per pixel and channel, |first - second|, or with `reach` > 0 Birchfield and Tomasi's
    dissimilarity: how far each frame's value lies outside the other's range within `reach`, the
    smaller of the two."""
    if reach == 0:
        return (first - second).abs_()
    low, high = _reach(second, reach)
    one_way = torch.maximum(first - high, low - first).clamp_(min=0)
    low, high = _reach(first, reach)
    other_way = torch.maximum(second - high, low - second).clamp_(min=0)
    return torch.minimum(one_way, other_way)


def _local_range(frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel and channel of [N, C, H, W], the range a carried value may take: the mean of the
    3x3 neighbourhood +- its standard deviation, kept within the neighbourhood's min..max."""
    padded = F.pad(frame, (1, 1, 1, 1), mode="replicate")
    mean = F.avg_pool2d(padded, 3, 1)
    deviation = F.avg_pool2d(padded.square(), 3, 1).sub_(mean.square()).clamp_(min=0).sqrt_()
    lowest = torch.maximum(-F.max_pool2d(-padded, 3, 1), mean - deviation)
    highest = torch.minimum(F.max_pool2d(padded, 3, 1), mean + deviation)
    return lowest, highest


def _inside(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, 1, H, W]: 1 where a `sampling_grid` point lies within the outer pixel centres of a frame
    of `size` (height, width), else 0."""
    height, width = size
    bound = torch.tensor([1 - 1 / width, 1 - 1 / height], dtype=grid.dtype, device=grid.device)
    return (grid.abs() <= bound).all(-1, keepdim=True).permute(0, 3, 1, 2).to(grid.dtype)


class Stabilizer:
    """The recursive blend, one frame at a time; holds the previous input and stabilised frame."""

    def __init__(self, settings: StabilizeSettings, source_size: tuple[int, int], output_size: tuple[int, int],
                 device: torch.device | str = "cpu"):
        self.settings = settings.validate()
        self.device = torch.device(device)
        self.source_size = source_size
        self.output_size = output_size
        self._flow = DenseFlow(self.settings.flow_preset, source_size)
        self._previous: tuple[np.ndarray, torch.Tensor, torch.Tensor] | None = None
        self._centres: torch.Tensor | None = None
        self._low_centres: torch.Tensor | None = None
        self._edges = EdgeFloor(self.settings.edge_floor, source_size)

    def reset(self) -> None:
        """Forget the previous frame: the next one starts a new shot."""
        self._previous = None
        self._edges.reset()

    def __call__(self, source: torch.Tensor, frame: torch.Tensor, cut: bool = False) -> torch.Tensor:
        """The stabilised frame [H, W, C] for per-frame output `frame` of input `source` [h, w, c]."""
        if self.settings.strength == 0:
            return frame
        low = _as_nchw(source, self.device)
        grey = grey_u8(source)
        if self.settings.flow_at == "output":
            grey = grey_resized(grey, *self.output_size)
        output = _as_nchw(frame, self.device)
        if cut or self._previous is None:
            self._previous = (grey, low, output)
            self._edges.reset()
            return frame
        last_grey, last_low, last_output = self._previous
        edges = None
        if self.settings.edge_floor:  # picked beside the flow
            guide = grey if self.settings.flow_at == "output" else grey_resized(grey, *self.output_size)
            edges = side_thread().submit(self._edges.pick, guide)
        back = self._flow(grey, last_grey).to(self.device)
        if self._centres is None:
            self._centres = pixel_centres(*self.output_size, self.device)
            self._low_centres = pixel_centres(*self.source_size, self.device)
        grid = sampling_grid(resize_flow(back, *self.output_size), self._centres)
        # The checks run on the input's grid: what the input can show is all they can judge.
        low_grid = sampling_grid(resize_flow(back, *self.source_size), self._low_centres)
        carried_low = sample(last_low, low_grid, "bicubic").clamp_(0, 1)
        mismatch = _dissimilarity(low, carried_low, self.settings.colour_reach).mean(1, keepdim=True)
        noise, tolerance = self.settings.colour_noise, self.settings.colour_tolerance
        low_trust = mismatch.sub_(noise).div_(noise - tolerance).add_(1.0).clamp_(0.0, 1.0)
        low_trust.mul_(_inside(low_grid, self.output_size))  # 0 where the flow leaves the frame
        difference = sample(last_output, grid, self.settings.interpolation).clamp_(0, 1).sub_(output)
        held = None
        if self.settings.history_clamp:  # the carried frame within the new frame's local range, less the new frame
            lowest, highest = _local_range(output)
            held = torch.clamp(difference, lowest.sub_(output), highest.sub_(output))
        # The change check and the coarse band live on the input's grid too; one resize brings
        # every map on that grid to the output's.
        low_maps = [low_trust]
        two_bands = self.settings.low_frequency != 1.0
        if self.settings.change_tolerance or two_bands:
            coarse = footprint_mean(difference, self.source_size)
            if self.settings.change_tolerance:
                low_maps.append(_ramp(coarse.abs().mean(1, keepdim=True).div_(self.settings.change_tolerance)))
            if two_bands:
                low_maps.append(coarse)
        maps = _resized(torch.cat(low_maps, 1) if len(low_maps) > 1 else low_trust, self.output_size)
        trust = maps[:, :1]
        if self.settings.change_tolerance:
            trust *= maps[:, 1:2]
        if self.settings.flow_checks:
            checks = _ramp(consistency_ratio(back, self._flow(last_grey, grey).to(self.device)))
            trust *= _resized(checks * _ramp(boundary_ratio(back)), self.output_size)
        if two_bands:  # the coarse part of the difference gets low_frequency of the weight
            difference.sub_(maps[:, -3:], alpha=1.0 - self.settings.low_frequency)
        start = output
        if held is not None:  # what trust withheld goes to the clamped carried frame, inside the frame
            start = torch.addcmul(output, held, (1 - trust).mul_(_inside(grid, self.output_size)),
                                  value=self.settings.strength)
        # The coarse band's share can take a pixel past the frames it blends: keep it a colour.
        blended = torch.addcmul(start, difference, trust.mul_(self.settings.strength)).clamp_(0, 1)
        if edges is not None:
            blended = self._edges(edges.result(), output, blended)
        self._previous = (grey, low, blended)
        result = blended[0].permute(1, 2, 0).to(frame.device, frame.dtype)
        if frame.shape[-1] > 3:
            result = torch.cat([result, frame[..., 3:]], dim=-1)
        return result


def _paired_frames(pairs: Iterator[tuple[torch.Tensor, torch.Tensor]], settings: StabilizeSettings,
                   source: Clip, output_size: tuple[int, int], device: torch.device,
                   progress: Progress) -> Iterator[torch.Tensor]:
    """Stabilised output chunks for (source chunk, upscaled chunk) pairs of equal frame counts."""
    stabilizer = Stabilizer(settings, (source.info.height, source.info.width), output_size, device)
    detector = SceneDetector(settings.scene_threshold, source.info.width, source.info.height, source.info.fps)
    for low, high in pairs:
        progress.check_cancel()
        cuts = detector(low)
        frames = [stabilizer(low[i], high[i], cuts[i]) for i in range(int(high.shape[0]))]
        progress.advance(len(frames))
        yield torch.stack(frames)


def _check_sizes(source: Clip, upscaled_info_width: int, upscaled_info_height: int) -> None:
    if upscaled_info_width < source.info.width or upscaled_info_height < source.info.height:
        raise InputError(f"the upscaled clip ({upscaled_info_width}x{upscaled_info_height}) is smaller than its "
                         f"source ({source.info.width}x{source.info.height}); connect the source as 'source' and "
                         "the upscale as 'upscaled'")


def stabilize_clip(upscaled: Clip, source: Clip, settings: StabilizeSettings | None = None,
                   device: torch.device | str | None = None,
                   progress_factory: Callable[[int | None, str], Progress] | None = None) -> Clip:
    """`upscaled` (a per-frame upscale of `source`, frame for frame) stabilised; both clips are pulled
    in lockstep, chunk by chunk. Strength 0 returns `upscaled` itself."""
    settings = (settings or StabilizeSettings()).validate()
    if settings.strength == 0:
        return upscaled
    _require_flow(settings.strength)
    info = upscaled.info
    _check_sizes(source, info.width, info.height)
    if source.info.frame_count != info.frame_count:
        raise InputError(f"the source has {source.info.frame_count} frames and the upscaled clip "
                         f"{info.frame_count}; connect a clip and its own upscale, frame for frame")
    target = torch.device(device) if device is not None else torch.device("cpu")
    step = chunk_frames_for(info.width, info.height, info.channels)

    def pairs() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        lows = rechunk(source.chunks(), step)
        done = 0
        for high in rechunk(upscaled.chunks(), step):
            low = next(lows, None)
            if low is None or low.shape[0] != high.shape[0]:
                raise InputError(f"the source clip ended near frame {done + (0 if low is None else low.shape[0])} "
                                 "while the upscaled clip went on; connect a clip and its own upscale")
            done += int(high.shape[0])
            yield low, high
        if next(lows, None) is not None:
            raise InputError(f"the upscaled clip ended at frame {done} while the source went on; connect a "
                             "clip and its own upscale")

    def stage() -> Iterator[torch.Tensor]:
        with open_progress(progress_factory, info.frame_count or None, "stabilise") as bar:
            yield from _paired_frames(pairs(), settings, source, (info.height, info.width), target, bar)

    return Clip(info.replace(extra={**info.extra, "stabilize": dataclasses.asdict(settings)}), stage)


def stabilized_upscale(source: Clip, upscale: Callable[[Clip], Clip], settings: StabilizeSettings | None = None,
                       device: torch.device | str | None = None) -> Clip:
    """`upscale(source)`, stabilised, decoding `source` once: the low-resolution frames the upscaler
    reads are held (a few small frames) until their upscaled frames come out. `upscale` must give
    one output frame per input frame, in order. Strength 0 is `upscale(source)` itself."""
    settings = (settings or StabilizeSettings()).validate()
    if settings.strength == 0:
        return upscale(source)
    _require_flow(settings.strength)
    held: list[deque[torch.Tensor]] = []  # the low-resolution frames of each pass in progress

    def teed() -> Iterator[torch.Tensor]:
        frames = held[-1]
        for chunk in source.chunks():
            frames.extend(chunk.unbind(0))
            yield chunk

    upscaled = upscale(Clip(source.info, teed))
    info = upscaled.info
    _check_sizes(source, info.width, info.height)
    target = torch.device(device) if device is not None else torch.device("cpu")

    def stage() -> Iterator[torch.Tensor]:
        frames: deque[torch.Tensor] = deque()
        held.append(frames)
        try:
            def pairs() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
                for high in upscaled.chunks():
                    count = int(high.shape[0])
                    if len(frames) < count:
                        raise RuntimeError("the upscaler gave more frames than it read; it must give one "
                                           "output frame per input frame")
                    yield torch.stack([frames.popleft() for _ in range(count)]), high

            yield from _paired_frames(pairs(), settings, source, (info.height, info.width), target, Progress())
        finally:
            held[:] = [other for other in held if other is not frames]

    return Clip(info.replace(extra={**info.extra, "stabilize": dataclasses.asdict(settings)}), stage)
