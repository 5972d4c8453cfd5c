"""The I/O nodes called directly, standalone (no ComfyUI): input = output = the working folder,
temp under $VSRKIT_HOME."""

from __future__ import annotations

import io
import json
import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from tests import testsrc
from vsrkit.engines.errors import InputError
from vsrkit.engines.video.probe import probe
from vsrkit.nodes.video import (
    ClipToImages,
    ClipToVideo,
    ImagesToClip,
    LoadVideo,
    SaveVideo,
    VideoInfo,
    VideoToClip,
)


@pytest.fixture
def comfy_dirs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VSRKIT_HOME", str(tmp_path / "home"))
    return tmp_path


def _video(folder, name="clip.mp4", frames=12, fps=Fraction(30000, 1001), audio=True):
    return testsrc.write_video(folder / name, (testsrc.pattern_rgb(i, 32, 24) for i in range(frames)), fps,
                               audio=testsrc.tone(frames / float(fps) + 0.2) if audio else None)


def test_load_video_lists_files_and_loads_a_lazy_clip(comfy_dirs):
    _video(comfy_dirs)
    (comfy_dirs / "readme.txt").write_text("not a video")
    spec = LoadVideo.INPUT_TYPES()
    choices, options = spec["required"]["video"]
    assert choices == ["clip.mp4"]
    assert options["video_upload"] is True
    clip, count, fps, width, height = LoadVideo().load("clip.mp4", skip_first_frames=2, frame_load_cap=5,
                                                       select_every_nth=1)
    assert (count, width, height) == (5, 32, 24)
    assert fps == pytest.approx(30000 / 1001)
    assert clip.info.audio is not None
    assert clip.to_tensor().shape == (5, 24, 32, 3)


def test_load_video_by_path_and_change_detection(comfy_dirs):
    (comfy_dirs / "sub").mkdir()
    path = _video(comfy_dirs / "sub")
    clip, count, *_ = LoadVideo().load("", path="sub/clip.mp4")
    assert count == 12
    before = LoadVideo.IS_CHANGED("", path=str(path))
    _video(comfy_dirs / "sub", name="other.mp4", frames=20)
    os.replace(comfy_dirs / "sub" / "other.mp4", path)
    assert LoadVideo.IS_CHANGED("", path=str(path)) != before


def test_load_video_force_rate_uses_the_exact_fraction(comfy_dirs):
    _video(comfy_dirs, frames=25, fps=25)
    clip, count, fps, *_ = LoadVideo().load("clip.mp4", force_rate=29.97)
    assert clip.info.fps == Fraction(30000, 1001)
    assert count == 30


def test_video_info_reports_numbers_and_json(comfy_dirs):
    _video(comfy_dirs)
    clip = LoadVideo().load("clip.mp4")[0]
    count, fps, width, height, duration, has_audio, details = VideoInfo().info(clip)
    assert (count, width, height, has_audio) == (12, 32, 24, True)
    assert duration == pytest.approx(12 * 1001 / 30000)
    data = json.loads(details)
    assert data["fps"] == "30000/1001" and data["audio"]["codec"] == "aac"


def test_images_to_clip_then_save_with_counter_names_and_preview(comfy_dirs):
    images = torch.rand(6, 24, 32, 3)
    audio = {"waveform": torch.from_numpy(testsrc.tone(1.0))[None], "sample_rate": 48000}
    clip = ImagesToClip().convert(images, 23.976, audio)[0]
    assert clip.info.fps == Fraction(24000, 1001)
    saver = SaveVideo()
    first = saver.save(clip, filename_prefix="vsrkit/test", codec="h264", preset="ultrafast")
    second = saver.save(clip, filename_prefix="vsrkit/test", codec="h264", preset="ultrafast")
    assert first["ui"]["images"] == [{"filename": "test_00001_.mp4", "subfolder": "vsrkit", "type": "output"}]
    assert second["ui"]["images"][0]["filename"] == "test_00002_.mp4"
    assert first["ui"]["animated"] == (True,)
    saved = probe(first["result"][0])
    assert saved.video.frame_count == 6 and saved.audio.codec == "aac"
    assert sorted(p.name for p in (comfy_dirs / "vsrkit").iterdir()) == ["test_00001_.mp4", "test_00002_.mp4"]


def test_save_video_embeds_the_workflow(comfy_dirs):
    clip = ImagesToClip().convert(torch.rand(2, 16, 16, 3), 10)[0]
    prompt = {"1": {"class_type": "vsrkitSaveVideo", "inputs": {}}}
    workflow = {"nodes": [{"id": 1}]}
    for codec in ("h264", "vp9"):
        path = SaveVideo().save(clip, codec=codec, preset="8" if codec == "vp9" else "ultrafast", prompt=prompt,
                                extra_pnginfo={"workflow": workflow})["result"][0]
        with av.open(path) as container:
            tags = {k.lower(): v for k, v in container.metadata.items()}
        assert json.loads(tags["prompt"]) == prompt
        assert json.loads(tags["workflow"]) == workflow


def test_save_video_audio_override_and_none(comfy_dirs):
    _video(comfy_dirs, audio=False)
    clip = LoadVideo().load("clip.mp4")[0]
    override = {"waveform": torch.from_numpy(testsrc.tone(3.0, rate=44100))[None], "sample_rate": 44100}
    with_audio = SaveVideo().save(clip, codec="vp9", preset="8", audio_override=override)["result"][0]
    media = probe(with_audio)
    assert media.audio.codec == "opus"
    silent = SaveVideo().save(clip, codec="ffv1", audio="none", audio_override=override)["result"][0]
    assert probe(silent).audio_streams == ()


def test_save_video_png_sequence_preview_points_at_a_frame(comfy_dirs):
    clip = ImagesToClip().convert(torch.rand(3, 8, 8, 3), 10)[0]
    result = SaveVideo().save(clip, filename_prefix="frames", codec="png")
    preview = result["ui"]["images"][0]
    assert (comfy_dirs / preview["subfolder"] / preview["filename"]).is_file()


def test_prefix_cannot_escape_the_output_folder(comfy_dirs):
    clip = ImagesToClip().convert(torch.rand(2, 8, 8, 3), 10)[0]
    with pytest.raises(InputError, match="outside the output folder"):
        SaveVideo().save(clip, filename_prefix="../escape")


def test_clip_to_images_with_audio_and_memory_limit(comfy_dirs):
    _video(comfy_dirs)
    clip = LoadVideo().load("clip.mp4", skip_first_frames=3)[0]
    images, audio, fps, count = ClipToImages().convert(clip, max_gib=1.0)
    assert images.shape == (9, 24, 32, 3) and count == 9
    assert audio["sample_rate"] == 48000
    assert audio["waveform"].shape[:2] == (1, 2)
    assert audio["waveform"].shape[2] == round(9 * 1001 / 30000 * 48000)
    # the audio starts where the clip starts: the 440/660 Hz tones keep their phase from 3 frames in
    offset = round(3 * 1001 / 30000 * 48000)
    full = testsrc.tone(2.0)[:, offset: offset + 2000]
    assert np.corrcoef(audio["waveform"][0, 0, 100:2000].numpy(), full[0, 100:2000])[0, 1] > 0.95
    with pytest.raises(InputError, match=r"GiB.*max_gib"):
        ClipToImages().convert(clip, max_gib=1e-5)


def test_core_video_nodes_need_comfyui_or_a_video_object(comfy_dirs):
    clip = ImagesToClip().convert(torch.rand(2, 8, 8, 3), 10)[0]
    with pytest.raises(InputError, match="only available inside ComfyUI"):
        ClipToVideo().convert(clip)


class _InMemoryVideo:
    """The part of a core VIDEO that Video to Clip uses: a stream source (here in memory)."""

    def __init__(self, data: bytes):
        self.data = data

    def get_stream_source(self):
        return io.BytesIO(self.data)


def test_video_to_clip_streams_an_in_memory_video(comfy_dirs):
    path = _video(comfy_dirs, frames=8)
    clip = VideoToClip().convert(_InMemoryVideo(open(path, "rb").read()))[0]
    assert clip.info.frame_count == 8
    assert clip.info.audio is not None
    assert clip.to_tensor().shape == (8, 24, 32, 3)


def test_save_video_auto_keeps_the_source_and_says_so(comfy_dirs):
    testsrc.write_source("hevc-10bit", comfy_dirs)
    clip = LoadVideo().load("ten bit.mkv")[0]
    result = SaveVideo().save(clip, filename_prefix="kept")
    assert result["ui"]["images"][0]["filename"] == "kept_00001_.mp4"
    video = probe(result["result"][0]).video
    assert (video.codec, video.pix_fmt, video.frame_count) == ("hevc", "yuv420p10le", 6)
    assert result["ui"]["text"] == ["video: h265 yuv420p10le (10-bit 4:2:0), colour bt709/tv/bt709/bt709: auto: "
                                    "kept the source's H.265; keeps the source's 10-bit 4:2:0"]


def test_save_video_auto_for_image_batches_is_h264_8_bit_420(comfy_dirs):
    codec_input = SaveVideo.INPUT_TYPES()["required"]["codec"]
    assert codec_input[0][0] == "auto" and codec_input[1]["default"] == "auto"
    assert "IMAGE batches has no source and gets H.264 8-bit 4:2:0" in codec_input[1]["tooltip"]
    clip = ImagesToClip().convert(torch.rand(2, 16, 16, 4), 10)[0]
    result = SaveVideo().save(clip, filename_prefix="gen", preset="ultrafast")
    video = probe(result["result"][0]).video
    assert (video.codec, video.pix_fmt, video.has_alpha) == ("h264", "yuv420p", False)
    text = result["ui"]["text"][0]
    assert "no source to follow" in text and "gave up: alpha (H.264 cannot carry it" in text
