"""Synthetic test media written straight through PyAV, independent of vsrkit's own encoder.

Used by the tests and `bench/` to make clips with known content: moving patterns,
exact YUV code values with chosen colour tags, variable frame timing, tone audio.
Pictures are built as YUV planes (or converted by FFmpeg's swscale), never through
`engines.video.colors`, so decoding them checks vsrkit's conversion against an outside reference.
The readers at the end (frames, audio samples, audio packets) likewise go straight through PyAV.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Sequence
from fractions import Fraction

import av
import numpy as np

from vsrkit.engines.video.colors import (
    MATRIX_CODES,
    MATRIX_NAMES,
    PRIMARIES_CODES,
    RANGE_CODES,
    TRANSFER_CODES,
    canonical,
)


def pattern_rgb(index: int, width: int, height: int) -> np.ndarray:
    """Frame `index` of a moving test pattern as uint8 RGB [H, W, 3]: a scrolling ramp, a moving
    bar and a steady mid-grey patch (the known tone)."""
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    red = ((xs + 3 * index) % width) / max(1, width - 1) * np.ones_like(ys)
    green = ys / max(1, height - 1) * np.ones_like(xs)
    blue = 0.5 + 0.4 * np.sin((xs + ys) / 6.0 + index / 3.0)
    image = np.stack([red, green, blue], axis=-1)
    bar = int(index * 2) % max(1, width)
    image[:, bar:bar + max(1, width // 16)] = (1.0, 1.0, 1.0)
    image[height // 3: 2 * height // 3, width // 3: 2 * width // 3] = 0.5
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def smooth_rgb16(index: int, width: int, height: int, alpha: bool = False) -> np.ndarray:
    """Frame `index` of a smooth 16-bit RGB(A) pattern [H, W, C] uint16: a full-range horizontal ramp
    in red (as many levels as columns, so 10-bit precision shows), gentle gradients that move with
    `index` in green and blue, and an alpha ramp down the rows."""
    xs = np.linspace(0.0, 1.0, width, dtype=np.float64)[None, :] * np.ones((height, 1))
    ys = np.linspace(0.0, 1.0, height, dtype=np.float64)[:, None] * np.ones((1, width))
    red = xs
    green = 0.25 + 0.5 * ys * (0.8 + 0.2 * math.cos(index / 3.0))
    blue = 0.5 + 0.3 * np.sin(2 * math.pi * (xs + ys) / 2 + index / 4.0)
    channels = [red, green, blue] + ([0.2 + 0.8 * ys] if alpha else [])
    return np.round(np.stack(channels, axis=-1) * 65535).astype(np.uint16)


def index_rgb(index: int, width: int, height: int) -> np.ndarray:
    """A flat frame whose grey level encodes `index` (8 levels apart, wrapping after 28 frames)."""
    level = 16 + 8 * (index % 28)
    return np.full((height, width, 3), level, dtype=np.uint8)


def index_of(frame_rgb: np.ndarray) -> int:
    """The index `index_rgb` encoded (modulo 28), read back from a decoded float or uint8 frame."""
    level = float(np.asarray(frame_rgb, dtype=np.float64).mean())
    if level <= 1.0 + 1e-6:
        level *= 255.0
    return int(round((level - 16) / 8)) % 28


def tone(seconds: float, rate: int = 48000, freqs: Sequence[float] = (440.0, 660.0)) -> np.ndarray:
    """Float32 [C, S] sine tones, one frequency per channel, at 0.3 amplitude."""
    count = int(round(seconds * rate))
    time = np.arange(count, dtype=np.float64) / rate
    return np.stack([0.3 * np.sin(2 * math.pi * f * time) for f in freqs]).astype(np.float32)


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: Fraction | int, *,
                codec: str = "libx264", pix_fmt: str = "yuv420p", options: dict[str, str] | None = None,
                matrix: str | None = None, color_range: str | None = None, primaries: str | None = None,
                transfer: str | None = None, timestamps: Sequence[float] | None = None,
                audio: np.ndarray | None = None, audio_rate: int = 48000, audio_codec: str = "aac",
                rotation: int = 0, container_options: dict[str, str] | None = None) -> str:
    """Write frames (uint8 or uint16 RGB [H, W, 3]/[H, W, 4], or a list of YUV planes) to `path`.

    RGB frames are converted by swscale with the given matrix/range; plane lists are written
    as they are. `timestamps` (seconds) make a variable-rate stream. Colour tags are written
    only when given, so untagged files can be made too.
    """
    fps = Fraction(fps)
    frames = iter(frames)
    first = next(frames)
    height, width = (first[0].shape if isinstance(first, list) else first.shape[:2])
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        time_base = Fraction(1, 1000) if timestamps is not None else 1 / fps
        stream.codec_context.time_base = time_base
        tags = _tags(matrix, color_range, primaries, transfer)
        for name, value in tags.items():
            setattr(stream.codec_context, name, value)
        if rotation:
            stream.set_display_rotation(rotation)
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream(audio_codec, rate=audio_rate)
            audio_stream.codec_context.layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
            audio_stream.codec_context.format = av.codec.Codec(audio_codec, "w").audio_formats[0].name
        for index, image in enumerate(itertools.chain((first,), frames)):
            frame = _frame(image, pix_fmt, tags)
            frame.pts = round(timestamps[index] * 1000) if timestamps is not None else index
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if audio_stream is not None:
            _write_audio(container, audio_stream, audio, audio_rate)
    return str(path)


def _tags(matrix, color_range, primaries, transfer) -> dict[str, int]:
    tags = {}
    if matrix:
        tags["colorspace"] = MATRIX_CODES[canonical(matrix)]
    if color_range:
        tags["color_range"] = RANGE_CODES[canonical(color_range)]
    if primaries:
        tags["color_primaries"] = PRIMARIES_CODES[primaries]
    if transfer:
        tags["color_trc"] = TRANSFER_CODES[transfer]
    return tags


_SWS_MATRIX = {"bt709": 1, "fcc": 4, "bt470bg": 5, "smpte170m": 5, "smpte240m": 7, "bt2020nc": 9}


def _frame(image, pix_fmt: str, tags: dict[str, int]) -> av.VideoFrame:
    if isinstance(image, list):
        height, width = image[0].shape
        frame = av.VideoFrame(width, height, pix_fmt)
        for plane, data in zip(frame.planes, image, strict=True):
            view = np.frombuffer(plane, dtype=data.dtype).reshape(plane.height, -1)
            view[:, :plane.width] = data
    else:
        deep = image.dtype == np.uint16
        source = ("rgba64le" if deep else "rgba") if image.shape[-1] == 4 else ("rgb48le" if deep else "rgb24")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=source)
        if pix_fmt != source:
            matrix = MATRIX_NAMES.get(tags.get("colorspace", 1), "bt709")
            full = tags.get("color_range") == RANGE_CODES["pc"]
            frame = frame.reformat(format=pix_fmt, src_color_range="JPEG",
                                   dst_colorspace=_SWS_MATRIX.get(matrix, 1),
                                   dst_color_range="JPEG" if full else "MPEG",
                                   interpolation="BICUBIC")
    for name, value in tags.items():
        setattr(frame, name, value)
    return frame


SOURCES = {
    # kind: (file name, encoder, pixel format, encoder options, colour tags, audio codec)
    "hevc-10bit": ("ten bit.mkv", "libx265", "yuv420p10le", {"x265-params": "log-level=error"}, "bt709", "aac"),
    "prores-422hq": ("prores.mov", "prores_ks", "yuv422p10le", {"profile": "3", "vendor": "apl0"}, "bt709", "aac"),
    "h264-8bit": ("render.mp4", "libx264", "yuv420p", {"preset": "ultrafast"}, None, "aac"),
    "vp9-alpha": ("alpha.webm", "libvpx-vp9", "yuva420p", {"deadline": "realtime", "cpu-used": "8"}, "bt709",
                  "libopus"),
    "ffv1-rgb": ("rgb.mkv", "ffv1", "gbrp10le", {}, None, "pcm_s16le"),
    "hevc-pq": ("pq.mkv", "libx265", "yuv420p10le", {"x265-params": "log-level=error"}, "pq", "aac"),
}
"""Synthetic sources of the families vsrkit keeps; colour "bt709" tags BT.709, "pq" BT.2020 PQ, None none."""
_SOURCE_TAGS = {"bt709": {"matrix": "bt709", "color_range": "tv", "primaries": "bt709", "transfer": "bt709"},
                "pq": {"matrix": "bt2020nc", "color_range": "tv", "primaries": "bt2020", "transfer": "smpte2084"},
                None: {}}


def write_source(kind: str, folder: str | os.PathLike, frames: int = 6, width: int = 64, height: int = 64,
                 fps: int = 25) -> str:
    """One of `SOURCES` in `folder`: smooth 16-bit pictures (alpha for yuva formats) and a tone as long
    as the video, as the source's own encoder writes them."""
    name, codec, pix_fmt, options, tags, audio_codec = SOURCES[kind]
    alpha = pix_fmt.startswith(("yuva", "gbrap"))
    pictures = (smooth_rgb16(i, width, height, alpha) for i in range(frames))
    return write_video(os.path.join(os.fspath(folder), name), pictures, fps, codec=codec, pix_fmt=pix_fmt,
                       options=options, audio=tone(frames / fps), audio_codec=audio_codec, **_SOURCE_TAGS[tags])


def _write_audio(container, stream, samples: np.ndarray, rate: int) -> None:
    layout = {1: "mono", 2: "stereo"}[samples.shape[0]]
    sample_format = stream.codec_context.format.name
    frame_size = {"aac": 1024, "libopus": 960, "ac3": 1536}.get(stream.codec_context.name, 1024)
    resampler = av.AudioResampler(format=sample_format, layout=layout, rate=rate, frame_size=frame_size)
    written = 0
    for start in range(0, samples.shape[1], 4096):
        block = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 4096]), format="fltp",
                                           layout=layout)
        block.sample_rate = rate
        for frame in resampler.resample(block):
            frame.pts = written
            written += frame.samples
            for packet in stream.encode(frame):
                container.mux(packet)
    for frame in resampler.resample(None):
        frame.pts = written
        written += frame.samples
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def write_audio_only(path: str | os.PathLike, samples: np.ndarray, rate: int = 48000, codec: str = "aac") -> str:
    """An audio-only file (for the 'not a video' error path)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.codec_context.layout = {1: "mono", 2: "stereo"}[samples.shape[0]]
        stream.codec_context.format = av.codec.Codec(codec, "w").audio_formats[0].name
        _write_audio(container, stream, samples, rate)
    return str(path)


def decoded_audio(path: str | os.PathLike) -> tuple[np.ndarray, int, float]:
    """All audio of the first audio stream as float32 [C, S], its rate and the first sample's time.

    Decoders drop encoder priming (edit lists, pre-skip), so S is the playable length.
    """
    blocks = []
    start = None
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout.name, rate=rate)
        for frame in container.decode(stream):
            if start is None and frame.pts is not None:
                start = float(frame.pts * frame.time_base)
            frame.pts = None
            for out in resampler.resample(frame):
                blocks.append(out.to_ndarray())
        for out in resampler.resample(None):
            blocks.append(out.to_ndarray())
    samples = np.concatenate(blocks, axis=1) if blocks else np.zeros((1, 0), dtype=np.float32)
    return samples, rate, start or 0.0


def decoded_frames(path: str | os.PathLike, pixel_format: str = "rgb24") -> np.ndarray:
    """Every frame of the first video stream as [T, ...] in `pixel_format` (PyAV's layout for it)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format=pixel_format) for f in container.decode(video=0)])


def audio_packets(path: str | os.PathLike) -> list[tuple[int, bytes]]:
    """(start in milliseconds, bytes) of each packet of the first audio stream: to check audio was copied."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return [(round(1000 * p.pts * p.time_base), bytes(p)) for p in container.demux(stream) if p.size]
