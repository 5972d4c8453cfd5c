"""Benchmark the Ray scale-out: the stabiliser's lead-in, one worker against one process, and the
cost of planning and joining.

Lead-in (`lead-in`): the stabiliser is recursive, so a segment that starts inside a shot never
matches one pass exactly. Real clips from ../shared/footage (area-downscaled 4x by bench/footage.py,
as for bench/temporal.py) are upscaled frame by frame once (cached); then, at split points every 8 frames, the
stabiliser is started L + 2 frames before the split (L lead-in frames plus scdet's two) and the
first 8 frames from the split are compared with one pass. Printed: the largest mean absolute
difference (in 8-bit levels) over all split points and frames, per L.

    python bench/cluster.py lead-in [--frames 96] [--models realesrgan-x4plus realesr-animevideov3-x4]

Speed (`speed`): a --seconds clip of Big Buck Bunny shrunk to --size, upscaled with
realesr-animevideov3-x2 (stabilised, the CLI's defaults) as `vsrkit upscale` does it in one process
and as `--cluster ray --workers 1` does (each cluster round starts its own local Ray runtime and
stops it, as the command does, so the one-process rounds run without one; segments of
--segment-seconds, the scene scan, the join), alternating which goes first; wall-clock ratios and
the cluster run's phases.

    python bench/cluster.py speed [--seconds 30] [--size 320x180] [--rounds 1]

Overhead (`overhead`): planning (probe, identity, a scene-cut scan of the pre-processed frames)
and the packet-copy join, timed on the clip of `speed` and scaled to one hour of video.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F

from vsrkit.bench.footage import CLIPS, FOOTAGE, footage, per_frame

LEAD_INS = (0, 2, 4, 8, 12, 16, 24, 32)
COMPARED = 8


def lead_in(args: argparse.Namespace) -> None:
    from vsrkit.engines.clip import Clip
    from vsrkit.engines.cluster.chain import SCDET_FRAMES
    from vsrkit.engines.video.stabilize import StabilizeSettings, stabilize_clip

    settings = StabilizeSettings()
    print(f"stabiliser strength {settings.strength}, scene threshold {settings.scene_threshold}; largest mean "
          f"absolute difference to one pass over the first {COMPARED} frames after a split, in 8-bit levels")
    print("| clip | model | splits | " + " | ".join(f"L={n}" for n in LEAD_INS) + " |")
    print("|---|---|---|" + "---|" * len(LEAD_INS))
    worst = {n: 0.0 for n in LEAD_INS}
    for name in args.clips:
        source = footage(name, args.frames)[1]
        for model_name in args.models:
            output = per_frame(args.cache, f"{name}-{args.frames}", model_name, source)

            def stabilised(first: int, last: int, output: torch.Tensor = output,
                           source: torch.Tensor = source) -> torch.Tensor:
                return stabilize_clip(Clip.from_tensor(output[first:last], 24),
                                      Clip.from_tensor(source[first:last], 24), settings).to_tensor()

            whole = stabilised(0, len(source))
            splits = list(range(max(LEAD_INS) + SCDET_FRAMES, len(source) - COMPARED, 8))
            row = []
            for n in LEAD_INS:
                errors = []
                for split in splits:
                    part = stabilised(split - n - SCDET_FRAMES, split + COMPARED)[n + SCDET_FRAMES:]
                    errors.append(float((part - whole[split:split + COMPARED]).abs().mean(dim=(1, 2, 3)).max()))
                row.append(max(errors) * 255)
                worst[n] = max(worst[n], row[-1])
            print(f"| {name} | {model_name} | {len(splits)} | " + " | ".join(f"{e:.2f}" for e in row) + " |")
    print("| all | | | " + " | ".join(f"{worst[n]:.2f}" for n in LEAD_INS) + " |")


def bbb_clip(folder: Path, seconds: float, size: tuple[int, int]) -> Path:
    """The first `seconds` of Big Buck Bunny shrunk to `size` (H.264, with its audio)."""
    from vsrkit.engines.video.decode import open_clip
    from vsrkit.engines.video.encode import save_clip
    from vsrkit.engines.video.formats import EncodeOptions

    width, height = size
    path = folder / f"bbb_{int(seconds)}s_{width}x{height}.mp4"
    if path.is_file():
        return path
    clip = open_clip(FOOTAGE / "bbb_0_30_720p24_vorbis.webm", max_frames=round(seconds * 24))

    def shrink(chunk: torch.Tensor) -> torch.Tensor:
        return F.interpolate(chunk.permute(0, 3, 1, 2), size=(height, width), mode="area").permute(0, 2, 3, 1)

    return save_clip(clip.map(shrink, width=width, height=height), path, EncodeOptions(codec="h264", crf=18))


def one_process(clip: Path, out: Path) -> float:
    """`vsrkit upscale` without --cluster, as cli/upscale.py runs it: seconds from opening the input
    (model load included) to the written file."""
    from vsrkit.engines.cluster.chain import ChainSettings, build_chain, load_engine
    from vsrkit.engines.video.decode import open_clip
    from vsrkit.engines.video.encode import save_clip
    from vsrkit.engines.video.formats import EncodeOptions, choose_format

    started = time.monotonic()
    settings = ChainSettings()
    chain = build_chain(open_clip(clip), settings, load_engine(settings))
    options = EncodeOptions(codec="h264")
    save_clip(chain, out, choose_format(chain.info, options, out).encode_options(options))
    return time.monotonic() - started


def on_cluster(clip: Path, out: Path, segment_seconds: float) -> tuple[float, dict[str, float], int]:
    """The same with one Ray worker, from starting the local runtime to stopping it: seconds, the
    driver's phases, and the number of segments."""
    from contextlib import contextmanager

    from vsrkit.engines.cluster import run
    from vsrkit.engines.cluster.chain import ChainSettings
    from vsrkit.engines.video.formats import EncodeOptions

    phases: dict[str, float] = {}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            started = time.monotonic()
            try:
                return function(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.monotonic() - started
        return wrapper

    session = run.ray_session

    @contextmanager
    def timed_session(*args, **kwargs):
        started = time.monotonic()
        with session(*args, **kwargs) as ray:
            phases["Ray start"] = time.monotonic() - started
            yield ray
            started = time.monotonic()
        phases["Ray stop"] = time.monotonic() - started

    saved = {name: getattr(run, name) for name in ("_start_workers", "_find_cuts", "_render", "join_segments")}
    labels = {"_start_workers": "start worker", "_find_cuts": "scene scan", "_render": "render",
              "join_segments": "join"}
    for name, function in saved.items():
        setattr(run, name, timed(labels[name], function))
    run.ray_session = timed_session
    try:
        started = time.monotonic()
        result = run.upscale_file(clip, out, ChainSettings(), EncodeOptions(codec="h264"),
                                  run.ClusterOptions(workers=1, segment_seconds=segment_seconds))
        return time.monotonic() - started, phases, result.segments
    finally:
        run.ray_session = session
        for name, function in saved.items():
            setattr(run, name, function)


def speed(args: argparse.Namespace) -> None:
    os.environ.setdefault("VSRKIT_OFFLINE", "1")
    width, height = (int(v) for v in args.size.split("x"))
    clip = bbb_clip(args.cache, args.seconds, (width, height))
    print(f"{clip.name}: realesr-animevideov3-x2, stabilised (the defaults), H.264; each cluster round starts and "
          "stops its own local Ray runtime (counted)")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        ratios = []
        for index in range(args.rounds):
            order = ("one", "cluster") if index % 2 == 0 else ("cluster", "one")
            times: dict[str, float] = {}
            for name in order:
                out = folder / f"{name}{index}.mp4"
                if name == "one":
                    times[name] = one_process(clip, out)
                else:
                    times[name], phases, segments = on_cluster(clip, out, args.segment_seconds)
            ratio = times["cluster"] / times["one"]
            ratios.append(ratio)
            print(f"round {index + 1} ({order[0]} first, load {os.getloadavg()[0]:.1f}): one process {times['one']:.1f} s; cluster "
                  f"{times['cluster']:.1f} s ({segments} segments; "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()) + f"); ratio {ratio:.3f}", flush=True)
    print(f"cluster / one process: {', '.join(f'{r:.3f}' for r in ratios)}")


def overhead(args: argparse.Namespace) -> None:
    from vsrkit.engines.cluster.chain import ChainSettings, absolute_paths, preprocessed, resolved
    from vsrkit.engines.video.decode import open_clip
    from vsrkit.engines.video.encode import save_clip
    from vsrkit.engines.video.formats import EncodeOptions
    from vsrkit.engines.video.join import join_segments
    from vsrkit.engines.video.scenes import scene_cuts
    from vsrkit.engines.video.segments import ChainReach, file_identity, plan_segments, segment_ranges

    width, height = (int(v) for v in args.size.split("x"))
    clip_path = bbb_clip(args.cache, args.seconds, (width, height))
    started = time.monotonic()
    clip = open_clip(clip_path)
    settings = resolved(absolute_paths(ChainSettings()), clip)
    file_identity(clip_path)
    probe_seconds = time.monotonic() - started
    started = time.monotonic()
    cuts = scene_cuts(preprocessed(clip, settings), settings.scene_threshold)
    scan_seconds = time.monotonic() - started
    segments = plan_segments(clip.info.frame_count, clip.info.fps, args.segment_seconds, cuts, ChainReach.of([]))
    upscaled = (width * 2, height * 2)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)

        def big(chunk: torch.Tensor) -> torch.Tensor:
            return F.interpolate(chunk.permute(0, 3, 1, 2), size=upscaled[::-1], mode="nearest").permute(0, 2, 3, 1)

        paths = []
        for index, segment in enumerate(segments):
            part = open_clip(clip_path, skip_first=segment.start, max_frames=segment.frames)
            part = part.map(big, width=upscaled[0], height=upscaled[1])
            paths.append(save_clip(part, folder / f"{index}.mp4", EncodeOptions(codec="h264", audio=False)))
        started = time.monotonic()
        joined = join_segments(paths, [s.frames for s in segments], folder / "joined.mp4", Fraction(clip.info.fps),
                               clip.info.audio)
        join_seconds = time.monotonic() - started
        size = joined.stat().st_size
    per_hour = 3600 / clip.info.duration
    print(f"{clip.info.frame_count} frames ({clip.info.duration:.1f} s, {width}x{height} in, {upscaled[0]}x"
          f"{upscaled[1]} out), {len(cuts)} cuts, {len(segments)} segments of up to {args.segment_seconds:g} s, "
          f"{len(segment_ranges(clip.info.frame_count, 240, cuts))} cut stretches")
    print(f"probe, identity, deinterlace decision: {probe_seconds:.2f} s (once per run, not per hour)")
    print(f"scene-cut scan (decode + scdet, one process): {scan_seconds:.2f} s = {scan_seconds * per_hour / 60:.1f} "
          "min per hour of video (split over the workers)")
    print(f"join ({size / 2**20:.1f} MiB of segments, audio copied): {join_seconds:.2f} s = "
          f"{join_seconds * per_hour:.0f} s per hour of video at this bitrate "
          f"({size * 8 / clip.info.duration / 1e6:.2f} Mb/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("lead-in", "speed", "overhead"))
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--clips", nargs="+", default=list(CLIPS), choices=list(CLIPS))
    parser.add_argument("--models", nargs="+", default=["realesr-animevideov3-x4", "realesrgan-x4plus"])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--size", default="320x180")
    parser.add_argument("--segment-seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vsrkit-bench-cluster")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"# bench/cluster.py {' '.join(sys.argv[1:])}: {datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    {"lead-in": lead_in, "speed": speed, "overhead": overhead}[args.mode](args)


if __name__ == "__main__":
    main()
