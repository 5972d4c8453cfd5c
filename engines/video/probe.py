"""What a media file really holds: exact frame count and frame rate, colour, audio streams.

Container headers are often missing or wrong about frame counts (WebM/Matroska
carry none, some MP4s disagree with their own timestamps), so when the figure
is absent or does not match the stream's duration we count the video packets
(demuxing only, no decoding). Audio packets are read in that same pass when it
happens; otherwise they are left unread (a trusted header means no full read of a
large file) and `with_audio_packets` reads them when a save needs them. The result
is cached per (path, mtime, size) so nodes that probe the same file again pay nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from ..clip import ColorInfo, field_order_name, to_fraction
from ..errors import InputError
from .colors import color_from_codes
from .preprocess import interlace_report

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VideoStreamInfo:
    index: int
    codec: str
    width: int
    height: int
    pix_fmt: str
    bit_depth: int
    has_alpha: bool
    fps: Fraction
    """The rate frames are numbered at: the average rate, or the base rate when the average is missing."""
    average_fps: Fraction | None
    base_fps: Fraction | None
    vfr: bool
    frame_count: int
    frame_count_source: str
    """"container" (header figure agreed with the timestamps) or "counted" (packets counted)."""
    start_time: float
    duration: float
    color: ColorInfo
    field_order: str
    sar: Fraction
    rotation: int
    """Counter-clockwise degrees the picture must be turned for display."""
    bit_rate: int | None = None
    profile: str | None = None
    interlacing: dict[str, Any] | None = None
    """Field order from the metadata and idet's verdict on the first frames
    (`probe(..., interlacing=True)`); None when not examined."""

    @property
    def display_width(self) -> int:
        return self.height if self.rotation % 180 else self.width

    @property
    def display_height(self) -> int:
        return self.width if self.rotation % 180 else self.height


@dataclasses.dataclass(frozen=True)
class AudioStreamInfo:
    index: int
    codec: str
    sample_rate: int
    channels: int
    layout: str
    sample_fmt: str | None
    start_time: float
    duration: float
    max_packet_seconds: float | None
    """The longest packet; None when the packets were not read (the video's header count was
    trusted, so probing read no packets): `start_time` and `duration` are then the headers'
    figures, and `with_audio_packets` gives the figures from the packets."""
    bit_rate: int | None = None
    language: str | None = None
    default: bool = False


@dataclasses.dataclass(frozen=True)
class MediaInfo:
    path: str
    format_name: str
    size_bytes: int
    duration: float
    bit_rate: int | None
    video_streams: tuple[VideoStreamInfo, ...]
    audio_streams: tuple[AudioStreamInfo, ...]

    @property
    def video(self) -> VideoStreamInfo | None:
        return self.video_streams[0] if self.video_streams else None

    @property
    def audio(self) -> AudioStreamInfo | None:
        """The audio stream a muxer should carry: the default-flagged one, else the first."""
        for stream in self.audio_streams:
            if stream.default:
                return stream
        return self.audio_streams[0] if self.audio_streams else None

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Fraction):
        return f"{value.numerator}/{value.denominator}"
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_CACHE: OrderedDict[tuple[str, int, int, bool], MediaInfo] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 64
_AUDIO_CACHE: OrderedDict[tuple[str, int, int, int], AudioStreamInfo] = OrderedDict()


def check_readable(path: str | os.PathLike) -> Path:
    """The path as a Path if it is an existing, non-empty regular file; else a clear InputError."""
    file = Path(os.fspath(path)).expanduser()
    if not file.exists():
        raise InputError(f"video file '{file}' does not exist; check the path or pick a file from the list")
    if file.is_dir():
        raise InputError(f"'{file}' is a folder, not a video file; give the path of a video file")
    if file.stat().st_size == 0:
        raise InputError(f"video file '{file}' is empty (0 bytes); the copy or download probably failed, "
                         "copy it again")
    return file


def probe(path: str | os.PathLike, *, interlacing: bool = False) -> MediaInfo:
    """Everything vsrkit needs to know about a media file, cached per (path, mtime, size).

    `interlacing=True` also runs FFmpeg's idet over the first frames of each video stream
    (`VideoStreamInfo.interlacing`); it decodes those frames, so it is off by default.
    """
    file = check_readable(path)
    size = file.stat().st_size
    return _cached(_CACHE, file, interlacing,
                   lambda: _with_interlacing(probe(file)) if interlacing else _probe_uncached(file, size))


def _cached(cache: OrderedDict, file: Path, variant: Any, compute: Callable[[], Any]) -> Any:
    """`compute()` cached in `cache` per (path, mtime, size, variant), least recently used out first."""
    stat = file.stat()
    key = (str(file.resolve()), stat.st_mtime_ns, stat.st_size, variant)
    with _CACHE_LOCK:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = compute()
    with _CACHE_LOCK:
        cache[key] = value
        while len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    return value


def _container_times(container: av.container.InputContainer) -> tuple[float, float]:
    """(duration, start) of the container in seconds, 0 where unknown."""
    duration = container.duration / 1_000_000 if container.duration else 0.0
    start = container.start_time / 1_000_000 if container.start_time else 0.0
    return duration, start


def _with_interlacing(info: MediaInfo) -> MediaInfo:
    streams = tuple(dataclasses.replace(video, interlacing=interlace_report(info.path, stream_index=video.index))
                    for video in info.video_streams)
    return dataclasses.replace(info, video_streams=streams)


def open_container(file: Path) -> av.container.InputContainer:
    """av.open with a user-facing error for files FFmpeg cannot read."""
    try:
        return av.open(str(file), mode="r")
    except av.error.FFmpegError as exc:
        raise InputError(f"'{file}' is not a video FFmpeg can read ({exc.strerror or exc}); "
                         "it may be damaged, incomplete, or not a video at all. Re-export or re-download it") from exc


def decode_packets(container: av.container.InputContainer, stream, *, flush_after_error: bool = True,
                   decoder: av.CodecContext | None = None) -> Iterator[av.frame.Frame]:
    """Decoded frames of `stream`; a damaged packet is skipped (logged) rather than ending the stream.

    A read error ends it early (logged); with `flush_after_error` the frames the decoder still
    holds come out first (video does this; audio stops at the error). `decoder` replaces the
    stream's own (`decode.alpha_decoder` for VP8/VP9 alpha).
    """
    context = decoder or stream.codec_context
    try:
        for packet in container.demux(stream):
            try:
                yield from context.decode(packet)
            except av.error.InvalidDataError:
                log.warning("skipped a damaged %s packet at %s in %s", stream.type, packet.pts, container.name)
    except av.error.FFmpegError as exc:
        log.warning("stopped reading %s of %s early: %s", stream.type, container.name, exc)
        if flush_after_error:
            try:
                yield from context.decode(None)
            except av.error.FFmpegError:
                pass


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _probe_uncached(file: Path, size: int) -> MediaInfo:
    with open_container(file) as container:
        container_duration, container_start = _container_times(container)
        videos = [s for s in container.streams.video
                  if not (s.disposition & av.stream.Disposition.attached_pic)]
        audios = list(container.streams.audio)
        packet_stats = _scan_packets(container, videos, audios, container_duration)
        video_infos = []
        for stream in videos:
            video_infos.append(_video_info(file, stream, packet_stats[stream.index], container_duration,
                                           container_start))
        audio_infos = [_audio_info(stream, packet_stats[stream.index], container_duration, container_start)
                       for stream in audios]
        return MediaInfo(
            path=str(file),
            format_name=container.format.name,
            size_bytes=size,
            duration=container_duration,
            bit_rate=container.bit_rate or None,
            video_streams=tuple(video_infos),
            audio_streams=tuple(audio_infos),
        )


@dataclasses.dataclass
class _PacketStats:
    count: int = 0
    first: float | None = None
    end: float | None = None
    times: list[float] = dataclasses.field(default_factory=list)
    max_duration: float = 0.0
    counted: bool = False


def _needs_count(stream: av.video.stream.VideoStream, container_duration: float) -> bool:
    """True when the header's frame count is missing or disagrees with the stream's duration."""
    if not stream.frames:
        return True
    rate = stream.average_rate or stream.base_rate
    duration = _seconds(stream.duration, stream.time_base) or container_duration
    if not rate or not duration:
        return False
    return abs(stream.frames - duration * float(rate)) > 1.5 or stream.average_rate != stream.base_rate


def _scan_packets(container: av.container.InputContainer, videos: list, audios: list,
                  container_duration: float) -> dict[int, _PacketStats]:
    """Demux once (no decoding) to count video packets and find stream start/end times.

    Video packets are read only when the header's frame count cannot be trusted, and audio
    packets only in that same pass (their true end and longest packet decide copy versus
    re-encode at save time, where `with_audio_packets` reads them if this did not).
    """
    stats = {s.index: _PacketStats() for s in (*videos, *audios)}
    count_video = {s.index for s in videos if _needs_count(s, container_duration)}
    if not count_video:
        return stats
    _read_packets(container, [s for s in videos if s.index in count_video] + audios, stats, count_video)
    return stats


def _read_packets(container: av.container.InputContainer, streams: list, stats: dict[int, _PacketStats],
                  keep_times: set[int]) -> None:
    """Fill `stats` (marked counted) from the packets of `streams`; the start times of those in `keep_times`."""
    try:
        for packet in container.demux(streams):
            if packet.size == 0 or packet.pts is None and packet.dts is None:
                continue
            entry = stats[packet.stream.index]
            time_base = packet.time_base or packet.stream.time_base
            start = float((packet.pts if packet.pts is not None else packet.dts) * time_base)
            length = float(packet.duration * time_base) if packet.duration else 0.0
            entry.count += 1
            entry.first = start if entry.first is None else min(entry.first, start)
            entry.end = start + length if entry.end is None else max(entry.end, start + length)
            entry.max_duration = max(entry.max_duration, length)
            if packet.stream.index in keep_times:
                entry.times.append(start)
    except av.error.FFmpegError:
        pass  # a truncated file: keep what could be read
    for stream in streams:
        stats[stream.index].counted = True


def with_audio_packets(path: str | os.PathLike, info: AudioStreamInfo) -> AudioStreamInfo:
    """`info` with start, duration and longest packet read from the stream's packets.

    Returned as is when probing already read them; otherwise demuxes that stream once
    (no decoding), cached per (path, mtime, size, stream) like `probe`.
    """
    if info.max_packet_seconds is not None:
        return info
    file = check_readable(path)

    def read() -> AudioStreamInfo:
        with open_container(file) as container:
            stream = container.streams[info.index]
            stats = {info.index: _PacketStats()}
            _read_packets(container, [stream], stats, set())
            return _audio_info(stream, stats[info.index], *_container_times(container))

    return _cached(_AUDIO_CACHE, file, info.index, read)


ALPHA_DECODERS = {"vp8": "libvpx", "vp9": "libvpx-vp9"}


def alpha_decoder_name(stream) -> str | None:
    """libvpx's decoder for VP8/VP9 with alpha in WebM/Matroska (side data FFmpeg's own decoder drops)."""
    name = ALPHA_DECODERS.get(stream.codec_context.name)
    if name is None or str(stream.metadata.get("alpha_mode", "")) != "1":
        return None
    try:
        return av.codec.Codec(name, "r").name
    except (av.error.FFmpegError, ValueError):
        log.warning("stream %d carries alpha but this FFmpeg build has no %s decoder; alpha dropped", stream.index,
                    name)
        return None


def pix_fmt_traits(pix_fmt: str) -> tuple[int, bool]:
    """(bits per component, has an alpha channel) of an FFmpeg pixel format; (8, False) if unknown.

    Read from the format's component descriptors, so packed and gray formats with alpha
    (`ya8`, `ya16le`, `argb`, ...) count as alpha like the planar `yuva*` / `gbrap*` ones.
    """
    try:
        fmt = av.VideoFormat(pix_fmt)
    except (ValueError, av.error.FFmpegError):
        return 8, False
    bits = max((c.bits for c in fmt.components), default=8)
    has_alpha = any(bool(c.is_alpha) for c in fmt.components)
    return bits, has_alpha


def _video_info(file: Path, stream, stats: _PacketStats, container_duration: float,
                container_start: float) -> VideoStreamInfo:
    codec_context = stream.codec_context
    average = to_fraction(stream.average_rate) if stream.average_rate else None
    base = to_fraction(stream.base_rate) if stream.base_rate else None
    counted = stats.counted
    count = stats.count if counted else int(stream.frames)
    vfr = False
    start = _seconds(stream.start_time, stream.time_base)
    fps = None
    if counted and len(stats.times) > 1:
        times = np.sort(np.asarray(stats.times, dtype=np.float64))
        start = float(times[0]) if start is None else start
        time_step = float(stream.time_base) if stream.time_base else 0.001
        span = (stats.end or float(times[-1])) - float(times[0])
        if span > 0:
            average = to_fraction(Fraction(count) / Fraction(span).limit_denominator(1_000_000))
        fps = _grid_rate(times, time_step, [base, average])
        if fps is not None:
            base = fps
        else:
            vfr = True
            fps = average
    start = start if start is not None else container_start
    if fps is None:
        fps = average or base or Fraction(25)
        if base and average and abs(float(base) - float(average)) < 0.01 * float(average):
            fps = base  # the exact base rate (30000/1001) rather than a rounded average
    if counted and stats.end is not None and stats.times:
        duration = stats.end - min(stats.times)
        if duration <= 0:
            duration = count / float(fps)
    else:
        duration = _seconds(stream.duration, stream.time_base) or (count / float(fps) if count else container_duration)
    color, rotation = _first_frame_color(file, stream)
    pix_fmt = codec_context.pix_fmt or "unknown"
    bits, has_alpha = pix_fmt_traits(pix_fmt)
    has_alpha = has_alpha or alpha_decoder_name(stream) is not None
    return VideoStreamInfo(
        index=stream.index,
        codec=codec_context.name,
        width=codec_context.width,
        height=codec_context.height,
        pix_fmt=pix_fmt,
        bit_depth=bits,
        has_alpha=has_alpha,
        fps=fps,
        average_fps=average,
        base_fps=base,
        vfr=vfr,
        frame_count=count,
        frame_count_source="counted" if counted else "container",
        start_time=start,
        duration=duration,
        color=color if color is not None else color_from_codes(
            codec_context.colorspace, codec_context.color_range, codec_context.color_primaries,
            codec_context.color_trc, codec_context.width, codec_context.height, pix_fmt.startswith("yuvj")),
        field_order=field_order_name(int(codec_context.field_order or 0)),
        sar=Fraction(stream.sample_aspect_ratio) if stream.sample_aspect_ratio else Fraction(1, 1),
        rotation=rotation,
        bit_rate=codec_context.bit_rate or None,
        profile=stream.profile,
    )


STANDARD_RATES = tuple(Fraction(r) for r in (
    Fraction(24000, 1001), 24, 25, Fraction(30000, 1001), 30, 50, Fraction(60000, 1001), 60, 48,
    Fraction(48000, 1001), 100, Fraction(120000, 1001), 120, 12, 15, Fraction(15000, 1001), 10, 8, 5, 6, 1))


def _grid_rate(times: np.ndarray, time_step: float, hints: list[Fraction | None]) -> Fraction | None:
    """The constant rate whose frame grid every timestamp sits on (within the container's rounding).

    Matroska stores milliseconds, so 60000/1001 fps reads back as intervals of 16 and 17 ms;
    checking each timestamp against the grid of a candidate rate recovers the exact rate.
    None when no candidate fits: the stream is variable-rate or has gaps.
    """
    offsets = times - times[0]
    steps = np.arange(len(times), dtype=np.float64)
    candidates = list(STANDARD_RATES) + [h for h in hints if h]
    if len(times) > 1 and offsets[-1] > 0:
        candidates.append(to_fraction((len(times) - 1) / offsets[-1]))
    for rate in candidates:
        residual = offsets - steps / float(rate)
        # each stored time is rounded by up to half a step, so the residuals spread over at most one step
        if float(residual.max() - residual.min()) <= time_step + 1e-6:
            return rate
    return None


def _first_frame_color(file: Path, stream) -> tuple[ColorInfo | None, int]:
    """Colour tags and display rotation from the first decoded frame (decoders often tag only frames)."""
    try:
        with av.open(str(file)) as container:
            video = container.streams.video[[s.index for s in container.streams.video].index(stream.index)]
            for frame in container.decode(video):
                rotation = int(round(frame.rotation or 0)) % 360
                full = frame.format.name.startswith("yuvj")
                color = color_from_codes(frame.colorspace, frame.color_range, frame.color_primaries,
                                         frame.color_trc, frame.width, frame.height, full)
                return color, rotation
    except (av.error.FFmpegError, ValueError, IndexError):
        pass
    return None, 0


def _audio_info(stream, stats: _PacketStats, container_duration: float, container_start: float) -> AudioStreamInfo:
    """From the packets when `stats` read them, else from the headers (max_packet_seconds None)."""
    codec_context = stream.codec_context
    start = stats.first if stats.first is not None else (_seconds(stream.start_time, stream.time_base) or container_start)
    if stats.end is not None and stats.first is not None:
        duration = stats.end - stats.first
    else:
        duration = _seconds(stream.duration, stream.time_base) or container_duration
    return AudioStreamInfo(
        index=stream.index,
        codec=codec_context.name,
        sample_rate=codec_context.sample_rate,
        channels=codec_context.channels,
        layout=codec_context.layout.name if codec_context.layout else "",
        sample_fmt=codec_context.format.name if codec_context.format else None,
        start_time=start,
        duration=duration,
        max_packet_seconds=stats.max_duration if stats.counted else None,
        bit_rate=codec_context.bit_rate or None,
        language=stream.language,
        default=bool(stream.disposition & av.stream.Disposition.default),
    )
