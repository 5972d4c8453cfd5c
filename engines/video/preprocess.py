"""Clean a clip before upscaling: deinterlace, deblock, denoise (FFmpeg's libavfilter via PyAV).

An upscaler cannot tell grain from texture or interlace combing from detail: it enlarges
both. These stages run first, streaming chunk by chunk, each keeping one filter graph alive
for the whole pass so temporal filters see across chunk boundaries (filtering in chunks gives
exactly the frames of filtering the clip in one go).

Frames go to libavfilter as planar 16-bit RGB (8-bit for nlmeans, whose FFmpeg code only
takes 8-bit input); alpha is deinterlaced as its own plane and carried unchanged through
denoising.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import torch

from ..clip import Clip, Reach, field_order_name, normalize_field_order
from ..errors import InputError
from ..progress import Progress
from .filters import (
    FILTER_PARAMS,
    FilterStep,
    Param,
    available,
    filter_chunks,
    make_step,
    run_on_frames,
    step_reach,
    time_base_for,
)
from .scenes import DEFAULT_SCENE_THRESHOLD, SCENE_THRESHOLD, detector_for, split_shots

DETECT_FRAMES = 60
"""Frames idet looks at when the stream does not say whether it is interlaced."""
DETECT_FRAMES_RANGE = Param("detect_frames", int, 2, 100000)

DEINTERLACE_MODES = ("auto", "on", "off")
DEINTERLACE_METHODS = ("bwdif", "yadif")
DEINTERLACE_RATES = ("frame", "field")
PARITIES = ("auto", "tff", "bff")


def _choice(name: str, options: tuple[str, ...], value: Any, owner: str) -> str:
    return Param(name, str, choices={o: i for i, o in enumerate(options)}).check(value, owner)


@dataclasses.dataclass(frozen=True)
class InterlaceVerdict:
    """What idet saw: per-frame counts (single-frame detection) and the verdict drawn from them.

    `verdict` is 'tff' or 'bff' when clearly interlaced frames dominate (more than twice the
    progressive ones and at least a quarter of all), 'progressive' when progressive frames
    are at least as many as interlaced ones, else 'undetermined' (e.g. still pictures).
    idet's multi-frame counts, which carry history and can lock onto a field order on
    low-motion progressive video, are reported but not used for the verdict.
    """

    verdict: str
    frames: int
    tff: int
    bff: int
    progressive: int
    undetermined: int
    multiple: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _verdict_from_counts(tff: int, bff: int, progressive: int, frames: int) -> str:
    interlaced = tff + bff
    if interlaced > 2 * progressive and 4 * interlaced >= frames and interlaced > 0:
        return "tff" if tff >= bff else "bff"
    if progressive > 0 and progressive >= interlaced:
        return "progressive"
    return "undetermined"


def detect_interlacing_frames(frames: Iterable[av.VideoFrame], time_base: Fraction = Fraction(1, 25)
                              ) -> InterlaceVerdict:
    """Run FFmpeg's idet over PyAV frames (any pixel format) and return its counts and verdict."""
    last: av.VideoFrame | None = None
    seen = 0
    for out in run_on_frames([make_step("idet", {})], frames, time_base):
        last = out
        seen += 1
    if last is None:
        return InterlaceVerdict("undetermined", 0, 0, 0, 0, 0, {})
    meta = dict(last.metadata)

    def count(kind: str, name: str) -> int:
        return int(round(float(meta.get(f"lavfi.idet.{kind}.{name}", 0))))

    single = {name: count("single", name) for name in ("tff", "bff", "progressive", "undetermined")}
    multiple = {name: count("multiple", name) for name in ("tff", "bff", "progressive", "undetermined")}
    verdict = _verdict_from_counts(single["tff"], single["bff"], single["progressive"], seen)
    return InterlaceVerdict(verdict, seen, single["tff"], single["bff"], single["progressive"],
                            single["undetermined"], multiple)


def _luma_frames(clip: Clip, limit: int) -> Iterator[av.VideoFrame]:
    """The first `limit` frames of the clip as 16-bit grey (BT.601 luma weights) for idet."""
    pulled = 0
    chunks = clip.chunks()
    try:
        for chunk in chunks:
            rgb = chunk[..., :3].clamp(0, 1).numpy()
            luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
            for plane in (luma * 65535.0).round().astype("uint16"):
                if pulled >= limit:
                    return
                pulled += 1
                yield av.VideoFrame.from_ndarray(plane, format="gray16le")
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def detect_interlacing(clip: Clip, frames: int = DETECT_FRAMES) -> InterlaceVerdict:
    """idet over the first `frames` frames of a clip (a separate, short pass over its source)."""
    frames = DETECT_FRAMES_RANGE.check(frames, "deinterlace")
    time_base = time_base_for(clip.info.fps)
    return detect_interlacing_frames(_luma_frames(clip, frames), time_base)


def interlace_report(path: str | Path, frames: int = DETECT_FRAMES, stream_index: int | None = None
                     ) -> dict[str, Any]:
    """Field order from the stream's metadata plus idet's verdict on the first decoded frames.

    `stream_index` is the container's stream index (default: the first video stream). Frames
    go to idet as decoded (native pixel format, no RGB round trip). Used by `probe`.
    """
    frames = DETECT_FRAMES_RANGE.check(frames, "interlace report")
    with av.open(str(path)) as container:
        videos = [s for s in container.streams.video if stream_index is None or s.index == stream_index]
        if not videos:
            raise InputError(f"'{path}' has no video stream" + ("" if stream_index is None else
                                                                 f" with index {stream_index}"))
        stream = videos[0]
        metadata = normalize_field_order(field_order_name(stream.codec_context.field_order))
        time_base = time_base_for(stream.average_rate)
        decoded = itertools.islice(container.decode(stream), frames)
        verdict = detect_interlacing_frames(decoded, time_base)
    return {"field_order": metadata, "idet": verdict.to_dict()}


def _deinterlace_steps(method: str, rate: str, parity: str) -> list[FilterStep]:
    mode = "send_field" if rate == "field" else "send_frame"
    return [make_step(method, {"mode": mode, "parity": parity, "deint": "all"}, owner="deinterlace")]


def deinterlace_reaches(method: str = "bwdif", rate: str = "frame",
                        scene_threshold: float = DEFAULT_SCENE_THRESHOLD) -> list[Reach]:
    """How far the deinterlacer looks around each frame (`clip.Reach`), in input frames; with cut
    detection on, one frame more before a segment, as for the temporal denoisers (`denoise_reaches`)."""
    reaches = [step_reach(step) for step in _deinterlace_steps(method, rate, "tff")]
    if not SCENE_THRESHOLD.check(scene_threshold, "deinterlace"):
        return reaches
    return [dataclasses.replace(r, before=r.before + 1, restarts_at_cuts=True) for r in reaches]


def deinterlace_clip(clip: Clip, mode: str = "auto", method: str = "bwdif", rate: str = "frame",
                     parity: str = "auto", detect_frames: int = DETECT_FRAMES,
                     progress: Progress | None = None, scene_threshold: float = DEFAULT_SCENE_THRESHOLD) -> Clip:
    """Deinterlace with bwdif or yadif; returns `clip` itself when there is nothing to do.

    mode: 'auto' deinterlaces only interlaced input (field order from the stream's metadata,
    idet on the first `detect_frames` frames when the metadata says 'unknown'); progressive
    input comes back untouched, the very same clip. 'on' always deinterlaces; 'off' never.
    rate: 'frame' gives one frame per input frame; 'field' one per field (29.97i -> 59.94p),
    doubling fps and frame count so the duration is unchanged.
    parity: 'auto' uses the field order found as above (idet decides when the metadata does
    not; top field first when idet cannot tell), or force 'tff' / 'bff'.
    Both filters read the frame before and after; they start afresh at each scene cut scdet finds
    at `scene_threshold` (0: never), so no field of one shot is woven into the next.
    """
    mode = _choice("mode", DEINTERLACE_MODES, mode, "deinterlace")
    method = _choice("method", DEINTERLACE_METHODS, method, "deinterlace")
    rate = _choice("rate", DEINTERLACE_RATES, rate, "deinterlace")
    parity = _choice("parity", PARITIES, parity, "deinterlace")
    detect_frames = DETECT_FRAMES_RANGE.check(detect_frames, "deinterlace")
    scene_threshold = SCENE_THRESHOLD.check(scene_threshold, "deinterlace")
    if mode == "off":
        return clip

    stated = normalize_field_order(clip.info.field_order)
    report: dict[str, Any] = {"metadata": stated}
    if parity != "auto":
        order, source = parity, "parameter"
    elif stated in ("tff", "bff"):
        order, source = stated, "metadata"
    elif mode == "auto" and stated == "progressive":
        return clip
    else:
        verdict = detect_interlacing(clip, detect_frames)
        report["idet"] = verdict.to_dict()
        if verdict.verdict in ("tff", "bff"):
            order, source = verdict.verdict, "idet"
        elif mode == "auto":
            return clip
        else:
            order, source = "tff", "default"

    steps = _deinterlace_steps(method, rate, order)
    factor = 2 if rate == "field" else 1
    info = clip.info
    report.update(method=method, rate=rate, field_order=order, source=source)

    def stage(chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        for shot in split_shots(chunks, detector_for(clip, scene_threshold) if scene_threshold else None):
            yield from filter_chunks(shot, steps, width=info.width, height=info.height, fps=info.fps,
                                     alpha_steps=steps, progress=progress)

    return clip.then(stage, fps=info.fps * factor, frame_count=info.frame_count * factor,
                     field_order="progressive", extra={**info.extra, "deinterlace": report})


@dataclasses.dataclass(frozen=True)
class DenoiseMethod:
    """A denoiser: its FFmpeg filter, what it does, its presets, and which option `strength` sets."""

    filter: str
    kind: str
    presets: Mapping[str, Mapping[str, Any]]
    strength_options: tuple[str, ...]
    strength_follow: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Options that follow `strength` at a fixed ratio (e.g. hqdn3d's temporal strength)."""


_ATA = ("0a", "1a", "2a")
_ATA_B = ("0b", "1b", "2b")


def _ata(threshold_a: float, threshold_b: float, frames: int) -> dict[str, Any]:
    return {**{k: threshold_a for k in _ATA}, **{k: threshold_b for k in _ATA_B}, "s": frames}


DENOISE_METHODS: dict[str, DenoiseMethod] = {
    "fftdnoiz": DenoiseMethod(
        "fftdnoiz", "temporal + spatial (3D FFT over the previous, current and next frame)",
        {"light": {"sigma": 3.0, "prev": 1, "next": 1},
         "medium": {"sigma": 6.0, "prev": 1, "next": 1},
         "strong": {"sigma": 12.0, "prev": 1, "next": 1}},
        ("sigma",)),
    # A 5-frame window throughout: wider windows smear moving detail more than they remove noise.
    "atadenoise": DenoiseMethod(
        "atadenoise", "temporal (adaptive averaging over a window of frames)",
        {"light": _ata(0.06, 0.3, 5), "medium": _ata(0.12, 0.6, 5), "strong": _ata(0.2, 1.0, 5)},
        _ATA),
    "nlmeans": DenoiseMethod(
        "nlmeans", "spatial (non-local means; 8-bit in FFmpeg)",
        {"light": {"s": 2.0}, "medium": {"s": 4.0}, "strong": {"s": 8.0}},
        ("s",)),
    "hqdn3d": DenoiseMethod(
        "hqdn3d", "temporal + spatial (only in FFmpeg builds with GPL filters)",
        {"light": {"luma_spatial": 2.0, "chroma_spatial": 2.0, "luma_tmp": 3.0, "chroma_tmp": 3.0},
         "medium": {"luma_spatial": 4.0, "chroma_spatial": 4.0, "luma_tmp": 6.0, "chroma_tmp": 6.0},
         "strong": {"luma_spatial": 8.0, "chroma_spatial": 8.0, "luma_tmp": 12.0, "chroma_tmp": 12.0}},
        ("luma_spatial", "chroma_spatial"), {"luma_tmp": 1.5, "chroma_tmp": 1.5}),
}
DEFAULT_DENOISE_METHOD = "fftdnoiz"
TEMPORAL_FILTERS = frozenset({"fftdnoiz", "atadenoise", "hqdn3d"})
"""Denoisers that look at other frames: they restart at scene cuts so no shot is averaged into the next."""
DENOISE_PRESETS = ("none", "light", "medium", "strong")


def denoise_methods_available() -> list[str]:
    """Denoise methods this FFmpeg build can run (hqdn3d only where the build has it)."""
    return [name for name, method in DENOISE_METHODS.items() if available(method.filter)]


def deblock_options(strength: float) -> dict[str, Any]:
    """FFmpeg deblock settings for a 0..1 strength; 0.5 is FFmpeg's own default thresholds."""
    strength = Param("deblock_strength", float, 0.0, 1.0).check(strength, "denoise")
    return {"filter": "strong", "alpha": round(0.196 * strength, 6), "beta": round(0.1 * strength, 6),
            "gamma": round(0.1 * strength, 6), "delta": round(0.1 * strength, 6)}


def denoise_steps(preset: str = "medium", method: str = DEFAULT_DENOISE_METHOD, strength: float | None = None,
                  options: Mapping[str, Any] | None = None, deblock: bool = False,
                  deblock_strength: float = 0.5, deblock_block: int = 8) -> list[FilterStep]:
    """The checked filter chain for these settings: deblock first, then the denoiser."""
    preset = _choice("preset", DENOISE_PRESETS, preset, "denoise")
    method = _choice("method", tuple(DENOISE_METHODS), method, "denoise")
    if not isinstance(deblock, bool):
        raise InputError(f"denoise parameter 'deblock' must be true or false; got {deblock!r}")
    chosen = DENOISE_METHODS[method]
    steps: list[FilterStep] = []
    if deblock:
        block = Param("deblock_block", int, 4, 512).check(deblock_block, "denoise")
        steps.append(make_step("deblock", {**deblock_options(deblock_strength), "block": block},
                               owner="denoise (deblock)"))
    if preset == "none":
        if strength is not None or options:
            raise InputError("denoise preset 'none' turns denoising off, so 'strength' and filter options "
                             "have no effect; pick light, medium or strong")
        return steps
    if not available(chosen.filter):
        raise InputError(
            f"denoise method {method!r} is not in this FFmpeg build (PyAV's LGPL wheels leave out GPL "
            f"filters such as hqdn3d); pick one of {', '.join(denoise_methods_available())}")
    values = dict(chosen.presets[preset])
    if strength is not None:
        spec = FILTER_PARAMS[chosen.filter][chosen.strength_options[0]]
        checked = Param("strength", spec.kind, spec.low, spec.high).check(strength, f"denoise ({method})")
        for name in chosen.strength_options:
            values[name] = checked
        for name, ratio in chosen.strength_follow.items():
            high = FILTER_PARAMS[chosen.filter][name].high
            values[name] = checked * ratio if high is None else min(high, checked * ratio)
    values.update(options or {})
    steps.append(make_step(chosen.filter, values, owner=f"denoise ({method})"))
    return steps


def denoise_reaches(preset: str = "medium", method: str = DEFAULT_DENOISE_METHOD,
                    scene_threshold: float = DEFAULT_SCENE_THRESHOLD) -> list[Reach]:
    """How far the deblock/denoise chain of these settings looks around each frame (`clip.Reach`).

    A temporal denoiser that restarts at scene cuts needs one frame more before a segment than its
    window: scdet scores a frame against the two before it, and the cut flags of every frame whose
    window reaches into the segment must come out as in one pass.
    """
    reaches = [step_reach(step) for step in denoise_steps(preset, method)]
    threshold = SCENE_THRESHOLD.check(scene_threshold, "denoise")
    if not threshold:
        return reaches
    # A recursive one (hqdn3d) restarts at cuts found on its own input, which need not be the cuts
    # the segments are planned at: it stays unsplit (step_reach).
    return [dataclasses.replace(r, before=r.before + 1, restarts_at_cuts=True)
            if r.name in TEMPORAL_FILTERS and r.splits_in_shot and r.before else r for r in reaches]


def denoise_clip(clip: Clip, preset: str = "medium", method: str = DEFAULT_DENOISE_METHOD,
                 strength: float | None = None, options: Mapping[str, Any] | None = None,
                 deblock: bool = False, deblock_strength: float = 0.5, deblock_block: int = 8,
                 progress: Progress | None = None, scene_threshold: float = DEFAULT_SCENE_THRESHOLD) -> Clip:
    """Deblock and/or denoise a clip, streaming; the frame count and rate are unchanged.

    preset: 'light', 'medium', 'strong' ('none': no denoiser, e.g. deblock only).
    method: see `DENOISE_METHODS` (default fftdnoiz; hqdn3d only where FFmpeg has it).
    strength: overrides the method's main option (fftdnoiz sigma, atadenoise threshold A,
    nlmeans s, hqdn3d spatial), checked against that option's range.
    options: further FFmpeg options of the method by name (e.g. {"s": 9} for atadenoise),
    each type- and range-checked. deblock: run FFmpeg's deblock first (compressed sources),
    `deblock_strength` 0..1 scaling its thresholds, `deblock_block` its block size.
    Temporal state crosses chunk boundaries: chunked output equals whole-clip output. Temporal
    denoisers start afresh at each scene cut scdet finds at `scene_threshold` (0: never), so each
    shot is denoised as if alone.
    """
    steps = denoise_steps(preset, method, strength, options, deblock, deblock_strength, deblock_block)
    if not steps:
        return clip
    info = clip.info
    temporal = any(step.filter in TEMPORAL_FILTERS for step in steps)
    scene_threshold = SCENE_THRESHOLD.check(scene_threshold, "denoise")

    def stage(chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        detector = detector_for(clip, scene_threshold) if temporal else None
        for shot in split_shots(chunks, detector):
            yield from filter_chunks(shot, steps, width=info.width, height=info.height, fps=info.fps,
                                     alpha_steps=None, progress=progress)

    return clip.then(stage, extra={**info.extra, "denoise": [dataclasses.asdict(s) for s in steps]})


def denoise_images(images: torch.Tensor, preset: str = "medium", method: str = DEFAULT_DENOISE_METHOD,
                   strength: float | None = None, options: Mapping[str, Any] | None = None,
                   deblock: bool = False, deblock_strength: float = 0.5, deblock_block: int = 8,
                   progress: Progress | None = None) -> torch.Tensor:
    """Denoise an in-memory IMAGE batch [B, H, W, C]; temporal methods treat it as a frame sequence."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"images must be a [frames, height, width, 3 or 4] batch; got {shape}")
    clip = Clip.from_tensor(images, fps=25)
    out = denoise_clip(clip, preset, method, strength, options, deblock, deblock_strength, deblock_block,
                       progress)
    return out.to_tensor()
