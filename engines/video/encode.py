"""Encode a clip to a file, chunk by chunk, with its audio muxed in sync.

The output appears whole or not at all: frames go to a hidden temporary file in
the destination folder, which is renamed into place only when complete (and
never over an existing file unless asked). On an error or a cancel the partial
file is removed.

The codec, pixel format and colour tags are chosen by `engines.video.formats` (codec "auto"
keeps the source's family, depth, chroma and alpha). RGB is converted to the target pixel
format with the matrix and range the stream is tagged with (`engines.video.colors`), so a
save-and-reload round trip keeps colours. Odd sizes are padded (edge pixels repeated) or
cropped for subsampled pixel formats.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from ..clip import Clip, ColorInfo, fit_channels
from ..errors import InputError
from ..paths import discard, output_taken, partial_path, publish
from ..progress import Progress
from .audio import check_audio_codec, open_audio_writer
from .colors import MATRIX_CODES, PRIMARIES_CODES, RANGE_CODES, TRANSFER_CODES, rgb_to_yuv
from .formats import (
    CONTAINER_KINDS,
    PRORES_PROFILES,
    CodecSpec,
    EncodeOptions,
    available_codecs,
    check_rate_options,
    choose_format,
    codec_spec,
    output_color,
    output_path_for,
)
from .probe import pix_fmt_traits

__all__ = ["EncodeOptions", "available_codecs", "output_color", "planned_output", "save_clip"]

log = logging.getLogger(__name__)


def _codec_options(name: str, spec: CodecSpec, options: EncodeOptions, pix_fmt: str) -> dict[str, str]:
    check_rate_options(name, spec, options.crf, options.preset)
    preset = options.preset or spec.default_preset
    crf = options.crf if options.crf is not None else (spec.crf[2] if spec.crf else None)
    if name in ("h264", "h265"):
        opts = {"crf": str(crf), "preset": preset}
        if name == "h265":
            opts["x265-params"] = "log-level=error"
        return opts
    if name == "vp9":
        return {"crf": str(crf), "b": "0", "deadline": "good", "cpu-used": preset, "row-mt": "1"}
    if name == "av1":
        return {"crf": str(crf), "preset": preset}
    if name == "prores":
        if "444" in pix_fmt and not preset.startswith("4444"):
            preset = "4444"  # 4:4:4 and alpha exist only in the 4444 profiles
        return {"profile": str(PRORES_PROFILES[preset]), "vendor": "apl0"}
    if name == "ffv1":
        return {"level": "3", "slicecrc": "1"}
    return {}


CONVERT_BYTES = 24 * 1024 * 1024
"""Float32 bytes of RGB converted to YUV at once."""


class _PictureWriter:
    """RGB float chunks -> AVFrames in the target pixel format, with colour tags."""

    def __init__(self, pix_fmt: str, width: int, height: int, color: ColorInfo):
        self.pix_fmt = pix_fmt
        self.width = width
        self.height = height
        self.color = color
        fmt = av.VideoFormat(pix_fmt)
        self.bits, self.alpha = pix_fmt_traits(pix_fmt)
        self.rgb = fmt.is_rgb
        self.full_range = pix_fmt.startswith("yuvj") or color.range == "pc" or self.rgb
        chroma_width = fmt.chroma_width(width) if not self.rgb else width
        chroma_height = fmt.chroma_height(height) if not self.rgb else height
        self.shift_w = round(np.log2(width / chroma_width)) if chroma_width else 0
        self.shift_h = round(np.log2(height / chroma_height)) if chroma_height else 0
        self.dtype = np.dtype("<u2") if self.bits > 8 else np.dtype(np.uint8)
        self.tags = {
            "colorspace": MATRIX_CODES["gbr"] if self.rgb else MATRIX_CODES[color.matrix],
            "color_range": RANGE_CODES["pc" if self.full_range else "tv"],
            "color_primaries": PRIMARIES_CODES.get(color.primaries, 2),
            "color_trc": TRANSFER_CODES.get(color.transfer, 2),
        }

    def frames(self, chunk: torch.Tensor) -> list[av.VideoFrame]:
        """Frames for a chunk, converted a few at a time so temporaries stay small whatever the chunk size."""
        step = max(1, CONVERT_BYTES // max(1, chunk.shape[1] * chunk.shape[2] * chunk.shape[3] * 4))
        out: list[av.VideoFrame] = []
        for start in range(0, chunk.shape[0], step):
            out.extend(self._convert(chunk[start:start + step]))
        return out

    def _convert(self, chunk: torch.Tensor) -> list[av.VideoFrame]:
        chunk = fit_channels(chunk, 4 if self.alpha else 3)
        if self.pix_fmt in ("rgb24", "rgba", "rgb48be", "rgba64be"):
            return self._packed(chunk)
        if self.rgb:
            planes = self._rgb_planes(chunk)
        else:
            planes = rgb_to_yuv(chunk, bits=self.bits, matrix=self.color.matrix, full_range=self.full_range,
                                chroma_shift_w=self.shift_w, chroma_shift_h=self.shift_h)
        arrays = [p.numpy() for p in planes]
        out = []
        for index in range(chunk.shape[0]):
            frame = av.VideoFrame(self.width, self.height, self.pix_fmt)
            for plane, data in zip(frame.planes, arrays, strict=True):
                view = np.frombuffer(plane, dtype=self.dtype).reshape(plane.height, -1)
                view[:, :plane.width] = data[index]
            out.append(self._tag(frame))
        return out

    def _rgb_planes(self, chunk: torch.Tensor) -> list[torch.Tensor]:
        top = float(2 ** self.bits - 1)
        sample = torch.uint8 if self.bits <= 8 else torch.int32
        quantised = (chunk * top).round_().clamp_(0, top).to(sample)
        order = [1, 2, 0, 3] if self.alpha else [1, 2, 0]  # planar RGB is stored G, B, R(, A)
        return [quantised[..., i] for i in order]

    def _packed(self, chunk: torch.Tensor) -> list[av.VideoFrame]:
        deep = self.pix_fmt in ("rgb48be", "rgba64be")
        top = 65535.0 if deep else 255.0
        quantised = (chunk * top).round_().clamp_(0, top)
        array = quantised.to(torch.int32).numpy().astype(np.uint16) if deep else quantised.to(torch.uint8).numpy()
        source_format = {"rgb24": "rgb24", "rgba": "rgba", "rgb48be": "rgb48le", "rgba64be": "rgba64le"}[self.pix_fmt]
        out = []
        for image in array:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=source_format)
            if source_format != self.pix_fmt:
                frame = frame.reformat(format=self.pix_fmt)
            out.append(self._tag(frame))
        return out

    def _tag(self, frame: av.VideoFrame) -> av.VideoFrame:
        for name, value in self.tags.items():
            setattr(frame, name, value)
        return frame


def _resize_edges(chunk: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop, or pad by repeating the last row and column, to exactly width x height."""
    chunk = chunk[:, :height, :width]
    if chunk.shape[1] < height:
        chunk = torch.cat([chunk, chunk[:, -1:].expand(-1, height - chunk.shape[1], -1, -1)], dim=1)
    if chunk.shape[2] < width:
        chunk = torch.cat([chunk, chunk[:, :, -1:].expand(-1, -1, width - chunk.shape[2], -1)], dim=2)
    return chunk


def save_clip(clip: Clip, path: str | os.PathLike, options: EncodeOptions | None = None,
              progress: Progress | None = None) -> Path:
    """Encode `clip` to `path` (chunk by chunk, audio muxed in sync) and return the final path.

    For codec "png" `path` is a folder that receives frame_000001.png, ... (no audio).
    """
    options = options or EncodeOptions()
    choice = choose_format(clip.info, options, path)
    name, spec = codec_spec(choice.codec)
    final = output_path_for(path, name)
    _check_destination(final, clip)
    info = clip.info
    if info.frame_count <= 0:
        raise InputError("the clip has no frames to save")
    pix_fmt, width, height = choice.pix_fmt, choice.width, choice.height
    if (width, height) != (info.width, info.height):
        log.info("%s needs even sizes: %s %dx%d to %dx%d", pix_fmt, options.odd_size, info.width, info.height,
                 width, height)
    if width < spec.min_size[0] or height < spec.min_size[1]:
        raise InputError(f"{name} cannot encode frames smaller than {spec.min_size[0]}x{spec.min_size[1]} "
                         f"pixels (this clip is {width}x{height}); use h264 or another codec")
    for item in choice.given_up:
        log.warning("%s gives up %s", final.name, item)
    pictures = _PictureWriter(pix_fmt, width, height, choice.color)
    codec_options = _codec_options(name, spec, choice.encode_options(options), pix_fmt)
    check_audio_codec(options.audio_codec)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = partial_path(final)
    progress = progress or Progress(info.frame_count, "save")
    if progress.total is None:
        progress.set_total(info.frame_count)
    try:
        if name == "png":
            _write_png_sequence(clip, temp, pictures, width, height, progress)
        else:
            _write_container(clip, temp, final, name, spec, pix_fmt, codec_options, pictures, width, height,
                             options, progress)
        return publish(temp, final)
    except BaseException:
        discard(temp)
        raise


def planned_output(path: str | os.PathLike, codec: str) -> Path:
    """The file `save_clip` would write for `path` and `codec`; InputError if it cannot (taken, wrong container).

    For codec "auto" the codec is not known before the clip is: a path without an extension is
    returned as is, one with an extension is checked against every container vsrkit writes.
    """
    if codec.strip().lower() == "auto":
        final = Path(os.fspath(path)).expanduser()
        ext = final.suffix.lower().lstrip(".")
        if ext and ext not in CONTAINER_KINDS:
            raise InputError(f"a .{ext} file cannot hold video; use one of "
                             f"{', '.join('.' + e for e in CONTAINER_KINDS)} for '{final.name}'")
    else:
        final = output_path_for(path, codec)
    if final.exists():
        raise output_taken(final)
    return final


def _check_destination(final: Path, clip: Clip) -> None:
    sources = {clip.info.source_path, clip.info.audio.path if clip.info.audio else None} - {None}
    resolved = final.resolve()
    for source in sources:
        if Path(source).resolve() == resolved:
            raise InputError(f"output '{final}' is the input file; vsrkit never overwrites its input, "
                             "choose another name")
    if final.exists():
        raise output_taken(final)


def _chunks(clip: Clip, width: int, height: int, progress: Progress) -> Iterator[torch.Tensor]:
    """The clip's chunks at the output size, with progress and cancel checks between them."""
    expected = clip.info.frame_count
    delivered = 0
    progress.check_cancel()
    for chunk in clip.chunks():
        if chunk.shape[0] == 0:
            continue
        if chunk.shape[1:3] != (height, width):
            chunk = _resize_edges(chunk, width, height)
        take = min(chunk.shape[0], expected - delivered)
        if take <= 0:
            log.warning("the clip delivered more than its %d frames; extra frames dropped", expected)
            break
        yield chunk[:take]
        delivered += take
        progress.advance(take)
        progress.check_cancel()
    if delivered == 0:
        raise InputError("the clip delivered no frames; nothing was saved")


def _write_container(clip: Clip, temp: Path, final: Path, name: str, spec: CodecSpec, pix_fmt: str,
                     codec_options: dict[str, str], pictures: _PictureWriter, width: int, height: int,
                     options: EncodeOptions, progress: Progress) -> None:
    info = clip.info
    kind = CONTAINER_KINDS[final.suffix.lower().lstrip(".")]
    fps = Fraction(info.fps)
    container_options = {}
    if kind in ("mp4", "mov"):
        container_options["movflags"] = "+faststart+use_metadata_tags" if options.metadata else "+faststart"
    output = av.open(str(temp), mode="w", format={"mkv": "matroska"}.get(kind, kind),
                     options=container_options)
    audio = None
    try:
        for key, value in options.metadata.items():
            output.metadata[key] = value
        stream = output.add_stream(spec.encoder, rate=fps, options=codec_options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        context = stream.codec_context
        context.time_base = 1 / fps
        context.thread_count = options.threads
        for tag, value in pictures.tags.items():
            setattr(context, tag, value)
        if info.sar and info.sar != 1:
            context.sample_aspect_ratio = info.sar
        if name == "h265" and kind in ("mp4", "mov"):
            context.codec_tag = "hvc1"
        if options.audio and info.audio is not None:
            audio = open_audio_writer(output, kind, info.audio, float(1 / fps), info.duration,
                                      options.audio_codec, options.audio_bitrate)
        written = 0
        for chunk in _chunks(clip, width, height, progress):
            for frame in pictures.frames(chunk):
                frame.pts = written
                frame.time_base = 1 / fps
                written += 1
                for packet in stream.encode(frame):
                    output.mux(packet)
            if audio is not None:
                audio.write_until(float(written / fps))
        for packet in stream.encode(None):
            output.mux(packet)
        if audio is not None:
            audio.finish(float(written / fps))
    finally:
        if audio is not None:
            audio.close()
        output.close()


def _write_png_sequence(clip: Clip, folder: Path, pictures: _PictureWriter, width: int, height: int,
                        progress: Progress) -> None:
    """frame_000001.png, ... in `folder` through one image2 muxer and one png encoder."""
    folder.mkdir()
    pattern = str(folder).replace("%", "%%") + "/frame_%06d.png"  # image2 reads % in the path as a pattern
    with av.open(pattern, mode="w", format="image2", options={"start_number": "1"}) as images:
        stream = images.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, pictures.pix_fmt
        index = 0
        for chunk in _chunks(clip, width, height, progress):
            for frame in pictures.frames(chunk):
                frame.pts = index
                frame.time_base = Fraction(1, 1)  # the stream's rate: one frame a second
                index += 1
                for packet in stream.encode(frame):
                    images.mux(packet)
        for packet in stream.encode(None):
            images.mux(packet)
