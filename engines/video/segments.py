"""Split one clip into segments that can be processed apart and joined without a visible seam.

A segment is a range of source frames [start, end) by decoded frame index, never by time. It is
decoded with context frames around it, as many as the chain's temporal stages read (`clip.Reach`),
processed, and the context frames are dropped (`trim_clip`), so every frame of the segment sees the
same neighbourhood it sees in one pass over the whole clip. Segments end at scene cuts where the
clip has them (a stage that restarts at a cut then needs no lead-in there) and otherwise every
`seconds`; short shots are merged so no segment is much shorter than it needs to be.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import torch

from ..clip import Clip, Reach
from ..errors import InputError

IDENTITY_SAMPLE_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class ChainReach:
    """The context a whole chain needs around a segment, from the reaches of its stages in order.

    Stages run one after the other, so their context frames add up: a stage's first frame of
    context is right only if the stage before it had its own context around that frame. Knowing the
    cuts (a scan of the clip) pays only for a stage that restarts there and otherwise needs a
    lead-in or cannot be split at all (`uses_cuts`).
    """

    before_at_cut: int
    before_in_shot: int
    after: int
    splits_in_shot: bool
    splits_at_cuts: bool
    uses_cuts: bool

    @classmethod
    def of(cls, reaches: Sequence[Reach]) -> ChainReach:
        windows = sum(r.before for r in reaches)
        return cls(
            before_at_cut=windows + sum(r.lead_in for r in reaches if not r.restarts_at_cuts),
            before_in_shot=windows + sum(r.lead_in for r in reaches),
            after=sum(r.after for r in reaches),
            splits_in_shot=all(r.splits_in_shot for r in reaches),
            splits_at_cuts=all(r.splits_in_shot or r.restarts_at_cuts for r in reaches),
            uses_cuts=any(r.restarts_at_cuts and (r.lead_in or not r.splits_in_shot) for r in reaches),
        )


@dataclasses.dataclass(frozen=True)
class Segment:
    """Source frames [start, end) written by this segment, decoded from [decode_start, decode_end)."""

    start: int
    end: int
    decode_start: int
    decode_end: int

    @property
    def frames(self) -> int:
        return self.end - self.start


def segment_ranges(frame_count: int, target: int, cuts: Sequence[int], splits_in_shot: bool = True,
                   splits_at_cuts: bool = True) -> list[tuple[int, int]]:
    """[start, end) ranges covering the clip: boundaries at cuts, shots longer than `target` frames
    cut into equal parts (when the chain allows), consecutive short shots merged up to `target`."""
    if frame_count < 1:
        raise InputError("the clip has no frames to split")
    if target < 1:
        raise InputError(f"a segment must hold at least one frame, got {target}")
    inner = sorted({int(c) for c in cuts if 0 < int(c) < frame_count}) if splits_at_cuts else []
    edges = [0, *inner, frame_count]
    ranges: list[tuple[int, int]] = []
    open_start: int | None = None
    for shot_start, shot_end in zip(edges[:-1], edges[1:], strict=True):
        if open_start is not None and shot_end - open_start <= target:
            continue  # this shot joins the open segment
        if open_start is not None:
            ranges.append((open_start, shot_start))
        length = shot_end - shot_start
        parts = math.ceil(length / target) if splits_in_shot else 1
        bounds = [shot_start + length * k // parts for k in range(parts + 1)]
        ranges.extend(zip(bounds[:-2], bounds[1:-1], strict=True))
        open_start = bounds[-2]
    ranges.append((open_start, frame_count))
    return ranges


def plan_segments(frame_count: int, fps: Fraction, seconds: float, cuts: Sequence[int],
                  reach: ChainReach) -> list[Segment]:
    """The segments of a clip and the frames each must decode, for a chain of this `reach`."""
    if not seconds > 0:
        raise InputError(f"segment length must be a positive number of seconds, got {seconds}")
    target = max(1, round(seconds * float(fps)))
    cut_set = set(cuts)
    segments = []
    for start, end in segment_ranges(frame_count, target, cuts, reach.splits_in_shot, reach.splits_at_cuts):
        before = reach.before_at_cut if start in cut_set else reach.before_in_shot
        segments.append(Segment(start, end, max(0, start - before), min(frame_count, end + reach.after)))
    return segments


def trim_clip(clip: Clip, skip: int, count: int) -> Clip:
    """`count` frames of `clip` after its first `skip`: the context frames of a segment dropped.

    The source is pulled no further than the last frame kept (and what the stages before need to
    make it)."""
    if skip < 0 or count < 1 or skip + count > clip.info.frame_count:
        raise InputError(f"cannot keep frames {skip}..{skip + count} of a clip of {clip.info.frame_count}")

    def stage(chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        skipping, left = skip, count
        for chunk in chunks:
            if skipping:
                dropped = min(skipping, int(chunk.shape[0]))
                chunk, skipping = chunk[dropped:], skipping - dropped
            if chunk.shape[0] == 0:
                continue
            kept = chunk[:left]
            left -= int(kept.shape[0])
            yield kept
            if left == 0:
                return

    return clip.then(stage, frame_count=count)


def file_identity(path: str | os.PathLike) -> str:
    """A fingerprint of a file's content that does not read all of it: its size and its first and
    last MiB. The same video copied or moved keeps it; a different or re-encoded one does not."""
    file = Path(path)
    size = file.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(file, "rb") as handle:
        digest.update(handle.read(IDENTITY_SAMPLE_BYTES))
        if size > IDENTITY_SAMPLE_BYTES:
            handle.seek(max(IDENTITY_SAMPLE_BYTES, size - IDENTITY_SAMPLE_BYTES))
            digest.update(handle.read(IDENTITY_SAMPLE_BYTES))
    return digest.hexdigest()


def segment_name(segment: Segment, key: str, extension: str) -> str:
    """The file name of a segment: its frame range (so names sort in order) and a hash of the input's
    identity, the settings (`key`) and the decoded range, so a changed setting never reuses a file."""
    digest = hashlib.sha256(f"{key}|{segment.start}|{segment.end}|{segment.decode_start}|"
                            f"{segment.decode_end}".encode()).hexdigest()[:16]
    return f"{segment.start:09d}-{segment.end:09d}-{digest}.{extension}"


SEGMENT_CONTAINERS = {"h264": "mp4", "h265": "mp4", "av1": "mp4", "vp9": "mp4", "prores": "mov", "ffv1": "mkv"}
"""Where each codec's segments are stored: MP4/MOV keep every packet's decode time, which the join
needs for codecs with reordered frames (Matroska stores only presentation times)."""


def segment_container(codec: str) -> str:
    """The file extension for segments of `codec` (a name `encode.codec_spec` knows)."""
    if codec not in SEGMENT_CONTAINERS:
        raise InputError(f"codec {codec} cannot be written in segments; use one of "
                         f"{', '.join(SEGMENT_CONTAINERS)}")
    return SEGMENT_CONTAINERS[codec]
