"""Helpers of the GPU tests: the bench scripts' random models, well-conditioned random weights."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module(name: str) -> ModuleType:
    """A script of bench/ as a module (its random official-size models are what the benchmark runs)."""
    spec = importlib.util.spec_from_file_location(f"vsrkit_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def well_conditioned(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The network in eval mode with random weights scaled by fan-in (uniform, variance 1/fan_in)
    and small biases, so activations keep their size through deep networks as trained ones do.

    tests/conftest.py's `randomised` (uniform +-0.2 whatever the fan-in) drives RRDBNet's output
    into the clamp at 0 and 1 almost everywhere, where a precision comparison measures nothing.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            noise = torch.rand(parameter.shape, generator=generator) * 2 - 1
            if parameter.dim() > 1:
                parameter.copy_(noise * math.sqrt(3 / parameter[0].numel()))
            else:
                parameter.copy_(noise * 0.1)
    return net.eval()


@torch.no_grad()
def calibrated(net: torch.nn.Module, frames: torch.Tensor) -> torch.nn.Module:
    """`net` with its last convolution rescaled so that its output on `frames` (NCHW, on the net's
    device) has mean 0.5 and spread 0.2: inside 0..1 and textured, whatever the random weights
    did to the size of the activations (23 random RRDB blocks grow them about 60-fold).

    The output is the last convolution's (through a pixel shuffle) plus, for SRVGGNetCompact, the
    upsampled input; the part that convolution adds is scaled, the rest left as it is.
    """
    last = [module for module in net.modules() if isinstance(module, torch.nn.Conv2d)][-1]
    full = net(frames)
    weight, bias = last.weight.clone(), last.bias.clone()
    last.weight.zero_()
    last.bias.zero_()
    base = net(frames)
    added = full - base
    gain = 0.2 / float(added.std())
    last.weight.copy_(weight * gain)
    last.bias.copy_(bias * gain + (0.5 - float(base.mean()) - gain * float(added.mean())))
    return net
