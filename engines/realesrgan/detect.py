"""Which network a Real-ESRGAN state dict holds: architecture and scale from the official keys.

RRDBNet and SRVGGNetCompact are told apart by their BasicSR key names and sized from their tensor
shapes; the original ESRGAN layout (also spandrel's, so core's UPSCALE_MODEL) is renamed first.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import InputError
from .rrdbnet import RRDBNet, scale_from_channels
from .srvgg import SRVGGNetCompact


def rename_old_esrgan_keys(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
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
        state = rename_old_esrgan_keys(state, source)
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
