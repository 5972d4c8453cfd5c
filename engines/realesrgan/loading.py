"""Loading Real-ESRGAN models: the model object, reading weight files safely, and blending.

`load_model` resolves a name (`resolve.py`), reads the file, builds the network (`detect.py`)
and applies what the official table says about the model (its output resize, denoise blending).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelNotFoundError
from ..video.filters import format_number
from ..weights import load_pickle, open_safetensors
from .detect import build_network
from .native_runtime import NativeNetwork
from .ncnn_import import import_ncnn
from .resolve import ProgressFactory, Resolution, download_verified, resolve_model_file

# Models converted from core UPSCALE_MODEL descriptors, per live descriptor.
_FROM_DESCRIPTOR: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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
        `backend.choose_backend` gives it), on `device`.

        A native runner is made anew each call: it keeps its buffers, so each stream has its own
        (the kernel's weights are kept per network). The PyTorch module runs channels-last; on the
        CPU in fp32 it is `self.net` itself, elsewhere `device_network(dtype)`, moved to `device`
        if it is not there.
        """
        if backend == "native":
            return NativeNetwork(self.net)
        if device.type == "cpu" and dtype == torch.float32:
            return self.net.to(memory_format=torch.channels_last).eval()
        return self.device_network(dtype).to(device)

    def device_network(self, dtype: torch.dtype) -> nn.Module:
        """The PyTorch network in `dtype`, channels-last: a copy of `self.net`, made on the CPU once
        per precision and kept for the last one asked for.

        Where the copy lives is up to whoever runs it: `prepared` moves it to its device and leaves
        it there; a host that manages device memory (the nodes, through ComfyUI's model management)
        moves it in before each run and may move it out again.
        """
        cached = self.__dict__.get("_device_network")
        if cached is not None and cached[0] == dtype:
            return cached[1]
        self.__dict__.pop("_device_network", None)
        net = copy.deepcopy(self.net).to(dtype=dtype).to(memory_format=torch.channels_last).eval()
        self.__dict__["_device_network"] = (dtype, net)
        return net

    def describe(self) -> str:
        scale = f"x{self.net_scale}"
        if self.output_scale:
            scale += f" network + {self.output_resample} to x{format_number(self.scale)}"
        return f"{self.name} ({self.arch}, {scale})"


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


def load_resolved(found: Resolution, name: str | None = None) -> RealESRGANModel:
    """The model `resolve_model_file` found (or imported while resolving), named `name` or after the file."""
    name = name or found.path.stem
    if found.imported is not None:
        return model_from_state(found.imported.state_dict, name, found.origin, found.imported.metadata())
    return load_model_file(found.path, name=name, origin=found.origin)


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
    model = load_resolved(found, official.name if official else None)
    if official is not None:
        if model.net_scale != official.net_scale:
            raise InputError(f"{found.path} is an x{model.net_scale} model, but {official.name} is x{official.net_scale}")
        if official.name == "realesr-general-x4v3" and denoise_strength < 1.0:
            weak = resolve_model_file("realesr-general-wdn-x4v3", search_dirs, **options)
            blended = blend_states(model.net.state_dict(), load_resolved(weak).net.state_dict(),
                                   denoise_strength)
            model = model_from_state(blended, f"{official.name} (denoise {denoise_strength:g})",
                                     f"{found.origin}; blended with {weak.origin}")
        model.output_scale = official.output_scale
        model.output_resample = "bicubic"
    return model
