"""`vsrkit upscale ... --cluster ray`: the same upscale, split into segments over a Ray cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..engines.cluster.run import DEFAULT_SEGMENT_SECONDS
from ..engines.progress import ConsoleProgress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster (docs/cluster.md; needs pip install 'vsrkit[cluster]')")
    group.add_argument("--cluster", default=None, metavar="ADDRESS",
                       help="run on Ray: 'ray' starts a local runtime, 'ray:auto' joins this machine's cluster, "
                       "'ray://HOST:PORT' joins through the Ray Client, 'ray:HOST:PORT' by the GCS address")
    group.add_argument("--segment-seconds", type=float, default=DEFAULT_SEGMENT_SECONDS,
                       help=f"length of a segment where the clip has no scene cut (default {DEFAULT_SEGMENT_SECONDS:g})")
    group.add_argument("--workers", type=int, default=0,
                       help="how many workers (0: one per GPU, or one per --worker-cpus CPUs without GPUs)")
    group.add_argument("--worker-cpus", type=int, default=0,
                       help="CPUs per worker on machines without a GPU (0: up to 4)")
    group.add_argument("--segments-dir", type=Path, default=None,
                       help="folder for the segments, seen by every machine at the same path "
                       "(default: OUTPUT.segments beside the output)")
    group.add_argument("--keep-segments", action="store_true", help="keep the segment files after the join")


def run_on_cluster(args: argparse.Namespace, settings) -> int:
    from ..engines.cluster.run import ClusterOptions, RunInterrupted, upscale_file
    from ..engines.video.formats import EncodeOptions
    from ..engines.video.probe import probe

    options = ClusterOptions(address=args.cluster, segment_seconds=args.segment_seconds, workers=args.workers,
                             worker_cpus=args.worker_cpus,
                             segments_dir=str(args.segments_dir) if args.segments_dir else None,
                             keep_segments=args.keep_segments)

    def bar(total: int | None, desc: str) -> ConsoleProgress:
        return ConsoleProgress(total, desc, quiet=args.quiet)

    try:
        result = upscale_file(args.input, args.output, settings, EncodeOptions(codec=args.codec, crf=args.crf),
                              options, progress_factory=bar)
    except RunInterrupted as stop:
        print(f"vsrkit: {stop.finished} finished segments are kept in {stop.folder}; run the same command again "
              "to resume", file=sys.stderr)
        raise
    video = probe(result.output).video
    print(f"segments: {result.segments} ({result.rendered} rendered, {result.reused} reused) "
          f"on {result.workers} workers")
    print(f"{result.frames} frames, {video.width}x{video.height}, {float(video.fps):.3f} fps, "
          f"{result.seconds:.1f} s -> {result.output}\n{result.choice.describe()}")
    return 0
