"""Encoding and muxing: exact counts and rates, audio length and sync, colour round trips,
odd sizes for every codec, 10-bit and alpha, and outputs that appear whole or not at all."""

from __future__ import annotations

import colorsys
from fractions import Fraction

import numpy as np
import pytest
import torch

from tests import testsrc
from vsrkit.engines.clip import Clip
from vsrkit.engines.errors import InputError
from vsrkit.engines.progress import Cancelled, Progress
from vsrkit.engines.video.decode import open_clip
from vsrkit.engines.video.encode import EncodeOptions, save_clip
from vsrkit.engines.video.formats import available_codecs
from vsrkit.engines.video.interop import images_to_clip
from vsrkit.engines.video.probe import probe

RATES = [Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(60000, 1001)]


def _pattern(count: int, width: int = 32, height: int = 32) -> torch.Tensor:
    return torch.from_numpy(np.stack([testsrc.pattern_rgb(i, width, height) for i in range(count)])).float() / 255


def _audio_seconds(path) -> float:
    samples, rate, _ = testsrc.decoded_audio(path)
    return samples.shape[1] / rate


@pytest.mark.parametrize("fps", RATES, ids=str)
@pytest.mark.parametrize("audio_seconds", [3.0, 0.4], ids=["longer-audio", "shorter-audio"])
def test_exact_count_rate_and_audio_length(tmp_path, fps, audio_seconds):
    frames = 29
    clip = images_to_clip(_pattern(frames), fps, {"waveform": torch.from_numpy(testsrc.tone(audio_seconds))[None],
                                                  "sample_rate": 48000})
    out = save_clip(clip, tmp_path / "out.mp4", EncodeOptions(preset="ultrafast"))
    media = probe(out)
    assert media.video.frame_count == frames
    assert media.video.fps == fps
    assert len(open_clip(out).to_tensor()) == frames
    video_seconds = frames / float(fps)
    assert abs(_audio_seconds(out) - video_seconds) <= 1 / float(fps)
    assert media.audio.codec == "aac"


def test_vfr_source_forced_to_constant_rate_encodes_exact_count(tmp_path):
    times = [0.0, 0.05, 0.08, 0.2, 0.21, 0.4, 0.45, 0.6]
    source = testsrc.write_video(tmp_path / "vfr.mkv", (testsrc.index_rgb(i, 16, 16) for i in range(len(times))),
                                 25, codec="ffv1", pix_fmt="yuv444p", timestamps=times)
    clip = open_clip(source, force_fps=Fraction(30000, 1001))
    out = save_clip(clip, tmp_path / "cfr.mp4", EncodeOptions(preset="ultrafast"))
    media = probe(out)
    assert media.video.frame_count == clip.info.frame_count
    assert media.video.fps == Fraction(30000, 1001)
    assert not media.video.vfr


def test_ffv1_yuv444p_round_trip_within_one_code(tmp_path):
    """Within 1/255 on average; single values can reach ~1.5/255 because 8-bit limited-range YUV
    (219 luma, 224 chroma codes) cannot hold every 8-bit RGB triple. 10-bit holds them all."""
    images = _pattern(6, 48, 32)
    out = save_clip(images_to_clip(images, 25), tmp_path / "lossless.mkv", EncodeOptions(codec="ffv1", pix_fmt="yuv444p"))
    assert probe(out).video.pix_fmt == "yuv444p"
    error = (open_clip(out).to_tensor() - images).abs() * 255
    assert float(error.mean()) < 0.5
    assert float(error.max()) < 1.75
    out10 = save_clip(images_to_clip(images, 25), tmp_path / "lossless10.mkv",
                      EncodeOptions(codec="ffv1", pix_fmt="yuv444p10le"))
    error10 = (open_clip(out10).to_tensor() - images).abs() * 255
    assert float(error10.max()) < 0.5


def test_ffv1_default_is_rgb_lossless_to_the_8_bit_input(tmp_path):
    images = _pattern(4, 40, 24)
    out = save_clip(images_to_clip(images, 25), tmp_path / "rgb.mkv", EncodeOptions(codec="ffv1"))
    assert probe(out).video.pix_fmt == "gbrp10le"
    error = (open_clip(out).to_tensor() - images).abs() * 255
    assert float(error.max()) <= 0.5 * 255 / 1023 + 1e-4


# 75% bars: white, yellow, cyan, green, magenta, red, blue, black
BARS = [(0.75, 0.75, 0.75), (0.75, 0.75, 0), (0, 0.75, 0.75), (0, 0.75, 0), (0.75, 0, 0.75), (0.75, 0, 0),
        (0, 0, 0.75), (0, 0, 0)]


def _bars(count: int, bar_width: int = 16, height: int = 32) -> torch.Tensor:
    row = torch.tensor(BARS, dtype=torch.float32).repeat_interleave(bar_width, dim=0)
    return row[None, None].expand(count, height, -1, -1).contiguous()


@pytest.mark.parametrize("matrix", ["auto", "bt709", "bt601"])
def test_h264_yuv420p_colour_bars_keep_their_hue(tmp_path, matrix):
    bars = _bars(5, bar_width=40)
    out = save_clip(images_to_clip(bars, 25), tmp_path / "bars.mp4",
                    EncodeOptions(pix_fmt="yuv420p", color_matrix=matrix, preset="ultrafast"))
    color = probe(out).video.color
    assert color.tagged
    assert color.matrix == {"auto": "smpte170m", "bt709": "bt709", "bt601": "smpte170m"}[matrix]
    back = open_clip(out).to_tensor()
    # 4:2:0 blurs chroma across the one column pair at each bar edge; elsewhere colours hold
    assert float((back - bars).abs().mean()) < 3 / 255
    for index, expected in enumerate(BARS):
        centre = back[:, 4:-4, index * 40 + 4: index * 40 + 36].mean(dim=(0, 1, 2)).tolist()
        assert np.allclose(centre, expected, atol=2 / 255), (index, centre)
        hue_in, sat_in, _ = colorsys.rgb_to_hsv(*expected)
        hue_out, sat_out, _ = colorsys.rgb_to_hsv(*centre)
        if sat_in > 0:
            shift = min(abs(hue_out - hue_in), 1 - abs(hue_out - hue_in)) * 360
            assert shift < 2.0, (index, shift)


def test_output_is_tagged_with_the_conversion_used(tmp_path):
    hd = _bars(2, bar_width=160, height=720)
    out = save_clip(images_to_clip(hd, 25), tmp_path / "hd.mkv", EncodeOptions(codec="ffv1", pix_fmt="yuv420p",
                                                                               color_range="pc"))
    color = probe(out).video.color
    assert (color.matrix, color.range, color.primaries, color.transfer) == ("bt709", "pc", "bt709", "bt709")
    assert color.tagged
    back = open_clip(out).to_tensor()
    assert float((back[:, 8:-8, 8:-8] - hd[:, 8:-8, 8:-8]).abs().mean()) < 1 / 255


CODEC_EXT = {"h264": "mp4", "h265": "mkv", "vp9": "webm", "prores": "mov", "ffv1": "mkv", "av1": "mp4", "png": ""}


@pytest.mark.parametrize("codec", [c for c in CODEC_EXT if c in available_codecs()])
def test_every_codec_takes_odd_sizes(tmp_path, codec):
    images = _pattern(3, 65, 65)
    options = EncodeOptions(codec=codec, preset={"vp9": "8", "av1": "12", "h264": "ultrafast",
                                                 "h265": "ultrafast"}.get(codec))
    out = save_clip(images_to_clip(images, 24), tmp_path / (f"odd.{CODEC_EXT[codec]}" if CODEC_EXT[codec] else "odd"),
                    options)
    if codec == "png":
        files = sorted(out.iterdir())
        assert [f.name for f in files] == ["frame_000001.png", "frame_000002.png", "frame_000003.png"]
        return
    media = probe(out)
    assert media.video.frame_count == 3
    pix_fmt = media.video.pix_fmt
    expected_width = 66 if pix_fmt.startswith(("yuv420", "yuv422")) else 65
    expected_height = 66 if pix_fmt.startswith("yuv420") else 65
    assert (media.video.width, media.video.height) == (expected_width, expected_height)
    back = open_clip(out).to_tensor()[:, :65, :65]
    assert float((back - images).abs().mean()) < 12 / 255


@pytest.mark.parametrize("codec,size", [("h265", (40, 40)), ("av1", (96, 18))])
def test_sizes_an_encoder_cannot_take_are_a_clear_error(tmp_path, codec, size):
    with pytest.raises(InputError, match="smaller than"):
        save_clip(images_to_clip(_pattern(2, *size), 24), tmp_path / "small.mp4", EncodeOptions(codec=codec))
    assert list(tmp_path.iterdir()) == []


def test_odd_size_crop(tmp_path):
    out = save_clip(images_to_clip(_pattern(2, 33, 17), 24), tmp_path / "crop.mp4",
                    EncodeOptions(odd_size="crop", preset="ultrafast"))
    assert (probe(out).video.width, probe(out).video.height) == (32, 16)


def test_ten_bit_output_keeps_fine_steps(tmp_path):
    ramp = torch.linspace(0, 1, 1024)[None, None, :, None].expand(2, 16, 1024, 3).contiguous()
    clip = Clip.from_tensor(ramp, 25, bit_depth=10)
    out = save_clip(clip, tmp_path / "ramp.mkv", EncodeOptions(codec="h265", preset="ultrafast", crf=4))
    assert probe(out).video.pix_fmt == "yuv420p10le"
    back = open_clip(out).to_tensor()[0, 8, :, 1]
    assert torch.unique(torch.round(back * 4095)).numel() > 400


@pytest.mark.parametrize("codec,ext", [("ffv1", "mkv"), ("prores", "mov")])
def test_alpha_survives(tmp_path, codec, ext):
    images = torch.rand(2, 16, 16, 4)
    images[..., 3] = torch.linspace(0, 1, 16)[None, None, :]
    out = save_clip(Clip.from_tensor(images, 25), tmp_path / f"alpha.{ext}", EncodeOptions(codec=codec))
    back = open_clip(out).to_tensor()
    assert back.shape[-1] == 4
    assert float((back[..., 3] - images[..., 3]).abs().max()) < 2 / 255


def test_never_overwrites(tmp_path):
    target = tmp_path / "taken.mp4"
    target.write_bytes(b"keep me")
    with pytest.raises(InputError, match="already exists"):
        save_clip(images_to_clip(_pattern(2), 25), target)
    assert target.read_bytes() == b"keep me"
    source = testsrc.write_video(tmp_path / "source.mp4", (testsrc.pattern_rgb(i, 16, 16) for i in range(2)), 25)
    with pytest.raises(InputError, match="input"):
        save_clip(open_clip(source), source)


def test_container_must_fit_the_codec(tmp_path):
    with pytest.raises(InputError, match=r"\.webm.*h264|h264.*\.mp4"):
        save_clip(images_to_clip(_pattern(2), 25), tmp_path / "wrong.webm")
    assert list(tmp_path.iterdir()) == []


class _CancelAfter(Progress):
    def __init__(self, chunks: int):
        super().__init__()
        self.left = chunks

    def check_cancel(self) -> None:
        if self.left == 0:
            raise Cancelled("stop")
        self.left -= 1


@pytest.mark.parametrize("codec,name", [("h264", "out.mp4"), ("png", "frames")])
def test_cancel_leaves_nothing_behind(tmp_path, codec, name):
    clip = Clip.from_tensor(_pattern(12), 25)
    clip = clip.then(lambda chunks: (c[i:i + 2] for c in chunks for i in range(0, len(c), 2)))
    with pytest.raises(Cancelled):
        save_clip(clip, tmp_path / name, EncodeOptions(codec=codec), progress=_CancelAfter(3))
    assert list(tmp_path.iterdir()) == []


def test_error_mid_stream_leaves_nothing_behind(tmp_path):
    def failing(chunks):
        for index, chunk in enumerate(chunks):
            if index == 2:
                raise RuntimeError("model crashed")
            yield chunk

    clip = Clip.from_tensor(_pattern(12), 25)
    clip = clip.then(lambda chunks: failing(c[i:i + 3] for c in chunks for i in range(0, len(c), 3)))
    with pytest.raises(RuntimeError, match="model crashed"):
        save_clip(clip, tmp_path / "out.mp4")
    assert list(tmp_path.iterdir()) == []


def test_success_leaves_only_the_output(tmp_path):
    out = save_clip(images_to_clip(_pattern(3), 25), tmp_path / "clip")
    assert out.name == "clip.mp4"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def _dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples[: rate // 2]))
    return float(np.argmax(spectrum) * rate / (len(samples[: rate // 2])))


@pytest.mark.parametrize("ext,expected_codec", [("mp4", "aac"), ("mkv", "pcm_s16le")])
def test_pcm_audio_keeps_both_channels(tmp_path, ext, expected_codec):
    source = testsrc.write_video(tmp_path / "pcm.mov", (testsrc.pattern_rgb(i, 16, 16) for i in range(25)), 25,
                                 audio=testsrc.tone(1.0, freqs=(440.0, 880.0)), audio_codec="pcm_s16le")
    assert probe(source).audio.codec == "pcm_s16le"
    out = save_clip(open_clip(source), tmp_path / f"out.{ext}", EncodeOptions(preset="ultrafast"))
    assert probe(out).audio.codec == expected_codec
    samples, rate, _ = testsrc.decoded_audio(out)
    assert samples.shape[0] == 2
    assert _dominant_hz(samples[0], rate) == pytest.approx(440, abs=4)
    assert _dominant_hz(samples[1], rate) == pytest.approx(880, abs=4)
    assert abs(samples.shape[1] / rate - 1.0) <= 1 / 25


def test_comfy_audio_input_is_resampled_for_opus(tmp_path):
    waveform = torch.from_numpy(testsrc.tone(2.0, rate=44100))[None]
    clip = images_to_clip(_pattern(20), 24, {"waveform": waveform, "sample_rate": 44100})
    out = save_clip(clip, tmp_path / "out.webm", EncodeOptions(codec="vp9", preset="8"))
    media = probe(out)
    assert media.audio.codec == "opus"
    assert abs(_audio_seconds(out) - 20 / 24) <= 1 / 24


def test_audio_copy_refused_when_the_container_cannot_take_it(footage, tmp_path):
    clip = open_clip(footage / "bbb_0_30_720p24_vorbis.webm", max_frames=2)
    with pytest.raises(InputError, match="vorbis"):
        save_clip(clip, tmp_path / "out.mp4", EncodeOptions(audio_codec="copy", preset="ultrafast"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,skip,frames,ext,codec", [
    ("ntsc480i_tff_bt601_ac3.mkv", 0, 45, "mp4", "ac3"),
    ("ntsc480i_tff_bt601_ac3.mkv", 30, 45, "mkv", "ac3"),
    ("bbb_0_30_720p24_vorbis.webm", 0, 24, "mkv", "vorbis"),
    ("bbb_0_30_720p24_vorbis.webm", 12, 24, "mp4", "aac"),
])
def test_real_clips_keep_their_audio_through_a_remux(footage, tmp_path, name, skip, frames, ext, codec):
    clip = open_clip(footage / name, skip_first=skip, max_frames=frames)
    out = save_clip(clip, tmp_path / f"out.{ext}", EncodeOptions(preset="ultrafast", crf=30))
    media = probe(out)
    assert media.video.frame_count == frames
    assert media.audio.codec == codec
    fps = float(clip.info.fps)
    assert abs(_audio_seconds(out) - frames / fps) <= 1 / fps


@pytest.mark.parametrize("skip,ext", [(0, "mkv"), (12, "mp4"), (30, "webm")])
def test_remuxed_audio_lines_up_with_the_source(footage, tmp_path, skip, ext):
    """Output audio at video time t is the source audio at the clip's start + t (music, so unambiguous)."""
    name = "bbb_0_30_720p24_vorbis.webm"
    clip = open_clip(footage / name, skip_first=skip, max_frames=24)
    options = EncodeOptions(codec="vp9", preset="8", crf=50) if ext == "webm" else EncodeOptions(preset="ultrafast")
    out = save_clip(clip, tmp_path / f"out.{ext}", options)
    media = probe(out)
    source, rate, source_start = testsrc.decoded_audio(footage / name)
    output, out_rate, output_start = testsrc.decoded_audio(out)
    assert out_rate == rate
    # source sample index of output sample j
    base = (clip.info.audio.start_seconds - source_start + output_start - media.video.start_time) * rate
    window = np.arange(rate // 4, rate // 4 + 8192)
    shifts = range(-600, 601, 4)
    scores = [float(np.dot(output[0, window], source[0, window + int(round(base)) + shift])) for shift in shifts]
    best = list(shifts)[int(np.argmax(scores))]
    assert abs(best) <= rate / float(clip.info.fps) / 2, best
