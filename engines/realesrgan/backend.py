"""Which code runs a Real-ESRGAN network: PyTorch, or vsrkit's native kernel for fp32 on the CPU.

PyTorch is the reference and runs every device and precision. For fp32 on the CPU the native
Winograd kernel (`native_runtime.py`) is faster and needs only a C++ compiler, found on first
use. `cpu_backend` chooses between them: "auto" takes the kernel when it can run the network
here and PyTorch otherwise, "native" insists on the kernel, "pytorch" never uses it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .native_runtime import NativeKernelError, kernel_library, native_supported

CPU_BACKENDS = ("auto", "native", "pytorch")
BACKEND_NAMES = {"native": "native kernel", "pytorch": "PyTorch"}


def choose_backend(net: nn.Module, device: torch.device, dtype: torch.dtype, cpu_backend: str = "auto") -> str:
    """"native" or "pytorch": what runs `net` on `device` in `dtype` for the `cpu_backend` asked for.

    Only fp32 on the CPU has a choice; elsewhere it is PyTorch whatever was asked. "native" that
    cannot run here is an error saying why.
    """
    if cpu_backend not in CPU_BACKENDS:
        raise InputError(f"cpu_backend must be one of {', '.join(CPU_BACKENDS)}, got {cpu_backend!r}")
    if cpu_backend == "pytorch" or device.type != "cpu" or dtype != torch.float32:
        return "pytorch"
    if not native_supported(net):
        if cpu_backend == "native":
            raise InputError(f"cpu_backend 'native' runs RRDBNet and SRVGGNetCompact with feature channels in "
                             f"multiples of 16 only, not this {type(net).__name__}; use auto or pytorch")
        return "pytorch"
    try:
        kernel_library()
    except NativeKernelError as exc:
        if cpu_backend == "native":
            raise InputError(f"cpu_backend 'native' is not available here: {exc}; use auto or pytorch") from exc
        return "pytorch"
    return "native"


def describe_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """What runs, for the CLI's model line: "native kernel on cpu, fp32"."""
    precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))
    return f"{BACKEND_NAMES[backend]} on {device}, {precision}"
