"""Deinterlacing: combing removed on real and synthetic interlaced video, field-rate timing,
idet fallback, chunked == whole, progressive pass-through, parameter errors."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from vsrkit.engines.clip import Clip
from vsrkit.engines.errors import InputError
from vsrkit.engines.video.preprocess import (
    deinterlace_clip,
    detect_interlacing,
    interlace_report,
    normalize_field_order,
)

NTSC = "ntsc480i_tff_bt601_ac3.mkv"
FPS = Fraction(30000, 1001)


def luma(frames: torch.Tensor) -> torch.Tensor:
    return frames[..., 0] * 0.299 + frames[..., 1] * 0.587 + frames[..., 2] * 0.114


def combing(frames: torch.Tensor) -> float:
    """Energy of the difference between alternate lines: the mean, over frames and pixels, of
    (line 2k - line 2k+1)^2 on BT.601 luma. Each pair is one line of the top field and the
    bottom-field line below it, so motion between the fields (combing) inflates it."""
    y = luma(frames)
    rows = y.shape[1] - y.shape[1] % 2
    return float(((y[:, 0:rows:2] - y[:, 1:rows:2]) ** 2).mean())


def moving_fields(count: int, height: int = 72, width: int = 96) -> torch.Tensor:
    """Progressive frames at field rate: a vertical-bar texture and a bright disc sliding right."""
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    frames = []
    for t in range(count):
        shift = 3.0 * t
        bars = 0.5 + 0.3 * torch.sin(2 * math.pi * (xs - shift) / 12) * (0.7 + 0.3 * torch.cos(2 * math.pi * ys / height))
        disc = (((xs - 20 - shift) ** 2 + (ys - height / 2) ** 2) < 15 ** 2).float()
        gray = (bars * (1 - disc) + 0.95 * disc).clamp(0, 1)
        frames.append(torch.stack([gray, gray * 0.8 + 0.1, 1 - gray * 0.5], dim=-1))
    return torch.stack(frames)


def weave(fields: torch.Tensor, order: str = "tff") -> torch.Tensor:
    """Interlaced frames from consecutive field-time pictures: frame k takes its first field
    (top rows for tff, bottom rows for bff) from picture 2k and the other from picture 2k+1."""
    first, second = fields[0::2], fields[1::2]
    woven = first.clone()
    if order == "tff":
        woven[:, 1::2] = second[:, 1::2]
    else:
        woven[:, 0::2] = second[:, 0::2]
    return woven


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / float(((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def real_interlaced(footage):
    from vsrkit.engines.video.decode import open_clip

    clip = open_clip(footage / NTSC, max_frames=24)
    return clip, clip.to_tensor()


def test_real_interlaced_clip_combing_falls_more_than_fivefold(real_interlaced):
    clip, before = real_interlaced
    assert normalize_field_order(clip.info.field_order) == "tff"
    out = deinterlace_clip(clip, mode="auto")
    assert out is not clip
    assert out.info.extra["deinterlace"]["source"] == "metadata"
    after = out.to_tensor()
    assert after.shape == before.shape
    assert combing(before) > 5 * combing(after), (combing(before), combing(after))


def test_real_interlaced_clip_field_rate_doubles_frames_and_fps_exactly(real_interlaced):
    clip, before = real_interlaced
    out = deinterlace_clip(clip, mode="on", rate="field", method="yadif")
    assert out.info.fps == 2 * clip.info.fps == Fraction(60000, 1001)
    assert out.info.frame_count == 2 * clip.info.frame_count
    frames = out.to_tensor()
    assert frames.shape[0] == 2 * before.shape[0]
    assert out.info.duration == pytest.approx(clip.info.duration, abs=1e-9)
    assert combing(before) > 5 * combing(frames)


@pytest.mark.parametrize("method", ["bwdif", "yadif"])
def test_synthetic_woven_clip_combing_falls_more_than_fivefold(method):
    fields = moving_fields(24)
    progressive_combing = combing(fields)
    woven = weave(fields, "tff")
    clip = Clip.from_tensor(woven, FPS, field_order="tff")
    after = deinterlace_clip(clip, method=method).to_tensor()
    assert combing(woven) > 5 * combing(after), (combing(woven), combing(after), progressive_combing)
    assert combing(woven) > 20 * progressive_combing  # the weave itself is what combs


def test_field_rate_recovers_field_pictures_and_needs_the_right_parity():
    fields = moving_fields(24)
    clip = Clip.from_tensor(weave(fields, "tff"), FPS, field_order="tff")
    right = deinterlace_clip(clip, rate="field")
    wrong = deinterlace_clip(clip, rate="field", parity="bff")
    assert right.info.fps == 2 * FPS and right.info.frame_count == 24
    right_frames, wrong_frames = right.to_tensor(), wrong.to_tensor()
    assert right_frames.shape == fields.shape
    assert psnr(right_frames, fields) > psnr(wrong_frames, fields) + 3
    assert combing(weave(fields)) > 5 * combing(right_frames)


def test_unknown_field_order_falls_back_to_idet_for_both_parities():
    fields = moving_fields(40)
    for order in ("tff", "bff"):
        clip = Clip.from_tensor(weave(fields, order), FPS, field_order="unknown")
        verdict = detect_interlacing(clip, frames=20)
        assert verdict.verdict == order, verdict
        out = deinterlace_clip(clip, mode="auto")
        report = out.info.extra["deinterlace"]
        assert report["source"] == "idet" and report["field_order"] == order
        assert combing(clip.to_tensor()) > 5 * combing(out.to_tensor())


def test_unknown_field_order_with_progressive_content_passes_through():
    clip = Clip.from_tensor(moving_fields(20), FPS, field_order="unknown")
    assert detect_interlacing(clip).verdict == "progressive"
    assert deinterlace_clip(clip, mode="auto") is clip


def test_auto_mode_passes_progressive_input_through_bit_exact():
    frames = torch.rand(6, 32, 48, 3)
    clip = Clip.from_tensor(frames, 24)
    out = deinterlace_clip(clip, mode="auto")
    assert out is clip
    assert torch.equal(out.to_tensor(), frames)
    assert deinterlace_clip(clip, mode="off") is clip


def test_auto_mode_passes_real_progressive_clip_through_bit_exact(footage):
    from vsrkit.engines.video.decode import open_clip

    clip = open_clip(footage / "carphone_qcif_pristine.mp4", max_frames=8)
    assert clip.info.field_order == "progressive"
    out = deinterlace_clip(clip, mode="auto")
    assert out is clip and out.info == clip.info
    assert torch.equal(out.to_tensor(), clip.to_tensor())


@pytest.mark.parametrize("rate", ["frame", "field"])
def test_chunked_deinterlace_equals_whole_clip(rate, chunked_clip):
    woven = weave(moving_fields(22), "tff")
    whole = deinterlace_clip(chunked_clip(woven, [11], FPS, field_order="tff"), rate=rate).to_tensor()
    for sizes in ([1], [3, 1, 4], [7]):
        out = deinterlace_clip(chunked_clip(woven, sizes, FPS, field_order="tff"), rate=rate)
        assert torch.equal(out.to_tensor(), whole), sizes
        assert max(chunk.shape[0] for chunk in out.chunks()) <= max(sizes)  # field rate: more chunks, not bigger


def test_alpha_is_deinterlaced_with_the_picture():
    fields = moving_fields(12)
    rgba = torch.cat([fields, luma(fields)[..., None]], dim=-1)
    woven = weave(rgba, "tff")
    out = deinterlace_clip(Clip.from_tensor(woven, FPS, field_order="tff"), rate="field").to_tensor()
    assert out.shape == (12, *woven.shape[1:])
    assert combing(woven[..., [3, 3, 3]]) > 5 * combing(out[..., [3, 3, 3]])


def test_interlace_report_reads_metadata_and_idet(footage):
    report = interlace_report(footage / NTSC, frames=20)
    assert report["field_order"] == "tff"
    assert report["idet"]["verdict"] == "tff" and report["idet"]["frames"] == 20
    assert report["idet"]["tff"] > 15
    progressive = interlace_report(footage / "bbb_0_30_720p24_vorbis.webm", frames=10)
    assert progressive["field_order"] == "progressive"
    assert progressive["idet"]["verdict"] == "progressive"


def test_probe_reports_interlacing_on_request(footage):
    from vsrkit.engines.video.probe import probe

    info = probe(footage / NTSC, interlacing=True)
    report = info.video.interlacing
    assert report["field_order"] == "tff" and report["idet"]["verdict"] == "tff"
    assert info.to_dict()["video_streams"][0]["interlacing"]["idet"]["verdict"] == "tff"
    assert probe(footage / NTSC).video.interlacing is None


@pytest.mark.parametrize(("kwargs", "names"), [
    ({"mode": "sometimes"}, ["'mode'", "'auto'", "'on'", "'off'"]),
    ({"method": "w3fdif"}, ["'method'", "'bwdif'", "'yadif'"]),
    ({"rate": 2}, ["'rate'", "'frame'", "'field'"]),
    ({"parity": "top"}, ["'parity'", "'tff'", "'bff'"]),
    ({"detect_frames": 1}, ["'detect_frames'", "2 to 100000"]),
    ({"detect_frames": "60"}, ["'detect_frames'", "str"]),
])
def test_bad_deinterlace_parameters_are_refused_by_name(kwargs, names):
    clip = Clip.from_tensor(torch.zeros(2, 8, 8, 3), 25, field_order="tff")
    with pytest.raises(InputError) as caught:
        deinterlace_clip(clip, **kwargs)
    for name in names:
        assert name in str(caught.value)


@pytest.mark.parametrize("rate", ["frame", "field"])
def test_audio_stays_in_sync_after_remux(footage, tmp_path, rate):
    from vsrkit.engines.video.decode import open_clip
    from vsrkit.engines.video.encode import EncodeOptions, save_clip
    from vsrkit.engines.video.probe import probe

    clip = open_clip(footage / NTSC, max_frames=30)
    assert clip.info.audio is not None
    out = deinterlace_clip(clip, rate=rate)
    path = save_clip(out, tmp_path / f"{rate}.mkv", EncodeOptions(codec="h264", preset="ultrafast"))
    media = probe(path)
    video, audio = media.video, media.audio
    assert audio is not None
    assert video.frame_count == out.info.frame_count == 30 * (2 if rate == "field" else 1)
    frame = float(1 / out.info.fps)
    assert video.duration == pytest.approx(clip.info.duration, abs=frame)
    assert audio.start_time == pytest.approx(video.start_time, abs=frame)
    assert audio.start_time + audio.duration == pytest.approx(video.start_time + video.duration, abs=frame)
