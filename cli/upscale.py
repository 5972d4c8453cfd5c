"""`vsrkit upscale IN -o OUT`: decode, optional pre-processing, upscale, encode with audio.

The pipeline is the same one the nodes build: open_clip -> deinterlace/denoise ->
engine -> save_clip, pulled chunk by chunk.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..engines.progress import ConsoleProgress
from . import cluster


def register(subparsers) -> None:
    parser = subparsers.add_parser("upscale", help="upscale a video (Real-ESRGAN or FlashVSR Tiny)",
                                   description="Upscale a video, keeping every frame, the frame rate and the audio.")
    parser.add_argument("input", type=Path, help="input video file")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output video file (never overwritten)")
    parser.add_argument("--engine", choices=("realesrgan", "flashvsr"), default="realesrgan")
    parser.add_argument("--model", default=None,
                        help="Real-ESRGAN model name or file (default: realesr-animevideov3 at --scale)")
    parser.add_argument("--model-dir", type=Path, default=None, help="FlashVSR checkpoint folder")
    parser.add_argument("--flashvsr-version", choices=("v1", "v1.1"), default="v1.1",
                        help="FlashVSR checkpoint version (default v1.1)")
    parser.add_argument("--scale", type=int, default=2, help="upscale factor (default 2)")
    parser.add_argument("--tile", type=int, default=0, help="tile size in pixels (0: automatic)")
    parser.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--cpu-backend", choices=("auto", "native", "pytorch"), default="auto",
                        help="Real-ESRGAN in fp32 on the CPU: vsrkit's native kernel where a C++ compiler is "
                        "found, else PyTorch (auto); or insist on one of them")
    parser.add_argument("--deinterlace", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--denoise", choices=("none", "light", "medium", "strong"), default="none")
    parser.add_argument("--stabilize", type=float, default=None, metavar="STRENGTH",
                        help="temporal stabilisation of the per-frame upscale, 0 (off) to 0.95 (default: "
                        "on at the measured default for Real-ESRGAN, off for FlashVSR); see docs/temporal.md")
    parser.add_argument("--scene-threshold", type=float, default=None, metavar="SCORE",
                        help="scdet score (0-100) that marks a scene cut, where the stabiliser, FlashVSR "
                        "deinterlacer and temporal denoisers start afresh; 0: never (default 10)")
    parser.add_argument("--codec", default="auto", help="output codec: auto (default: the source's codec family, "
                        "bit depth, chroma and alpha where possible), h264, h265, vp9, prores, ffv1, av1, png")
    parser.add_argument("--crf", type=int, default=None, help="quality for h264/h265/vp9/av1 (lower is better)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    cluster.add_arguments(parser)
    parser.set_defaults(func=run)


class MegabyteProgress(ConsoleProgress):
    """A console bar fed with bytes (model downloads), shown in MB."""

    def __init__(self, total: int | None, desc: str, quiet: bool = False):
        super().__init__(None if total is None else max(1, total // 2**20), desc, unit="MB", quiet=quiet)
        self._bytes = 0

    def advance(self, n: int = 1) -> None:
        self._bytes += n
        self.done = self._bytes // 2**20
        self._report()

    def set_total(self, total: int | None) -> None:
        super().set_total(None if total is None else max(1, total // 2**20))


def chain_settings(args: argparse.Namespace):
    """The chain the options describe; the single-process run and the cluster build it the same way."""
    from ..engines.cluster.chain import ChainSettings
    from ..engines.video.scenes import DEFAULT_SCENE_THRESHOLD

    threshold = DEFAULT_SCENE_THRESHOLD if args.scene_threshold is None else args.scene_threshold
    return ChainSettings(engine=args.engine, model=args.model, model_dir=str(args.model_dir) if args.model_dir else None,
                         flashvsr_version=args.flashvsr_version, scale=args.scale, tile=args.tile,
                         precision=args.precision, device=args.device, cpu_backend=args.cpu_backend,
                         deinterlace=args.deinterlace, denoise=args.denoise, stabilize=args.stabilize,
                         scene_threshold=threshold)


def console_factory(quiet: bool):
    """Progress bars for the console: frames as they are, downloads in MB."""

    def console(total: int | None, desc: str, unit: str = "frames"):
        if unit == "bytes":
            return MegabyteProgress(total, desc, quiet=quiet)
        return ConsoleProgress(total, desc, unit=unit, quiet=quiet)

    return console


def run(args: argparse.Namespace) -> int:
    from ..engines.cluster.chain import build_chain, load_engine
    from ..engines.video.decode import open_clip
    from ..engines.video.encode import planned_output, save_clip
    from ..engines.video.formats import EncodeOptions, choose_format

    if args.cluster:
        from .cluster import run_on_cluster

        return run_on_cluster(args, chain_settings(args))
    started = time.monotonic()
    planned_output(args.output, args.codec)
    clip = open_clip(args.input)
    settings = chain_settings(args)
    engine = load_engine(settings, progress_factory=console_factory(args.quiet))
    if not args.quiet:
        print(f"model: {engine.description}\n  source: {engine.origin}", file=sys.stderr)
    clip = build_chain(clip, settings, engine)
    options = EncodeOptions(codec=args.codec, crf=args.crf)
    choice = choose_format(clip.info, options, args.output)
    with ConsoleProgress(clip.info.frame_count, "upscale", quiet=args.quiet) as progress:
        out = save_clip(clip, args.output, choice.encode_options(options), progress=progress)
    elapsed = time.monotonic() - started
    info = clip.info
    print(f"{info.frame_count} frames, {info.width}x{info.height}, {float(info.fps):.3f} fps, "
          f"{elapsed:.1f} s -> {out}\n{choice.describe()}")
    return 0
