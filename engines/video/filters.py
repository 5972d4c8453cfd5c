"""libavfilter steps with typed, range-checked options, and a streaming runner for clip chunks.

Every option that reaches a filter graph goes through a `Param`: it is type-checked and
range-checked first, then formatted by this module (an int, a float, or one of a fixed set
of constants we own). Nothing a user typed is pasted into a filter-graph string; graphs
are built node by node with PyAV's `av.filter.Graph` API and one options dict per filter.

`FilterRunner` keeps one graph alive for a whole pass over a clip, so temporal filters see
frames across chunk boundaries exactly as if the clip were one chunk, and flushes it at the
end so no frame is lost.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from fractions import Fraction
from typing import Any

import av
import av.filter
import av.filter.context
import numpy as np
import torch

from ..clip import Reach
from ..errors import InputError
from ..progress import Progress

_BLOCKED = (av.BlockingIOError, av.EOFError)


@dataclasses.dataclass(frozen=True)
class Param:
    """One filter option: its type, its allowed range or choices, and what it means.

    `choices` maps the names a user may pick to the constant passed to FFmpeg.
    """

    name: str
    kind: type
    low: float | None = None
    high: float | None = None
    odd: bool = False
    choices: Mapping[str, int] | None = None
    help: str = ""

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        noun = "an odd whole number" if self.odd else ("a whole number" if self.kind is int else "a number")
        return f"{noun} from {format_number(self.low)} to {format_number(self.high)}"

    def check(self, value: Any, owner: str) -> Any:
        """`value` as a clean Python value of this param's type, or an InputError naming it and its range."""
        where = f"{owner} parameter '{self.name}'"
        if self.choices is not None:
            if not isinstance(value, str) or value not in self.choices:
                raise InputError(f"{where} must be {self.describe()}; got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise InputError(f"{where} must be {self.describe()}; got {value!r} ({type(value).__name__})")
        if not math.isfinite(float(value)):
            raise InputError(f"{where} must be {self.describe()}; got {value!r}")
        if self.kind is int:
            if float(value) != int(value):
                raise InputError(f"{where} must be {self.describe()}; got {value!r}, which is not whole")
            clean: int | float = int(value)
        else:
            clean = float(value)
        if (self.low is not None and clean < self.low) or (self.high is not None and clean > self.high):
            raise InputError(f"{where} must be {self.describe()}; got {value!r}")
        if self.odd and int(clean) % 2 == 0:
            raise InputError(f"{where} must be {self.describe()}; got {value!r}, which is even")
        return clean

    def to_option(self, clean: Any) -> str:
        """The option text FFmpeg receives: always produced here from a checked value."""
        if self.choices is not None:
            return str(int(self.choices[clean]))
        if self.kind is int:
            return str(int(clean))
        return repr(float(clean))


def format_number(number: float | None) -> str:
    """A whole number without its '.0', any other in `g` format; '?' for None."""
    if number is None:
        return "?"
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


_PARITY = {"auto": -1, "tff": 0, "bff": 1}
_DEINT_WHICH = {"all": 0, "interlaced": 1}

# Ranges are FFmpeg's own (libavfilter option tables; checked against this build).
FILTER_PARAMS: dict[str, dict[str, Param]] = {
    "bwdif": {
        "mode": Param("mode", str, choices={"send_frame": 0, "send_field": 1},
                      help="send_frame: one frame per frame; send_field: one frame per field"),
        "parity": Param("parity", str, choices=_PARITY, help="field order assumed for the input"),
        "deint": Param("deint", str, choices=_DEINT_WHICH, help="which frames to deinterlace"),
    },
    "yadif": {
        "mode": Param("mode", str, choices={"send_frame": 0, "send_field": 1},
                      help="send_frame: one frame per frame; send_field: one frame per field"),
        "parity": Param("parity", str, choices=_PARITY, help="field order assumed for the input"),
        "deint": Param("deint", str, choices=_DEINT_WHICH, help="which frames to deinterlace"),
    },
    "atadenoise": {
        **{f"{plane}a": Param(f"{plane}a", float, 0.0, 0.3,
                              help=f"threshold A for plane {plane}: how similar a pixel must be to be averaged")
           for plane in range(3)},
        **{f"{plane}b": Param(f"{plane}b", float, 0.0, 5.0,
                              help=f"threshold B for plane {plane}: total difference allowed over the window")
           for plane in range(3)},
        "s": Param("s", int, 5, 129, odd=True, help="number of frames averaged (temporal window)"),
    },
    "nlmeans": {
        "s": Param("s", float, 1.0, 30.0, help="denoising strength"),
        "p": Param("p", int, 1, 99, odd=True, help="patch size in pixels"),
        "r": Param("r", int, 1, 99, odd=True, help="research window size in pixels"),
    },
    "fftdnoiz": {
        "sigma": Param("sigma", float, 0.0, 100.0, help="noise level to remove"),
        "amount": Param("amount", float, 0.01, 1.0, help="how much of the estimated noise is removed"),
        "block": Param("block", int, 8, 256, help="FFT block size in pixels"),
        "overlap": Param("overlap", float, 0.2, 0.8, help="block overlap"),
        "prev": Param("prev", int, 0, 1, help="previous frames used (temporal)"),
        "next": Param("next", int, 0, 1, help="next frames used (temporal)"),
    },
    "hqdn3d": {
        "luma_spatial": Param("luma_spatial", float, 0.0, 255.0, help="spatial strength"),
        "chroma_spatial": Param("chroma_spatial", float, 0.0, 255.0, help="spatial strength, planes 2-3"),
        "luma_tmp": Param("luma_tmp", float, 0.0, 255.0, help="temporal strength"),
        "chroma_tmp": Param("chroma_tmp", float, 0.0, 255.0, help="temporal strength, planes 2-3"),
    },
    "deblock": {
        "filter": Param("filter", str, choices={"weak": 0, "strong": 1}, help="deblocking filter type"),
        "block": Param("block", int, 4, 512, help="block size in pixels"),
        "alpha": Param("alpha", float, 0.0, 1.0, help="edge threshold across the block boundary"),
        "beta": Param("beta", float, 0.0, 1.0, help="edge threshold beside the boundary"),
        "gamma": Param("gamma", float, 0.0, 1.0, help="strong filter threshold"),
        "delta": Param("delta", float, 0.0, 1.0, help="weak filter correction limit"),
    },
    "idet": {},
    "scdet": {
        "threshold": Param("threshold", float, 0.0, 100.0,
                           help="scene change score (0-100, how much of the picture changed) that marks a cut"),
    },
}


@dataclasses.dataclass(frozen=True)
class FilterStep:
    """One checked filter of a chain: FFmpeg filter name plus its formatted options."""

    filter: str
    options: tuple[tuple[str, str], ...]


def available(filter_name: str) -> bool:
    """Whether this PyAV build's libavfilter has `filter_name` (hqdn3d is missing from LGPL builds)."""
    return filter_name in av.filter.filters_available


def make_step(filter_name: str, values: Mapping[str, Any], owner: str | None = None) -> FilterStep:
    """A FilterStep with every value in `values` checked against the filter's `Param` table."""
    spec = FILTER_PARAMS.get(filter_name)
    if spec is None:
        raise InputError(f"unknown filter {filter_name!r}; known: {', '.join(sorted(FILTER_PARAMS))}")
    if not available(filter_name):
        raise InputError(f"filter {filter_name!r} is not in this build of FFmpeg (PyAV {av.__version__}); "
                         "pick another method")
    owner = owner or filter_name
    options = []
    for key, value in values.items():
        param = spec.get(key)
        if param is None:
            raise InputError(f"{owner} has no parameter {key!r}; it takes: {', '.join(spec) or 'none'}")
        options.append((key, param.to_option(param.check(value, owner))))
    return FilterStep(filter_name, tuple(options))


def step_reach(step: FilterStep) -> Reach:
    """How many frames around each output frame this filter reads (`clip.Reach`).

    bwdif and yadif read the previous and the next frame; fftdnoiz its `prev` and `next` frames;
    atadenoise a window of `s` frames centred on the frame (tests/test_segments.py checks each
    figure is enough and needed). hqdn3d's temporal part is recursive and cannot be measured in
    builds without it, so a clip it denoises is never split inside a shot.
    """
    options = dict(step.options)
    if step.filter in ("bwdif", "yadif"):
        return Reach(before=1, after=1, name=step.filter)
    if step.filter == "fftdnoiz":
        return Reach(before=int(options.get("prev", 0)), after=int(options.get("next", 0)), name=step.filter)
    if step.filter == "atadenoise":
        half = int(options.get("s", 9)) // 2
        return Reach(before=half, after=half, name=step.filter)
    if step.filter == "hqdn3d":
        return Reach(splits_in_shot=False, name=step.filter)
    return Reach(name=step.filter)


@dataclasses.dataclass(frozen=True)
class PixelLayout:
    """How float RGB frames are handed to libavfilter: planar RGB at 16 or 8 bits."""

    rgb: str
    alpha: str
    dtype: type
    scale: float


LAYOUT_16 = PixelLayout("gbrp16le", "gray16le", np.uint16, 65535.0)
LAYOUT_8 = PixelLayout("gbrp", "gray", np.uint8, 255.0)

# Filters whose libavfilter code only takes 8-bit input (the graph would insert a scaler).
EIGHT_BIT_ONLY = frozenset({"nlmeans"})


def layout_for(steps: Sequence[FilterStep]) -> PixelLayout:
    return LAYOUT_8 if any(step.filter in EIGHT_BIT_ONLY for step in steps) else LAYOUT_16


_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?(e[-+]?[0-9]+)?")
# Keyword names that PyAV's Graph.add() keeps for itself (deblock has an option called `filter`).
_RESERVED_KEYWORDS = frozenset({"filter", "args", "name"})


def _add_filter(graph: av.filter.Graph, step: FilterStep) -> av.filter.context.FilterContext:
    """Add one filter with its checked options, passed as an options dict.

    When an option name collides with Graph.add()'s own keywords, the options go as an
    `key=value:...` init string instead, built only from our fixed option names and
    numbers this module formatted (asserted here, so no other text can reach FFmpeg).
    """
    options = dict(step.options)
    if not _RESERVED_KEYWORDS.intersection(options):
        return graph.add(step.filter, **options)
    known = FILTER_PARAMS[step.filter]
    for key, value in options.items():
        if key not in known or not _NUMBER.fullmatch(value):
            raise ValueError(f"refusing unchecked option {key}={value!r} for {step.filter}")
    return graph.add(step.filter, ":".join(f"{key}={value}" for key, value in options.items()))


def time_base_for(fps: Fraction | None) -> Fraction:
    """The filter graph's time base: one frame, or 1/25 s when the rate is unknown."""
    return Fraction(1) / fps if fps else Fraction(1, 25)


class FilterRunner:
    """One live filter graph: push frames in, get filtered frames out, flush at the end."""

    def __init__(self, steps: Sequence[FilterStep], width: int, height: int, pix_fmt: str,
                 time_base: Fraction):
        self.time_base = time_base
        self._graph = av.filter.Graph()
        node = self._graph.add_buffer(width=width, height=height, format=pix_fmt, time_base=time_base)
        for step in steps:
            following = _add_filter(self._graph, step)
            node.link_to(following)
            node = following
        sink = self._graph.add("buffersink")
        node.link_to(sink)
        self._graph.configure()
        self._pts = 0
        self._ended = False

    def push(self, frame: av.VideoFrame) -> list[av.VideoFrame]:
        frame.pts = self._pts
        frame.time_base = self.time_base
        self._pts += 1
        self._graph.push(frame)
        return self._drain()

    def flush(self) -> list[av.VideoFrame]:
        """Signal end of stream and return the frames the filters were still holding."""
        if self._ended:
            return []
        self._ended = True
        self._graph.push(None)
        return self._drain()

    def _drain(self) -> list[av.VideoFrame]:
        out = []
        while True:
            try:
                out.append(self._graph.pull())
            except _BLOCKED:
                return out


def run_on_frames(steps: Sequence[FilterStep], frames: Iterable[av.VideoFrame],
                  time_base: Fraction = Fraction(1, 25)) -> Iterator[av.VideoFrame]:
    """Filter PyAV frames (any format libavfilter accepts) through `steps`, graph built on the first frame."""
    runner: FilterRunner | None = None
    for frame in frames:
        if runner is None:
            runner = FilterRunner(steps, frame.width, frame.height, frame.format.name, time_base)
        yield from runner.push(frame)
    if runner is not None:
        yield from runner.flush()


def to_ints(frames: torch.Tensor, layout: PixelLayout) -> np.ndarray:
    """Float frames in 0..1 as rounded integers of the layout's depth (NumPy: one pass, no threads)."""
    values = np.clip(frames.detach().cpu().numpy(), 0.0, 1.0) * layout.scale
    return np.rint(values, out=values).astype(layout.dtype)


def _from_frame(frame: av.VideoFrame, expected: str) -> np.ndarray:
    if frame.format.name != expected:
        raise RuntimeError(f"filter graph returned {frame.format.name}, expected {expected}")
    return frame.to_ndarray()


def _to_float(frames: list[np.ndarray], layout: PixelLayout) -> torch.Tensor:
    stacked = np.stack(frames).astype(np.float32)
    stacked *= np.float32(1.0 / layout.scale)
    return torch.from_numpy(stacked)


def filter_chunks(chunks: Iterable[torch.Tensor], steps: Sequence[FilterStep], *, width: int, height: int,
                  fps: Fraction, alpha_steps: Sequence[FilterStep] | None = None,
                  progress: Progress | None = None) -> Iterator[torch.Tensor]:
    """Run float RGB(A) chunks through one graph kept alive across all chunks.

    RGB goes through `steps`. Alpha (4-channel chunks) goes through its own graph of
    `alpha_steps`, or, when that is None, is carried unchanged beside its frame (valid for
    filters that emit exactly one frame per input frame, in order). Output chunks hold at
    most as many frames as the largest input chunk, so a field-rate pass (twice the frames)
    does not double the chunk size downstream stages receive.
    """
    layout = layout_for(list(steps) + list(alpha_steps or []))
    time_base = time_base_for(fps)
    rgb_runner = FilterRunner(steps, width, height, layout.rgb, time_base)
    alpha_runner: FilterRunner | None = None
    rgb_out: list[np.ndarray] = []
    alpha_out: deque[torch.Tensor | np.ndarray] = deque()
    has_alpha = False
    biggest = 1

    def ready() -> Iterator[torch.Tensor]:
        count = min(len(rgb_out), len(alpha_out)) if has_alpha else len(rgb_out)
        if count == 0:
            return
        frames = _to_float(rgb_out[:count], layout)
        del rgb_out[:count]
        if has_alpha:
            alpha = [alpha_out.popleft() for _ in range(count)]
            if alpha_steps is None:
                alpha_tensor = torch.stack(alpha)
            else:
                alpha_tensor = _to_float(alpha, layout)[..., None]
            frames = torch.cat([frames, alpha_tensor], dim=-1)
        for start in range(0, count, biggest):
            yield frames[start:start + biggest]

    for chunk in chunks:
        if progress is not None:
            progress.check_cancel()
        biggest = max(biggest, int(chunk.shape[0]))
        has_alpha = chunk.shape[-1] == 4
        ints = to_ints(chunk, layout)
        for index, frame in enumerate(ints):
            rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[..., :3]), format=layout.rgb)
            rgb_out.extend(_from_frame(f, layout.rgb) for f in rgb_runner.push(rgb))
            if not has_alpha:
                continue
            if alpha_steps is None:
                alpha_out.append(chunk[index, ..., 3:4].float().clamp(0, 1))
                continue
            if alpha_runner is None:
                alpha_runner = FilterRunner(alpha_steps, width, height, layout.alpha, time_base)
            alpha = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[..., 3]), format=layout.alpha)
            alpha_out.extend(_from_frame(f, layout.alpha) for f in alpha_runner.push(alpha))
        yield from ready()
        if progress is not None:
            progress.advance(int(chunk.shape[0]))
    rgb_out.extend(_from_frame(f, layout.rgb) for f in rgb_runner.flush())
    if alpha_runner is not None:
        alpha_out.extend(_from_frame(f, layout.alpha) for f in alpha_runner.flush())
    yield from ready()
