"""`vsrkit sample OUT.mp4`: write a small synthetic video with audio to try the other commands on."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("sample", help="write a small sample video with audio (for the quick start)",
                                   description="Write a 2-second 160x96 cartoon-like clip at 24 fps with a "
                                               "stereo tone, to try `vsrkit upscale` on.")
    parser.add_argument("output", type=Path, help="output video file (never overwritten)")
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--fps", type=int, default=24)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engines.errors import InputError
    from ..engines.video.sample import write_sample

    if args.width < 16 or args.height < 16 or args.frames < 1 or args.fps < 1:
        raise InputError("sample needs --width and --height of at least 16, and at least one frame and 1 fps")
    out = write_sample(args.output, args.width, args.height, args.frames, args.fps)
    print(f"{args.frames} frames, {args.width}x{args.height}, {args.fps} fps, stereo audio -> {out}")
    return 0
