"""The pack inside a real ComfyUI: it loads, its workflows run headless, interrupts and bad inputs behave.

Needs COMFYUI_PATH and COMFYUI_PYTHON (see conftest.py); skipped otherwise. Every run is
small (a second or two of a real clip at low resolution) so the suite takes minutes on a CPU.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest

import vsrkit
from vsrkit.cli.workflow import (
    check_api_workflow,
    definitions_from_mappings,
    input_kind,
    is_api_format,
    ordered_inputs,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
EXPORTS = sorted((ROOT / "tests" / "data").glob("comfyui_object_info*.json"))
NTSC = Fraction(30000, 1001)


def api_path(name: str) -> Path:
    """The API twin of the shipped UI workflow `name` (its title), in workflows/api/."""
    return WORKFLOWS / "api" / f"{name}.json"


def api_workflow(name: str) -> dict:
    return json.loads(api_path(name).read_text(encoding="utf-8"))


def api_workflows() -> list[Path]:
    return sorted(p for p in WORKFLOWS.rglob("*.json") if is_api_format(json.loads(p.read_text(encoding="utf-8"))))


def node_of(prompt: dict, class_type: str) -> str:
    [node_id] = [i for i, n in prompt.items() if n["class_type"] == class_type]
    return node_id


def run_submit(host, workflow: Path, out: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    command = host.submit_command(str(workflow), "-o", str(out), *args)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def probe(path: Path) -> dict:
    """Frame count (decoded), size, rate and audio duration of a finished video file."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        audio = container.streams.audio[0] if container.streams.audio else None
        result = {"frames": frames, "size": (video.codec_context.width, video.codec_context.height),
                  "fps": video.average_rate, "audio_codec": audio.codec_context.name if audio else None,
                  "audio_seconds": None}
        if audio is not None:
            container.seek(0)
            samples = sum(frame.samples for frame in container.decode(audio=0))
            result["audio_seconds"] = samples / audio.codec_context.sample_rate
    return result


def outputs_left(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def comparable(definition: dict) -> dict:
    """What a workflow relies on: input names, kinds and sections, and the output types."""
    return {"inputs": [(name, input_kind(spec), required) for name, spec, required in ordered_inputs(definition)],
            "outputs": [input_kind([t]) for t in definition["output"]]}


# ------------------------------------------------------------------ loading


def test_pack_registers_every_node_without_import_errors(comfy_host, object_info):
    missing = sorted(set(vsrkit.NODE_CLASS_MAPPINGS) - set(object_info))
    assert not missing, f"nodes missing from /object_info: {missing}\n{comfy_host.log()[-3000:]}"
    log = comfy_host.log()
    assert "IMPORT FAILED" not in log and "Cannot import" not in log, log[-3000:]
    modules = {object_info[name].get("python_module") for name in vsrkit.NODE_CLASS_MAPPINGS}
    assert modules == {"custom_nodes.vsrkit"}


def test_pack_is_installed_as_a_real_folder(comfy_host):
    """What a governance policy accepts: a real folder, no symlinks, no bytecode, no .git or .venv."""
    pack = comfy_host.pack_dir
    assert pack.is_dir() and not pack.is_symlink()
    found = [pack, *pack.rglob("*")]
    assert not [p for p in found if p.is_symlink()]
    assert not [p for p in found if p.name == "__pycache__" or p.suffix in (".pyc", ".pyo")]
    assert not [p for p in found if p.name in (".git", ".venv")]
    shipped = {p.relative_to(ROOT) for p in ROOT.rglob("*.py")
               if not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(ROOT).parts)}
    assert shipped and shipped == {p.relative_to(pack) for p in pack.rglob("*.py")}


def test_our_offline_definitions_match_the_live_host(comfy_host, object_info):
    """The workflow checks derive our nodes' definitions offline; the host builds the same ones."""
    ours = definitions_from_mappings(vsrkit.NODE_CLASS_MAPPINGS, vsrkit.NODE_DISPLAY_NAME_MAPPINGS)
    for name, definition in ours.items():
        assert comparable(definition) == comparable(object_info[name]), name


def test_shipped_workflows_fit_the_live_host(comfy_host, object_info):
    """What every API workflow relies on (inputs it sets, outputs it links) exists on this host."""
    host = f"ComfyUI {comfy_host.version}"
    for path in api_workflows():
        assert check_api_workflow(json.loads(path.read_text(encoding="utf-8")), object_info, host) == [], path.name


def test_the_export_of_this_comfyui_version_is_true_to_it(comfy_host, object_info):
    """The offline checks read core nodes from an export per version: the one of this version matches."""
    version = comfy_host.version
    exports = [e for e in (json.loads(p.read_text(encoding="utf-8")) for p in EXPORTS)
               if e["comfyui_version"] == version]
    if not exports:
        pytest.skip(f"tests/data has no export of ComfyUI {version}; add one with tests/data/export_object_info.py "
                    f"--output tests/data/comfyui_object_info_{version}.json")
    [export] = exports
    core = {name for name, spec in object_info.items()
            if not str(spec.get("python_module", "")).startswith("custom_nodes")}
    assert set(export["node_names"]) == core
    for name, definition in export["nodes"].items():
        assert comparable(definition) == comparable(object_info[name]), name


# ------------------------------------------------------------------ headless runs


def test_fast_path_workflow_runs_headless_on_a_real_clip(comfy_host, footage, tmp_path):
    comfy_host.idle()
    prompt = api_workflow("Fast upscale x2, Real-ESRGAN")
    load = node_of(prompt, "vsrkitLoadVideo")
    out = tmp_path / "out"
    result = run_submit(comfy_host, api_path("Fast upscale x2, Real-ESRGAN"), out,
                        "--upload", f"{load}.video={footage / 'carphone_qcif_pristine.mp4'}",
                        "--set", f"{load}.frame_load_cap=30")
    assert result.returncode == 0, result.stderr[-3000:] + comfy_host.log()[-3000:]
    [video] = [Path(line) for line in result.stdout.splitlines() if line.strip()]
    assert video.parent == out
    info = probe(video)
    assert info["frames"] == 30
    assert info["size"] == (352, 288)
    assert info["fps"] == NTSC
    assert info["audio_codec"] is None  # the source has none


def test_preprocessing_workflow_runs_headless_and_keeps_the_audio(comfy_host, footage, tmp_path):
    comfy_host.idle()
    name = "Restore old video, Real-ESRGAN x4"
    prompt = api_workflow(name)
    load = node_of(prompt, "vsrkitLoadVideo")
    loader = node_of(prompt, "vsrkitRealESRGANLoader")
    out = tmp_path / "out"
    # The published x4 model is slow on a CPU; the small x2 model runs the same graph. 8 frames of
    # 720x480 keep the run to a minute or two.
    result = run_submit(comfy_host, api_path(name), out,
                        "--upload", f"{load}.video={footage / 'ntsc480i_tff_bt601_ac3.mkv'}",
                        "--set", f"{load}.frame_load_cap=8",
                        "--set", f"{loader}.model_name=realesr-animevideov3-x2", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:] + comfy_host.log()[-3000:]
    [video] = [Path(line) for line in result.stdout.splitlines() if line.strip()]
    info = probe(video)
    assert info["frames"] == 8
    assert info["size"] == (1440, 960)
    assert info["fps"] == NTSC
    assert info["audio_codec"] is not None
    assert info["audio_seconds"] == pytest.approx(8 / float(NTSC), abs=0.05)


def test_comparison_workflow_runs_headless(comfy_host, footage, tmp_path):
    comfy_host.idle()
    prompt = api_workflow("Before and after comparison")
    load = node_of(prompt, "vsrkitLoadVideo")
    compare = node_of(prompt, "vsrkitCompare")
    result = run_submit(comfy_host, api_path("Before and after comparison"), tmp_path / "out",
                        "--upload", f"{load}.video={footage / 'carphone_qcif_pristine.mp4'}",
                        "--set", f"{load}.frame_load_cap=12", "--set", f"{compare}.layout=\"side_by_side\"",
                        "--set", f"{compare}.crop_width=0", "--set", f"{compare}.crop_height=0")
    assert result.returncode == 0, result.stderr[-3000:] + comfy_host.log()[-3000:]
    [video] = [Path(line) for line in result.stdout.splitlines() if line.strip()]
    info = probe(video)
    assert info["frames"] == 12
    assert info["size"] == (2 * 352, 288)


# ------------------------------------------------------------------ failure paths


def test_interrupt_mid_run_leaves_no_partial_output(comfy_host, footage, tmp_path, python_sigint_handler):
    comfy_host.idle()
    before = set(outputs_left(comfy_host.output_dir))
    prompt = api_workflow("Fast upscale x2, Real-ESRGAN")
    load = node_of(prompt, "vsrkitLoadVideo")
    out = tmp_path / "out"
    # All 120 frames of carphone (about 10 s on a 2-core CPU), in batches short enough to stop promptly.
    command = comfy_host.submit_command(str(api_path("Fast upscale x2, Real-ESRGAN")), "-o", str(out),
                                        "--upload", f"{load}.video={footage / 'carphone_qcif_pristine.mp4'}")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        writing: set[Path] = set()
        deadline = time.monotonic() + 180
        while not writing and time.monotonic() < deadline and process.poll() is None:
            writing = set(outputs_left(comfy_host.output_dir)) - before
            time.sleep(0.1)
        assert writing, "Save Video never started writing its file"
        assert all(p.name.startswith(".vsrkit-partial-") for p in writing), writing
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-3000:]
    assert "cancelled: prompt" in stderr and "was interrupted on the server; it saved no output" in stderr, stderr
    comfy_host.idle()
    assert set(outputs_left(comfy_host.output_dir)) == before, "a partial file was left in ComfyUI's output"
    assert not out.exists() or not outputs_left(out)
    history = comfy_host.get_json("/history")
    last = max(history.values(), key=lambda entry: entry["prompt"][0])
    events = [event for event, _ in last["status"]["messages"]]
    assert "execution_interrupted" in events


def test_bad_input_gets_http_400_naming_our_node(comfy_host, tmp_path):
    comfy_host.idle()
    prompt = api_workflow("Fast upscale x2, Real-ESRGAN")
    loader = node_of(prompt, "vsrkitRealESRGANLoader")
    upscale = node_of(prompt, "vsrkitRealESRGANUpscale")
    prompt[loader]["inputs"]["model_name"] = "no-such-model.safetensors"
    prompt[upscale]["inputs"]["tile"] = -7
    status, body = comfy_host.post_json("/prompt", {"prompt": prompt, "client_id": "vsrkit-test"})
    assert status == 400
    assert {loader, upscale} <= set(body["node_errors"])
    assert body["node_errors"][loader]["class_type"] == "vsrkitRealESRGANLoader"
    assert body["node_errors"][upscale]["class_type"] == "vsrkitRealESRGANUpscale"

    path = tmp_path / "bad.api.json"
    path.write_text(json.dumps(prompt))
    result = run_submit(comfy_host, path, tmp_path / "out")
    assert result.returncode == 1
    assert f"node {upscale} (vsrkitRealESRGANUpscale" in result.stderr
    assert "tile" in result.stderr
    assert not (tmp_path / "out").exists()
