"""Decoding: exact frame counts and selection, VFR to constant rate, colour matrices and ranges,
10-bit depth, rotation, odd sizes, alpha, and the real clips' true frame counts."""

from __future__ import annotations

import logging
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from tests import testsrc
from vsrkit.engines.errors import InputError
from vsrkit.engines.video.decode import open_clip
from vsrkit.engines.video.probe import probe

RATES = [Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(60000, 1001)]


def _frames(clip) -> list[torch.Tensor]:
    return [frame for chunk in clip.chunks() for frame in chunk]


@pytest.mark.parametrize("fps", RATES, ids=str)
@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_exact_frame_count_at_common_rates(tmp_path, fps, container):
    path = testsrc.write_video(tmp_path / f"clip.{container}", (testsrc.pattern_rgb(i, 32, 32) for i in range(37)),
                               fps)
    clip = open_clip(path, chunk_frames=8)
    assert clip.info.fps == fps
    assert clip.info.frame_count == 37
    frames = _frames(clip)
    assert len(frames) == 37
    assert frames[0].shape == (32, 32, 3)


def test_skip_cap_and_every_nth_pick_the_right_frames(tmp_path):
    path = testsrc.write_video(tmp_path / "index.mkv", (testsrc.index_rgb(i, 16, 16) for i in range(27)), 25,
                               codec="ffv1", pix_fmt="yuv444p", audio=testsrc.tone(1.2), audio_codec="flac")
    clip = open_clip(path, skip_first=5, every_nth=3, max_frames=4, chunk_frames=3)
    assert clip.info.frame_count == 4
    assert clip.info.fps == Fraction(25, 3)
    assert [testsrc.index_of(f.numpy()) for f in _frames(clip)] == [5, 8, 11, 14]
    assert clip.info.audio.start_seconds == pytest.approx(5 / 25, abs=1e-6)

    rest = open_clip(path, skip_first=20, every_nth=2)
    assert [testsrc.index_of(f.numpy()) for f in _frames(rest)] == [20, 22, 24, 26]
    assert rest.info.frame_count == 4

    with pytest.raises(InputError, match="skips all 27 frames"):
        open_clip(path, skip_first=27)
    with pytest.raises(InputError, match="every_nth"):
        open_clip(path, every_nth=0)


def test_vfr_clip_forced_to_constant_rate_by_timestamps(tmp_path):
    times = [0.0, 0.04, 0.1, 0.13, 0.2, 0.33, 0.34, 0.5, 0.52, 0.7]
    path = testsrc.write_video(tmp_path / "vfr.mkv", (testsrc.index_rgb(i, 16, 16) for i in range(len(times))), 25,
                               codec="ffv1", pix_fmt="yuv444p", timestamps=times)
    media = probe(path)
    assert media.video.vfr
    duration = media.video.duration
    clip = open_clip(path, force_fps=25, chunk_frames=4)
    expected_count = int(np.floor(duration * 25 + 0.5))
    assert clip.info.frame_count == expected_count
    assert clip.info.fps == 25
    shown = [testsrc.index_of(f.numpy()) for f in _frames(clip)]
    assert len(shown) == expected_count
    # slot k shows the last frame whose timestamp rounds to slot <= k
    expected = []
    for slot in range(expected_count):
        candidates = [i for i, t in enumerate(times) if np.floor(t * 25 + 0.5) <= slot]
        expected.append(candidates[-1])
    assert shown == expected


def test_constant_rate_clip_resampled_keeps_duration(tmp_path):
    path = testsrc.write_video(tmp_path / "c30.mp4", (testsrc.index_rgb(i, 16, 16) for i in range(30)),
                               Fraction(30000, 1001))
    clip = open_clip(path, force_fps=Fraction(24000, 1001))
    assert clip.info.frame_count == 24
    assert len(_frames(clip)) == 24


# standard 8-bit code values of the 100% primaries
PRIMARY_CODES = {
    ("smpte170m", "tv"): {"red": (81, 90, 240), "green": (145, 54, 34), "blue": (41, 240, 110)},
    ("bt709", "tv"): {"red": (63, 102, 240), "green": (173, 42, 26), "blue": (32, 240, 118)},
    ("bt709", "pc"): {"red": (54, 99, 255), "green": (182, 30, 12), "blue": (18, 255, 116)},
}
PRIMARY_RGB = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1)}


def _bars_planes(codes: dict[str, tuple[int, int, int]], width: int = 24, height: int = 8):
    planes = [np.zeros((height, width), np.uint8) for _ in range(3)]
    band = width // len(codes)
    for i, name in enumerate(codes):
        for plane, value in zip(planes, codes[name], strict=True):
            plane[:, i * band:(i + 1) * band] = value
    return planes


@pytest.mark.parametrize("matrix,color_range", list(PRIMARY_CODES), ids=lambda v: str(v))
def test_tagged_matrix_and_range_decode_to_the_right_rgb(tmp_path, matrix, color_range):
    codes = PRIMARY_CODES[(matrix, color_range)]
    planes = _bars_planes(codes)
    path = testsrc.write_video(tmp_path / "bars.mkv", [planes], 25, codec="ffv1", pix_fmt="yuv444p",
                               matrix=matrix, color_range=color_range)
    frame = open_clip(path).to_tensor()[0]
    for i, name in enumerate(codes):
        got = frame[:, i * 8:(i + 1) * 8].mean(dim=(0, 1))
        assert torch.allclose(got, torch.tensor(PRIMARY_RGB[name], dtype=torch.float32), atol=3 / 255), (name, got)


def test_wrong_matrix_would_be_visible(tmp_path):
    """The bt709 codes read as bt601 miss red by far more than the tolerance used above."""
    planes = _bars_planes(PRIMARY_CODES[("bt709", "tv")])
    path = testsrc.write_video(tmp_path / "bars.mkv", [planes], 25, codec="ffv1", pix_fmt="yuv444p",
                               matrix="bt709", color_range="tv")
    wrong = open_clip(path, color_matrix="bt601").to_tensor()[0]
    assert abs(float(wrong[:, :8, 0].mean()) - 1.0) > 10 / 255


@pytest.mark.parametrize("size,matrix", [((48, 32), "smpte170m"), ((1280, 720), "bt709")], ids=["sd", "hd"])
def test_untagged_default_is_bt601_for_sd_and_bt709_for_hd(tmp_path, size, matrix):
    width, height = size
    planes = _bars_planes(PRIMARY_CODES[(matrix, "tv")], width=width, height=height)
    path = testsrc.write_video(tmp_path / "untagged.mkv", [planes], 25, codec="ffv1", pix_fmt="yuv444p")
    clip = open_clip(path)
    assert not clip.info.color.tagged
    assert clip.info.color.matrix == matrix
    frame = clip.to_tensor()[0]
    band = width // 3
    red = frame[:, :band].mean(dim=(0, 1))
    assert torch.allclose(red, torch.tensor([1.0, 0.0, 0.0]), atol=3 / 255)


def test_ten_bit_source_keeps_more_than_256_levels(tmp_path):
    width = 1024
    ramp = np.linspace(64, 940, width).round().astype(np.uint16)
    luma = np.tile(ramp, (4, 1))
    chroma = np.full((4, width), 512, np.uint16)
    path = testsrc.write_video(tmp_path / "ramp10.mkv", [[luma, chroma, chroma]], 25, codec="ffv1",
                               pix_fmt="yuv444p10le", matrix="bt709", color_range="tv")
    clip = open_clip(path)
    assert clip.info.bit_depth == 10
    red = clip.to_tensor()[0, 0, :, 0]
    levels = torch.unique(torch.round(red * 4095))
    assert levels.numel() > 600
    expected = torch.from_numpy((ramp.astype(np.float32) - 64) / 876)
    assert torch.allclose(red, expected, atol=1e-4)


def test_rotation_is_applied(tmp_path):
    image = np.zeros((32, 64, 3), np.uint8)
    image[:8, :8] = 255
    path = testsrc.write_video(tmp_path / "rot.mp4", [image] * 2, 25, options={"crf": "0"}, rotation=90)
    clip = open_clip(path)
    assert (clip.info.width, clip.info.height) == (32, 64)
    frame = clip.to_tensor()[0].mean(dim=-1)
    # displayed turned 90 degrees counter-clockwise: the top-left corner ends at the bottom-left
    assert float(frame[-8:, :8].mean()) > 0.9
    assert float(frame[:8, :8].mean()) < 0.1


def test_odd_size_decodes_with_its_true_size(tmp_path):
    luma = np.full((47, 63), 81, np.uint8)
    cb = np.full((24, 32), 90, np.uint8)
    cr = np.full((24, 32), 240, np.uint8)
    path = testsrc.write_video(tmp_path / "odd.mkv", [[luma, cb, cr]], 25, codec="ffv1", pix_fmt="yuv420p",
                               matrix="smpte170m", color_range="tv")
    frame = open_clip(path).to_tensor()[0]
    assert frame.shape == (47, 63, 3)
    assert torch.allclose(frame.mean(dim=(0, 1)), torch.tensor([1.0, 0.0, 0.0]), atol=3 / 255)


@pytest.mark.parametrize("codec,pix_fmt", [("png", "rgba"), ("ffv1", "yuva444p")])
def test_alpha_is_kept(tmp_path, codec, pix_fmt):
    image = np.zeros((16, 16, 4), np.uint8)
    image[..., 0] = 200
    image[:, :8, 3] = 255
    image[:, 8:, 3] = 64
    if pix_fmt == "rgba":
        frames = [image]
    else:
        luma = np.full((16, 16), 128, np.uint8)
        chroma = np.full((16, 16), 128, np.uint8)
        frames = [[luma, chroma, chroma, image[..., 3].copy()]]
    name = "alpha.mov" if codec == "png" else "alpha.mkv"
    path = testsrc.write_video(tmp_path / name, frames, 25, codec=codec, pix_fmt=pix_fmt)
    clip = open_clip(path)
    assert clip.info.channels == 4
    frame = clip.to_tensor()[0]
    assert frame.shape == (16, 16, 4)
    assert float(frame[:, :8, 3].mean()) == pytest.approx(1.0, abs=1e-3)
    assert float(frame[:, 8:, 3].mean()) == pytest.approx(64 / 255, abs=1e-3)


def test_truncated_stream_is_an_error_not_a_short_clip(tmp_path):
    # the header (moov first, as with faststart) survives, half the media data does not
    path = testsrc.write_video(tmp_path / "full.mp4", (testsrc.pattern_rgb(i, 32, 32) for i in range(60)), 25,
                               options={"g": "5"}, container_options={"movflags": "+faststart"})
    data = (tmp_path / "full.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert probe(path).video.frame_count == 60
    clip = open_clip(cut)
    assert clip.info.frame_count == 60
    with pytest.raises(InputError, match="cut.mp4.*truncated"):
        clip.to_tensor()


def _decoded_count(path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


@pytest.mark.parametrize("name,count,fps,every_nth", [
    ("carphone_qcif_pristine.mp4", 120, Fraction(30000, 1001), 1),
    ("ntsc480i_tff_bt601_ac3.mkv", 300, Fraction(30000, 1001), 10),
    ("bbb_0_30_720p24_vorbis.webm", 720, Fraction(24), 24),
])
def test_real_clips_decode_with_their_true_frame_counts(footage, caplog, name, count, fps, every_nth):
    path = footage / name
    clip = open_clip(path, every_nth=every_nth)
    assert probe(path).video.frame_count == count
    assert clip.info.frame_count == count // every_nth
    with caplog.at_level(logging.WARNING, logger="vsrkit.engines.video.decode"):
        frames = _frames(clip)
    assert len(frames) == count // every_nth
    # every frame of the file was read and none was missing or extra
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert clip.info.fps == fps / every_nth
    if count <= 300:
        assert _decoded_count(path) == count
    assert 0.02 < float(torch.stack(frames).mean()) < 0.98


def _unique_index_rgb(index: int) -> np.ndarray:
    """A 16x16 frame showing `index` whole: index % 28 in the top half, index // 28 in the bottom half."""
    return np.concatenate([testsrc.index_rgb(index % 28, 16, 8), testsrc.index_rgb(index // 28, 16, 8)])


def _unique_index_of(frame: torch.Tensor) -> int:
    return testsrc.index_of(frame[:8].numpy()) + 28 * testsrc.index_of(frame[8:].numpy())


@pytest.mark.parametrize("force_fps", [None, 30])
def test_long_skip_seeks_and_still_lands_on_the_exact_frame(tmp_path, caplog, force_fps):
    path = testsrc.write_video(tmp_path / "long.mp4", (_unique_index_rgb(i) for i in range(300)), 30,
                               options={"g": "12", "crf": "0"})
    with caplog.at_level(logging.DEBUG, logger="vsrkit.engines.video.decode"):
        clip = open_clip(path, skip_first=200, max_frames=5, force_fps=force_fps)
        seeked = clip.to_tensor()
    assert "seeked" in caplog.text
    assert [_unique_index_of(f) for f in seeked] == [200, 201, 202, 203, 204]
    # The same frames as decoding the whole (lossless) file from the start with the same settings.
    linear = open_clip(path, force_fps=force_fps).to_tensor()
    assert linear.shape[0] == 300 and [_unique_index_of(f) for f in linear] == list(range(300))
    assert torch.equal(seeked, linear[200:205])


@pytest.mark.parametrize("pix_fmt,container", [("nv12", "nut"), ("yuyv422", "nut"), ("uyvy422", "avi"),
                                               ("yuv411p", "nut"), ("rgb24", "nut"), ("bgra", "nut")])
def test_packed_and_semi_planar_formats_decode_to_the_right_rgb(tmp_path, pix_fmt, container):
    bars = [(191, 191, 191), (191, 191, 0), (0, 191, 191), (0, 191, 0), (191, 0, 191), (191, 0, 0), (0, 0, 191)]
    image = np.repeat(np.array(bars, np.uint8)[None], 16, 0).repeat(16, 1)
    path = testsrc.write_video(tmp_path / f"raw.{container}", [image], 25, codec="rawvideo", pix_fmt=pix_fmt,
                               matrix="bt709", color_range="tv")
    # raw video in these containers carries no colour tags: say what was written
    clip = open_clip(path, color_matrix="bt709", color_range="limited")
    assert clip.info.channels == (4 if pix_fmt == "bgra" else 3)
    frame = clip.to_tensor()[0]
    tolerance = 5 if pix_fmt == "yuv411p" else 3  # quarter-width chroma blurs more across bar edges
    for index, colour in enumerate(bars):
        got = frame[8, index * 16 + 8, :3] * 255
        assert torch.allclose(got, torch.tensor(colour, dtype=torch.float32), atol=tolerance), (index, got)
