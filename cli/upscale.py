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
                        "and temporal denoisers start afresh; 0: never (default 10)")
    parser.add_argument("--codec", default="auto", help="output codec: auto (default: the source's codec family, "
                        "bit depth, chroma and alpha where possible), h264, h265, vp9, prores, ffv1, av1, png")
    parser.add_argument("--crf", type=int, default=None, help="quality for h264/h265/vp9/av1 (lower is better)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
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


def scene_threshold(args: argparse.Namespace) -> float:
    """--scene-threshold, or scdet's default when it is not given."""
    from ..engines.video.scenes import DEFAULT_SCENE_THRESHOLD

    value = getattr(args, "scene_threshold", None)
    return DEFAULT_SCENE_THRESHOLD if value is None else value


def realesrgan_stage(clip, args: argparse.Namespace):
    """Resolve the model (default realesr-animevideov3 at --scale), say which one, what runs it and
    where it came from, and return the lazily upscaled clip."""
    import torch

    from ..engines.device import resolve_device
    from ..engines.errors import InputError
    from ..engines.realesrgan.backend import choose_backend, describe_backend
    from ..engines.realesrgan.inference import network_precision
    from ..engines.realesrgan.loading import load_model
    from ..engines.realesrgan.official import DEFAULT_MODEL_FOR_SCALE
    from ..engines.realesrgan.resolve import standalone_model_dir
    from ..engines.realesrgan.upscale import upscale_clip

    name = args.model
    if not name:
        if args.scale not in DEFAULT_MODEL_FOR_SCALE:
            raise InputError(f"--scale {args.scale}: the default model realesr-animevideov3 comes in x2, x3 and x4; "
                             "choose one of those or pass --model")
        name = DEFAULT_MODEL_FOR_SCALE[args.scale]

    def console(total: int | None, desc: str, unit: str):
        if unit == "bytes":
            return MegabyteProgress(total, desc, quiet=args.quiet)
        return ConsoleProgress(total, desc, unit=unit, quiet=args.quiet)

    model = load_model(name, [standalone_model_dir()], progress=console)
    device = resolve_device(args.device)
    dtype = network_precision(args.precision, device)
    backend = choose_backend(model.net, device, dtype, args.cpu_backend)
    if not args.quiet:
        print(f"model: {model.describe()}, {describe_backend(backend, device, dtype)}\n  source: {model.origin}",
              file=sys.stderr)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return upscale_clip(clip, model, scale=args.scale, tile=args.tile, precision=args.precision, device=device,
                        cpu_backend=args.cpu_backend)


def flashvsr_stage(clip, args: argparse.Namespace):
    """Load FlashVSR Tiny (--flashvsr-version) from --model-dir, or the default search path, and return
    the lazily upscaled clip; a --tile size is rounded up to the model's multiple of 128 pixels."""
    from ..engines.flashvsr.loader import default_model_dirs, load_flashvsr
    from ..engines.flashvsr.settings import SIZE_MULTIPLE
    from ..engines.flashvsr.upscale import DEFAULT_OVERLAP, upscale_clip
    from ..engines.tiling import round_up

    folders = [args.model_dir] if args.model_dir else default_model_dirs()
    models = load_flashvsr(folders, version=args.flashvsr_version, dtype=args.precision or "auto",
                           device=args.device)
    tile = int(args.tile or 0)
    tile = round_up(tile, SIZE_MULTIPLE) if tile > 0 else 0
    return upscale_clip(clip, models, scale=int(args.scale), tile_size=tile,
                        tile_overlap=min(DEFAULT_OVERLAP, tile // 2) if tile else DEFAULT_OVERLAP,
                        scene_threshold=scene_threshold(args))


def run(args: argparse.Namespace) -> int:
    from ..engines.device import resolve_device
    from ..engines.video.decode import open_clip
    from ..engines.video.encode import planned_output, save_clip
    from ..engines.video.formats import EncodeOptions, choose_format
    from ..engines.video.preprocess import deinterlace_clip, denoise_clip
    from ..engines.video.stabilize import DEFAULT_STRENGTH, StabilizeSettings, stabilized_upscale

    started = time.monotonic()
    planned_output(args.output, args.codec)
    clip = open_clip(args.input)
    clip = deinterlace_clip(clip, mode=args.deinterlace)
    cuts = scene_threshold(args)
    if args.denoise != "none":
        clip = denoise_clip(clip, preset=args.denoise, scene_threshold=cuts)
    strength = args.stabilize
    if strength is None:
        strength = DEFAULT_STRENGTH if args.engine == "realesrgan" else 0.0
    settings = StabilizeSettings(strength=strength, scene_threshold=cuts).validate()
    engine = realesrgan_stage if args.engine == "realesrgan" else flashvsr_stage
    clip = stabilized_upscale(clip, lambda source: engine(source, args), settings, resolve_device(args.device))
    options = EncodeOptions(codec=args.codec, crf=args.crf)
    choice = choose_format(clip.info, options, args.output)
    with ConsoleProgress(clip.info.frame_count, "upscale", quiet=args.quiet) as progress:
        out = save_clip(clip, args.output, choice.encode_options(options), progress=progress)
    elapsed = time.monotonic() - started
    info = clip.info
    print(f"{info.frame_count} frames, {info.width}x{info.height}, {float(info.fps):.3f} fps, "
          f"{elapsed:.1f} s -> {out}\n{choice.describe()}")
    return 0
