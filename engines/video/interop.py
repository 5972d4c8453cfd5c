"""Converters between vsrkit clips and the types other ComfyUI nodes use.

IMAGE batches ([B, H, W, C] float32) and AUDIO dicts ({"waveform": [B, C, S], "sample_rate"})
come from and go to other packs (LTX/Wan VAE decodes, core image nodes). Core `VIDEO`
objects (VideoFromFile, VideoFromComponents) are handled by duck typing, so this module
never imports ComfyUI.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from ..clip import AudioTrack, Clip, to_fraction
from ..errors import InputError
from ..paths import discard, numbered_output, partial_path
from ..progress import Progress
from .audio import load_waveform
from .decode import open_clip
from .encode import EncodeOptions, save_clip


def audio_track_from_comfy(audio: dict[str, Any] | None) -> AudioTrack | None:
    """ComfyUI's AUDIO dict as an in-memory AudioTrack (the first batch item)."""
    if audio is None:
        return None
    try:
        waveform = audio["waveform"]
        rate = int(audio["sample_rate"])
    except (KeyError, TypeError) as exc:
        raise InputError("the AUDIO input must be a dict with 'waveform' [batch, channels, samples] and "
                         "'sample_rate'; connect the output of a Load Audio or VAE audio node") from exc
    waveform = torch.as_tensor(waveform).detach().to("cpu", torch.float32)
    if waveform.ndim == 3:
        waveform = waveform[0]
    elif waveform.ndim == 1:
        waveform = waveform[None]
    if waveform.ndim != 2 or rate <= 0:
        raise InputError(f"AUDIO waveform must be [batch, channels, samples] with a positive sample rate, "
                         f"got shape {tuple(waveform.shape)} at {rate} Hz")
    return AudioTrack(waveform=waveform, sample_rate=rate, channels=int(waveform.shape[0]))


def audio_to_comfy(clip: Clip) -> dict[str, Any] | None:
    """The clip's audio over the clip's span as ComfyUI AUDIO, or None when it has none."""
    track = clip.info.audio
    if track is None:
        return None
    waveform, rate = load_waveform(track, clip.info.duration)
    return {"waveform": waveform[None], "sample_rate": rate}


def images_to_clip(images: torch.Tensor, fps: float | Fraction, audio: dict[str, Any] | None = None) -> Clip:
    """Wrap an IMAGE batch (+ AUDIO) as a clip; the frame rate becomes exact (29.97 -> 30000/1001)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"images must be an IMAGE batch [frames, height, width, 3 or 4], got {shape}")
    if images.shape[0] == 0:
        raise InputError("the IMAGE batch is empty; there are no frames to make a clip of")
    try:
        rate = to_fraction(fps)
    except (ValueError, ZeroDivisionError) as exc:
        raise InputError(f"fps must be a positive number, got {fps!r}") from exc
    return Clip.from_tensor(images.detach().cpu(), rate, audio=audio_track_from_comfy(audio))


def clip_to_images(clip: Clip, max_gib: float) -> torch.Tensor:
    """The whole clip as one IMAGE batch, refused up front when it would exceed `max_gib` GiB."""
    try:
        return clip.to_tensor(max_bytes=int(max_gib * 2**30))
    except MemoryError as exc:
        raise InputError(str(exc)) from exc


def clip_from_core_video(video: Any, temp_folder: Path) -> Clip:
    """A clip from a core VIDEO: streamed from its file when it has one, else from its components."""
    source = video.get_stream_source() if hasattr(video, "get_stream_source") else None
    if isinstance(source, (str, os.PathLike)):
        return open_clip(source)
    if isinstance(source, io.BytesIO):
        temp_folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(source.getbuffer()).hexdigest()[:16]
        target = temp_folder / f"vsrkit-video-{digest}.bin"
        if not target.exists():
            staging = partial_path(target)
            try:
                source.seek(0)
                with open(staging, "wb") as handle:
                    shutil.copyfileobj(source, handle)
                os.replace(staging, target)
            except BaseException:
                discard(staging)
                raise
        return open_clip(target)
    if not hasattr(video, "get_components"):
        raise InputError(f"expected a core VIDEO, got {type(video).__name__}")
    components = video.get_components()
    audio = components.audio if isinstance(components.audio, dict) else None
    return images_to_clip(components.images, Fraction(components.frame_rate), audio)


def clip_to_core_video_file(clip: Clip, temp_folder: Path, crf: int, progress: Progress | None = None) -> Path:
    """Encode the clip (streaming) to an H.264 file in `temp_folder`, for a core VideoFromFile."""
    target, _ = numbered_output(temp_folder, "vsrkit-clip", "mp4")
    return save_clip(clip, target, EncodeOptions(codec="h264", crf=crf, preset="fast"), progress=progress)
