"""Load FlashVSR Tiny's four checkpoint files into our modules.

A model folder (`models/FlashVSR` for v1, `models/FlashVSR-v1.1` for v1.1) holds

    diffusion_pytorch_model_streaming_dmd.safetensors   the Wan 2.1 DiT
    LQ_proj_in.ckpt                                     the LQ projector (torch pickle)
    TCDecoder.ckpt                                      the tiny conditional decoder (torch pickle)
    posi_prompt.pth                                     the fixed prompt context (a bare tensor)

or the same contents as safetensors named `dit`, `lq_proj`, `tcdecoder` and `prompt`
(the golden fixture's layout). Pickles are read with `torch.load(weights_only=True)`
(`engines.weights`), which refuses anything that would run code; a Git LFS pointer or a
file that is no checkpoint is named as such.

Every size is read off the checkpoints' shapes (DiT width, depth, FFN, text and
frequency widths; projector widths; decoder channels), so small checkpoints in the
official layout load through the same path as the released ones. The one size
shapes cannot show is the DiT's head count: Wan uses 128-wide heads, and small test
models (whose width is not a multiple of 128) use 32-wide heads; pass `num_heads` to
override. Keys and shapes are then checked strictly against the module built from
that configuration.

Modules are built on the meta device and take each tensor as it is read, cast and
moved (`load_state_dict(assign=True)`), so RAM never holds a second full copy of
the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..device import resolve_device, resolve_precision
from ..errors import InputError, ModelNotFoundError
from ..paths import user_data_dir
from ..weights import load_pickle, open_safetensors
from .lq_proj import LQProjector, projector_class
from .tcdecoder import COND_CHANNELS, TCDecoder
from .wan_dit import WanDiT, dit_config_from_shapes

VERSIONS = ("v1", "v1.1")
VERSION_FOLDERS = {"v1": "FlashVSR", "v1.1": "FlashVSR-v1.1"}
COMPONENT_FILES: dict[str, tuple[str, ...]] = {
    "dit": ("diffusion_pytorch_model_streaming_dmd.safetensors", "dit.safetensors"),
    "lq_proj": ("LQ_proj_in.ckpt", "LQ_proj_in.safetensors", "lq_proj.safetensors"),
    "tcdecoder": ("TCDecoder.ckpt", "TCDecoder.safetensors", "tcdecoder.safetensors"),
    "prompt": ("posi_prompt.pth", "posi_prompt.safetensors", "prompt.safetensors"),
}
COMPONENT_NAMES = {
    "dit": "DiT",
    "lq_proj": "LQ projector",
    "tcdecoder": "TCDecoder",
    "prompt": "prompt embedding",
}
# "auto" precision on CUDA: the DiT runs in bf16, as trained (fp16 where the GPU lacks bf16).
PREFERRED_DTYPE = torch.bfloat16
DOWNLOAD_HINT = ("download them from the Hugging Face repository JunhaoZhuang/FlashVSR (v1) or "
                 "JunhaoZhuang/FlashVSR-v1.1 (v1.1) into that folder")


class FlashVSRModels(nn.Module):
    """The FlashVSR Tiny modules of one version, on one device in one dtype.

    `dit` (WanDiT), `lq_proj` (LQProjector of the version's variant), `tcdecoder`
    (TCDecoder) and `prompt`, the fixed text context [1, L, text_dim]. The pipeline
    feeds `prompt` once through the DiT's text embedding into cached cross-attention
    keys and values (`WanDiT.embed_prompt`). `config` holds the constructor arguments
    read off the checkpoints; `files` the paths loaded.

    It is one `nn.Module`, so `.to(device)` moves everything and ComfyUI's model
    management can account for it as a whole.
    """

    def __init__(self, version: str, dit: WanDiT, lq_proj: LQProjector, tcdecoder: TCDecoder,
                 prompt: torch.Tensor, *, config: dict[str, dict[str, Any]], files: dict[str, Path]):
        super().__init__()
        self.version = version
        self.dit = dit
        self.lq_proj = lq_proj
        self.tcdecoder = tcdecoder
        self.register_buffer("prompt", prompt, persistent=False)
        self.config = config
        self.files = files

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.dit.dtype

    def current_device(self) -> torch.device:
        return self.dit.device


def candidate_folders(model_dir: str | Path, version: str) -> list[Path]:
    """Where a version's files may be: the folder itself, then its `FlashVSR[-v1.1]` subfolder.

    A folder named after the other version (`FlashVSR` when v1.1 is asked for, `FlashVSR-v1.1`
    for v1) is never a candidate: both versions' files have the same names, keys and shapes,
    so reading v1 weights as v1.1 (or the reverse) would load silently and upscale wrongly.
    """
    root = Path(model_dir).expanduser()
    if root.name.casefold() == VERSION_FOLDERS[version].casefold():
        return [root]
    if _names_other_version(root, version):
        return [root / VERSION_FOLDERS[version]]
    return [root, root / VERSION_FOLDERS[version]]


def _names_other_version(folder: Path, version: str) -> bool:
    return any(folder.name.casefold() == name.casefold() for v, name in VERSION_FOLDERS.items() if v != version)


def find_model_files(model_dirs: str | Path | Sequence[str | Path], version: str = "v1.1") -> dict[str, Path]:
    """The four files of `version`, all from one folder; `ModelNotFoundError` says what is missing where.

    `model_dirs` is a folder or a list of folders; each is searched as is and through its
    `FlashVSR` (v1) or `FlashVSR-v1.1` (v1.1) subfolder, skipping folders named after the
    other version (`candidate_folders`). The first folder, in that order, that holds all four
    files wins; when none does, the error names the folder with the most of them.
    """
    check_version(version)
    roots = [model_dirs] if isinstance(model_dirs, (str, Path)) else list(model_dirs)
    folders: list[Path] = []
    for root in roots:
        for folder in candidate_folders(root, version):
            if folder not in folders:
                folders.append(folder)
    best: tuple[Path, dict[str, Path]] | None = None
    for folder in folders:
        if not folder.is_dir():
            continue
        found = {component: path for component in COMPONENT_FILES
                 if (path := _first_existing(folder, COMPONENT_FILES[component])) is not None}
        if len(found) == len(COMPONENT_FILES):
            return found
        if found and (best is None or len(found) > len(best[1])):
            best = (folder, found)
    if best is not None:
        folder, found = best
        missing = [c for c in COMPONENT_FILES if c not in found]
        lines = "; ".join(f"{COMPONENT_NAMES[c]}: {' or '.join(COMPONENT_FILES[c])}" for c in missing)
        raise ModelNotFoundError(
            f"FlashVSR {version}: folder {folder} is missing {len(missing)} of its 4 files ({lines}); "
            f"{DOWNLOAD_HINT}"
        )
    searched = ", ".join(str(f) for f in folders)
    expected = "; ".join(f"{COMPONENT_NAMES[c]}: {' or '.join(names)}" for c, names in COMPONENT_FILES.items())
    skipped = [str(Path(root).expanduser()) for root in roots if _names_other_version(Path(root), version)]
    note = (f" Not read for {version}: {', '.join(skipped)} (named after the other version, whose files "
            "look the same).") if skipped else ""
    raise ModelNotFoundError(
        f"FlashVSR {version} model files not found. Searched: {searched}.{note} Expected in one folder "
        f"(named {VERSION_FOLDERS[version]}): {expected}; {DOWNLOAD_HINT}"
    )


def check_version(version: str) -> None:
    if version not in VERSIONS:
        raise InputError(f"FlashVSR version must be one of {VERSIONS}, got {version!r}")


def load_flashvsr(model_dir: str | Path | Sequence[str | Path], *, version: str = "v1.1",
                  dtype: str | torch.dtype = "auto", device: str | torch.device | None = None,
                  num_heads: int | None = None) -> FlashVSRModels:
    """Load FlashVSR Tiny `version` from `model_dir` (a folder or a list of folders to search).

    dtype: "auto" | "bf16" | "fp16" | "fp32" or a torch dtype (floating weights are cast to it;
    "auto" is bf16 on CUDA, `engines.device.resolve_precision`).
    device: where the weights go ("cuda", "cpu", ...; None or "auto" picks CUDA when available).
    Raises ModelNotFoundError when files are missing and InputError when a file is not a
    FlashVSR checkpoint of the expected layout (both name the file and the folder).
    """
    check_version(version)
    target = resolve_device(device)
    weight_dtype = resolve_precision(dtype, target, PREFERRED_DTYPE)
    files = find_model_files(model_dir, version)

    with open_checkpoint(files["dit"]) as reader:
        dit_config = _infer(files["dit"], reader.shapes, "dit",
                            lambda shapes: dit_config_from_shapes(shapes, num_heads))
        dit = _build_and_load(files["dit"], "dit", WanDiT, dit_config, reader, target, weight_dtype)
    with open_checkpoint(files["lq_proj"]) as reader:
        lq_config = _infer(files["lq_proj"], reader.shapes, "lq_proj", lq_proj_config_from_shapes)
        lq_proj = _build_and_load(files["lq_proj"], "lq_proj", projector_class(version), lq_config, reader,
                                  target, weight_dtype)
    with open_checkpoint(files["tcdecoder"]) as reader:
        dec_config = _infer(files["tcdecoder"], reader.shapes, "tcdecoder", tcdecoder_config_from_shapes)
        tcdecoder = _build_and_load(files["tcdecoder"], "tcdecoder", TCDecoder, dec_config, reader, target,
                                    weight_dtype)
    prompt = load_prompt(files["prompt"]).to(target, weight_dtype)

    _check_consistency(files, dit_config, lq_config, dec_config, prompt)
    config = {"dit": dit_config, "lq_proj": lq_config, "tcdecoder": dec_config,
              "prompt": {"shape": tuple(prompt.shape)}}
    return FlashVSRModels(version, dit, lq_proj, tcdecoder, prompt, config=config, files=files).eval()


def lq_proj_config_from_shapes(shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """LQProjector constructor arguments from its checkpoint shapes."""
    conv1 = shapes["conv1.weight"]
    unshuffled = int(conv1[1])
    if unshuffled % 256:
        raise ValueError(f"conv1 takes {unshuffled} channels, not a multiple of 16x16")
    layers = sorted({int(key.split(".")[1]) for key in shapes if key.startswith("linear_layers.")})
    if not layers:
        raise KeyError("linear_layers.0.weight")
    return {
        "in_dim": unshuffled // 256,
        "out_dim": int(shapes["linear_layers.0.weight"][0]),
        "hidden_dim1": int(conv1[0]),
        "hidden_dim2": int(shapes["conv2.weight"][0]),
        "layer_num": layers[-1] + 1,
    }


def tcdecoder_config_from_shapes(shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """TCDecoder constructor arguments from its checkpoint shapes (convs 1, 10, 16, 22 set the widths)."""
    first = shapes["decoder.1.weight"]
    return {
        "channels": (int(first[0]), int(shapes["decoder.10.weight"][0]), int(shapes["decoder.16.weight"][0]),
                     int(shapes["decoder.22.weight"][0])),
        "latent_channels": int(first[1]),
    }


def load_prompt(path: Path) -> torch.Tensor:
    """The fixed prompt context [1, L, text_dim] from a bare-tensor pickle or a one-tensor safetensors."""
    with open_checkpoint(path) as reader:
        keys = list(reader.shapes)
        if len(keys) != 1:
            raise InputError(f"{path.name} in {path.parent} should hold one prompt tensor, found keys {keys[:8]}")
        prompt = reader.tensor(keys[0])
    if prompt.ndim == 2:
        prompt = prompt[None]
    if prompt.ndim != 3 or prompt.shape[0] != 1 or not prompt.is_floating_point():
        raise InputError(f"{path.name} in {path.parent} should hold a [1, L, text_dim] float prompt, "
                         f"got {tuple(prompt.shape)} {prompt.dtype}")
    return prompt.clone()


class CheckpointReader:
    """Key -> shape of a checkpoint, and its tensors one at a time."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], get: Callable[[str], torch.Tensor]):
        self.shapes = shapes
        self._get = get

    def tensor(self, key: str) -> torch.Tensor:
        return self._get(key)


@contextmanager
def open_checkpoint(path: Path) -> Iterator[CheckpointReader]:
    """Open a safetensors file or a weights-only torch pickle without reading every tensor up front."""
    path = Path(path)
    if path.suffix == ".safetensors":
        with open_safetensors(path) as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
            yield CheckpointReader(shapes, f.get_tensor)
        return
    content = load_pickle(path, mmap=True)
    if isinstance(content, torch.Tensor):
        content = {"context": content}
    if not isinstance(content, Mapping):
        raise InputError(f"{path.name} in {path.parent} holds a {type(content).__name__}, not a state dict")
    bad = [key for key, value in content.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise InputError(f"{path.name} in {path.parent} holds non-tensor entries: {bad[:8]}")
    tensors = dict(content)
    shapes = {key: tuple(value.shape) for key, value in tensors.items()}

    def take(key: str) -> torch.Tensor:
        return tensors.pop(key)

    yield CheckpointReader(shapes, take)


def _infer(path: Path, shapes: Mapping[str, Sequence[int]], component: str,
           infer: Callable[[Mapping[str, Sequence[int]]], dict[str, Any]]) -> dict[str, Any]:
    try:
        return infer(shapes)
    except KeyError as exc:
        raise _mismatch(path, component, missing=[str(exc.args[0])], unexpected=[], wrong_shape=[],
                        note="cannot read the configuration off its shapes") from None
    except (ValueError, IndexError) as exc:
        raise _mismatch(path, component, missing=[], unexpected=[], wrong_shape=[],
                        note=f"cannot read the configuration off its shapes: {exc}") from None


def _build_and_load(path: Path, component: str, cls: type[nn.Module], config: Mapping[str, Any],
                    reader: CheckpointReader, device: torch.device, dtype: torch.dtype) -> nn.Module:
    with torch.device("meta"):
        module = cls(**config)
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    missing = sorted(set(expected) - set(reader.shapes))
    unexpected = sorted(set(reader.shapes) - set(expected))
    wrong = [f"{key}: file {reader.shapes[key]} vs model {expected[key]}"
             for key in sorted(set(expected) & set(reader.shapes)) if tuple(reader.shapes[key]) != expected[key]]
    if missing or unexpected or wrong:
        raise _mismatch(path, component, missing, unexpected, wrong)
    state = {}
    for key in expected:
        source = reader.tensor(key)
        tensor = source.to(device=device, dtype=dtype if source.is_floating_point() else source.dtype)
        if tensor.data_ptr() == source.data_ptr():
            tensor = tensor.clone()
        state[key] = tensor
        del source
    module.load_state_dict(state, strict=True, assign=True)
    leftover = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"{cls.__name__} kept tensors on the meta device after loading: {leftover[:8]}")
    return module.requires_grad_(False).eval()


def _mismatch(path: Path, component: str, missing: list[str], unexpected: list[str], wrong_shape: list[str],
              note: str = "") -> InputError:
    def listing(label: str, items: list[str]) -> str:
        if not items:
            return ""
        more = f" (and {len(items) - 12} more)" if len(items) > 12 else ""
        return f" {label} ({len(items)}): {', '.join(items[:12])}{more}."

    names = " or ".join(COMPONENT_FILES[component])
    return InputError(
        f"{path.name} in {path.parent} is not a FlashVSR {COMPONENT_NAMES[component]} checkpoint "
        f"(expected {names} in the official layout){': ' + note if note else ''}."
        f"{listing('missing keys', missing)}{listing('unexpected keys', unexpected)}"
        f"{listing('wrong shapes', wrong_shape)}"
    )


def _check_consistency(files: Mapping[str, Path], dit: Mapping[str, Any], lq: Mapping[str, Any],
                       dec: Mapping[str, Any], prompt: torch.Tensor) -> None:
    problems = []
    if lq["out_dim"] != dit["dim"]:
        problems.append(f"{files['lq_proj'].name} projects to width {lq['out_dim']} but "
                        f"{files['dit'].name} is {dit['dim']} wide")
    if dec["latent_channels"] - COND_CHANNELS != dit["out_dim"]:
        problems.append(f"{files['tcdecoder'].name} decodes {dec['latent_channels'] - COND_CHANNELS}-channel "
                        f"latents but {files['dit'].name} makes {dit['out_dim']}")
    if prompt.shape[-1] != dit["text_dim"]:
        problems.append(f"{files['prompt'].name} is {prompt.shape[-1]} wide but {files['dit'].name} takes "
                        f"{dit['text_dim']}-wide text")
    if problems:
        folder = files["dit"].parent
        raise InputError(f"the FlashVSR files in {folder} do not belong together: {'; '.join(problems)}")


def _first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def default_model_dirs() -> list[Path]:
    """Standalone search path: ./models, then $VSRKIT_HOME/models (default ~/.cache/vsrkit/models)."""
    return [Path.cwd() / "models", user_data_dir() / "models"]


__all__ = [
    "COMPONENT_FILES",
    "PREFERRED_DTYPE",
    "FlashVSRModels",
    "VERSIONS",
    "VERSION_FOLDERS",
    "default_model_dirs",
    "find_model_files",
    "load_flashvsr",
    "load_prompt",
    "lq_proj_config_from_shapes",
    "tcdecoder_config_from_shapes",
]
