"""Faster fp32 CPU execution of SRVGGNetCompact in PyTorch, with the same weights and results.

This is the CPU path without a C++ compiler for `native_runtime.py` and without ncnn (or with
`cpu_backend="pytorch"`); both of those are faster.

Two things cost most on the CPU besides the arithmetic, and each has a remedy here:

- oneDNN's direct 3x3 convolution is the only algorithm PyTorch picks for one frame, but the
  NNPACK library inside PyTorch's CPU build has a Winograd F(6x6, 3x3) convolution that needs
  fewer multiplications. Which one is faster depends on the layer's shape and the CPU (NNPACK's
  x86 kernels stop at AVX2, oneDNN uses AVX-512 where there is one), so `TunedConv2d` times the
  candidates once per shape on the real input, checks that they agree, and keeps the fastest.
- PReLU with per-channel slopes allocates a full-size result; `ChannelPReLU` applies it in
  place, one channel plane at a time, with the same arithmetic as `torch.nn.PReLU`.

`tuned_network` builds this variant of a network; its parameters are the original's tensors.
RRDBNet is left to oneDNN in channels-last: its dense blocks' convolutions (to 32 channels) are
slower in NNPACK and in NCHW, which NNPACK needs, and measured no faster overall.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

Candidate = Callable[[torch.Tensor], torch.Tensor]

_choices: dict[tuple, str] = {}
_choices_lock = threading.Lock()
# NNPACK's workspace inside PyTorch is one global buffer: calls must not overlap.
_nnpack_lock = threading.Lock()
# Per-channel in-place activation only pays off on planes this large; smaller ones use F.prelu.
MIN_PLANE_FOR_CHANNEL_LOOP = 16384
# Timed runs per candidate when tuning (the best counts, which filters out other load).
TUNING_RUNS = 2


def nnpack_available() -> bool:
    """True when this PyTorch build has NNPACK and it runs on this CPU (this also initialises it)."""
    try:
        return bool(torch.backends.nnpack.is_available())
    except (AttributeError, RuntimeError):
        return False


def tuned_algorithms() -> dict[tuple, str]:
    """The algorithm chosen for each convolution shape so far (for benchmarks and tests)."""
    with _choices_lock:
        return dict(_choices)


class TunedConv2d(nn.Module):
    """A 3x3 (or any) convolution that runs whichever CPU algorithm is fastest for its input shape.

    Shares `weight` and `bias` with the convolution it wraps. Input and output are NCHW.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride = conv.stride
        self.padding = conv.padding
        self.dilation = conv.dilation
        self.groups = conv.groups
        self._weight_nchw: torch.Tensor | None = None

    def _weight(self) -> torch.Tensor:
        if self._weight_nchw is None:
            self._weight_nchw = self.weight.contiguous()
        return self._weight_nchw

    def _nnpack_ok(self) -> bool:
        return (self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1
                and isinstance(self.padding, tuple) and self.bias is not None and nnpack_available())

    def candidates(self) -> dict[str, Candidate]:
        """The algorithms this layer can use, each taking and returning contiguous NCHW."""
        options: dict[str, Candidate] = {"onednn": self._onednn}
        if self._nnpack_ok():
            options["nnpack"] = self._nnpack
        return options

    def _onednn(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self._weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def _nnpack(self, x: torch.Tensor) -> torch.Tensor:
        with _nnpack_lock:
            return torch._nnpack_spatial_convolution(x, self._weight(), self.bias, list(self.padding))

    def shape_key(self, x: torch.Tensor) -> tuple:
        """What the choice depends on: the layer, the batch and the frame area to within a factor of
        sqrt(2), so tiles and frames of nearly the same size share one measurement."""
        batch, _, height, width = x.shape
        area_class = round(2 * math.log2(max(1, height * width)))
        return (batch, area_class, tuple(self.weight.shape), self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        options = self.candidates()
        if len(options) == 1:
            return self._onednn(x)
        key = self.shape_key(x)
        with _choices_lock:
            name = _choices.get(key)
        if name is None or name not in options:
            name, out = self._tune(x, options)
            with _choices_lock:
                _choices[key] = name
            return out
        if name == "onednn":
            return self._onednn(x)
        try:
            return options[name](x)
        except RuntimeError:
            # NNPACK reports every failure (workspace allocation included) the same way; oneDNN
            # gives the same result, so use it for this shape from now on.
            with _choices_lock:
                _choices[key] = "onednn"
            return self._onednn(x)

    def _tune(self, x: torch.Tensor, options: dict[str, Candidate]) -> tuple[str, torch.Tensor]:
        """Run every candidate once to warm up (oneDNN's run is the reference), then TUNING_RUNS
        times; keep the fastest by its best run among those that agree with the reference."""
        reference = options["onednn"](x)
        tolerance = 1e-4 * float(reference.abs().max()) + 1e-5
        best_name, best_time, best_out = "onednn", float("inf"), reference
        for name, run in options.items():
            try:
                out = reference if name == "onednn" else run(x)
                seconds = float("inf")
                for _ in range(TUNING_RUNS):
                    started = time.perf_counter()
                    out = run(x)
                    seconds = min(seconds, time.perf_counter() - started)
            except RuntimeError:
                continue
            if out.shape != reference.shape or float((out - reference).abs().max()) > tolerance:
                continue
            if seconds < best_time:
                best_name, best_time, best_out = name, seconds, out
        return best_name, best_out


class ChannelPReLU(nn.Module):
    """`torch.nn.PReLU` applied in place: x if x > 0 else slope[c] * x, without a full-size temporary."""

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        self.weight = prelu.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        if self.weight.numel() != channels or x.shape[2] * x.shape[3] < MIN_PLANE_FOR_CHANNEL_LOOP:
            return F.prelu(x, self.weight)
        x = x.contiguous()
        for channel, slope in enumerate(self.weight.tolist()):
            F.leaky_relu_(x[:, channel], slope)
        return x


def _swap(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            setattr(module, name, TunedConv2d(child))
        elif isinstance(child, nn.PReLU):
            setattr(module, name, ChannelPReLU(child))
        else:
            _swap(child)


def tuned_network(net: nn.Module) -> nn.Module:
    """A copy of `net` (fp32, CPU) using the modules above; it shares the original's parameters."""
    shared = {id(tensor): tensor for tensor in list(net.parameters()) + list(net.buffers())}
    tuned = copy.deepcopy(net, memo=shared)
    _swap(tuned)
    return tuned.eval()
