"""Segments without Ray: each temporal filter's declared reach is enough and needed, the planner's
ranges and context, a windowed chain processed in segments equals the whole clip, and the packet-copy
join (frames, timestamps, audio copied once, refusals, nothing half-written)."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests.testsrc import audio_packets, decoded_frames
from vsrkit.engines.clip import AudioTrack, Clip, Reach
from vsrkit.engines.errors import InputError
from vsrkit.engines.paths import TEMP_MARK
from vsrkit.engines.video.decode import open_clip
from vsrkit.engines.video.encode import save_clip
from vsrkit.engines.video.filters import filter_chunks, step_reach
from vsrkit.engines.video.formats import EncodeOptions
from vsrkit.engines.video.join import join_segments
from vsrkit.engines.video.preprocess import (
    _deinterlace_steps,
    deinterlace_clip,
    deinterlace_reaches,
    denoise_clip,
    denoise_reaches,
    denoise_steps,
)
from vsrkit.engines.video.scenes import scene_cuts
from vsrkit.engines.video.segments import (
    ChainReach,
    file_identity,
    plan_segments,
    segment_name,
    segment_ranges,
    trim_clip,
)


def moving_frames(count: int = 24, height: int = 32, width: int = 48, seed: int = 0) -> torch.Tensor:
    """Random texture whose brightness drifts: every frame differs from its neighbours."""
    generator = torch.Generator().manual_seed(seed)
    texture = torch.rand(count, height, width, 3, generator=generator)
    return (texture * 0.5 + torch.linspace(0, 0.5, count)[:, None, None, None]).clamp(0, 1)


TEMPORAL_FILTERS = {
    "bwdif": lambda: _deinterlace_steps("bwdif", "frame", "tff"),
    "yadif": lambda: _deinterlace_steps("yadif", "frame", "tff"),
    "fftdnoiz": lambda: denoise_steps("medium", "fftdnoiz"),
    "atadenoise": lambda: denoise_steps("medium", "atadenoise"),
    "nlmeans": lambda: denoise_steps("medium", "nlmeans"),
}


@pytest.mark.parametrize("name", sorted(TEMPORAL_FILTERS))
def test_declared_reach_is_enough_and_needed(name):
    """A window with the declared frames before and after gives exactly the whole pass's frames;
    one frame less on either side (where the filter reads any) does not."""
    steps = TEMPORAL_FILTERS[name]()
    (reach,) = [step_reach(step) for step in steps]
    frames = moving_frames()
    height, width = frames.shape[1:3]

    def run(window: torch.Tensor) -> torch.Tensor:
        return torch.cat(list(filter_chunks([window], steps, width=width, height=height, fps=Fraction(25))))

    whole = run(frames)
    start, end = 10, 14

    def window(before: int, after: int) -> torch.Tensor:
        return run(frames[start - before:end + after])[before:before + end - start]

    assert torch.equal(window(reach.before, reach.after), whole[start:end])
    if reach.before:
        assert not torch.equal(window(reach.before - 1, reach.after), whole[start:end])
    if reach.after:
        assert not torch.equal(window(reach.before, reach.after - 1), whole[start:end])
    assert (reach.before, reach.after) == {"bwdif": (1, 1), "yadif": (1, 1), "fftdnoiz": (1, 1),
                                           "atadenoise": (2, 2), "nlmeans": (0, 0)}[name]


def test_ranges_end_at_cuts_merge_short_shots_and_split_long_ones():
    # shots: 0-5, 5-8, 8-40 (long), 40-44, 44-50
    ranges = segment_ranges(50, 10, [5, 8, 40, 44])
    # 0-5 and 5-8 merged; 8-40 in four equal parts; 40-44 and 44-50 merged (10 frames)
    assert ranges == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40), (40, 50)]
    assert segment_ranges(52, 10, [5, 8, 40, 43]) == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40), (40, 43),
                                                       (43, 52)]


def test_a_chain_that_cannot_split_inside_a_shot_splits_only_at_cuts_or_nowhere():
    assert segment_ranges(50, 10, [20, 30], splits_in_shot=False) == [(0, 20), (20, 30), (30, 50)]
    assert segment_ranges(50, 10, [], splits_in_shot=False) == [(0, 50)]
    assert segment_ranges(50, 10, [20], splits_in_shot=False, splits_at_cuts=False) == [(0, 50)]
    hqdn3d = ChainReach.of([Reach(splits_in_shot=False)])
    assert not hqdn3d.splits_at_cuts and not hqdn3d.uses_cuts
    assert [(s.start, s.end) for s in plan_segments(50, Fraction(10), 1.0, [20], hqdn3d)] == [(0, 50)]


def test_context_adds_up_over_stages_and_lead_in_is_skipped_at_cuts():
    reach = ChainReach.of([Reach(1, 1), Reach(2, 2), Reach(before=2, lead_in=9, restarts_at_cuts=True)])
    assert (reach.before_in_shot, reach.before_at_cut, reach.after) == (14, 5, 3) and reach.uses_cuts
    segments = plan_segments(100, Fraction(10), 3.0, [40], reach)
    by_start = {s.start: s for s in segments}
    assert by_start[0].decode_start == 0 and segments[-1].decode_end == 100
    assert by_start[40].decode_start == 35  # at the cut: windows and scdet's two frames, no lead-in
    inside = [s for s in segments if s.start not in (0, 40)]
    assert inside and all(s.decode_start == s.start - 14 for s in inside)
    assert all(s.decode_end == min(100, s.end + 3) for s in segments)
    with pytest.raises(InputError, match="seconds"):
        plan_segments(100, Fraction(10), 0, [], reach)


def test_trim_keeps_the_frames_between_the_contexts():
    frames = moving_frames(12)
    kept = trim_clip(Clip.from_tensor(frames, fps=10), 3, 5)
    assert kept.info.frame_count == 5 and torch.equal(kept.to_tensor(), frames[3:8])
    with pytest.raises(InputError):
        trim_clip(Clip.from_tensor(frames, fps=10), 10, 5)


def test_windowed_chain_split_anywhere_equals_the_whole_clip():
    """Deinterlace + atadenoise, both restarting at scene cuts (two windowed stages whose contexts add
    up, and scdet's look back) over two segments, split at every frame in turn, around a cut too: each decoded
    with its context and trimmed, together they give the whole pass's frames exactly."""
    frames = two_shot_frames()

    def chain(clip: Clip) -> Clip:
        clip = deinterlace_clip(clip, mode="on", parity="tff")
        return denoise_clip(clip, preset="medium", method="atadenoise", scene_threshold=10)

    source = deinterlace_clip(Clip.from_tensor(frames, fps=10), mode="on", parity="tff")
    # what the stages restart at: the cut, and frame 1 (scdet scores a second frame against the first
    # alone, and random texture changes everywhere): a segment's own first frames are scored likewise
    assert scene_cuts(source, 10) == [1, 11]
    reach = ChainReach.of([*deinterlace_reaches(scene_threshold=10),
                           *denoise_reaches("medium", "atadenoise", scene_threshold=10)])
    assert (reach.before_in_shot, reach.after, reach.uses_cuts) == (5, 3, False)
    assert split_everywhere(frames, chain, reach.before_in_shot, reach.after) == []


def two_shot_frames() -> torch.Tensor:
    """24 small frames of random texture: 11 of one shot, then 13 of a darker, mirrored one."""
    return torch.cat([moving_frames(11, 16, 24, seed=1), moving_frames(13, 16, 24, seed=2).flip(2) * 0.6])


def split_everywhere(frames: torch.Tensor, chain, before: int, after: int) -> list[int]:
    """The split points where two segments with this context do not give the whole pass's frames."""
    count = len(frames)
    whole = chain(Clip.from_tensor(frames, fps=10)).to_tensor()
    wrong = []
    for split in range(1, count):
        parts = []
        for start, end in ((0, split), (split, count)):
            first, last = max(0, start - before), min(count, end + after)
            window = Clip.from_tensor(frames[first:last], fps=10)
            parts.append(trim_clip(chain(window), start - first, end - start).to_tensor())
        if not torch.equal(torch.cat(parts), whole):
            wrong.append(split)
    return wrong


@pytest.mark.parametrize("method", ["fftdnoiz", "atadenoise"])
def test_a_denoiser_that_restarts_at_cuts_needs_one_frame_more_than_its_window(method):
    frames = two_shot_frames()

    def chain(clip: Clip) -> Clip:
        return denoise_clip(clip, preset="medium", method=method, scene_threshold=10)

    (restarting,) = denoise_reaches("medium", method, scene_threshold=10)
    (plain,) = denoise_reaches("medium", method, scene_threshold=0)
    assert restarting.before == plain.before + 1 and restarting.after == plain.after
    assert split_everywhere(frames, chain, restarting.before, restarting.after) == []
    assert split_everywhere(frames, chain, plain.before, plain.after) != []


@pytest.mark.parametrize("method", ["bwdif", "yadif"])
def test_a_deinterlacer_that_restarts_at_cuts_needs_one_frame_more_than_its_window(method):
    frames = two_shot_frames()

    def chain(clip: Clip) -> Clip:
        return deinterlace_clip(clip, mode="on", method=method, parity="tff", scene_threshold=10)

    (restarting,) = deinterlace_reaches(method, scene_threshold=10)
    (plain,) = deinterlace_reaches(method, scene_threshold=0)
    assert restarting.before == plain.before + 1 and restarting.after == plain.after
    assert restarting.restarts_at_cuts and not plain.restarts_at_cuts
    assert split_everywhere(frames, chain, restarting.before, restarting.after) == []
    assert split_everywhere(frames, chain, plain.before, plain.after) != []


def test_names_change_with_settings_and_range_and_identity_with_content(tmp_path):
    reach = ChainReach.of([])
    a, b = plan_segments(20, Fraction(10), 1.0, [], reach)
    assert segment_name(a, "k", "mp4") != segment_name(b, "k", "mp4") != segment_name(b, "k2", "mp4")
    assert sorted([segment_name(b, "k", "mp4"), segment_name(a, "k", "mp4")])[0].startswith("000000000-000000010-")
    first = tmp_path / "a.bin"
    first.write_bytes(b"x" * 3_000_000)
    moved = tmp_path / "moved.bin"
    moved.write_bytes(first.read_bytes())
    assert file_identity(moved) == file_identity(first)
    third = tmp_path / "c.bin"
    third.write_bytes(b"x" * 2_999_999 + b"z")
    assert file_identity(third) != file_identity(first)


# ------------------------------------------------------------------ join

FPS = Fraction(30000, 1001)


@pytest.fixture(scope="module")
def source_with_audio(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """An FFV1 clip (36 frames, 29.97 fps) with an AAC tone, and its frames."""
    frames = moving_frames(36, 48, 64, seed=3)
    seconds = 36 / FPS
    samples = torch.arange(int(float(seconds) * 48000)) / 48000
    tone = torch.stack([0.2 * torch.sin(2 * math.pi * 440 * samples)] * 2)
    clip = Clip.from_tensor(frames, fps=FPS, audio=AudioTrack(waveform=tone, sample_rate=48000, channels=2))
    path = save_clip(clip, tmp_path_factory.mktemp("join") / "source.mov",
                     EncodeOptions(codec="prores", audio_codec="aac"))
    return path, frames


def encode_segments(folder: Path, frames: torch.Tensor, bounds: list[tuple[int, int]], codec: str,
                    extension: str) -> list[Path]:
    return [save_clip(Clip.from_tensor(frames[a:b], fps=FPS), folder / f"{i}.{extension}",
                      EncodeOptions(codec=codec, audio=False)) for i, (a, b) in enumerate(bounds)]


BOUNDS = [(0, 11), (11, 12), (12, 30), (30, 36)]  # a one-frame segment has no reordering delay


@pytest.mark.parametrize("codec,segment_ext,output_ext", [("h264", "mp4", "mp4"), ("h264", "mp4", "mkv"),
                                                          ("ffv1", "mkv", "mkv")])
def test_join_copies_every_frame_in_order_with_exact_times_and_the_audio_once(
        tmp_path, source_with_audio, codec, segment_ext, output_ext):
    source, frames = source_with_audio
    segments = encode_segments(tmp_path, frames, BOUNDS, codec, segment_ext)
    audio = open_clip(source).info.audio
    out = join_segments(segments, [b - a for a, b in BOUNDS], tmp_path / f"joined.{output_ext}", FPS, audio)
    assert np.array_equal(decoded_frames(out), np.concatenate([decoded_frames(s) for s in segments]))
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        assert len(container.streams.audio) == 1 and video.average_rate == FPS
        times = [float(f.pts * f.time_base) for f in container.decode(video)]
    assert len(times) == 36
    assert max(abs(t - i / FPS) for i, t in enumerate(times)) < 1e-3
    # the audio is the source's own packets, exactly those a single-process encode copies
    single = save_clip(open_clip(source), tmp_path / f"single.{output_ext}", EncodeOptions(codec=codec))
    copied, original = audio_packets(out), dict(audio_packets(source))
    assert copied == audio_packets(single)
    assert all(original[pts] == data for pts, data in copied)
    assert abs(len(copied) * 1024 / 48000 - float(36 / FPS)) < float(1 / FPS)


def test_join_refuses_mismatched_segments_and_leaves_nothing(tmp_path, source_with_audio):
    _, frames = source_with_audio
    good = encode_segments(tmp_path, frames, [(0, 12)], "h264", "mp4")
    other = save_clip(Clip.from_tensor(frames[12:24, :32], fps=FPS), tmp_path / "small.mp4",
                      EncodeOptions(codec="h264", audio=False))
    out = tmp_path / "joined.mp4"
    with pytest.raises(InputError, match="other stream parameters"):
        join_segments([*good, other], [12, 12], out, FPS)
    with pytest.raises(InputError, match="holds 12 frames where 13"):
        join_segments(good, [13], out, FPS)
    assert not out.exists() and not list(tmp_path.glob(f"{TEMP_MARK}*"))
    out.write_bytes(b"taken")
    with pytest.raises(InputError, match="already exists"):
        join_segments(good, [12], out, FPS)
    assert out.read_bytes() == b"taken"
