"""I/O robustness: gray+alpha keeps its alpha, range overrides apply to yuvj streams, whole-clip
tensors are filled in place, and files (audio inputs, staging copies, half-written outputs)
are closed or removed when something fails."""

from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests import testsrc
from vsrkit.engines.clip import AudioTrack, Clip, ClipInfo
from vsrkit.engines.video.audio import _CopyWriter, _file_stream, load_waveform, open_audio_writer
from vsrkit.engines.video.decode import open_clip
from vsrkit.engines.video.encode import EncodeOptions, save_clip
from vsrkit.engines.video.interop import clip_from_core_video, clip_to_core_video_file, images_to_clip
from vsrkit.engines.video.probe import pix_fmt_traits, probe


def _open_paths() -> set[str]:
    """Files this process holds open (Linux)."""
    folder = Path("/proc/self/fd")
    if not folder.is_dir():
        pytest.skip("needs /proc to see open files")
    paths = set()
    for entry in folder.iterdir():
        try:
            paths.add(os.readlink(entry))
        except OSError:
            pass
    return paths


def _write_gray_alpha(path: Path, pix_fmt: str, luma: int, alpha: int, frames: int = 3) -> Path:
    """A PNG-in-QuickTime clip stored as `pix_fmt` (ya8 / ya16be) with constant luma and alpha (8-bit codes)."""
    height, width = 16, 24
    rgba = np.empty((height, width, 4), dtype=np.uint8)
    rgba[..., :3] = luma
    rgba[..., 3] = alpha
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("png", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(rgba, format="rgba").reformat(format=pix_fmt)
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.mark.parametrize("pix_fmt,expected", [
    ("ya8", (8, True)), ("ya16le", (16, True)), ("ya16be", (16, True)), ("gray", (8, False)),
    ("gray10le", (10, False)), ("yuva420p10le", (10, True)), ("yuv420p", (8, False)), ("rgba", (8, True)),
    ("argb", (8, True)), ("gbrap12le", (12, True)), ("rgb48le", (16, False)), ("no-such-format", (8, False)),
])
def test_pix_fmt_traits(pix_fmt, expected):
    assert pix_fmt_traits(pix_fmt) == expected


@pytest.mark.parametrize("pix_fmt", ["ya8", "ya16be"])
def test_gray_alpha_video_keeps_its_alpha(tmp_path, pix_fmt):
    path = _write_gray_alpha(tmp_path / "ya.mov", pix_fmt, luma=200, alpha=50)
    video = probe(path).video
    assert video.pix_fmt == pix_fmt and video.has_alpha
    clip = open_clip(path)
    assert clip.info.channels == 4
    images = clip.to_tensor()
    assert images.shape == (3, 16, 24, 4)
    torch.testing.assert_close(images[..., 3], torch.full((3, 16, 24), 50 / 255), atol=1 / 255, rtol=0)
    rgb = images[..., :3]
    torch.testing.assert_close(rgb, rgb[..., :1].expand_as(rgb), atol=1e-4, rtol=0)  # still gray
    assert 0.7 < float(rgb.mean()) < 0.95  # luma 200 read as luma, not lost or swapped with alpha


def test_yuvj_stream_follows_a_range_override(tmp_path):
    images = [testsrc.pattern_rgb(i, 32, 32) for i in range(2)]
    path = testsrc.write_video(tmp_path / "j.mkv", images, 25, codec="mjpeg", pix_fmt="yuvj420p",
                               options={"qscale": "2"})
    assert probe(path).video.pix_fmt == "yuvj420p"
    assert probe(path).video.color.range == "pc"  # so the default decode stays full range
    default = open_clip(path).to_tensor()
    full = open_clip(path, color_range="pc").to_tensor()
    limited = open_clip(path, color_range="tv").to_tensor()
    assert torch.equal(default, full)
    assert (limited - full).abs().max() > 0.02  # the override is applied, not ignored for yuvj
    source = torch.from_numpy(np.stack(images)).float() / 255
    assert (default - source).abs().mean() < (limited - source).abs().mean()


def _chunked(chunks: list[torch.Tensor], claimed: int) -> Clip:
    height, width, channels = chunks[0].shape[1:]
    info = ClipInfo(width=width, height=height, fps=Fraction(25), frame_count=claimed, channels=channels)
    return Clip(info, lambda: iter(chunks))


def test_to_tensor_fills_in_order():
    frames = torch.rand(7, 4, 5, 3)
    out = _chunked([frames[:3], frames[3:5], frames[5:]], 7).to_tensor()
    assert out.dtype == torch.float32 and torch.equal(out, frames)


def test_to_tensor_with_fewer_frames_than_claimed_returns_those():
    frames = torch.rand(4, 4, 5, 3)
    out = _chunked([frames[:2], frames[2:]], 6).to_tensor()
    assert torch.equal(out, frames)


def test_to_tensor_refuses_more_frames_than_claimed():
    frames = torch.rand(5, 4, 5, 3)
    with pytest.raises(ValueError, match="more than the 4 frames"):
        _chunked([frames[:3], frames[3:]], 4).to_tensor()


def test_to_tensor_refuses_chunks_of_another_shape():
    with pytest.raises(ValueError, match="shape"):
        _chunked([torch.rand(2, 4, 5, 3), torch.rand(2, 4, 6, 3)], 4).to_tensor()


def test_to_tensor_limit_checked_before_decoding():
    pulled = []

    def source():
        pulled.append(True)
        yield torch.zeros(1, 4, 4, 3)

    clip = Clip(ClipInfo(width=4, height=4, fps=Fraction(25), frame_count=1000), source)
    with pytest.raises(MemoryError):
        clip.to_tensor(max_bytes=1000)
    assert not pulled


@pytest.fixture
def audio_file(tmp_path) -> str:
    return testsrc.write_audio_only(tmp_path / "tone.m4a", testsrc.tone(2.0), 48000, "aac")


def test_reencode_writer_close_releases_the_audio_file(tmp_path, audio_file):
    track = AudioTrack(path=audio_file, stream_index=0, start_seconds=0.0)
    output = av.open(str(tmp_path / "out.mkv"), mode="w")
    try:
        writer = open_audio_writer(output, "mkv", track, 0.04, 1.0, codec="flac")
        writer.write_until(0.5)
        assert audio_file in _open_paths()
        writer.close()
        assert audio_file not in _open_paths()
        writer.close()  # twice is harmless (encode closes again in its cleanup)
    finally:
        output.close()


def test_load_waveform_releases_the_audio_file(audio_file):
    waveform, rate = load_waveform(AudioTrack(path=audio_file, stream_index=0), 0.5)
    assert waveform.shape[1] == round(0.5 * rate)
    assert audio_file not in _open_paths()


def test_copy_writer_closes_its_input_when_setup_fails(audio_file):
    class BrokenOutput:
        def add_stream_from_template(self, source):
            raise RuntimeError("no stream for you")

    track = AudioTrack(path=audio_file, stream_index=0)
    with pytest.raises(RuntimeError, match="no stream"):
        _CopyWriter(BrokenOutput(), track, _file_stream(track))
    assert audio_file not in _open_paths()


def test_failed_copy_of_a_video_stream_leaves_no_staging_file(tmp_path):
    class FailingBytes(io.BytesIO):
        def read(self, *args):
            raise OSError("disk went away")

    class Video:
        def get_stream_source(self):
            return FailingBytes(b"not really a video" * 100)

    folder = tmp_path / "temp"
    with pytest.raises(OSError, match="disk went away"):
        clip_from_core_video(Video(), folder)
    assert list(folder.iterdir()) == []


def test_core_video_files_get_distinct_numbered_names(tmp_path):
    clip = images_to_clip(torch.rand(2, 16, 16, 3), 25)
    first = clip_to_core_video_file(clip, tmp_path, crf=30)
    second = clip_to_core_video_file(images_to_clip(torch.rand(2, 16, 16, 3), 25), tmp_path, crf=30)
    assert first != second and first.exists() and second.exists()
    assert first.parent == second.parent == tmp_path.resolve()


def test_bad_metadata_closes_the_output_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import vsrkit.engines.video.encode as encode

    opened = []

    class Tracked:
        """The real output container, noting whether it was closed."""

        def __init__(self, container):
            self._container = container
            self.closed = False

        def __getattr__(self, name):
            return getattr(self._container, name)

        def close(self):
            self.closed = True
            self._container.close()

    real_open = encode.av.open

    def tracking_open(*args, **kwargs):
        opened.append(Tracked(real_open(*args, **kwargs)))
        return opened[-1]

    class BadMetadata(dict):
        def items(self):
            raise RuntimeError("bad metadata")

    monkeypatch.setattr(encode.av, "open", tracking_open)
    clip = images_to_clip(torch.rand(2, 16, 16, 3), 25)
    with pytest.raises(RuntimeError, match="bad metadata"):
        save_clip(clip, tmp_path / "out.mkv", EncodeOptions(codec="ffv1", metadata=BadMetadata(x="y")))
    assert opened and all(container.closed for container in opened)
    assert list(tmp_path.iterdir()) == []


def test_one_field_order_table_for_probe_decode_and_deinterlace():
    from vsrkit.engines.clip import FIELD_ORDERS, field_order_name, normalize_field_order
    from vsrkit.engines.video.preprocess import normalize_field_order as from_preprocess

    assert from_preprocess is normalize_field_order
    assert [field_order_name(code) for code in range(6)] == ["unknown", "progressive", "tt", "bb", "tb", "bt"]
    assert field_order_name(99) == "unknown" and field_order_name("tt") == "tt"
    shown = {name: normalize_field_order(name) for name in FIELD_ORDERS.values()}
    assert shown == {"unknown": "unknown", "progressive": "progressive", "tt": "tff", "bt": "tff",
                     "bb": "bff", "tb": "bff"}
    assert normalize_field_order(" TFF ") == "tff" and normalize_field_order(None) == "unknown"


def test_one_colour_parser_for_decode_overrides_and_encode(tmp_path):
    from vsrkit.engines.errors import InputError
    from vsrkit.engines.video.colors import parse_matrix, parse_range
    from vsrkit.engines.video.encode import output_color

    assert [parse_range(n) for n in ("tv", "Limited", "mpeg", "pc", "FULL", "jpeg")] == ["tv"] * 3 + ["pc"] * 3
    assert [parse_matrix(n) for n in ("bt601", "709", "BT2020")] == ["smpte170m", "bt709", "bt2020nc"]
    for bad in (lambda: parse_range("bt709"), lambda: parse_matrix("full"), lambda: parse_matrix("xyz")):
        with pytest.raises(InputError, match="not known"):
            bad()
    info = ClipInfo(width=32, height=32, fps=Fraction(25), frame_count=1)
    color = output_color(info, EncodeOptions(color_range="jpeg", color_matrix="BT601"), 32, 32)
    assert (color.range, color.matrix) == ("pc", "smpte170m")  # encode takes the aliases decode takes
    with pytest.raises(InputError, match="colour range 'studio'"):
        output_color(info, EncodeOptions(color_range="studio"), 32, 32)
    path = testsrc.write_video(tmp_path / "v.mkv", [testsrc.pattern_rgb(0, 32, 32)], 25, codec="ffv1",
                               pix_fmt="yuv444p", matrix="bt709", color_range="tv")
    clip = open_clip(path, color_matrix="601", color_range="JPEG")
    assert (clip.info.color.matrix, clip.info.color.range) == ("smpte170m", "pc")
    with pytest.raises(InputError, match="colour matrix 'bt999'"):
        open_clip(path, color_matrix="bt999")


def test_audio_codec_is_checked_once_case_insensitively(tmp_path):
    from vsrkit.engines.errors import InputError
    from vsrkit.engines.video.audio import check_audio_codec

    assert [check_audio_codec(n) for n in (None, "AUTO", "Copy", "AAC", " opus ")] == [
        "auto", "auto", "copy", "aac", "opus"]
    audio = AudioTrack(waveform=torch.from_numpy(testsrc.tone(0.2)), sample_rate=48000)
    clip = Clip.from_tensor(torch.rand(5, 32, 32, 3), 25, audio=audio)
    out = save_clip(clip, tmp_path / "aac.mp4", EncodeOptions(audio_codec="AAC", preset="ultrafast"))
    assert probe(out).audio.codec == "aac"
    with pytest.raises(InputError, match="audio codec 'vorbis' is not supported"):
        save_clip(clip, tmp_path / "bad.mp4", EncodeOptions(audio_codec="vorbis", preset="ultrafast"))
    assert not list(tmp_path.glob("bad*")) and not list(tmp_path.glob(".*"))  # refused before writing


def test_png_sequence_in_a_folder_whose_name_has_a_percent_sign(tmp_path):
    clip = Clip.from_tensor(torch.rand(3, 9, 7, 4), 25)
    out = save_clip(clip, tmp_path / "50%_frames", EncodeOptions(codec="png"))
    assert out == tmp_path / "50%_frames"
    assert [f.name for f in sorted(out.iterdir())] == [f"frame_00000{i}.png" for i in (1, 2, 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["50%_frames"]  # no temp folder left
    with av.open(str(out / "frame_000003.png")) as image:
        assert image.streams.video[0].codec_context.pix_fmt == "rgba"


@pytest.mark.parametrize("fps,copied", [(25, True), (60, False)])
def test_audio_copy_decided_on_packets_read_at_save_time(tmp_path, fps, copied):
    """Probing a file whose header count is trusted reads no audio packets; the save reads them to
    decide: 1024-sample PCM packets (21 ms) fit in a 40 ms frame but not in a 16.7 ms one."""
    from vsrkit.engines.errors import InputError

    source = testsrc.write_video(tmp_path / "pcm.mov", (testsrc.pattern_rgb(i, 16, 16) for i in range(fps)), fps,
                                 audio=testsrc.tone(1.0), audio_codec="pcm_s16le")
    media = probe(source)
    assert media.video.frame_count_source == "container" and media.audio.max_packet_seconds is None
    clip = open_clip(source)
    if copied:
        out = save_clip(clip, tmp_path / "copy.mkv", EncodeOptions(audio_codec="copy", preset="ultrafast"))
        assert probe(out).audio.codec == "pcm_s16le"
    else:
        with pytest.raises(InputError, match="packets are longer than a video frame"):
            save_clip(clip, tmp_path / "copy.mkv", EncodeOptions(audio_codec="copy", preset="ultrafast"))
        out = save_clip(clip, tmp_path / "auto.mkv", EncodeOptions(preset="ultrafast"))
        assert probe(out).audio.codec == "opus"
    samples, rate, _ = testsrc.decoded_audio(out)
    assert abs(samples.shape[1] / rate - 1.0) <= 1 / fps
