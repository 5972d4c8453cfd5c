"""`vsrkit transcode`: the same engine path as the nodes, with a progress bar."""

from __future__ import annotations

from fractions import Fraction

from tests import testsrc
from vsrkit.cli import main as cli_main
from vsrkit.engines.video.probe import probe


def _source(tmp_path):
    return testsrc.write_video(tmp_path / "in.mp4", (testsrc.pattern_rgb(i, 32, 24) for i in range(40)),
                               Fraction(30000, 1001), audio=testsrc.tone(1.5))


def test_transcode_part_of_a_clip_at_a_forced_rate(tmp_path, capsys):
    source = _source(tmp_path)
    out = tmp_path / "out.mkv"
    code = cli_main(["transcode", source, "-o", str(out), "--codec", "ffv1", "--start", "5", "--frames", "10",
                     "--fps", "25"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "transcode [" in captured.err and "10/10" in captured.err
    media = probe(out)
    assert (media.video.frame_count, media.video.fps, media.video.codec) == (10, 25, "ffv1")
    assert media.audio.codec == "aac"
    assert str(out) in captured.out


def test_transcode_options_reach_the_encoder(tmp_path, capsys):
    source = _source(tmp_path)
    out = tmp_path / "out.mp4"
    code = cli_main(["transcode", source, "-o", str(out), "--crf", "30", "--preset", "ultrafast",
                     "--pix-fmt", "yuv444p", "--audio", "none", "--every-nth", "2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    media = probe(out)
    assert media.video.pix_fmt == "yuv444p"
    assert media.video.frame_count == 20
    assert media.video.fps == Fraction(15000, 1001)
    assert media.audio_streams == ()


def test_transcode_refuses_to_overwrite_and_bad_options(tmp_path, capsys):
    source = _source(tmp_path)
    out = tmp_path / "taken.mp4"
    out.write_bytes(b"x")
    assert cli_main(["transcode", source, "-o", str(out), "--quiet"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["transcode", source, "-o", str(tmp_path / "a.mp4"), "--crf", "99", "--quiet"]) == 1
    assert "crf" in capsys.readouterr().err
    assert cli_main(["transcode", source, "-o", str(tmp_path / "b.mp4"), "--codec", "mpeg1", "--quiet"]) == 1
    assert "not supported" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "taken.mp4"]


def test_probe_reports_interlacing_of_the_real_interlaced_clip(footage, capsys):
    assert cli_main(["probe", "--interlacing", str(footage / "ntsc480i_tff_bt601_ac3.mkv")]) == 0
    text = capsys.readouterr().out
    assert "interlacing: metadata tff, idet tff" in text
    assert cli_main(["probe", str(footage / "ntsc480i_tff_bt601_ac3.mkv")]) == 0
    assert "idet" not in capsys.readouterr().out
