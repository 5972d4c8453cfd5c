"""SRVGGNetCompact: the small VGG-style Real-ESRGAN network (realesr-animevideov3, realesr-general-x4v3).

All convolutions run at the input resolution; the last one produces `scale**2` sub-pixels per
channel, a pixel shuffle lays them out, and the nearest-neighbour upscaled input is added, so the
network only learns the residual. State-dict keys are the official ones: `body.{i}.weight/bias`,
with even `i` a 3x3 convolution and odd `i` its activation (PReLU weights).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _activation(kind: str, channels: int) -> nn.Module:
    if kind == "prelu":
        return nn.PReLU(num_parameters=channels)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.1, inplace=True)
    raise ValueError(f"unknown activation {kind!r}; expected prelu, relu or leakyrelu")


class SRVGGNetCompact(nn.Module):
    """Constructor arguments mirror the official checkpoint's configuration."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_conv: int = 16,
                 upscale: int = 4, act_type: str = "prelu"):
        super().__init__()
        self.num_in_ch = num_in_ch
        self.num_out_ch = num_out_ch
        self.num_feat = num_feat
        self.num_conv = num_conv
        self.upscale = upscale
        self.act_type = act_type
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(upscale)

    @property
    def receptive_radius(self) -> int:
        """Input pixels on each side that influence one output pixel (one per 3x3 convolution)."""
        return self.num_conv + 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)
        return out + F.interpolate(x, scale_factor=self.upscale, mode="nearest")
