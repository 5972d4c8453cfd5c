"""Real footage for the benchmarks that measure quality on it (bench/temporal.py, bench/cluster.py).

Both take the same clips the same way (ground truth area-resized to 8 bits, the input that
downscaled 4x, or 2x for an x2 model) and reuse one cached frame-by-frame upscale per clip and
model, so their figures stay comparable. Not a benchmark itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from vsrkit.engines.clip import Clip
from vsrkit.engines.realesrgan.loading import load_model
from vsrkit.engines.realesrgan.resolve import standalone_model_dir
from vsrkit.engines.realesrgan.upscale import upscale_clip
from vsrkit.engines.video.decode import open_clip
from vsrkit.engines.video.preprocess import deinterlace_clip

ROOT = Path(__file__).resolve().parents[1]
FOOTAGE = ROOT.parent / "shared" / "footage"
# name: (file, first frame, ground-truth width, height, deinterlace)
CLIPS = {
    "bbb-fast": ("bbb_0_30_720p24_vorbis.webm", 420, 480, 272, False),
    "bbb-slow": ("bbb_0_30_720p24_vorbis.webm", 160, 480, 272, False),
    "ntsc": ("ntsc480i_tff_bt601_ac3.mkv", 60, 480, 320, True),
    "carphone": ("carphone_qcif_pristine.mp4", 0, 176, 144, False),
}
# Other stretches of the same files, never used to choose a setting: a check that the choices hold
# beyond the clips they were made on.
HELD_OUT = {
    "bbb-300": ("bbb_0_30_720p24_vorbis.webm", 300, 480, 272, False),
    "bbb-600": ("bbb_0_30_720p24_vorbis.webm", 600, 480, 272, False),
    "ntsc-200": ("ntsc480i_tff_bt601_ac3.mkv", 200, 480, 320, True),
    "carphone-90": ("carphone_qcif_pristine.mp4", 90, 176, 144, False),
}


def eight_bit(frames: torch.Tensor) -> torch.Tensor:
    return (frames * 255).round().clamp(0, 255) / 255


def area(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[T, H, W, 3] resized with area averaging, 8-bit."""
    out = F.interpolate(frames.permute(0, 3, 1, 2), size=(height, width), mode="area")
    return eight_bit(out.permute(0, 2, 3, 1).contiguous())


def footage(name: str, frames: int, factor: int = 4, native: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ground truth [T, H, W, 3], input [T, H/factor, W/factor, 3]) of one clip; with `native` the
    ground truth is the file's own frames (cropped to a multiple of `factor`), not resized."""
    file, start, width, height, interlaced = {**CLIPS, **HELD_OUT}[name]
    clip = open_clip(FOOTAGE / file)
    if interlaced:
        clip = deinterlace_clip(clip, mode="on")
    pulled = []
    index = 0
    for chunk in clip.chunks():  # skip after deinterlacing, so bwdif sees the frames before the first
        for frame in chunk[..., :3]:
            if start <= index < start + frames:
                pulled.append(frame)
            index += 1
        if index >= start + frames:
            break
    truth = torch.stack(pulled)
    if native:
        height, width = (size - size % factor for size in truth.shape[1:3])
        truth = eight_bit(truth[:, :height, :width].contiguous())
    else:
        truth = area(truth, height, width)
    return truth, area(truth, height // factor, width // factor)


def per_frame(cache: Path, key: str, model_name: str, frames: torch.Tensor) -> torch.Tensor:
    """The model's frame-by-frame upscale of `frames`, cached by `key`."""
    path = cache / f"{key}-{model_name}.pt"
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached.shape[0] == frames.shape[0]:
            return cached
    model = load_model(model_name, [standalone_model_dir()], allow_download=False)
    out = upscale_clip(Clip.from_tensor(frames, 24), model, device="cpu").to_tensor()
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out
