"""Nodes: load, inspect, convert and save streaming video clips (all logic in `engines/`)."""

from __future__ import annotations

import dataclasses
import json

from ..engines.clip import Clip
from ..engines.errors import InputError
from ..engines.paths import resolve_inside
from ..engines.video.decode import open_clip
from ..engines.video.encode import save_clip
from ..engines.video.formats import CODECS, EncodeOptions, available_codecs, choose_format
from ..engines.video.interop import (
    audio_to_comfy,
    audio_track_from_comfy,
    clip_from_core_video,
    clip_to_core_video_file,
    clip_to_images,
    images_to_clip,
)
from . import host
from .types import CATEGORY, CLIP

_CATEGORY = f"{CATEGORY}/video"
_PIX_FMTS = ("auto", "yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "yuv422p10le", "yuv444p10le")
_AUDIO_CHOICES = ("auto", "copy", "none", "aac", "opus", "flac", "pcm")


def _video_path(video: str, path: str):
    """The file a Load Video node reads, which must lie inside ComfyUI's input/output/temp folders."""
    roots = host.allowed_roots()
    if path and path.strip():
        return resolve_inside(path.strip(), roots, what="video file")
    if not video:
        raise InputError("no video chosen: pick a file from the list (upload one into ComfyUI's input "
                         "folder) or give a path")
    return resolve_inside(host.input_path(video), roots, what="video file")


class LoadVideo:
    """Opens a video as a streaming clip: nothing is decoded until an output node pulls frames."""

    DESCRIPTION = ("Load a video as a streaming clip (frames are decoded chunk by chunk when needed, so any "
                   "length fits in memory). Exact frame count and rate, colours per the file's tags, audio kept.")

    @classmethod
    def INPUT_TYPES(cls):
        files = host.input_video_files()
        return {
            "required": {
                "video": (files or [""], {"video_upload": True,
                                          "tooltip": "A video in ComfyUI's input folder (upload adds one)."}),
                "skip_first_frames": ("INT", {"default": 0, "min": 0, "max": 10_000_000, "step": 1,
                                              "tooltip": "Skip this many frames at the start."}),
                "frame_load_cap": ("INT", {"default": 0, "min": 0, "max": 10_000_000, "step": 1,
                                           "tooltip": "Keep at most this many frames (0: all)."}),
                "select_every_nth": ("INT", {"default": 1, "min": 1, "max": 1000, "step": 1,
                                             "tooltip": "Keep every n-th frame; the frame rate is divided by n "
                                                        "so the duration and audio sync stay the same."}),
                "force_rate": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1000.0, "step": 0.001,
                                         "tooltip": "Resample to this constant frame rate by timestamps "
                                                    "(0: keep the file's). Use it for variable-rate phone "
                                                    "video; 29.97 means exactly 30000/1001."}),
                "color_matrix": (["auto", "bt601", "bt709", "bt2020"], {
                    "default": "auto",
                    "tooltip": "YUV matrix; auto uses the file's tag, else bt709 for HD and bt601 for SD. "
                               "Override only for mis-tagged files."}),
                "color_range": (["auto", "limited", "full"], {
                    "default": "auto",
                    "tooltip": "YUV range; auto uses the file's tag, else limited (TV). "
                               "Override only for mis-tagged files."}),
            },
            "optional": {
                "path": ("STRING", {"default": "",
                                    "tooltip": "A file path instead of the list; it must lie inside ComfyUI's "
                                               "input, output or temp folder."}),
            },
        }

    RETURN_TYPES = (CLIP, "INT", "FLOAT", "INT", "INT")
    RETURN_NAMES = ("clip", "frame_count", "fps", "width", "height")
    OUTPUT_TOOLTIPS = ("The streaming clip (with its audio).", "Frames in the clip.",
                       "Frames per second of the clip.", "Width in pixels (after rotation).",
                       "Height in pixels (after rotation).")
    FUNCTION = "load"
    CATEGORY = _CATEGORY

    def load(self, video, skip_first_frames=0, frame_load_cap=0, select_every_nth=1, force_rate=0.0,
             color_matrix="auto", color_range="auto", path=""):
        file = _video_path(video, path)
        clip = open_clip(file, skip_first=int(skip_first_frames), max_frames=int(frame_load_cap),
                         every_nth=int(select_every_nth), force_fps=float(force_rate) or None,
                         color_matrix=color_matrix, color_range=color_range)
        info = clip.info
        return (clip, info.frame_count, float(info.fps), info.width, info.height)

    @classmethod
    def IS_CHANGED(cls, video, path="", **kwargs):
        try:
            file = _video_path(video, path)
            stat = file.stat()
        except (InputError, OSError):
            return ""
        return f"{file}:{stat.st_mtime_ns}:{stat.st_size}"


class VideoInfo:
    """The clip's properties as numbers, for wiring into other nodes."""

    DESCRIPTION = "Frame count, frame rate, size, duration and colour/audio details of a clip."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip": (CLIP, {"tooltip": "Any vsrkit clip."})}}

    RETURN_TYPES = ("INT", "FLOAT", "INT", "INT", "FLOAT", "BOOLEAN", "STRING")
    RETURN_NAMES = ("frame_count", "fps", "width", "height", "duration", "has_audio", "details")
    OUTPUT_TOOLTIPS = ("Frames in the clip.", "Frames per second.", "Width in pixels.", "Height in pixels.",
                       "Duration in seconds.", "Whether the clip carries audio.",
                       "All properties as JSON (exact fps fraction, colour, source).")
    FUNCTION = "info"
    CATEGORY = _CATEGORY

    def info(self, clip: Clip):
        info = clip.info
        details = {
            "frame_count": info.frame_count, "fps": f"{info.fps.numerator}/{info.fps.denominator}",
            "width": info.width, "height": info.height, "channels": info.channels, "bit_depth": info.bit_depth,
            "duration": info.duration, "color": dataclasses.asdict(info.color),
            "field_order": info.field_order, "sar": str(info.sar), "source": info.source_path,
            "audio": None if info.audio is None else {
                "codec": info.audio.codec, "sample_rate": info.audio.sample_rate, "channels": info.audio.channels,
                "source": info.audio.path or "waveform", "start_seconds": info.audio.start_seconds},
        }
        return (info.frame_count, float(info.fps), info.width, info.height, float(info.duration),
                info.audio is not None, json.dumps(details, default=str))


class ImagesToClip:
    """Any IMAGE batch (e.g. a video model's VAE decode) as a clip, with optional AUDIO."""

    DESCRIPTION = ("Turn an IMAGE batch (from LTX/Wan VAE Decode or any image node) plus a frame rate and "
                   "optional AUDIO into a clip for the vsrkit nodes and Save Video.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Frames in order, [frames, height, width, channels]."}),
                "fps": ("FLOAT", {"default": 24.0, "min": 0.01, "max": 1000.0, "step": 0.001,
                                  "tooltip": "Frame rate; 23.976 and 29.97 are taken as exact 24000/1001 "
                                             "and 30000/1001."}),
            },
            "optional": {
                "audio": ("AUDIO", {"tooltip": "Audio to carry along; Save Video trims or pads it to the "
                                               "video's length."}),
            },
        }

    RETURN_TYPES = (CLIP,)
    RETURN_NAMES = ("clip",)
    OUTPUT_TOOLTIPS = ("The frames as a clip.",)
    FUNCTION = "convert"
    CATEGORY = _CATEGORY

    def convert(self, images, fps, audio=None):
        return (images_to_clip(images, fps, audio),)


class ClipToImages:
    """The whole clip as an IMAGE batch for nodes that need one, within a memory limit."""

    DESCRIPTION = ("Decode the whole clip into one IMAGE batch (float32 in RAM: 4 bytes per pixel per channel) "
                   "plus its AUDIO. Refused up front, stating the memory needed, above max_gib.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": (CLIP, {"tooltip": "The clip to decode fully."}),
                "max_gib": ("FLOAT", {"default": 4.0, "min": 0.01, "max": 4096.0, "step": 0.5,
                                      "tooltip": "Refuse when the IMAGE batch would exceed this many GiB. "
                                                 "Raise it only if you have the RAM; prefer streaming nodes."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT", "INT")
    RETURN_NAMES = ("images", "audio", "fps", "frame_count")
    OUTPUT_TOOLTIPS = ("All frames as an IMAGE batch.", "The clip's audio over its span (None without audio).",
                       "Frames per second.", "Number of frames.")
    FUNCTION = "convert"
    CATEGORY = _CATEGORY

    def convert(self, clip: Clip, max_gib=4.0):
        images = clip_to_images(clip, float(max_gib))
        return (images, audio_to_comfy(clip), float(clip.info.fps), int(images.shape[0]))


class VideoToClip:
    """Core VIDEO (Load Video, video model outputs) to a streaming clip."""

    DESCRIPTION = "Convert ComfyUI's core VIDEO to a vsrkit clip; a video backed by a file is streamed from it."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": ("VIDEO", {"tooltip": "A core VIDEO, e.g. from core Load Video."})}}

    RETURN_TYPES = (CLIP,)
    RETURN_NAMES = ("clip",)
    OUTPUT_TOOLTIPS = ("The video as a clip, with its audio.",)
    FUNCTION = "convert"
    CATEGORY = _CATEGORY

    def convert(self, video):
        return (clip_from_core_video(video, host.temp_dir()),)


class ClipToVideo:
    """A clip as core VIDEO, encoded (streaming) to a file in ComfyUI's temp folder."""

    DESCRIPTION = ("Convert a clip to ComfyUI's core VIDEO for core nodes (e.g. core Save Video). The clip is "
                   "encoded to H.264 in the temp folder as it streams, so memory stays flat.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": (CLIP, {"tooltip": "The clip to convert."}),
                "crf": ("INT", {"default": 12, "min": 0, "max": 51, "step": 1,
                                "tooltip": "H.264 quality of the intermediate file (lower is better; "
                                           "12 is visually lossless)."}),
            },
        }

    RETURN_TYPES = ("VIDEO",)
    RETURN_NAMES = ("video",)
    OUTPUT_TOOLTIPS = ("A core VIDEO backed by the encoded file.",)
    FUNCTION = "convert"
    CATEGORY = _CATEGORY

    def convert(self, clip: Clip, crf=12):
        video_from_file = host.core_video_from_file()
        if video_from_file is None:
            raise InputError("Clip to Video needs ComfyUI's core VIDEO type, which is only available inside "
                             "ComfyUI; use Save Video (vsrkit) to write the clip instead")
        progress = host.progress(clip.info.frame_count, "Clip to Video")
        path = clip_to_core_video_file(clip, host.temp_dir(), int(crf), progress)
        return (video_from_file(str(path)),)


def _workflow_tags(prompt, extra_pnginfo) -> dict[str, str]:
    """ComfyUI's prompt and workflow as container tags, as core Save Video writes them."""
    tags = {}
    if prompt is not None:
        tags["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        tags[key] = json.dumps(value)
    return tags


def _extension(codec: str) -> str:
    """The saved file's extension for `codec` ('' for a PNG frame folder); unknown codecs fail in save_clip."""
    if codec == "png":
        return ""
    spec = CODECS.get(codec)
    return spec.containers[0] if spec else "mp4"


class SaveVideo:
    """Encodes the clip chunk by chunk with its audio into ComfyUI's output folder."""

    DESCRIPTION = ("Encode and save a clip with its audio in sync, chunk by chunk (memory stays flat). Files get "
                   "ComfyUI's counter names in the output folder; a partial file never remains after an error "
                   "or cancel.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": (CLIP, {"tooltip": "The clip to save."}),
                "filename_prefix": ("STRING", {"default": "vsrkit/video",
                                               "tooltip": "Name prefix inside the output folder; may include a "
                                                          "sub-folder and %date% style variables."}),
                "codec": (["auto", *available_codecs()], {
                    "default": "auto",
                    "tooltip": "auto: the source video's codec family (HEVC, ProRes, VP9, AV1, FFV1, H.264) when "
                               "this FFmpeg can encode it, else H.264 for 8-bit and H.265 for deeper sources; a clip "
                               "made from IMAGE batches has no source and gets H.264 8-bit 4:2:0. h264/h265/av1 -> "
                               ".mp4, vp9 -> .webm, prores -> .mov, ffv1 (lossless) -> .mkv, png -> a folder of "
                               "frames. The node's text output says what was chosen and anything given up."}),
                "crf": ("INT", {"default": -1, "min": -1, "max": 63, "step": 1,
                                "tooltip": "Quality for h264/h265 (0-51), vp9/av1 (0-63), lower is better; "
                                           "-1: the codec's default (h264 18, h265 22, vp9 32, av1 35)."}),
                "preset": ("STRING", {"default": "",
                                      "tooltip": "Encoder speed preset; empty: default. x264/x265: ultrafast.."
                                                 "veryslow; vp9 0-8; av1 0-13; prores: proxy, lt, standard, "
                                                 "hq, 4444, 4444xq."}),
                "pix_fmt": (list(_PIX_FMTS), {"default": "auto",
                                              "tooltip": "Pixel format; auto: the source's bit depth, chroma "
                                                         "and alpha where the codec allows, else the nearest; "
                                                         "IMAGE-batch clips: yuv420p (ProRes 422 HQ, FFV1 RGB)."}),
                "odd_size": (["pad", "crop"], {"default": "pad",
                                               "tooltip": "Sizes a 4:2:0/4:2:2 format cannot hold: pad repeats "
                                                          "the last row/column, crop drops it."}),
                "audio": (list(_AUDIO_CHOICES), {"default": "auto",
                                                 "tooltip": "auto: copy the source audio when the container "
                                                            "takes it, else re-encode; none: no audio."}),
            },
            "optional": {
                "audio_override": ("AUDIO", {"tooltip": "Use this audio instead of the clip's own; it is "
                                                        "trimmed or padded to the video's length."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("The saved file (or frame folder for png).",)
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = _CATEGORY

    def save(self, clip: Clip, filename_prefix="vsrkit/video", codec="auto", crf=-1, preset="", pix_fmt="auto",
             odd_size="pad", audio="auto", audio_override=None, prompt=None, extra_pnginfo=None):
        if audio_override is not None:
            clip = Clip(clip.info.replace(audio=audio_track_from_comfy(audio_override)), clip.chunks)
        options = EncodeOptions(codec=codec, crf=None if int(crf) < 0 else int(crf), preset=preset.strip() or None,
                                pix_fmt=None if pix_fmt == "auto" else pix_fmt, odd_size=odd_size,
                                audio=audio != "none", audio_codec=None if audio in ("auto", "none") else audio,
                                metadata=_workflow_tags(prompt, extra_pnginfo))
        choice = choose_format(clip.info, options)
        target, subfolder = host.save_path(filename_prefix, _extension(choice.codec), clip.info.width,
                                           clip.info.height)
        with host.progress(clip.info.frame_count, "Save Video") as progress:
            saved = save_clip(clip, target, choice.encode_options(options), progress=progress)
        if choice.codec == "png":
            preview = {"filename": "frame_000001.png", "subfolder": "/".join(p for p in (subfolder, saved.name) if p),
                       "type": "output"}
        else:
            preview = {"filename": saved.name, "subfolder": subfolder, "type": "output"}
        return {"ui": {"images": [preview], "animated": (True,), "text": [choice.describe()]},
                "result": (str(saved),)}


NODE_CLASS_MAPPINGS = {
    "vsrkitLoadVideo": LoadVideo,
    "vsrkitVideoInfo": VideoInfo,
    "vsrkitImagesToClip": ImagesToClip,
    "vsrkitClipToImages": ClipToImages,
    "vsrkitVideoToClip": VideoToClip,
    "vsrkitClipToVideo": ClipToVideo,
    "vsrkitSaveVideo": SaveVideo,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "vsrkitLoadVideo": "Load Video (vsrkit)",
    "vsrkitVideoInfo": "Video Info (vsrkit)",
    "vsrkitImagesToClip": "Images to Clip (vsrkit)",
    "vsrkitClipToImages": "Clip to Images (vsrkit)",
    "vsrkitVideoToClip": "Core VIDEO to Clip (vsrkit)",
    "vsrkitClipToVideo": "Clip to Core VIDEO (vsrkit)",
    "vsrkitSaveVideo": "Save Video (vsrkit)",
}
