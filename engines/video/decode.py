"""Open a video file as a lazy, streaming `Clip`.

Nothing is decoded when the clip is opened: the file is probed (exact frame
count, rate, colour, audio) and the clip's source decodes chunk by chunk each
time an output pulls it. Frames are selected on a constant-rate timeline:

1. `force_fps` (optional) resamples the stream to that constant rate by
   timestamps, duplicating or dropping frames (the way to tame VFR phone video);
   without it the stream's own frames are numbered in order;
2. the first `skip_first` frames of that timeline are skipped;
3. every `every_nth` frame is kept (the clip's rate becomes rate / every_nth, so
   its duration and audio sync are kept);
4. at most `max_frames` frames are kept (0: all).

YUV is converted to RGB with the stream's own matrix and range (`engines.video.colors`);
10-bit sources go to float without an 8-bit step; display rotation is applied;
odd sizes are kept; alpha is kept where the pixel format carries it, and for VP8/VP9
with alpha in WebM/Matroska through libvpx's decoder (FFmpeg's own drops it).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from ..clip import (
    AudioTrack,
    Clip,
    ClipInfo,
    ColorInfo,
    chunk_frames_for,
    fit_channels,
    normalize_field_order,
    to_fraction,
)
from ..errors import InputError
from .colors import parse_matrix, parse_range, yuv_to_rgb
from .probe import (
    MediaInfo,
    VideoStreamInfo,
    alpha_decoder_name,
    check_readable,
    decode_packets,
    open_container,
    pix_fmt_traits,
    probe,
)

log = logging.getLogger(__name__)

_PLANAR_YUV = re.compile(r"^(yuva?|yuvj)(444|422|420|440|411|410)p(9le|10le|12le|14le|16le)?$")
_GRAY = re.compile(r"^gray(9le|10le|12le|14le|16le)?$")
_GRAY_ALPHA = re.compile(r"^ya(8|16le|16be)$")
DECODE_CHUNK_BYTES = 32 * 1024 * 1024
"""Float32 bytes per decoded chunk (two 720p frames, one 1080p frame). Larger chunks only raise
peak memory and, above glibc's mmap threshold (32 MiB), pay fresh page faults for every chunk;
stages that want more frames at once regroup them (`clip.rechunk`)."""


def open_clip(path: str | os.PathLike, *, skip_first: int = 0, max_frames: int = 0, every_nth: int = 1,
              force_fps: Fraction | float | int | str | None = None, chunk_frames: int | None = None,
              color_matrix: str | None = None, color_range: str | None = None) -> Clip:
    """A lazy clip of the video in `path`; raises `InputError` with what to do when it cannot be used.

    `color_matrix` ("bt601", "bt709", "bt2020") and `color_range` ("tv"/"limited", "pc"/"full")
    override the stream's tags for mis-tagged files; None uses the tags (or our untagged default).
    """
    file = check_readable(path)
    info = probe(file)
    video = info.video
    if video is None:
        kind = "an audio-only file" if info.audio_streams else "a file with no video stream"
        raise InputError(f"'{file}' is {kind}; vsrkit needs a video. Pick a video file "
                         "(to add this audio to a video, use it as the AUDIO input of Images to Clip)")
    if skip_first < 0 or max_frames < 0:
        raise InputError(f"skip_first ({skip_first}) and max_frames ({max_frames}) must not be negative")
    if every_nth < 1:
        raise InputError(f"every_nth must be 1 or more, got {every_nth}")
    timeline_fps, timeline_count = _timeline(video, force_fps)
    remaining = max(0, timeline_count - skip_first)
    count = math.ceil(remaining / every_nth)
    if max_frames:
        count = min(count, max_frames)
    if count <= 0:
        raise InputError(f"skip_first={skip_first} skips all {timeline_count} frames of '{file}'; "
                         "use a smaller skip_first")
    out_fps = timeline_fps / every_nth
    color = _color_override(video.color, color_matrix, color_range)
    rotation = video.rotation % 360
    width, height = (video.height, video.width) if rotation % 180 else (video.width, video.height)
    channels = 4 if video.has_alpha else 3
    step = chunk_frames or chunk_frames_for(width, height, channels, DECODE_CHUNK_BYTES)
    if step < 1:
        raise InputError(f"chunk_frames must be 1 or more, got {chunk_frames}")
    start_seconds = video.start_time + float(skip_first / timeline_fps)
    clip_info = ClipInfo(
        width=width, height=height, fps=out_fps, frame_count=count, channels=channels,
        bit_depth=video.bit_depth, color=color, audio=_audio_track(info, start_seconds),
        source_path=str(file), sar=video.sar if not rotation % 180 else 1 / video.sar,
        field_order=normalize_field_order(video.field_order),
        extra={"vfr": video.vfr, "codec": video.codec, "pix_fmt": video.pix_fmt, "profile": video.profile,
               "source_frame_count": video.frame_count, "source_fps": video.fps,
               "forced_fps": force_fps is not None, "rotation": rotation},
    )
    plan = _Plan(file=file, stream_index=video.index, start_time=video.start_time, resample=force_fps is not None,
                 timeline_fps=timeline_fps, timeline_count=timeline_count, skip_first=skip_first,
                 every_nth=every_nth, count=count, chunk=step, color=color, rotation=rotation,
                 channels=channels, seekable=force_fps is not None or not video.vfr)
    return Clip(clip_info, lambda: _decode_chunks(plan))


def _timeline(video: VideoStreamInfo, force_fps) -> tuple[Fraction, int]:
    """The constant-rate timeline frames are numbered on: (rate, frame count)."""
    if force_fps is None or force_fps == 0:
        return video.fps, video.frame_count
    try:
        fps = to_fraction(force_fps)
    except (ValueError, ZeroDivisionError) as exc:
        raise InputError(f"force_fps must be a positive frame rate, got {force_fps!r}") from exc
    duration = video.frame_count / video.fps if not video.vfr else Fraction(video.duration).limit_denominator(1_000_000)
    return fps, max(1, math.floor(duration * fps + Fraction(1, 2)))


def _color_override(color: ColorInfo, matrix: str | None, color_range: str | None) -> ColorInfo:
    changes = {}
    if matrix and matrix != "auto":
        changes["matrix"] = parse_matrix(matrix)
    if color_range and color_range != "auto":
        changes["range"] = parse_range(color_range)
    if not changes:
        return color
    return dataclasses.replace(color, tagged=True, **changes)


def _audio_track(info: MediaInfo, start_seconds: float) -> AudioTrack | None:
    audio = info.audio
    if audio is None:
        return None
    return AudioTrack(path=info.path, stream_index=audio.index, start_seconds=start_seconds,
                      sample_rate=audio.sample_rate, codec=audio.codec, channels=audio.channels)


class _Plan:
    """Everything one decoding pass needs; plain attributes so the source closure stays small."""

    def __init__(self, **values):
        self.__dict__.update(values)


def _frame_seconds(frame: av.VideoFrame, previous: float | None, step: float) -> float:
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base)
    return (previous + step) if previous is not None else 0.0


def _resampled(frames: Iterator[av.VideoFrame], start: float, fps: Fraction,
               count: int) -> Iterator[av.VideoFrame]:
    """Constant-rate frames by timestamp: slot k shows the last frame whose time rounds to <= k."""
    slot = 0
    current = None
    previous_time = None
    step = 1.0 / float(fps)
    for frame in frames:
        previous_time = _frame_seconds(frame, previous_time, step)
        frame_slot = math.floor((previous_time - start) * float(fps) + 0.5)
        if current is None:
            current = frame
        while slot < frame_slot and slot < count:
            yield current
            slot += 1
        current = frame
        if slot >= count:
            return
    while current is not None and slot < count:
        yield current
        slot += 1


def _numbered(frames: Iterator[av.VideoFrame], count: int, file: Path) -> Iterator[av.VideoFrame]:
    """Exactly `count` frames: the stream's own in order.

    A stream that ends a frame or two early (some encoders miscount) has its last frame
    repeated; one that ends far earlier is truncated or damaged and raises InputError.
    """
    produced = 0
    last = None
    for frame in frames:
        if produced >= count:
            log.warning("%s has more frames than the %d counted; the rest are left out", file, count)
            return
        yield frame
        last = frame
        produced += 1
    if last is None:
        raise InputError(f"no frame of '{file}' could be decoded; the file is damaged or truncated. "
                         "Re-export or re-download it")
    missing = count - produced
    if missing > max(2, count // 100):
        raise InputError(f"'{file}' ends after {produced} of its {count} frames: it is truncated or damaged. "
                         f"Re-export or re-download it, or load at most {produced} frames (frame_load_cap)")
    if missing:
        log.warning("%s: decoded %d of %d frames; repeating the last one", file, produced, count)
    while produced < count:
        yield last
        produced += 1


SEEK_AFTER_SECONDS = 4.0
"""Skips shorter than this decode from the start; longer ones seek to a keyframe first."""


def _decode_chunks(plan: _Plan) -> Iterator[torch.Tensor]:
    with open_container(plan.file) as container:
        frames, first_index = _frames_near_skip(container, plan)
        if plan.resample:
            timeline = _resampled(frames, plan.start_time, plan.timeline_fps, plan.timeline_count)
        else:
            timeline = _numbered(frames, plan.timeline_count - first_index, plan.file)
        converter = FrameConverter(plan.color, plan.rotation, plan.channels)
        batch: list[av.VideoFrame] = []
        kept = 0
        for index, frame in enumerate(timeline, start=first_index):
            if index < plan.skip_first or (index - plan.skip_first) % plan.every_nth:
                continue
            batch.append(frame)
            kept += 1
            if len(batch) == plan.chunk or kept == plan.count:
                yield converter(batch)
                batch = []
            if kept == plan.count:
                if index == plan.timeline_count - 1:
                    next(timeline, None)  # the file should end here; _numbered warns if it does not
                return
        if batch:
            yield converter(batch)


def _frames_near_skip(container: av.container.InputContainer, plan: _Plan) -> tuple[Iterator[av.VideoFrame], int]:
    """Decoded frames and the timeline index of the first one.

    A long skip seeks to the keyframe a second before the first wanted frame (a constant-rate
    stream numbers frames by timestamp); if the demuxer lands past it, decoding restarts at 0.
    In resampling mode frames are placed by timestamp anyway, so the index is 0.
    """
    stream = container.streams[plan.stream_index]
    stream.thread_type = "AUTO"
    target = float(plan.skip_first / plan.timeline_fps)
    if not plan.seekable or target < SEEK_AFTER_SECONDS:
        return decode_packets(container, stream, decoder=alpha_decoder(stream)), 0
    seconds = plan.start_time + target - 1.0
    container.seek(int(seconds / stream.time_base), stream=stream, backward=True)
    frames = decode_packets(container, stream, decoder=alpha_decoder(stream))
    first = next(frames, None)
    if first is not None and first.pts is not None:
        time = float(first.pts * first.time_base)
        index = math.floor((time - plan.start_time) * float(plan.timeline_fps) + 0.5)
        if 0 <= index <= plan.skip_first:
            log.debug("seeked %s to frame %d for skip_first=%d", plan.file, index, plan.skip_first)
            return itertools.chain((first,), frames), 0 if plan.resample else index
    log.debug("seek in %s landed past frame %d; decoding from the start", plan.file, plan.skip_first)
    container.seek(0, stream=stream, backward=True)
    return decode_packets(container, stream, decoder=alpha_decoder(stream)), 0


def alpha_decoder(stream) -> av.CodecContext | None:
    """A fresh libvpx decoder (one per pass) for a VP8/VP9 stream with alpha; None for other streams."""
    name = alpha_decoder_name(stream)
    if name is None:
        return None
    context = av.CodecContext.create(name, "r")
    context.extradata = stream.codec_context.extradata
    return context


def _plane(plane, dtype: np.dtype) -> np.ndarray:
    """A copy of one picture plane without its line padding."""
    itemsize = np.dtype(dtype).itemsize
    rows = np.frombuffer(plane, dtype=dtype).reshape(plane.height, plane.line_size // itemsize)
    return rows[:, :plane.width]


def _packed_plane(plane, dtype: np.dtype, width: int, components: int) -> np.ndarray:
    """A packed plane as [H, W, components] codes, without its line padding."""
    itemsize = np.dtype(dtype).itemsize
    rows = np.frombuffer(plane, dtype=dtype).reshape(plane.height, plane.line_size // itemsize)
    return rows[:, :width * components].reshape(plane.height, width, components)


class FrameConverter:
    """Decoded AVFrames -> float32 [T, H, W, C] with the clip's matrix, range and rotation."""

    def __init__(self, color: ColorInfo, rotation: int = 0, channels: int = 3):
        self.color = color
        self.rotation = rotation
        self.channels = channels

    def __call__(self, frames: list[av.VideoFrame]) -> torch.Tensor:
        unique: dict[int, int] = {}
        order = [unique.setdefault(id(f), len(unique)) for f in frames]
        distinct = list({id(f): f for f in frames}.values())
        images = self._convert(distinct)
        if len(distinct) != len(frames):
            images = images[torch.tensor(order)]
        if self.rotation:
            images = torch.rot90(images, k=self.rotation // 90, dims=(1, 2)).contiguous()
        return fit_channels(images, self.channels)

    def _convert(self, frames: list[av.VideoFrame]) -> torch.Tensor:
        name = frames[0].format.name
        if _PLANAR_YUV.match(name) or _GRAY.match(name):
            return self._from_yuv_planes(frames, name)
        if _GRAY_ALPHA.match(name):
            return self._from_gray_alpha(frames, name)
        fmt = frames[0].format
        if fmt.is_rgb or fmt.has_palette or "bayer" in name:
            return self._from_rgb(frames)
        target = _planar_equivalent(frames[0])
        return self._from_yuv_planes([f.reformat(format=target) for f in frames], target)

    def _from_yuv_planes(self, frames: list[av.VideoFrame], name: str) -> torch.Tensor:
        deep = name.endswith("le")
        bits = int(re.search(r"(\d+)le$", name).group(1)) if deep else 8
        dtype = np.dtype("<u2") if deep else np.uint8
        full = self.color.range == "pc"  # probe reports "pc" for untagged yuvj streams; a user override wins
        planes = [np.stack([_plane(f.planes[i], dtype) for f in frames]) for i in range(len(frames[0].planes))]
        if name.startswith("gray"):
            luma = planes[0]
            neutral = np.full(luma.shape, 2 ** (bits - 1), dtype=luma.dtype)
            return yuv_to_rgb(luma, neutral, neutral, bits=bits, matrix=self.color.matrix, full_range=full)
        alpha = planes[3] if len(planes) > 3 else None
        return yuv_to_rgb(planes[0], planes[1], planes[2], bits=bits, matrix=self.color.matrix,
                          full_range=full, alpha=alpha)

    def _from_gray_alpha(self, frames: list[av.VideoFrame], name: str) -> torch.Tensor:
        """Packed gray + alpha (`ya8`, `ya16`): luma through the clip's range like gray, alpha kept."""
        if name == "ya16be":
            frames = [f.reformat(format="ya16le") for f in frames]
        bits = 16 if name.startswith("ya16") else 8
        dtype = np.dtype("<u2") if bits > 8 else np.dtype(np.uint8)
        pairs = np.stack([_packed_plane(f.planes[0], dtype, f.width, 2) for f in frames])
        luma, alpha = pairs[..., 0], pairs[..., 1]
        neutral = np.full(luma.shape, 2 ** (bits - 1), dtype=luma.dtype)
        return yuv_to_rgb(luma, neutral, neutral, bits=bits, matrix=self.color.matrix,
                          full_range=self.color.range == "pc", alpha=alpha)

    def _from_rgb(self, frames: list[av.VideoFrame]) -> torch.Tensor:
        fmt = frames[0].format
        bits, alpha = pix_fmt_traits(fmt.name)
        alpha = alpha or fmt.has_palette
        if bits > 8:
            target, scale = ("rgba64le" if alpha else "rgb48le"), 65535.0
        else:
            target, scale = ("rgba" if alpha else "rgb24"), 255.0
        arrays = [f.reformat(format=target).to_ndarray() for f in frames]
        return torch.from_numpy(np.stack(arrays)).to(torch.float32).div_(scale)


def _planar_equivalent(frame: av.VideoFrame) -> str:
    """The planar YUV format with the same subsampling and depth, to read planes directly."""
    fmt = frame.format
    bits, has_alpha = pix_fmt_traits(fmt.name)
    chroma = [c for c in fmt.components if c.is_chroma]
    if not chroma and not has_alpha:
        return "gray" if bits <= 8 else "gray16le"
    if not chroma:
        return "yuva444p" if bits <= 8 else "yuva444p16le"
    width_ratio = frame.width / max(1, fmt.chroma_width(frame.width))
    height_ratio = frame.height / max(1, fmt.chroma_height(frame.height))
    sub = {(1, 1): "444", (2, 1): "422", (2, 2): "420", (1, 2): "440", (4, 1): "411", (4, 4): "410"}.get(
        (round(width_ratio), round(height_ratio)), "444")
    depth = "" if bits <= 8 else ("10le" if bits <= 10 else "12le" if bits <= 12 else "16le")
    if has_alpha:
        sub = "444" if sub not in ("420", "422", "444") else sub
        return f"yuva{sub}p{depth}"
    if depth and sub in ("411", "410"):
        sub = "444"
    return f"yuv{sub}p{depth}"
