"""`vsrkit import-ncnn PARAM BIN -o OUT.safetensors`: convert an ncnn Real-ESRGAN model to safetensors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    """Add `import-ncnn`."""
    parser = subparsers.add_parser(
        "import-ncnn", help="convert an ncnn Real-ESRGAN model (.param + .bin) to safetensors",
        description="Convert a Real-ESRGAN model in ncnn format (RRDBNet or SRVGGNetCompact) to a safetensors "
                    "file with the official PyTorch key names. A trailing resize in the ncnn graph (x2/x3 "
                    "animevideov3) is kept as metadata and applied when the file is loaded.")
    parser.add_argument("param", type=Path, help="the ncnn .param file (text format)")
    parser.add_argument("bin", type=Path, nargs="?", default=None,
                        help="the ncnn .bin weights (default: the .param's name with .bin)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output .safetensors (never overwritten)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engines.errors import InputError
    from ..engines.progress import ConsoleProgress
    from ..engines.realesrgan.ncnn_import import convert_ncnn

    bin_path = args.bin if args.bin is not None else args.param.with_suffix(".bin")
    if args.output.suffix.lower() != ".safetensors":
        raise InputError(f"output {args.output} must end in .safetensors")
    for path in (args.param, bin_path):
        if not path.is_file():
            raise InputError(f"{path} does not exist")
    with ConsoleProgress(2, f"import {args.param.name}", unit="steps", quiet=args.quiet) as progress:
        model = convert_ncnn(args.param, bin_path, args.output, on_step=lambda _step: progress.advance(1))
    if not args.quiet:
        extra = f", then {model.output_resample} x{model.output_scale:g}" if model.output_scale else ""
        print(f"{model.arch} x{model.net_scale}{extra}: {len(model.state_dict)} tensors -> {args.output}",
              file=sys.stderr)
    return 0
