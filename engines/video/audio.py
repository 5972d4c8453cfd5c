"""Carry a clip's audio into an output file, in sync and exactly as long as the video.

Two ways, chosen per job:

* stream copy (bit-exact, no quality loss) when the source is a file whose codec
  the output container accepts, it covers the whole clip, and its packets are
  short enough (at most one video frame) that dropping whole packets at the ends
  keeps the duration within one frame of the video's;
* otherwise decode, convert to float, trim or pad with silence sample-exactly to
  the video's duration, and re-encode (AAC for MP4/MOV, Opus for WebM/MKV).

Either way audio is written interleaved with the video as it is encoded, so
memory does not grow with the clip's length.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np
import torch

from ..clip import AudioTrack
from ..errors import InputError
from .probe import AudioStreamInfo, decode_packets, probe, with_audio_packets

log = logging.getLogger(__name__)

# codecs a container takes as they are (stream copy)
COPYABLE = {
    "mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"},
    "mov": {"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be",
            "pcm_f32le"},
    "mkv": {"aac", "mp3", "ac3", "eac3", "opus", "vorbis", "flac", "alac", "dts", "truehd", "pcm_s16le",
            "pcm_s24le", "pcm_s32le", "pcm_f32le"},
    "webm": {"opus", "vorbis"},
    "avi": {"mp3", "ac3", "pcm_s16le"},
}
# codec used when audio has to be re-encoded, per container
REENCODE = {"mp4": "aac", "mov": "aac", "mkv": "libopus", "webm": "libopus", "avi": "pcm_s16le"}
AUDIO_CODECS = {"aac": "aac", "opus": "libopus", "flac": "flac", "pcm": "pcm_s16le", "mp3": "libmp3lame",
                "ac3": "ac3"}
_FRAME_SIZES = {"aac": 1024, "libopus": 960, "ac3": 1536, "libmp3lame": 1152, "flac": 4608}
_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
_DEFAULT_BITRATES = {"aac": 192_000, "libopus": 160_000, "libmp3lame": 192_000, "ac3": 384_000}


def _layout_for(channels: int, codec: str) -> str:
    if codec == "libopus" and channels > 2:
        channels = 2
    return _LAYOUTS.get(channels, "stereo")


def _rate_for(codec: str, rate: int) -> int:
    supported = av.codec.Codec(codec, "w").audio_rates
    if not supported or rate in supported:
        return rate
    if codec == "libopus":
        return 48000
    return min(supported, key=lambda r: (abs(r - rate), -r))


class AudioWriter:
    """Writes one audio stream of an output container, a piece at a time as video time advances."""

    def write_until(self, seconds: float) -> None:
        raise NotImplementedError

    def finish(self, seconds: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the input file, if any."""


def check_audio_codec(codec: str | None) -> str:
    """'auto', 'copy' or a key of AUDIO_CODECS from what the user gave (None is 'auto', any case);
    InputError for anything else."""
    wanted = (codec or "auto").strip().lower()
    if wanted not in ("auto", "copy", *AUDIO_CODECS):
        raise InputError(f"audio codec '{codec}' is not supported; use one of auto, copy, "
                         f"{', '.join(AUDIO_CODECS)}")
    return wanted


def open_audio_writer(output: av.container.OutputContainer, container_kind: str, track: AudioTrack,
                      frame_seconds: float, duration_hint: float, codec: str | None = None,
                      bitrate: int | None = None) -> AudioWriter | None:
    """Add an audio stream for `track` to `output` (before any packet is written) and return its writer.

    `codec`: None/"auto" (copy when possible, else the container's usual codec), "copy"
    (copy or fail), or one of AUDIO_CODECS. `duration_hint` is the video's expected duration.
    """
    wanted = check_audio_codec(codec)
    info = _file_stream(track) if track.path else None
    if track.path and info is None:
        log.warning("audio stream %s of %s is gone; writing no audio", track.stream_index, track.path)
        return None
    if wanted in ("auto", "copy") and info is not None:
        reason = _copy_blocker(info, track, container_kind, frame_seconds, duration_hint)
        if reason is None:
            return _CopyWriter(output, track, info)
        if wanted == "copy":
            raise InputError(f"the audio of '{track.path}' ({info.codec}) cannot be stream-copied here: {reason}; "
                             "choose an audio codec to re-encode it")
    encoder = REENCODE[container_kind] if wanted in ("auto", "copy") else AUDIO_CODECS[wanted]
    return _EncodeWriter(output, track, info, encoder, bitrate)


def _file_stream(track: AudioTrack) -> AudioStreamInfo | None:
    media = probe(track.path)
    for stream in media.audio_streams:
        if stream.index == track.stream_index:
            return stream
    return None


def _copy_blocker(info: AudioStreamInfo, track: AudioTrack, container_kind: str, frame_seconds: float,
                  duration: float) -> str | None:
    """Why the source audio cannot be copied as is (None: it can)."""
    if info.codec not in COPYABLE.get(container_kind, set()):
        return f"the .{container_kind} container does not take {info.codec} audio"
    info = with_audio_packets(track.path, info)  # probing may have left the packets unread
    tolerance = frame_seconds / 2
    if info.start_time > track.start_seconds + tolerance:
        return "it starts after the video"
    if info.start_time + info.duration < track.start_seconds + duration - tolerance:
        return "it ends before the video"
    if info.max_packet_seconds > frame_seconds:
        return "its packets are longer than a video frame, so it cannot be cut to the video's length"
    return None


class _CopyWriter(AudioWriter):
    """Copies whole packets whose midpoint lies inside the clip's time span."""

    def __init__(self, output: av.container.OutputContainer, track: AudioTrack, info: AudioStreamInfo):
        self.output = output
        self.start = track.start_seconds
        self.input = av.open(track.path)
        try:
            source = self.input.streams[track.stream_index]
            self.stream = output.add_stream_from_template(source)
            self.time_base = source.time_base
            self.offset = round(Fraction(self.start).limit_denominator(1_000_000) / self.time_base)
            if self.start > 1.0:
                self.input.seek(int(max(0.0, self.start - 1.0) / self.time_base), stream=source, backward=True)
            self.packets = (p for p in self.input.demux(source) if p.size and p.pts is not None)
        except BaseException:
            self.close()
            raise
        self.pending = None
        self.done = False
        log.info("copying %s audio from %s", info.codec, track.path)

    def write_until(self, seconds: float) -> None:
        self._copy(seconds, final=False)

    def finish(self, seconds: float) -> None:
        self._copy(seconds, final=True)
        self.close()

    def _copy(self, seconds: float, final: bool) -> None:
        while not self.done:
            packet = self.pending or next(self.packets, None)
            self.pending = None
            if packet is None:
                self.done = True
                return
            begin = float((packet.pts - self.offset) * self.time_base)
            length = float((packet.duration or 0) * self.time_base)
            middle = begin + length / 2
            if middle < 0:
                continue
            if middle >= seconds:
                if final:
                    self.done = True
                else:
                    self.pending = packet
                return
            packet.pts -= self.offset
            if packet.dts is not None:
                packet.dts -= self.offset
            packet.stream = self.stream
            self.output.mux(packet)

    def close(self) -> None:
        if self.input is not None:
            self.input.close()
            self.input = None


class _EncodeWriter(AudioWriter):
    """Decodes (or takes the waveform), trims or pads sample-exactly, and encodes."""

    def __init__(self, output: av.container.OutputContainer, track: AudioTrack, info: AudioStreamInfo | None,
                 encoder: str, bitrate: int | None):
        self.output = output
        if info is not None:
            channels, source_rate = info.channels, info.sample_rate
        elif track.waveform is not None and track.sample_rate:
            channels, source_rate = int(track.waveform.shape[0]), int(track.sample_rate)
        else:
            raise InputError("the audio has neither a file nor a waveform with a sample rate; "
                             "connect an AUDIO input with a 'waveform' and 'sample_rate'")
        self.rate = _rate_for(encoder, source_rate)
        self.layout = _layout_for(channels, encoder)
        self.channels = av.AudioLayout(self.layout).nb_channels
        self.stream = output.add_stream(encoder, rate=self.rate)
        context = self.stream.codec_context
        context.layout = self.layout
        sample_format = av.codec.Codec(encoder, "w").audio_formats[0].name
        context.format = sample_format
        context.time_base = Fraction(1, self.rate)
        if encoder in _DEFAULT_BITRATES:
            context.bit_rate = bitrate or _DEFAULT_BITRATES[encoder]
        self.to_encoder = av.AudioResampler(format=sample_format, layout=self.layout, rate=self.rate,
                                            frame_size=_FRAME_SIZES.get(encoder))
        self.source = _aligned_samples(track, self.rate, self.layout)
        self.buffer = np.zeros((self.channels, 0), dtype=np.float32)
        self.written = 0
        self.encoded = 0

    def write_until(self, seconds: float) -> None:
        self._write(round(seconds * self.rate))

    def finish(self, seconds: float) -> None:
        self._write(round(seconds * self.rate))
        self._encode(self.to_encoder.resample(None))
        for packet in self.stream.encode(None):
            self.output.mux(packet)
        self.close()

    def close(self) -> None:
        """Close the sample source (and with it the audio file it decodes, if any)."""
        self.source.close()

    def _write(self, target: int) -> None:
        while self.written < target:
            need = target - self.written
            if self.buffer.shape[1] == 0:
                self.buffer = next(self.source)
            piece, self.buffer = self.buffer[:, :need], self.buffer[:, need:]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="fltp", layout=self.layout)
            frame.sample_rate = self.rate
            frame.pts = self.written
            frame.time_base = Fraction(1, self.rate)
            self.written += piece.shape[1]
            self._encode(self.to_encoder.resample(frame))

    def _encode(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            frame.pts = self.encoded
            frame.time_base = Fraction(1, self.rate)
            self.encoded += frame.samples
            for packet in self.stream.encode(frame):
                self.output.mux(packet)


def _aligned_samples(track: AudioTrack, rate: int, layout: str) -> Iterator[np.ndarray]:
    """Float32 [C, n] blocks whose first sample is at the clip's start, then silence forever."""
    channels = av.AudioLayout(layout).nb_channels
    container = av.open(track.path) if track.path else None
    try:  # close() on this generator (or its end) closes the file
        if container is not None:
            frames, first_time = _file_frames(container, track, rate, layout)
        else:
            frames, first_time = _waveform_frames(track, rate, layout), 0.0
        lead = round((first_time - track.start_seconds) * rate)
        skip = -lead if lead < 0 else 0
        if lead > 0:
            yield np.zeros((channels, lead), dtype=np.float32)
        for block in frames:
            if skip:
                dropped = min(skip, block.shape[1])
                block = block[:, dropped:]
                skip -= dropped
            if block.shape[1]:
                yield block
        if container is not None:
            container.close()
            container = None
        silence = np.zeros((channels, 4096), dtype=np.float32)
        while True:
            yield silence
    finally:
        if container is not None:
            container.close()


def _file_frames(container: av.container.InputContainer, track: AudioTrack, rate: int,
                 layout: str) -> tuple[Iterator[np.ndarray], float]:
    """Decoded, resampled blocks from the open file, and the time of the first one (the caller closes it)."""
    stream = container.streams[track.stream_index]
    if track.start_seconds > 1.0:
        container.seek(int(max(0.0, track.start_seconds - 1.0) / stream.time_base), stream=stream, backward=True)
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
    decoded = decode_packets(container, stream, flush_after_error=False)
    first = next(decoded, None)
    if first is None:
        return iter(()), track.start_seconds
    first_time = float(first.pts * first.time_base) if first.pts is not None else 0.0

    def blocks() -> Iterator[np.ndarray]:
        for frame in itertools.chain((first,), decoded):
            frame.pts = None
            for out in resampler.resample(frame):
                yield out.to_ndarray().astype(np.float32, copy=False)
        for out in resampler.resample(None):
            yield out.to_ndarray().astype(np.float32, copy=False)

    return blocks(), first_time


def _waveform_frames(track: AudioTrack, rate: int, layout: str) -> Iterator[np.ndarray]:
    """The in-memory waveform [C, S], resampled to `rate` and `layout`, in blocks."""
    waveform = track.waveform
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().to("cpu", torch.float32).numpy()
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim == 3:
        waveform = waveform[0]
    source_layout = _LAYOUTS.get(waveform.shape[0], None)
    if source_layout is None:
        waveform = waveform[:2]
        source_layout = _LAYOUTS[waveform.shape[0]]
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
    block = 8192
    for start in range(0, waveform.shape[1], block):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(waveform[:, start:start + block]), format="fltp",
                                           layout=source_layout)
        frame.sample_rate = int(track.sample_rate)
        for out in resampler.resample(frame):
            yield out.to_ndarray().astype(np.float32, copy=False)
    for out in resampler.resample(None):
        yield out.to_ndarray().astype(np.float32, copy=False)


def load_waveform(track: AudioTrack, duration: float) -> tuple[torch.Tensor, int]:
    """The track's audio for `duration` seconds from its start as float32 [C, S] and its sample rate.

    Sample-exact: padded with silence or cut to round(duration * rate) samples.
    """
    if track.path:
        info = _file_stream(track)
        if info is None:
            raise InputError(f"audio stream {track.stream_index} of '{track.path}' is gone")
        rate, layout = info.sample_rate, _LAYOUTS.get(info.channels, "stereo")
    elif track.waveform is not None and track.sample_rate:
        rate = int(track.sample_rate)
        channels = int(track.waveform.shape[-2]) if track.waveform.ndim > 1 else 1
        layout = _LAYOUTS.get(channels, "stereo")
    else:
        raise InputError("the audio has neither a file nor a waveform with a sample rate")
    total = round(duration * rate)
    blocks = []
    held = 0
    source = _aligned_samples(track, rate, layout)
    try:
        for block in source:
            take = block[:, :total - held]
            blocks.append(take)
            held += take.shape[1]
            if held >= total:
                break
    finally:
        source.close()
    channels = av.AudioLayout(layout).nb_channels
    samples = np.concatenate(blocks, axis=1) if blocks else np.zeros((channels, 0), dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(samples)), rate
