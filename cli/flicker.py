"""`vsrkit flicker VIDEO... --reference REF`: how much each upscale flickers, and whether it blurred to get there."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "flicker", help="measure flicker (warping error), edge sharpness, detail and PSNR of upscales",
        description="Compare upscales of one clip: the warping error of Lai et al. 2018 with flow from the "
        "reference (lower is steadier), the edge sharpness on the strongest edges and the detail over every "
        "pixel against the first video (a stabiliser that blurs scores below 1), and PSNR against the "
        "reference when it is a ground truth at the videos' size. See docs/temporal.md.")
    parser.add_argument("videos", type=Path, nargs="+",
                        help="upscales of the same frames, same size; the first is the baseline for edges and detail")
    parser.add_argument("--reference", type=Path, required=True,
                        help="the ground truth, or the low-resolution input (then scaled to size for the flow)")
    parser.add_argument("--source", type=Path, default=None,
                        help="the low-resolution input, whose bicubic upscale picks the edges (default: the reference)")
    parser.add_argument("--frames", type=int, default=0, help="measure at most this many frames (0: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engines.video.decode import open_clip
    from ..engines.video.flicker import measure_flicker

    def clip(path: Path):
        return open_clip(path, max_frames=args.frames)

    reports = measure_flicker([clip(path) for path in args.videos], clip(args.reference),
                              clip(args.source) if args.source else None)
    rows = [{"video": str(path), **report.to_dict()} for path, report in zip(args.videos, reports, strict=True)]
    if args.json:
        for row in rows:
            if row["psnr"] is not None and math.isinf(row["psnr"]):
                row["psnr"] = "inf"
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{'video':40s} {'warping error':>14s} {'edges':>8s} {'detail':>8s} {'PSNR dB':>8s}")
    for row in rows:
        psnr = "-" if row["psnr"] is None else f"{row['psnr']:.2f}"
        print(f"{row['video']:40s} {row['warping_error']:14.6f} {row['edge_ratio']:8.3f} {row['detail_ratio']:8.3f} "
              f"{psnr:>8s}")
    print(f"{reports[0].frames} frames; edges (on the strongest edges) and detail (over every pixel): luma "
          f"gradient relative to {args.videos[0]}; PSNR only against a reference at the videos' size")
    return 0
