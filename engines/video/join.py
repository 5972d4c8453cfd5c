"""Join encoded segments into one video without re-encoding, and mux the source's audio once.

Each segment is a file of its own, its frames numbered from 0, encoded with the same codec
settings (so its stream parameters are byte for byte those of the others) and starting at a
keyframe (a fresh encoder starts with a closed GOP). The join copies their packets in order into
the final container, moves each packet's presentation and decode time on by the frames before
its segment (in whole frames, so no timestamp rounding accumulates), and writes the audio of the
source file beside them, in sync, exactly as a single-process encode does (`audio.open_audio_writer`:
stream copy when the container takes it). The result appears whole or not at all (temp file and
rename).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av

from ..clip import AudioTrack
from ..errors import InputError
from ..paths import discard, output_taken, partial_path, publish
from ..progress import Progress
from .audio import open_audio_writer
from .formats import CONTAINER_KINDS

log = logging.getLogger(__name__)


def _frames(time: int | None, time_base: Fraction, fps: Fraction) -> int | None:
    """A timestamp in whole frames (None stays None)."""
    if time is None:
        return None
    return round(time * time_base * fps)


def _parameters(stream: av.video.stream.VideoStream) -> tuple:
    context = stream.codec_context
    return (context.name, context.width, context.height, context.format.name if context.format else None,
            bytes(context.extradata or b""))


def join_segments(segments: Sequence[str | os.PathLike], frame_counts: Sequence[int], output: str | os.PathLike,
                  fps: Fraction, audio: AudioTrack | None = None, audio_codec: str | None = None,
                  progress: Progress | None = None) -> Path:
    """Copy the video packets of `segments` (in order, `frame_counts[i]` frames each) into `output`
    at `fps`, with `audio` (a file's stream, or None) muxed once; returns the output path."""
    final = Path(os.fspath(output))
    if final.exists():
        raise output_taken(final)
    if not segments or len(segments) != len(frame_counts):
        raise InputError(f"{len(segments)} segments and {len(frame_counts)} frame counts cannot be joined")
    kind = CONTAINER_KINDS.get(final.suffix.lower().lstrip("."))
    if kind is None:
        raise InputError(f"a {final.suffix or 'name without extension'} cannot hold video; use .mp4, .mkv, .mov, .webm or .avi")
    total = sum(frame_counts)
    progress = progress or Progress(total, "join")
    temp = partial_path(final)
    options = {"movflags": "+faststart"} if kind in ("mp4", "mov") else {}
    try:
        with av.open(str(temp), mode="w", format={"mkv": "matroska"}.get(kind, kind), options=options) as out:
            _copy_all(out, kind, [Path(p) for p in segments], list(frame_counts), fps, audio, audio_codec,
                      progress)
        return publish(temp, final)
    except BaseException:
        discard(temp)
        raise


def _decode_delay(path: Path, fps: Fraction) -> int:
    """Frames between a segment's first decode time and its first presentation time (the encoder's
    reordering delay as its muxer wrote it; 0 for intra-only codecs and for a one-frame segment)."""
    with av.open(str(path)) as source:
        if not source.streams.video:
            raise InputError(f"segment '{path}' holds no video; delete it and run again")
        video = source.streams.video[0]
        for packet in source.demux(video):
            if packet.size and packet.dts is not None:
                return max(0, -_frames(packet.dts, video.time_base, fps))
    return 0


def _copy_all(out: av.container.OutputContainer, kind: str, segments: list[Path], frame_counts: list[int],
              fps: Fraction, audio: AudioTrack | None, audio_codec: str | None, progress: Progress) -> None:
    """Decode times are renumbered over the whole output as (packet number - the largest delay of any
    segment): increasing across the joins, and never after a packet's presentation time."""
    frame = 1 / fps
    total = sum(frame_counts)
    delay = max(_decode_delay(path, fps) for path in segments)
    writer = None
    stream = None
    expected = None
    offset = 0
    try:
        for path, count in zip(segments, frame_counts, strict=True):
            with av.open(str(path)) as source:
                video = source.streams.video[0]
                if stream is None:
                    stream = out.add_stream_from_template(video)
                    stream.codec_context.framerate = fps  # the container's frame rate and default duration
                    if video.codec_context.name == "hevc" and kind in ("mp4", "mov"):
                        stream.codec_context.codec_tag = "hvc1"  # as encode.py tags it (Apple players need it)
                    expected = _parameters(video)
                    if audio is not None:
                        writer = open_audio_writer(out, kind, audio, float(frame), float(total * frame), audio_codec)
                elif _parameters(video) != expected:
                    raise InputError(f"segment '{path}' was encoded with other stream parameters than the first; "
                                     "segments from different settings cannot be joined: delete the folder and "
                                     "run again")
                copied = 0
                for packet in source.demux(video):
                    if packet.size == 0 or packet.pts is None:
                        continue
                    packet.pts = _frames(packet.pts, video.time_base, fps) + offset
                    packet.dts = offset + copied - delay
                    packet.duration = 1
                    packet.time_base = frame
                    packet.stream = stream
                    out.mux(packet)
                    copied += 1
                    progress.advance(1)
                    if writer is not None:
                        writer.write_until(float((offset + copied) * frame))
                if copied != count:
                    raise InputError(f"segment '{path}' holds {copied} frames where {count} were planned; "
                                     "delete it and run again")
                offset += count
            progress.check_cancel()
        if writer is not None:
            writer.finish(float(total * frame))
    finally:
        if writer is not None:
            writer.close()
