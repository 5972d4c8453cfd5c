"""Probe: true frame counts and rates, VFR, colour, fields, SAR, rotation, depth, alpha, audio;
JSON output, caching, and the `vsrkit probe` command."""

from __future__ import annotations

import json
import os
from fractions import Fraction

import av
import numpy as np
import pytest

from tests import testsrc
from vsrkit.cli import main as cli_main
from vsrkit.engines.video.probe import probe, with_audio_packets


def test_real_clips_report_their_true_properties(footage):
    bbb = probe(footage / "bbb_0_30_720p24_vorbis.webm")
    video = bbb.video
    assert (video.codec, video.width, video.height, video.pix_fmt) == ("vp8", 1280, 720, "yuv420p")
    assert (video.frame_count, video.frame_count_source, video.fps, video.vfr) == (720, "counted", 24, False)
    assert video.duration == pytest.approx(30.0, abs=0.05)
    assert [(a.codec, a.sample_rate, a.channels) for a in bbb.audio_streams] == [("vorbis", 44100, 2)]
    assert bbb.audio.duration == pytest.approx(30.02, abs=0.05)

    carphone = probe(footage / "carphone_qcif_pristine.mp4")
    video = carphone.video
    assert (video.frame_count, video.fps, video.sar) == (120, Fraction(30000, 1001), Fraction(128, 117))
    assert (video.codec, video.bit_depth, video.field_order) == ("h264", 8, "progressive")
    assert carphone.audio_streams == ()

    ntsc = probe(footage / "ntsc480i_tff_bt601_ac3.mkv")
    video = ntsc.video
    assert (video.frame_count, video.fps, video.field_order, video.sar) == (300, Fraction(30000, 1001), "tt",
                                                                             Fraction(32, 27))
    assert (video.color.matrix, video.color.range, video.color.tagged) == ("smpte170m", "tv", True)
    assert [(a.codec, a.sample_rate, a.channels) for a in ntsc.audio_streams] == [("ac3", 48000, 2)]


def test_rates_recovered_exactly_from_millisecond_timestamps(tmp_path):
    for fps in (Fraction(24000, 1001), Fraction(30000, 1001), Fraction(60000, 1001), Fraction(50)):
        path = testsrc.write_video(tmp_path / f"r{fps.numerator}.mkv",
                                   (testsrc.pattern_rgb(i, 16, 16) for i in range(41)), fps)
        video = probe(path).video
        assert (video.fps, video.frame_count, video.vfr) == (fps, 41, False), fps


def test_vfr_detected_and_averaged(tmp_path):
    times = [0.0, 0.033, 0.1, 0.2, 0.21, 0.5, 0.52, 0.6]
    path = testsrc.write_video(tmp_path / "vfr.mkv", (testsrc.index_rgb(i, 16, 16) for i in range(len(times))),
                               25, codec="ffv1", pix_fmt="yuv444p", timestamps=times)
    video = probe(path).video
    assert video.vfr
    assert video.frame_count == 8
    assert float(video.fps) == pytest.approx(8 / video.duration, rel=0.01)


def test_depth_alpha_rotation_and_tags(tmp_path):
    ten = testsrc.write_video(tmp_path / "ten.mkv", [[np.full((8, 8), 500, np.uint16)] * 3], 25, codec="ffv1",
                              pix_fmt="yuv444p10le", matrix="bt2020nc", color_range="tv", primaries="bt2020",
                              transfer="smpte2084")
    video = probe(ten).video
    assert (video.bit_depth, video.has_alpha) == (10, False)
    color = video.color
    assert (color.matrix, color.range, color.primaries, color.transfer) == ("bt2020nc", "tv", "bt2020", "smpte2084")

    alpha = testsrc.write_video(tmp_path / "alpha.mov", [np.zeros((8, 8, 4), np.uint8)], 25, codec="png",
                                pix_fmt="rgba")
    assert probe(alpha).video.has_alpha

    rotated = testsrc.write_video(tmp_path / "rot.mp4", [np.zeros((16, 32, 3), np.uint8)], 25, rotation=-90)
    video = probe(rotated).video
    assert video.rotation == 270
    assert (video.display_width, video.display_height) == (16, 32)


def test_to_dict_is_json(footage):
    data = json.loads(json.dumps(probe(footage / "ntsc480i_tff_bt601_ac3.mkv").to_dict()))
    assert data["video_streams"][0]["fps"] == "30000/1001"
    assert data["video_streams"][0]["frame_count"] == 300
    assert data["audio_streams"][0]["codec"] == "ac3"


def test_probe_is_cached_until_the_file_changes(tmp_path):
    path = testsrc.write_video(tmp_path / "a.mkv", (testsrc.pattern_rgb(i, 16, 16) for i in range(5)), 25)
    first = probe(path)
    assert probe(path) is first
    testsrc.write_video(tmp_path / "b.mkv", (testsrc.pattern_rgb(i, 16, 16) for i in range(9)), 25)
    os.replace(tmp_path / "b.mkv", path)
    assert probe(path).video.frame_count == 9


def test_cli_probe_summary_and_json(footage, capsys):
    assert cli_main(["probe", str(footage / "ntsc480i_tff_bt601_ac3.mkv")]) == 0
    text = capsys.readouterr().out
    assert "300 frames" in text and "30000/1001" in text and "ac3 48000 Hz" in text and "field order tt" in text
    assert cli_main(["probe", "--json", str(footage / "carphone_qcif_pristine.mp4")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["video_streams"][0]["frame_count"] == 120


class _CountingContainer:
    """An open input container that records the (non-empty) packets demuxed through it, per stream type."""

    def __init__(self, container, packets: dict[str, int]):
        self._container = container
        self._packets = packets

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._container.__exit__(*exc)

    def demux(self, *args, **kwargs):
        for packet in self._container.demux(*args, **kwargs):
            if packet.size:  # not the empty packet that ends each stream
                self._packets[packet.stream.type] = self._packets.get(packet.stream.type, 0) + 1
            yield packet


def _count_demuxed(monkeypatch) -> dict[str, int]:
    import vsrkit.engines.video.probe as probe_module
    packets: dict[str, int] = {}
    opener = probe_module.open_container
    monkeypatch.setattr(probe_module, "open_container", lambda file: _CountingContainer(opener(file), packets))
    return packets


def _packet_span(path, index: int) -> tuple[float, float, float]:
    """(first start, last end, longest packet) of one stream, read here independently of probe."""
    with av.open(str(path)) as container:
        stream = container.streams[index]
        spans = [(float(p.pts * p.time_base), float((p.duration or 0) * p.time_base))
                 for p in container.demux(stream) if p.size and p.pts is not None]
    return min(s for s, _ in spans), max(s + d for s, d in spans), max(d for _, d in spans)


def _probed_clip_with_tone(folder, name: str, monkeypatch):
    """A 25-frame clip with a 1 s tone, probed while demuxed packets are counted: (path, packets, info)."""
    path = testsrc.write_video(folder / name, (testsrc.pattern_rgb(i, 16, 16) for i in range(25)), 25,
                               audio=testsrc.tone(1.0))
    packets = _count_demuxed(monkeypatch)
    return path, packets, probe(path)


def test_trusted_header_probe_leaves_audio_packets_unread_until_asked(tmp_path, monkeypatch):
    path, packets, info = _probed_clip_with_tone(tmp_path, "a.mp4", monkeypatch)
    assert info.video.frame_count_source == "container" and info.video.frame_count == 25
    assert packets == {}  # no pass over the file at all
    assert info.audio.max_packet_seconds is None  # left for save time
    assert info.audio.duration == pytest.approx(1.0, abs=0.05)  # the header's figure

    full = with_audio_packets(path, info.audio)
    assert set(packets) == {"audio"} and packets["audio"] > 0  # only the audio stream was demuxed
    first, end, longest = _packet_span(path, info.audio.index)
    assert (full.start_time, full.start_time + full.duration, full.max_packet_seconds) == pytest.approx(
        (first, end, longest))
    assert (full.codec, full.index, full.sample_rate) == (info.audio.codec, info.audio.index, info.audio.sample_rate)
    read = dict(packets)
    assert with_audio_packets(path, info.audio) == full and packets == read  # cached


def test_counted_video_reads_the_audio_packets_in_the_same_pass(tmp_path, monkeypatch):
    path, packets, info = _probed_clip_with_tone(tmp_path, "a.mkv", monkeypatch)
    assert info.video.frame_count_source == "counted" and info.video.frame_count == 25
    assert packets["video"] == 25 and packets["audio"] > 0
    first, end, longest = _packet_span(path, info.audio.index)
    assert (info.audio.start_time, info.audio.start_time + info.audio.duration,
            info.audio.max_packet_seconds) == pytest.approx((first, end, longest))
    read = dict(packets)
    assert with_audio_packets(path, info.audio) is info.audio and packets == read  # nothing more to read
