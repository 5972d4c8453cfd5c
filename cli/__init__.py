"""`vsrkit` command line: the same engine path as the nodes, with a console progress bar.

Each submodule adds its subcommands through `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import sys

from ..engines.errors import VsrkitError
from ..engines.progress import Cancelled
from . import flicker, import_ncnn, sample, submit, upscale, video

_COMMAND_MODULES = (video, upscale, flicker, import_ncnn, sample, submit)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="vsrkit", description="Video super-resolution: probe, transcode, "
                                     "upscale, measure flicker and submit ComfyUI workflows.")
    parser.add_argument("--version", action="version", version=f"vsrkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (Cancelled, KeyboardInterrupt) as exc:
        # A Cancelled with a message (vsrkit submit) says what happened; else nothing was written.
        told = str(exc) if isinstance(exc, Cancelled) else ""
        print(f"vsrkit: {told or 'cancelled; no partial output was left behind'}", file=sys.stderr)
        return 130
    except VsrkitError as exc:
        print(f"vsrkit: error: {exc}", file=sys.stderr)
        return 1
