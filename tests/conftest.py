"""Shared test fixtures: paths to the real footage and reference data beside the project, and a
network randomiser for the CPU backend tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from vsrkit.engines.realesrgan.native_runtime import NativeKernelError
from vsrkit.engines.realesrgan.rrdbnet import RRDBNet
from vsrkit.engines.realesrgan.srvgg import SRVGGNetCompact

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
FOOTAGE = SHARED / "footage"
FLASHVSR_REF = SHARED / "flashvsr"


def randomised(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The network in eval mode with weights uniform in [-0.2, 0.2], far from the default
    initialisation, so every layer changes the result visibly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.rand(parameter.shape, generator=generator) * 0.4 - 0.2)
    return net.eval()


def without_native_kernel(compiler: str | None = None):
    """Stands in for `kernel_library` on a machine without a C++ compiler."""
    raise NativeKernelError("no C++ compiler found")


# Small RRDBNet and SRVGGNetCompact variants for the CPU backend tests (channels in sixteens, which
# the native kernel needs).
NETWORKS = {
    "srvgg-prelu-x4": lambda: SRVGGNetCompact(num_feat=16, num_conv=3, upscale=4, act_type="prelu"),
    "srvgg-leakyrelu-x2": lambda: SRVGGNetCompact(num_feat=32, num_conv=2, upscale=2, act_type="leakyrelu"),
    "srvgg-relu-x3": lambda: SRVGGNetCompact(num_feat=16, num_conv=2, upscale=3, act_type="relu"),
    "rrdb-x4": lambda: RRDBNet(num_feat=32, num_block=2, num_grow_ch=16, scale=4),
    "rrdb-x2": lambda: RRDBNet(num_feat=16, num_block=1, num_grow_ch=16, scale=2),
    "rrdb-x1": lambda: RRDBNet(num_feat=16, num_block=1, num_grow_ch=16, scale=1),
}


@pytest.fixture(scope="session")
def footage() -> Path:
    """The folder of real clips; tests that need it skip with a reason when it is absent.

    Session-scoped so that module-scoped fixtures (decoded clips shared by several tests) can use it."""
    if not FOOTAGE.is_dir():
        pytest.skip(f"real footage folder {FOOTAGE} is absent (it sits beside the project as ../shared/footage)")
    return FOOTAGE


@pytest.fixture
def flashvsr_ref() -> Path:
    if not FLASHVSR_REF.is_dir():
        pytest.skip(f"FlashVSR reference folder {FLASHVSR_REF} is absent (../shared/flashvsr)")
    return FLASHVSR_REF


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (use with `pytestmark = pytest.mark.usefixtures("one_thread")`).

    Small models run faster on one thread, and on a busy 2-core CI box several OpenMP threads
    spin against each other: the FlashVSR decoder on 32x32 frames took 80x longer on two.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def chunked_clip():
    """A maker of clips whose in-memory frames arrive in chunks of the given sizes (cycled), so
    tests can put chunk boundaries anywhere: `chunked_clip(frames, [3, 1, 4], fps, **info)`."""
    from vsrkit.engines.clip import Clip

    def make(frames: torch.Tensor, sizes: list[int], fps: Any = 25, **info: Any) -> Clip:
        template = Clip.from_tensor(frames, fps, **info)

        def source() -> Iterator[torch.Tensor]:
            start, turn = 0, 0
            while start < frames.shape[0]:
                size = sizes[turn % len(sizes)]
                yield frames[start:start + size]
                start += size
                turn += 1

        return Clip(template.info, source)

    return make


@pytest.fixture
def python_sigint_handler():
    """A process started in the background by a non-interactive shell (as CI may be) inherits
    SIGINT as ignored, and then Python never raises KeyboardInterrupt, nor does a Python child it
    starts: install Python's handler (a child then starts with the default disposition)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
