"""bench/gpu_check.py, the one-call GPU check, kept from rotting on machines without a GPU: its
--dry-run runs every step on the CPU at tiny sizes and must report every figure the GPU run
reports; a step that hangs is killed with its children and loses only itself."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
STEPS = ("setup", "probe", "gpu-tests", "realesrgan", "stabilise", "flashvsr")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"vsrkit_bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu-check")
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text()), done


def test_dry_run_runs_every_step(dry_run):
    out, report, done = dry_run
    assert report["dry_run"] is True and report["status"] == "ok"
    assert {"check", "started", "seconds", "limit_s", "host", "device", "steps", "gpu_tests", "realesrgan",
            "stabilise", "flashvsr", "summary"} <= report.keys()
    assert report["seconds"] <= report["limit_s"]
    for step in STEPS:
        record = report["steps"][step]
        assert record["status"] == "ok" and record["returncode"] == 0, (step, record)
        assert record["seconds"] > 0 and record["timeout_s"] > 0
        assert isinstance(record["command"], list) and record["command"][0] == sys.executable
    assert Path(report["steps"]["setup"]["imports"]["vsrkit"]).parent == ROOT
    log = (out / "gpu_check.log").read_text()
    for step in STEPS:
        assert f"=== {step}: ok after" in log
    assert "# status ok" in done.stdout


def test_dry_run_reports_the_device_and_versions(dry_run):
    _, report, _ = dry_run
    device = report["device"]
    assert {"name", "python", "torch", "cuda", "cudnn", "cuda_available", "device_count", "capability",
            "memory_gib"} <= device.keys()
    assert device["torch"] == torch.__version__
    assert device["cuda_available"] is False  # the dry run hides any GPU
    assert {"python", "executable", "platform", "cpus"} <= report["host"].keys()


def test_dry_run_collects_every_gpu_test_and_skips_it_with_the_reason(dry_run):
    out, report, _ = dry_run
    tests = report["gpu_tests"]
    cases = list(ElementTree.parse(out / "gpu_tests.xml").getroot().iter("testcase"))
    assert tests["total"] == len(cases) >= 20
    assert tests["skipped"] == tests["total"] and tests["failed"] == tests["errors"] == 0
    assert any("CUDA" in reason for reason in tests["skip_reasons"])
    modules = {case.get("classname").split(".")[-1] for case in cases}
    assert {"test_realesrgan_cuda", "test_flashvsr_cuda"} <= modules
    # Were the run stopped before pytest wrote its XML, the counts would come from its verbose lines.
    lines = [line.removeprefix("[gpu-tests] ") for line in (out / "gpu_check.log").read_text().splitlines()]
    counted = load_script("gpu_check").outcome_counts(lines)
    assert (counted["total"], counted["skipped"], counted["incomplete"]) == (tests["total"], tests["skipped"], True)


def test_dry_run_reports_every_realesrgan_figure(dry_run):
    out, report, _ = dry_run
    bench = report["realesrgan"]
    assert bench == json.loads((out / "realesrgan.json").read_text())
    assert {"bench", "date", "dry_run", "device", "torch", "cuda", "frames", "repeats", "configs"} <= bench.keys()
    assert list(bench["configs"]) == list(load_script("realesrgan").DRY_RUN_CONFIGS)
    for config in bench["configs"].values():
        assert {"model", "input", "frames", "methods", "compare"} <= config.keys()
        vsrkit = config["methods"]["vsrkit"]
        assert vsrkit["status"] == "ok" and vsrkit["fps"] > 0 and vsrkit["runs"] == bench["repeats"]
        assert {"fps_min", "fps_max", "peak_rss_mb", "peak_gpu_mib", "precision"} <= vsrkit.keys()
        stabilised = config["methods"]["vsrkit-stabilised"]  # the node's default path
        assert stabilised["status"] == "ok" and stabilised["fps"] > 0 and stabilised["runs"] == bench["repeats"]
        added = config["compare"]["vsrkit-stabilised"]["time_added"]
        assert added == pytest.approx(vsrkit["fps"] / stabilised["fps"] - 1)
        core = config["methods"]["core"]
        assert core["status"] == "ok" or core["reason"]
        if core["status"] == "ok":
            assert {"max_levels", "psnr_db", "vsrkit_speedup"} <= config["compare"]["core"].keys()
    for entry in report["summary"]["realesrgan"].values():
        assert {"vsrkit_fps", "core_fps", "speedup_vs_core", "target_speedup", "meets_target", "psnr_vs_core_db",
                "vsrkit_peak_gpu_mib", "stabilised_fps", "stabilise_time_added"} <= entry.keys()
        assert entry["stabilised_fps"] > 0 and entry["stabilise_time_added"] is not None


def test_dry_run_reports_every_stabiliser_figure(dry_run):
    out, report, _ = dry_run
    bench = report["stabilise"]
    assert bench == json.loads((out / "stabilise.json").read_text())
    assert {"bench", "date", "dry_run", "device", "torch", "frames", "frames_from", "settings", "sizes"} <= bench.keys()
    assert bench["dry_run"] is True and bench["device"] == "cpu" and bench["frames"] == 2
    assert list(bench["sizes"]) == ["40x24 -> 160x96"]
    for entry in bench["sizes"].values():
        assert entry["stage_ms"] > 0 and entry["flow_ms"] > 0 and entry["stage_cpu_ms"] > 0 and entry["flow_cpu_ms"] > 0
    assert report["summary"]["stabilise"] == {size: {"stage_ms": entry["stage_ms"], "flow_ms": entry["flow_ms"]}
                                              for size, entry in bench["sizes"].items()}


def test_dry_run_reports_every_flashvsr_figure(dry_run):
    out, report, _ = dry_run
    bench = report["flashvsr"]
    assert bench == json.loads((out / "flashvsr.json").read_text())
    assert {"bench", "date", "dry_run", "device", "torch", "cuda", "dtype", "weights", "mode", "sparse_ratio",
            "frames", "cases"} <= bench.keys()
    assert len(bench["cases"]) == len(load_script("flashvsr").GPU_CASES) == 2
    for case in bench["cases"].values():
        assert case["frames"] == bench["frames"] and case["fps"] > 0 and case["seconds"] > 0
        assert case["output"] == [2 * case["input"][0], 2 * case["input"][1]]
        assert {"steady_fps", "peak_gib", "target_fps", "meets_target"} <= case.keys()
    assert report["summary"]["flashvsr"].keys() == bench["cases"].keys()
    assert report["summary"]["gpu_tests"].endswith(f"skipped of {report['gpu_tests']['total']}")


def test_the_gpu_runs_official_flashvsr_sizes():
    """The random models of the GPU benchmark and tests have the released shapes (the default
    constructors, which tests/test_flashvsr_modules.py holds to the checkpoint manifest)."""
    from vsrkit.engines.flashvsr.lq_proj import CausalLQProjector
    from vsrkit.engines.flashvsr.tcdecoder import TCDecoder
    from vsrkit.engines.flashvsr.wan_dit import WanDiT

    official = load_script("flashvsr").OFFICIAL
    with torch.device("meta"):
        for cls, key in ((WanDiT, "dit"), (CausalLQProjector, "lq_proj"), (TCDecoder, "tcdecoder")):
            built, default = cls(**official[key]).state_dict(), cls().state_dict()
            assert {k: v.shape for k, v in built.items()} == {k: v.shape for k, v in default.items()}, key


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.split()[1] == "Z" for line in status if line.startswith("State:"))
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_a_hung_step_is_killed_with_its_children_and_the_next_step_runs(tmp_path):
    gpu_check = load_script("gpu_check")
    # A limit that leaves the probe step about 6 s (the setup and probe budgets, scaled).
    limit = gpu_check.LIMIT_S * 6 / (gpu_check.BUDGETS_S["setup"] + gpu_check.BUDGETS_S["probe"])
    check = gpu_check.Check(tmp_path, dry_run=True, limit_s=limit)
    pid_file = tmp_path / "grandchild.pid"
    hang = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "print('hanging', flush=True)\n"
            "time.sleep(120)\n")
    started = time.monotonic()
    status, lines = check.run("probe", [sys.executable, "-c", hang])
    assert status == "timeout" and time.monotonic() - started < 60
    assert lines == ["hanging"]
    grandchild = int(pid_file.read_text())
    for _ in range(50):
        if _dead(grandchild):
            break
        time.sleep(0.1)
    assert _dead(grandchild)
    record = check.report["steps"]["probe"]
    assert record["status"] == "timeout" and record["returncode"] is None
    status, lines = check.run("gpu-tests", [sys.executable, "-c", "print('next')"])
    assert status == "ok" and lines == ["next"]
    check.log.close()
    assert "=== probe: timeout after" in (tmp_path / "gpu_check.log").read_text()
