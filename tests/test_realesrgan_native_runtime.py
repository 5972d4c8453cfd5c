"""vsrkit's native Winograd CPU kernel: single convolutions against PyTorch's, whole networks against
their modules, the compile cache, and how the CPU backend is chosen with and without it."""

from __future__ import annotations

import shutil
import stat
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import NETWORKS, randomised, without_native_kernel
from vsrkit.engines.errors import InputError
from vsrkit.engines.paths import TEMP_MARK
from vsrkit.engines.realesrgan import backend as backend_module
from vsrkit.engines.realesrgan import native_runtime
from vsrkit.engines.realesrgan.backend import choose_backend
from vsrkit.engines.realesrgan.inference import Upscaler
from vsrkit.engines.realesrgan.loading import RealESRGANModel
from vsrkit.engines.realesrgan.native_runtime import (
    NativeKernelError,
    NativeNetwork,
    kernel_library,
    native_available,
    native_supported,
)
from vsrkit.engines.realesrgan.rrdbnet import RRDBNet
from vsrkit.engines.realesrgan.srvgg import SRVGGNetCompact

needs_kernel = pytest.mark.skipif(not native_available(), reason="no C++ compiler here to build the native kernel")


def _close(got: torch.Tensor, expected: torch.Tensor, tolerance: float = 2e-5) -> bool:
    """Equal up to fp32 Winograd rounding, relative to the result's magnitude."""
    return got.shape == expected.shape and float((got - expected).abs().max()) <= tolerance * max(
        1.0, float(expected.abs().max()))


def _convolve(conv: nn.Conv2d, activation: nn.Module | None, x: torch.Tensor, threads: int,
              residual: torch.Tensor | None = None, residual_scale: float = 1.0,
              source_channel: int = 0, target_channel: int = 0, extra_channels: int = 0):
    """One convolution through the kernel, reading and writing channel slices of wider buffers."""
    net = NativeNetwork(SRVGGNetCompact(num_feat=16, num_conv=0), threads=threads)
    layer = native_runtime._Conv.of(conv, activation)
    height, width = x.shape[1:]
    source = native_runtime._Image(height, width, source_channel + layer.cin + extra_channels)
    source.interior()[...] = 0
    source.interior(slice(source_channel, source_channel + x.shape[0]))[...] = x.permute(1, 2, 0).numpy()
    target = native_runtime._Image(height, width, target_channel + layer.cout + extra_channels)
    target.interior()[...] = 7.0
    extra = None
    if residual is not None:
        extra = native_runtime._Image(height, width, layer.cout).fill(residual)
    floats = net._library.vsrkit_winograd_scratch(native_runtime.CHUNK_TILES, layer.cin, layer.cout)
    scratch = [np.empty(floats, dtype=np.float32) for _ in range(threads)]
    with ThreadPoolExecutor(max_workers=max(1, threads - 1)) as pool:
        net._conv(pool if threads > 1 else None, scratch, layer, source, target, source_channel=source_channel,
                  target_channel=target_channel, residual=extra, residual_scale=residual_scale)
    return target, layer


@needs_kernel
@pytest.mark.parametrize("height, width", [(1, 1), (5, 7), (13, 22), (31, 9)])
@pytest.mark.parametrize("in_ch, out_ch", [(3, 16), (24, 32), (64, 64), (96, 12)])
def test_one_convolution_matches_pytorch_and_keeps_the_padding_zero(height, width, in_ch, out_ch):
    torch.manual_seed(height * 100 + in_ch)
    conv = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
    prelu = nn.PReLU(out_ch)
    with torch.no_grad():
        prelu.weight.uniform_(-0.5, 0.5)
    x = torch.randn(in_ch, height, width)
    for threads in (1, 3):
        target, layer = _convolve(conv, prelu, x, threads)
        with torch.no_grad():
            expected = prelu(conv(x[None]))[0]
        got = torch.from_numpy(target.interior(slice(0, out_ch)).copy()).permute(2, 0, 1)
        assert _close(got, expected), (threads, float((got - expected).abs().max()))
        padding = target.data.copy()
        padding[1:height + 1, 1:width + 1] = 0
        assert not padding.any(), "the kernel wrote outside the image: the next layer's zero padding is gone"
        # Sub-pixels of the padded output channels carry zero weights and bias.
        assert not target.interior(slice(out_ch, layer.cout)).any()


@needs_kernel
@pytest.mark.parametrize("activation", [None, nn.ReLU(), nn.LeakyReLU(0.2)])
def test_channel_slices_residual_and_activations(activation):
    torch.manual_seed(1)
    conv = nn.Conv2d(24, 32, 3, 1, 1)
    x, residual = torch.randn(24, 11, 14), torch.randn(32, 11, 14)
    target, _ = _convolve(conv, activation, x, 2, residual=residual, residual_scale=0.2, source_channel=8,
                          target_channel=16, extra_channels=16)
    with torch.no_grad():
        value = conv(x[None])[0]
        expected = 0.2 * (activation(value) if activation is not None else value) + residual
    got = torch.from_numpy(target.interior(slice(16, 48)).copy()).permute(2, 0, 1)
    assert _close(got, expected)
    # The channels around the written slice are untouched.
    assert (target.interior(slice(0, 16)) == 7.0).all() and (target.interior(slice(48, 64)) == 7.0).all()




@needs_kernel
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_networks_match_their_modules(name):
    net = randomised(NETWORKS[name]())
    x = torch.rand(2, 3, 20, 28)
    with torch.no_grad():
        expected = net(x)
    for threads in (1, 2, 3):
        runner = NativeNetwork(net, threads=threads)
        assert _close(runner(x), expected), (name, threads)
        assert _close(runner(x[1:]), expected[1:]), (name, threads, "lone frame")
    assert dict(runner.named_parameters()) == {}, "the runner must not register the module's weights twice"


@needs_kernel
def test_a_runner_keeps_its_buffers_for_calls_of_every_size():
    """Buffers are made by the first (largest) call and reused by smaller ones: the memory a runner holds
    does not grow with the number or the sizes of its calls, and results do not depend on what ran before."""
    net = randomised(NETWORKS["rrdb-x2"]())
    runner = NativeNetwork(net, threads=2)
    held = None
    for height, width in [(20, 28), (12, 10), (20, 28), (8, 30), (2, 2)]:
        x = torch.rand(1, 3, height, width)
        with torch.no_grad():
            assert _close(runner(x), net(x)), (height, width)
        storage = {role: array.ctypes.data for role, array in runner._space._storage.items()}
        held = held or storage
        assert storage == held, (height, width)


def test_supported_networks():
    assert native_supported(SRVGGNetCompact(num_feat=64, num_conv=1))
    assert native_supported(RRDBNet(num_feat=64, num_block=1, num_grow_ch=32))
    assert not native_supported(SRVGGNetCompact(num_feat=8, num_conv=1))
    assert not native_supported(RRDBNet(num_feat=16, num_block=1, num_grow_ch=8))
    assert not native_supported(nn.Sequential(SRVGGNetCompact(num_feat=16, num_conv=1)))
    if native_available():
        with pytest.raises(ValueError, match="multiples of 16"):
            NativeNetwork(SRVGGNetCompact(num_feat=8, num_conv=1))


@needs_kernel
def test_the_compiled_kernel_is_cached_and_nothing_partial_is_left(tmp_path):
    compiler = native_runtime._compilers()[0]
    first = native_runtime._compile(compiler, tmp_path)
    built = first.stat().st_mtime_ns
    again = native_runtime._compile(compiler, tmp_path)
    assert again == first and again.stat().st_mtime_ns == built
    assert [path.name for path in tmp_path.iterdir()] == [first.name]
    assert not first.name.startswith(TEMP_MARK)


@needs_kernel
def test_a_compiler_command_with_arguments_and_an_unwritable_cache(tmp_path, monkeypatch):
    compiler = native_runtime._compilers()[0]
    assert native_runtime._compile(f"env {compiler}", tmp_path / "kernels").is_file()
    blocker = tmp_path / "a-file"
    blocker.touch()
    monkeypatch.setenv("VSRKIT_HOME", str(blocker))
    monkeypatch.setattr(native_runtime, "_libraries", {})
    with pytest.raises(NativeKernelError, match="cannot write the kernel cache folder .*set VSRKIT_HOME") as caught:
        kernel_library(compiler)
    assert "could not compile" not in str(caught.value)


@pytest.mark.skipif(sys.platform == "win32", reason="the stand-in compiler is a shell script")
def test_a_failing_compiler_leaves_no_file_and_names_itself(tmp_path):
    fake = tmp_path / "broken-c++"
    # Writes part of an output, then fails, like a compiler killed half way.
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "broken 1.0" && exit 0\n'
                    'for last; do :; done\necho partial > "$last"\necho "no space left" >&2\nexit 1\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    folder = tmp_path / "kernels"
    with pytest.raises(NativeKernelError, match="broken-c\\+\\+.*no space left"):
        native_runtime._compile(str(fake), folder)
    assert list(folder.iterdir()) == []
    with pytest.raises(NativeKernelError, match="cannot be run"):
        kernel_library(str(tmp_path / "no-such-compiler"))


def test_backend_choice_with_and_without_the_kernel(monkeypatch):
    net = randomised(NETWORKS["srvgg-prelu-x4"]())
    cpu = torch.device("cpu")
    with pytest.raises(InputError, match="cpu_backend must be one of auto, native, pytorch"):
        choose_backend(net, cpu, torch.float32, "onnx")
    if native_available():
        assert choose_backend(net, cpu, torch.float32, "auto") == "native"
        assert choose_backend(net, cpu, torch.float32, "native") == "native"
    assert choose_backend(net, cpu, torch.float32, "pytorch") == "pytorch"
    assert choose_backend(net, cpu, torch.bfloat16, "native") == "pytorch"

    monkeypatch.setattr(backend_module, "kernel_library", without_native_kernel)
    assert choose_backend(net, cpu, torch.float32, "auto") == "pytorch"
    with pytest.raises(InputError, match="'native' is not available here: no C\\+\\+ compiler"):
        choose_backend(net, cpu, torch.float32, "native")
    narrow = randomised(SRVGGNetCompact(num_feat=8, num_conv=1))
    with pytest.raises(InputError, match="multiples of 16"):
        choose_backend(narrow, cpu, torch.float32, "native")
    wrapped = nn.Sequential(SRVGGNetCompact(num_feat=16, num_conv=1))
    assert choose_backend(wrapped, cpu, torch.float32, "auto") == "pytorch"
    with pytest.raises(InputError, match="Sequential"):
        choose_backend(wrapped, cpu, torch.float32, "native")


@pytest.mark.parametrize("backend", ["native", "pytorch"])
def test_auto_backend_and_its_batch_on_the_cpu(monkeypatch, backend):
    """auto is the native kernel where it builds, else PyTorch; either takes one frame at a time."""
    if backend == "native" and not native_available():
        pytest.skip("no C++ compiler here to build the native kernel")
    if backend == "pytorch":
        monkeypatch.setattr(backend_module, "kernel_library", without_native_kernel)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    model = RealESRGANModel(randomised(NETWORKS["srvgg-prelu-x4"]()), "SRVGGNetCompact", 4, "small")
    upscaler = Upscaler(model, device="cpu")
    assert upscaler.backend == backend
    assert isinstance(upscaler.net, NativeNetwork) == (backend == "native")
    frames = torch.rand(5, 21, 17, 3)
    out = upscaler.upscale(frames)
    assert upscaler.plan.batch == 1
    reference = Upscaler(model, device="cpu", cpu_backend="pytorch").upscale(frames)
    assert out.shape == reference.shape == (5, 84, 68, 3)
    assert float((out - reference).abs().max()) * 255 <= 1.0001
    assert Upscaler(model, device="cpu", precision="bf16").backend == "pytorch"


@pytest.mark.parametrize("compiler", ["g++", "clang++"])
def test_the_kernel_from_each_compiler_matches_the_module(compiler):
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed here")
    net = randomised(NETWORKS["rrdb-x2"]())
    x = torch.rand(1, 3, 12, 20)
    with torch.no_grad():
        expected = net(x)
    assert _close(NativeNetwork(net, threads=2, compiler=compiler)(x), expected)
