"""The lazy, streaming clip that every vsrkit node passes along.

A `Clip` is metadata (`ClipInfo`) plus a source: a zero-argument callable that
returns a fresh iterator of frame chunks. Nothing is decoded until an output
(Save Video, Clip to Images, the CLI) pulls chunks, and each stage holds only
the chunk it is working on, so peak memory depends on chunk and frame size,
never on the clip's length.

A chunk is a CPU `torch.Tensor` of shape [T, H, W, C], float32 in 0..1,
C = 3 (RGB) or 4 (RGBA): the same layout as a ComfyUI IMAGE batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from typing import Any

import torch

ChunkSource = Callable[[], Iterator[torch.Tensor]]
Stage = Callable[[Iterator[torch.Tensor]], Iterator[torch.Tensor]]

DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024
MAX_CHUNK_FRAMES = 64

FIELD_ORDERS = {0: "unknown", 1: "progressive", 2: "tt", 3: "bb", 4: "tb", 5: "bt"}
"""FFmpeg's field order codes (AVFieldOrder) and names: the first letter is the field coded
first, the second the one shown first (tt and bt show the top field first)."""
_FIELD_ORDER_ALIASES = {
    "tff": "tff", "tt": "tff", "bt": "tff", "top": "tff",
    "bff": "bff", "bb": "bff", "tb": "bff", "bottom": "bff",
    "progressive": "progressive",
}


def field_order_name(value: Any) -> str:
    """FFmpeg's name for a field order code (2 -> 'tt'); a name is returned as is, anything else 'unknown'."""
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return FIELD_ORDERS.get(value, "unknown")
    return "unknown"


def normalize_field_order(value: Any) -> str:
    """'tff', 'bff', 'progressive' or 'unknown' from FFmpeg's names (tt/bb/tb/bt) or ours."""
    if isinstance(value, str):
        return _FIELD_ORDER_ALIASES.get(value.strip().lower(), "unknown")
    return "unknown"


@dataclasses.dataclass(frozen=True)
class ColorInfo:
    """How the RGB frames relate to the YUV they came from, and how to tag an encode.

    Values use FFmpeg's names: matrix `bt709`/`bt470bg`/`smpte170m`/`bt2020nc`,
    range `tv` (limited) or `pc` (full), primaries and transfer likewise.
    """

    matrix: str = "bt709"
    range: str = "tv"
    primaries: str = "bt709"
    transfer: str = "bt709"
    tagged: bool = False


@dataclasses.dataclass(frozen=True)
class AudioTrack:
    """Audio that travels with a clip.

    Either a stream in a file (`path`, `stream_index`) that starts at
    `start_seconds` of that file, or an in-memory `waveform` [C, S] float32
    with `sample_rate`. A file reference lets the muxer stream-copy.
    """

    path: str | None = None
    stream_index: int = 0
    start_seconds: float = 0.0
    waveform: torch.Tensor | None = None
    sample_rate: int | None = None
    codec: str | None = None
    channels: int | None = None


@dataclasses.dataclass(frozen=True)
class ClipInfo:
    width: int
    height: int
    fps: Fraction
    frame_count: int
    channels: int = 3
    bit_depth: int = 8
    color: ColorInfo = dataclasses.field(default_factory=ColorInfo)
    audio: AudioTrack | None = None
    source_path: str | None = None
    sar: Fraction = Fraction(1, 1)
    field_order: str = "progressive"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def duration(self) -> float:
        return float(self.frame_count / self.fps) if self.fps else 0.0

    def replace(self, **changes: Any) -> ClipInfo:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Reach:
    """How far a streaming stage looks beyond the frame it makes, in frames of its own input.

    Given `before` frames before a stretch of the clip and `after` frames after it, a windowed
    stage (deinterlacer, fftdnoiz, atadenoise) gives over that stretch exactly what one pass over
    the whole clip gives. A recursive stage (its state carried from frame to frame) never forgets
    its start exactly: `lead_in` is how many frames it needs before a split for its output there to
    match the one pass within what was measured; a stage that `restarts_at_cuts` needs no lead-in
    at a scene cut. A stage that may not be split inside a shot at all (`splits_in_shot` False)
    is split only at cuts. The cluster's segment planner (`engines.video.segments`) reads these.
    """

    before: int = 0
    after: int = 0
    lead_in: int = 0
    restarts_at_cuts: bool = False
    splits_in_shot: bool = True
    name: str = ""


def chunk_frames_for(width: int, height: int, channels: int = 3,
                     budget_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Frames per chunk so that one float32 chunk stays within `budget_bytes`."""
    frame_bytes = max(1, width * height * channels * 4)
    return int(max(1, min(MAX_CHUNK_FRAMES, budget_bytes // frame_bytes)))


class Clip:
    """Metadata plus a re-iterable source of [T, H, W, C] float32 chunks."""

    def __init__(self, info: ClipInfo, source: ChunkSource):
        self.info = info
        self._source = source

    def chunks(self) -> Iterator[torch.Tensor]:
        """A fresh pass over the clip, chunk by chunk."""
        return iter(self._source())

    def then(self, stage: Stage, **info_changes: Any) -> Clip:
        """A new clip whose chunks are `stage` applied to this clip's chunks.

        `stage` is a generator function taking an iterator of chunks, so it can keep
        state across chunk boundaries (temporal filters, streaming models).
        """
        parent = self
        return Clip(self.info.replace(**info_changes), lambda: stage(parent.chunks()))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], **info_changes: Any) -> Clip:
        """A new clip with a stateless per-chunk function applied."""

        def stage(chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
            for chunk in chunks:
                yield fn(chunk)

        return self.then(stage, **info_changes)

    @classmethod
    def from_tensor(cls, frames: torch.Tensor, fps: Fraction | float | int,
                    audio: AudioTrack | None = None, **info: Any) -> Clip:
        """Wrap an in-memory [B, H, W, C] IMAGE batch (already in RAM) as a clip."""
        if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
            raise ValueError(
                f"images must be a [frames, height, width, 3 or 4] batch, got shape {tuple(frames.shape)}"
            )
        count, height, width, channels = (int(s) for s in frames.shape)
        clip_info = ClipInfo(width=width, height=height, fps=to_fraction(fps), frame_count=count,
                             channels=channels, audio=audio, **info)
        step = chunk_frames_for(width, height, channels)

        def source() -> Iterator[torch.Tensor]:
            for start in range(0, count, step):
                yield frames[start:start + step].float().clamp(0, 1)

        return cls(clip_info, source)

    def to_tensor(self, max_bytes: int | None = None) -> torch.Tensor:
        """Pull the whole clip into one [B, H, W, C] float32 tensor.

        Refuses, before decoding anything, when the result would exceed `max_bytes`.
        """
        need = self.info.frame_count * self.info.height * self.info.width * self.info.channels * 4
        if max_bytes is not None and need > max_bytes:
            raise MemoryError(
                f"this clip as an IMAGE batch would take {need / 2**30:.2f} GiB "
                f"({self.info.frame_count} frames of {self.info.width}x{self.info.height}), "
                f"above the limit of {max_bytes / 2**30:.2f} GiB; raise the limit (max_gib), "
                "take fewer frames, or keep the video as a streaming clip"
            )
        shape = (self.info.height, self.info.width, self.info.channels)
        claimed = self.info.frame_count
        out = torch.empty((claimed, *shape), dtype=torch.float32)  # filled in place: no second copy
        pos = 0
        for chunk in self.chunks():
            if tuple(chunk.shape[1:]) != shape:
                raise ValueError(f"the clip delivered a chunk of shape {tuple(chunk.shape)}; its info says "
                                 f"frames of {shape} (height, width, channels)")
            if pos + chunk.shape[0] > claimed:
                raise ValueError(f"the clip delivered more than the {claimed} frames its info claims; "
                                 "the stage that made it reports a wrong frame_count")
            out[pos:pos + chunk.shape[0]] = chunk
            pos += chunk.shape[0]
        return out[:pos]


def to_fraction(fps: Fraction | float | int | str) -> Fraction:
    """An exact frame rate: 29.97 becomes 30000/1001, 23.976 becomes 24000/1001."""
    if isinstance(fps, Fraction):
        value = fps
    elif isinstance(fps, int):
        value = Fraction(fps)
    else:
        value = Fraction(str(fps)) if isinstance(fps, str) else Fraction(fps)
        for base in (24, 30, 48, 60, 120):
            ntsc = Fraction(base * 1000, 1001)
            if abs(float(value) - float(ntsc)) < 0.0015:
                return ntsc
        value = value.limit_denominator(1001)
    if value <= 0:
        raise ValueError(f"frame rate must be positive, got {fps!r}")
    return value


def fit_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """[..., C] frames with exactly `channels` channels: extra ones dropped, missing ones opaque (1.0)."""
    if images.shape[-1] == channels:
        return images
    if images.shape[-1] > channels:
        return images[..., :channels].contiguous()
    opaque = torch.ones((*images.shape[:-1], channels - images.shape[-1]), dtype=images.dtype, device=images.device)
    return torch.cat([images, opaque], dim=-1)


def rechunk(chunks: Iterable[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Regroup a chunk stream into chunks of exactly `size` frames (the last may be short)."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    pending: list[torch.Tensor] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += chunk.shape[0]
        while held >= size:
            joined = torch.cat(pending, dim=0) if len(pending) > 1 else pending[0]
            yield joined[:size]
            rest = joined[size:]
            pending = [rest] if rest.shape[0] else []
            held = rest.shape[0]
    if held:
        yield torch.cat(pending, dim=0) if len(pending) > 1 else pending[0]
