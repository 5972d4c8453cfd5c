"""Benchmark FlashVSR Tiny / Tiny-Long: frames per second and peak memory.

CPU (default): the golden fixture's tiny configuration (random weights, 2 DiT layers,
64 wide) at 64x64 -> 128x128, as a regression reference for the pipeline's overhead;
the numbers say nothing about the real model's speed.

    python bench/flashvsr.py --threads 2

GPU (--gpu): the official sizes (Wan 2.1 1.3B DiT, 2048/3072 LQ projector, 512-wide
TCDecoder) with random weights in bf16, or the real checkpoints with --model-dir,
Tiny-Long, sparse_ratio 2.0, for 512x512 -> 1024x1024 and 384x704 -> 768x1408 (x2):

    python bench/flashvsr.py --gpu [--frames 101] [--model-dir models/FlashVSR-v1.1]

--dry-run runs the --gpu cases on the CPU with the tiny configuration at 64x64 and 64x128
(so the GPU path of this script cannot rot); --json FILE also writes every figure as JSON.

Reports the whole run's frames/s, the steady rate after the first output (the first
chunk holds 21 frames and pays for warm-up), and the peak memory torch allocated.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from vsrkit.bench.report import write_json
from vsrkit.engines.flashvsr.loader import FlashVSRModels, load_flashvsr
from vsrkit.engines.flashvsr.lq_proj import CausalLQProjector
from vsrkit.engines.flashvsr.pipeline import FlashVSRPipeline, StreamSettings
from vsrkit.engines.flashvsr.tcdecoder import TCDecoder
from vsrkit.engines.flashvsr.wan_dit import WanDiT

TINY = {
    "dit": {"dim": 64, "in_dim": 16, "ffn_dim": 128, "out_dim": 16, "text_dim": 32, "freq_dim": 16,
            "patch_size": (1, 2, 2), "num_heads": 2, "num_layers": 2},
    "lq_proj": {"in_dim": 3, "out_dim": 64, "hidden_dim1": 16, "hidden_dim2": 24, "layer_num": 1},
    "tcdecoder": {"channels": (32, 24, 16, 16), "latent_channels": 784},
    "prompt": (1, 16, 32),
}
OFFICIAL = {
    "dit": {"dim": 1536, "in_dim": 16, "ffn_dim": 8960, "out_dim": 16, "text_dim": 4096, "freq_dim": 256,
            "patch_size": (1, 2, 2), "num_heads": 12, "num_layers": 30},
    "lq_proj": {"in_dim": 3, "out_dim": 1536, "hidden_dim1": 2048, "hidden_dim2": 3072, "layer_num": 1},
    "tcdecoder": {"channels": (512, 256, 128, 128), "latent_channels": 784},
    "prompt": (1, 512, 4096),
}
GPU_CASES = ((512, 512), (384, 704))
# Whole-run frames/s the GPU cases are meant to beat (issue 16's targets, on an H200-class GPU).
FPS_TARGETS = {(512, 512): 31.2, (384, 704): 17.0}
# The GPU cases' shapes (square, then wide) at the tiny configuration's scale, for --dry-run.
DRY_RUN_CASES = ((64, 64), (64, 128))


@torch.no_grad()
def random_models(config: dict, dtype: torch.dtype, device: torch.device, seed: int = 0) -> FlashVSRModels:
    """Modules of `config` with random weights (fan-in scaled), built on the meta device and
    materialised directly on `device`."""
    with torch.device("meta"):
        dit = WanDiT(**config["dit"])
        lq_proj = CausalLQProjector(**config["lq_proj"])
        decoder = TCDecoder(**config["tcdecoder"])
    generator = torch.Generator(device=device).manual_seed(seed)
    modules = []
    for module in (dit, lq_proj, decoder):
        module = module.to(dtype).to_empty(device=device)
        for name, param in module.named_parameters():
            if "norm" in name or "gamma" in name:
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                fan_in = max(1, param[0].numel())
                param.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
        modules.append(module.requires_grad_(False).eval())
    prompt = torch.randn(config["prompt"], generator=generator, device=device).to(dtype)
    return FlashVSRModels("v1.1", *modules, prompt, config=config, files={})


def moving_frames(count: int, height: int, width: int, chunk: int = 8) -> Iterator[torch.Tensor]:
    """A smooth moving colour pattern with texture, [T, H, W, 3] in 0..1, chunk by chunk."""
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None, :]
    texture = torch.rand(height, width, generator=torch.Generator().manual_seed(7)) * 0.1
    for start in range(0, count, chunk):
        frames = []
        for index in range(start, min(count, start + chunk)):
            phase = index * 0.05
            channels = [0.5 + 0.4 * torch.sin(6.28 * (x * (k + 1) + y + phase + k)) for k in range(3)]
            frames.append(torch.stack(channels, dim=-1) * 0.9 + texture[..., None])
        yield torch.stack(frames).clamp(0, 1)


def measure(models: FlashVSRModels, frames: int, height: int, width: int, scale: int,
            settings: StreamSettings) -> dict:
    device = models.current_device()
    pipeline = FlashVSRPipeline.from_models(models)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    first_at = None
    first_count = 0
    produced = 0
    for out in pipeline.upscale(moving_frames(frames, height, width), scale, settings):
        produced += out.shape[0]
        if first_at is None:
            first_at = time.perf_counter()
            first_count = produced
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    assert produced == frames, (produced, frames)
    steady = (produced - first_count) / (elapsed - (first_at - started)) if produced > first_count else float("nan")
    result = {"frames": produced, "seconds": elapsed, "fps": produced / elapsed, "steady_fps": steady,
              "seconds_per_frame": elapsed / produced}
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def case_report(height: int, width: int, scale: int, result: dict, target: float | None) -> dict:
    """One case's figures; `meets_target` compares the whole run's frames/s with `target`."""
    return {"input": [height, width], "output": [scale * height, scale * width], **result,
            "peak_gib": result.get("peak_gib"), "target_fps": target,
            "meets_target": None if target is None else result["fps"] > target}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="official sizes in bf16 on CUDA (default: tiny on CPU)")
    parser.add_argument("--dry-run", action="store_true", help="the --gpu cases on the CPU with the tiny "
                        "configuration at small sizes, so the GPU path of this script runs without a GPU")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--model-dir", type=Path, default=None, help="real checkpoints instead of random weights")
    parser.add_argument("--frames", type=int, default=None, help="frames per run (default: CPU 25, GPU 101, "
                        "dry run 9)")
    parser.add_argument("--mode", choices=("tiny-long", "tiny"), default="tiny-long")
    parser.add_argument("--sparse-ratio", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default 2; 1 in a dry run, "
                        "where tiny layers run fastest on one)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up runs of 25 frames (default 1; "
                        "none in a dry run)")
    args = parser.parse_args()
    settings = StreamSettings(mode=args.mode, sparse_ratio=args.sparse_ratio)
    stamp = datetime.date.today().isoformat()
    report = {"bench": "flashvsr", "date": stamp, "dry_run": args.dry_run, "torch": torch.__version__,
              "cuda": torch.version.cuda, "mode": args.mode, "sparse_ratio": args.sparse_ratio, "scale": 2}

    args.threads = args.threads or (1 if args.dry_run else 2)
    args.warmup = (0 if args.dry_run else 1) if args.warmup is None else args.warmup
    if not args.gpu and not args.dry_run:
        torch.set_num_threads(args.threads)
        frames = args.frames or 25
        models = random_models(TINY, torch.float32, torch.device("cpu"))
        for _ in range(args.warmup):
            measure(models, 25, 64, 64, 2, settings)
        result = measure(models, frames, 64, 64, 2, settings)
        print(f"{stamp} CPU {cpu_name()}, {args.threads} threads, torch {torch.__version__}")
        print(f"tiny config (fixture sizes, random fp32), {args.mode}, 64x64 -> 128x128, {frames} frames: "
              f"{result['seconds_per_frame'] * 1000:.0f} ms per output frame "
              f"({result['fps']:.2f} frames/s, steady {result['steady_fps']:.2f})")
        write_json(args.json, {**report, "device": cpu_name(), "threads": args.threads, "dtype": "fp32",
                               "weights": "tiny config, random", "frames": frames,
                               "cases": {"64x64": case_report(64, 64, 2, result, None)}})
        return 0

    if args.dry_run:
        torch.set_num_threads(args.threads)
        device, dtype, cases, warmup_frames = torch.device("cpu"), torch.float32, DRY_RUN_CASES, 9
        frames = args.frames or 9
        models = random_models(TINY, dtype, device)
        weights, name = "tiny config, random weights", cpu_name()
    else:
        if not torch.cuda.is_available():
            parser.error("--gpu needs CUDA")
        device, dtype, cases, warmup_frames = torch.device("cuda"), torch.bfloat16, GPU_CASES, 25
        frames = args.frames or 101
        if args.model_dir:
            models = load_flashvsr(args.model_dir, version="v1.1", dtype="bf16", device=device)
            weights = f"checkpoints from {args.model_dir}"
        else:
            models = random_models(OFFICIAL, dtype, device)
            weights = "official sizes, random weights"
        name = torch.cuda.get_device_name(device)
    print(f"{stamp} {name}, torch {torch.__version__}, {weights}, {str(dtype).removeprefix('torch.')}, "
          f"{args.mode}, sparse_ratio {args.sparse_ratio}", flush=True)
    report.update(device=name, dtype=str(dtype).removeprefix("torch."), weights=weights, frames=frames, cases={})
    for height, width in cases:
        for _ in range(args.warmup):
            measure(models, warmup_frames, height, width, 2, settings)
        result = measure(models, frames, height, width, 2, settings)
        target = None if args.dry_run else FPS_TARGETS.get((height, width))
        report["cases"][f"{width}x{height}"] = case_report(height, width, 2, result, target)
        peak = "" if result.get("peak_gib") is None else f", peak {result['peak_gib']:.1f} GiB"
        print(f"{width}x{height} -> {2 * width}x{2 * height}, {frames} frames: {result['fps']:.1f} frames/s "
              f"(steady {result['steady_fps']:.1f}){peak}", flush=True)
        write_json(args.json, report)  # after each case, so a run stopped later keeps what it measured
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
