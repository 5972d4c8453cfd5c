"""FlashVSR checkpoint loading: file discovery, official file formats, strict checks, dtypes, safety."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vsrkit.engines.errors import InputError, ModelNotFoundError
from vsrkit.engines.flashvsr.loader import COMPONENT_FILES, find_model_files, load_flashvsr
from vsrkit.engines.flashvsr.lq_proj import BufferLQProjector, CausalLQProjector

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "flashvsr" / "fixture"
FIXTURE_NAMES = {"dit": "dit.safetensors", "lq_proj": "lq_proj.safetensors",
                 "tcdecoder": "tcdecoder.safetensors", "prompt": "prompt.safetensors"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fixture_weights():
    if not (FIXTURE / "dit.safetensors").is_file():
        pytest.skip(f"golden fixture absent in {FIXTURE}")
    return {name: load_file(str(FIXTURE / file)) for name, file in FIXTURE_NAMES.items()}


def write_fixture_copy(folder: Path, weights: dict, skip: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, tensors in weights.items():
        if name not in skip:
            save_file(tensors, str(folder / FIXTURE_NAMES[name]))
    return folder


def write_official_layout(folder: Path, weights: dict) -> Path:
    """The fixture's weights under the release's names and formats (pickles, bare prompt tensor)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights["dit"], str(folder / "diffusion_pytorch_model_streaming_dmd.safetensors"))
    torch.save(weights["lq_proj"], folder / "LQ_proj_in.ckpt")
    torch.save(weights["tcdecoder"], folder / "TCDecoder.ckpt")
    torch.save(weights["prompt"]["context"], folder / "posi_prompt.pth")
    return folder


def test_missing_folder_names_searched_folders_and_expected_files(tmp_path):
    with pytest.raises(ModelNotFoundError) as caught:
        find_model_files(tmp_path / "nowhere", "v1.1")
    message = str(caught.value)
    assert str(tmp_path / "nowhere") in message
    assert str(tmp_path / "nowhere" / "FlashVSR-v1.1") in message
    for names in COMPONENT_FILES.values():
        assert names[0] in message


def test_partial_folder_names_the_missing_files(tmp_path, fixture_weights):
    folder = write_fixture_copy(tmp_path / "FlashVSR-v1.1", fixture_weights, skip=("tcdecoder", "prompt"))
    with pytest.raises(ModelNotFoundError) as caught:
        load_flashvsr(tmp_path, version="v1.1", dtype="fp32", device="cpu")
    message = str(caught.value)
    assert str(folder) in message
    assert "TCDecoder.ckpt" in message and "posi_prompt.pth" in message
    assert "LQ_proj_in.ckpt" not in message


def test_official_names_and_formats_load_like_the_fixture(tmp_path, fixture_weights):
    write_official_layout(tmp_path / "models" / "FlashVSR-v1.1", fixture_weights)
    write_official_layout(tmp_path / "models" / "FlashVSR", fixture_weights)
    v11 = load_flashvsr(tmp_path / "models", version="v1.1", dtype="fp32", device="cpu")
    v1 = load_flashvsr(tmp_path / "models", version="v1", dtype="fp32", device="cpu")
    assert v11.files["lq_proj"] == tmp_path / "models" / "FlashVSR-v1.1" / "LQ_proj_in.ckpt"
    assert v1.files["tcdecoder"] == tmp_path / "models" / "FlashVSR" / "TCDecoder.ckpt"
    assert type(v11.lq_proj) is CausalLQProjector and type(v1.lq_proj) is BufferLQProjector
    for key, value in fixture_weights["tcdecoder"].items():
        assert torch.equal(v11.tcdecoder.state_dict()[key], value), key
    for key, value in fixture_weights["lq_proj"].items():
        assert torch.equal(v1.lq_proj.state_dict()[key], value.float()), key
    assert torch.equal(v11.prompt, fixture_weights["prompt"]["context"].float())


def test_v1_files_are_never_read_as_v1_1(tmp_path, fixture_weights):
    models = tmp_path / "models"
    write_fixture_copy(models / "FlashVSR", fixture_weights)
    roots = [models, models / "FlashVSR"]
    with pytest.raises(ModelNotFoundError) as caught:
        find_model_files(roots, "v1.1")
    message = str(caught.value)
    assert str(models / "FlashVSR-v1.1") in message and str(models / "FlashVSR" / "FlashVSR-v1.1") in message
    assert f"Not read for v1.1: {models / 'FlashVSR'}" in message
    assert find_model_files(roots, "v1")["dit"] == models / "FlashVSR" / "dit.safetensors"


def test_v1_1_files_are_never_read_as_v1(tmp_path, fixture_weights):
    folder = write_fixture_copy(tmp_path / "models" / "FlashVSR-v1.1", fixture_weights)
    for roots in (folder, tmp_path / "models", [tmp_path / "models", folder]):
        with pytest.raises(ModelNotFoundError, match="FlashVSR v1 model files not found"):
            find_model_files(roots, "v1")
    assert find_model_files(folder, "v1.1")["lq_proj"] == folder / "lq_proj.safetensors"


def test_v1_1_in_a_subfolder_of_the_v1_folder_is_found(tmp_path, fixture_weights):
    v1 = write_fixture_copy(tmp_path / "FlashVSR", fixture_weights)
    v11 = write_fixture_copy(v1 / "FlashVSR-v1.1", fixture_weights)
    assert find_model_files(v1, "v1.1")["dit"] == v11 / "dit.safetensors"
    assert find_model_files(v1, "v1")["dit"] == v1 / "dit.safetensors"


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                                  ("fp32", torch.float32)])
def test_weights_are_cast_to_the_requested_precision(tmp_path, fixture_weights, precision, dtype):
    models = load_flashvsr(write_official_layout(tmp_path / "m", fixture_weights), version="v1.1",
                           dtype=precision, device="cpu")
    assert {p.dtype for p in models.parameters()} == {dtype}
    assert models.prompt.dtype == dtype and models.compute_dtype == dtype
    for key, value in fixture_weights["dit"].items():
        assert torch.equal(models.dit.state_dict()[key], value.to(dtype)), key
    # bf16 files upcast exactly.
    if dtype == torch.float32:
        stored = fixture_weights["lq_proj"]["conv1.weight"]
        assert stored.dtype == torch.bfloat16
        assert torch.equal(models.lq_proj.conv1.weight.to(torch.bfloat16), stored)


def test_auto_precision_on_cpu_is_fp32(fixture_weights):
    models = load_flashvsr(FIXTURE, version="v1.1", dtype="auto", device="cpu")
    assert models.compute_dtype == torch.float32
    assert models.current_device().type == "cpu"


def test_bad_version_and_precision_are_refused(fixture_weights):
    with pytest.raises(InputError, match="version"):
        load_flashvsr(FIXTURE, version="v2", device="cpu")
    with pytest.raises(InputError, match="precision"):
        load_flashvsr(FIXTURE, dtype="int8", device="cpu")


def test_missing_and_unexpected_keys_are_listed(tmp_path, fixture_weights):
    broken = dict(fixture_weights)
    decoder = dict(fixture_weights["tcdecoder"])
    del decoder["decoder.3.weight"]
    decoder["decoder.99.weight"] = torch.zeros(1)
    broken["tcdecoder"] = decoder
    folder = write_fixture_copy(tmp_path / "FlashVSR-v1.1", broken)
    with pytest.raises(InputError) as caught:
        load_flashvsr(folder, version="v1.1", dtype="fp32", device="cpu")
    message = str(caught.value)
    assert "tcdecoder.safetensors" in message and str(folder) in message
    assert "TCDecoder.ckpt" in message
    assert "missing keys (1): decoder.3.weight" in message
    assert "unexpected keys (1): decoder.99.weight" in message


def test_wrong_shapes_are_listed(tmp_path, fixture_weights):
    broken = dict(fixture_weights)
    dit = dict(fixture_weights["dit"])
    dit["blocks.1.ffn.0.weight"] = torch.zeros(96, 64)
    broken["dit"] = dit
    folder = write_fixture_copy(tmp_path / "m", broken)
    with pytest.raises(InputError) as caught:
        load_flashvsr(folder, version="v1.1", dtype="fp32", device="cpu")
    message = str(caught.value)
    assert "dit.safetensors" in message and str(folder) in message
    assert "blocks.1.ffn.0.weight: file (96, 64) vs model (128, 64)" in message


def test_a_file_of_another_model_is_refused(tmp_path, fixture_weights):
    broken = dict(fixture_weights)
    broken["lq_proj"] = {"weight": torch.zeros(2, 2)}
    folder = write_fixture_copy(tmp_path / "m", broken)
    with pytest.raises(InputError, match=r"lq_proj\.safetensors .* not a FlashVSR LQ projector checkpoint"):
        load_flashvsr(folder, version="v1.1", dtype="fp32", device="cpu")


def test_files_that_do_not_belong_together_are_refused(tmp_path, fixture_weights):
    broken = dict(fixture_weights)
    broken["prompt"] = {"context": torch.zeros(1, 16, 48)}
    folder = write_fixture_copy(tmp_path / "m", broken)
    with pytest.raises(InputError, match="do not belong together.*48 wide"):
        load_flashvsr(folder, version="v1.1", dtype="fp32", device="cpu")


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_code_running_pickles_are_refused(tmp_path, fixture_weights):
    folder = write_official_layout(tmp_path / "m", fixture_weights)
    marker = tmp_path / "pwned"
    state = dict(fixture_weights["tcdecoder"])
    state["payload"] = _RunsCode(marker)
    torch.save(state, folder / "TCDecoder.ckpt")
    with pytest.raises(InputError, match="refusing to load TCDecoder.ckpt"):
        load_flashvsr(folder, version="v1.1", dtype="fp32", device="cpu")
    assert not marker.exists()


LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 8589934592\n")


@pytest.mark.parametrize("name", ["LQ_proj_in.ckpt", "diffusion_pytorch_model_streaming_dmd.safetensors"])
def test_a_git_lfs_pointer_is_named_as_such(tmp_path, fixture_weights, name):
    folder = write_official_layout(tmp_path / "m", fixture_weights)
    (folder / name).write_bytes(LFS_POINTER)
    with pytest.raises(InputError) as caught:
        load_flashvsr(folder, version="v1.1", dtype="fp32", device="cpu")
    message = str(caught.value)
    assert f"{name} in {folder} is a Git LFS pointer" in message and "fetch the real file" in message
    assert "refusing" not in message and "code" not in message


@pytest.mark.parametrize("content", [b"<!DOCTYPE html><html>404 Not Found</html>", b"", b"\x80\x02garbage" * 8])
def test_a_file_that_is_no_checkpoint_is_not_called_unsafe(tmp_path, fixture_weights, content):
    folder = write_official_layout(tmp_path / "m", fixture_weights)
    (folder / "TCDecoder.ckpt").write_bytes(content)
    with pytest.raises(InputError) as caught:
        load_flashvsr(folder, version="v1.1", dtype="fp32", device="cpu")
    message = str(caught.value)
    assert f"TCDecoder.ckpt in {folder}" in message
    assert "not a PyTorch checkpoint" in message or "not a readable PyTorch checkpoint" in message
    assert "truncated" in message
    assert "refusing" not in message and "run code" not in message


def test_a_truncated_pickle_checkpoint_is_called_truncated(tmp_path, fixture_weights):
    folder = write_official_layout(tmp_path / "m", fixture_weights)
    data = (folder / "LQ_proj_in.ckpt").read_bytes()
    (folder / "LQ_proj_in.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"LQ_proj_in\.ckpt in .* not a readable PyTorch checkpoint \(truncated"):
        load_flashvsr(folder, version="v1.1", dtype="fp32", device="cpu")


def test_a_torn_file_gets_a_clear_error(tmp_path, fixture_weights):
    folder = write_official_layout(tmp_path / "m", fixture_weights)
    data = (folder / "diffusion_pytorch_model_streaming_dmd.safetensors").read_bytes()
    (folder / "diffusion_pytorch_model_streaming_dmd.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="diffusion_pytorch_model_streaming_dmd.safetensors"):
        load_flashvsr(folder, version="v1.1", dtype="fp32", device="cpu")


def test_loading_never_leaves_meta_or_shared_tensors(tmp_path, fixture_weights):
    folder = write_official_layout(tmp_path / "m", fixture_weights)
    models = load_flashvsr(folder, version="v1.1", dtype="fp32", device="cpu")
    assert not any(p.is_meta for p in models.parameters())
    assert not any(p.requires_grad for p in models.parameters())
    assert not models.training
    # Weights do not alias the memory-mapped files: the folder can go away after loading.
    shutil.rmtree(folder)
    assert torch.equal(models.tcdecoder.decoder[1].weight, fixture_weights["tcdecoder"]["decoder.1.weight"])
