"""The one device and precision choice (engines/device.py) and how the engines, nodes and CLI use it."""

from __future__ import annotations

import pytest
import torch

from vsrkit.engines import device
from vsrkit.engines.errors import InputError
from vsrkit.engines.flashvsr.loader import PREFERRED_DTYPE
from vsrkit.engines.realesrgan.inference import network_precision
from vsrkit.nodes import host

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_auto_device_is_the_hosts_choice_or_cuda_when_present():
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert device.default_device() == expected
    assert device.resolve_device(None) == device.resolve_device("auto") == expected
    assert device.resolve_device("auto", torch.device("cpu")) == CPU
    assert device.resolve_device("cpu", CUDA) == CPU
    assert device.resolve_device(torch.device("cpu")) == CPU
    # Standalone, a node's "auto" is the same default.
    assert host.node_device("auto") == expected and host.node_device("cpu") == CPU
    choices = device.device_choices()
    assert choices[:2] == ["auto", "cpu"] and len(choices) == 2 + torch.cuda.device_count()


def test_bad_devices_are_refused_by_name():
    with pytest.raises(InputError, match="device must be auto, cpu or a torch device.*'gpu0'"):
        device.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="cuda:1 was asked for, but this PyTorch has no CUDA device"):
            device.resolve_device("cuda:1")


def test_precision_names_and_auto():
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        assert device.resolve_precision(name, CPU) == dtype and device.resolve_precision(dtype, CUDA) == dtype
        assert device.precision_name(dtype) == name
    # auto: fp32 off CUDA, the model's preferred half precision on CUDA.
    assert device.resolve_precision("auto", CPU, torch.bfloat16) == torch.float32
    assert device.resolve_precision("auto", torch.device("mps"), torch.float16) == torch.float32
    assert device.resolve_precision("auto", CUDA, torch.float16) == torch.float16
    with pytest.raises(InputError, match="precision must be one of auto, fp32, fp16, bf16, got 'int8'"):
        device.resolve_precision("int8", CPU)
    with pytest.raises(InputError, match="precision"):
        device.resolve_precision(torch.int8, CPU)


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_bf16_falls_back_to_fp16_on_gpus_without_it(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert device.resolve_precision("auto", CUDA, torch.bfloat16) == (torch.bfloat16 if bf16 else torch.float16)


def test_each_engine_takes_its_preferred_precision_from_the_one_choice():
    assert PREFERRED_DTYPE == torch.bfloat16
    assert network_precision("auto", CPU) == torch.float32
    assert network_precision("auto", CUDA) == torch.float16
    assert network_precision("bf16", CPU) == torch.bfloat16
    with pytest.raises(InputError, match="fp16 is not supported on the CPU"):
        network_precision("fp16", CPU)
