"""The tuned CPU path of SRVGGNetCompact gives the plain network's results, and the memory policy works."""

from __future__ import annotations

import platform
import resource

import pytest
import torch
from torch import nn

from vsrkit.engines import cpu_memory
from vsrkit.engines.realesrgan import cpu_kernels
from vsrkit.engines.realesrgan.cpu_kernels import ChannelPReLU, TunedConv2d, tuned_network
from vsrkit.engines.realesrgan.inference import Upscaler
from vsrkit.engines.realesrgan.models import RealESRGANModel
from vsrkit.engines.realesrgan.srvgg import SRVGGNetCompact


@pytest.fixture(autouse=True)
def fresh_tuning(monkeypatch):
    """Each test measures afresh: a choice cached by an earlier test would skip the tuning under test."""
    monkeypatch.setattr(cpu_kernels, "_choices", {})


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("shape", [(1, 3, 64, 3, 40, 52), (1, 64, 64, 3, 33, 47), (2, 64, 48, 3, 24, 30),
                                   (1, 8, 8, 1, 20, 20)])
def test_every_conv_candidate_matches_conv2d(shape):
    batch, cin, cout, kernel, height, width = shape
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, 1, kernel // 2)
    x = torch.rand(batch, cin, height, width)
    reference = conv(x)
    tuned = TunedConv2d(conv)
    options = tuned.candidates()
    assert "onednn" in options
    assert ("nnpack" in options) == cpu_kernels.nnpack_available()
    with torch.no_grad():
        for name, run in options.items():
            out = run(x.contiguous())
            assert out.is_contiguous() and out.shape == reference.shape, name
            assert _relative_error(out, reference) < 1e-5, name
        assert _relative_error(tuned(x), reference) < 1e-5
    if len(options) > 1:
        assert cpu_kernels.tuned_algorithms()[tuned.shape_key(x)] in options


class _WithBrokenFastCandidate(TunedConv2d):
    def candidates(self):
        options = super().candidates()
        options["broken"] = lambda x: torch.zeros(x.shape[0], self.weight.shape[0], *x.shape[2:])
        return options


class _FailingAfterTuning(TunedConv2d):
    def candidates(self):
        options = super().candidates()
        options["flaky"] = self._flaky
        return options

    def _flaky(self, x):
        if getattr(self, "tuned", False):
            raise RuntimeError("NNPACK SpatialConvolution_updateOutput failed")
        return torch.zeros(0)


def test_a_chosen_algorithm_that_fails_later_falls_back_to_onednn():
    torch.manual_seed(4)
    conv = nn.Conv2d(8, 8, 3, 1, 1)
    layer = _FailingAfterTuning(conv)
    x = torch.rand(1, 8, 32, 32)
    key = layer.shape_key(x)
    with torch.no_grad():
        layer(x)
        cpu_kernels._choices[key] = "flaky"
        layer.tuned = True
        assert _relative_error(layer(x), conv(x)) < 1e-5
    assert cpu_kernels.tuned_algorithms()[key] == "onednn"


def test_nearly_equal_sizes_share_one_measurement():
    layer = TunedConv2d(nn.Conv2d(8, 8, 3, 1, 1))
    same = [torch.rand(1, 8, 64, 64), torch.rand(1, 8, 62, 66), torch.rand(1, 8, 70, 60)]
    assert len({layer.shape_key(x) for x in same}) == 1
    assert layer.shape_key(torch.rand(1, 8, 128, 128)) != layer.shape_key(same[0])
    assert layer.shape_key(torch.rand(2, 8, 64, 64)) != layer.shape_key(same[0])
    assert TunedConv2d(nn.Conv2d(8, 16, 3, 1, 1)).shape_key(same[0]) != layer.shape_key(same[0])


def test_tuning_never_picks_a_candidate_that_disagrees():
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 16, 3, 1, 1)
    tuned = _WithBrokenFastCandidate(conv)
    x = torch.rand(1, 16, 64, 64)
    with torch.no_grad():
        out = tuned(x)
        assert _relative_error(out, conv(x)) < 1e-5
        assert cpu_kernels.tuned_algorithms()[tuned.shape_key(x)] != "broken"
        assert _relative_error(tuned(x), conv(x)) < 1e-5


@pytest.mark.parametrize("height,width,batch", [(160, 120, 1), (150, 130, 2), (9, 7, 1)])
def test_channel_prelu_equals_prelu_exactly(height, width, batch):
    torch.manual_seed(2)
    prelu = nn.PReLU(num_parameters=6)
    with torch.no_grad():
        prelu.weight.copy_(torch.tensor([0.25, -0.5, 1.5, 0.0, 1.0, 0.01]))
        x = torch.randn(batch, 6, height, width)
        x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, -1e-30])
        expected = prelu(x.clone())
        got = ChannelPReLU(prelu)(x.clone())
    assert torch.equal(got, expected)


def _small_srvgg(upscale: int = 2, act: str = "prelu") -> SRVGGNetCompact:
    torch.manual_seed(3)
    net = SRVGGNetCompact(num_feat=16, num_conv=4, upscale=upscale, act_type=act)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.uniform_(-0.3, 0.3)
    return net.eval()


@pytest.mark.parametrize("act", ["prelu", "leakyrelu", "relu"])
def test_tuned_network_shares_weights_and_gives_the_same_output(act):
    net = _small_srvgg(act=act)
    tuned = tuned_network(net)
    assert {p.data_ptr() for p in tuned.parameters()} == {p.data_ptr() for p in net.parameters()}
    assert any(isinstance(m, TunedConv2d) for m in tuned.modules())
    assert not any(isinstance(m, nn.Conv2d) for m in tuned.modules())
    if act == "prelu":
        assert any(isinstance(m, ChannelPReLU) for m in tuned.modules())
    assert all(isinstance(m, nn.Conv2d) for m in net.body[::2])
    x = torch.rand(1, 3, 150, 130)
    with torch.no_grad():
        assert _relative_error(tuned(x), net(x)) < 1e-5


def test_without_nnpack_the_plain_channels_last_network_is_used(monkeypatch):
    monkeypatch.setattr("vsrkit.engines.realesrgan.models.nnpack_available", lambda: False)
    model = RealESRGANModel(_small_srvgg(), "SRVGGNetCompact", 2, "small")
    upscaler = Upscaler(model, device="cpu", cpu_backend="pytorch")
    assert upscaler.runner == "module"
    assert upscaler.net is model.net
    assert not any(isinstance(m, TunedConv2d) for m in upscaler.net.modules())


@pytest.mark.skipif(not cpu_kernels.nnpack_available(), reason="this PyTorch build has no NNPACK")
def test_upscaler_tuned_and_default_pytorch_agree_within_one_level():
    net = _small_srvgg(upscale=4)
    frames = torch.rand(2, 37, 53, 3)
    outputs = []
    for backend, runner in (("pytorch", "tuned"), ("pytorch-default", "module")):
        model = RealESRGANModel(net, "SRVGGNetCompact", 4, "small")
        upscaler = Upscaler(model, device="cpu", cpu_backend=backend)
        assert upscaler.runner == runner
        assert any(isinstance(m, TunedConv2d) for m in upscaler.net.modules()) == (runner == "tuned")
        outputs.append(upscaler.upscale(frames))
    assert outputs[0].shape == (2, 37 * 4, 53 * 4, 3)
    assert float((outputs[0] - outputs[1]).abs().max()) * 255 <= 1.0001


def _faults_for_fresh_tensor(megabytes: int = 96) -> int:
    """Minor page faults taken to allocate and fill a tensor of that size."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensor = torch.empty(megabytes * 2**20 // 4)
    tensor.fill_(1.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del tensor
    return faults


glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the malloc policy is changed only with glibc on Linux")


@glibc_only
def test_keep_freed_memory_reuses_large_blocks_and_restores_on_exit(monkeypatch):
    for name in ("VSRKIT_KEEP_FREED_MEMORY", *cpu_memory.USER_MALLOC_SETTINGS):
        monkeypatch.delenv(name, raising=False)
    pages = 96 * 2**20 // 4096
    _faults_for_fresh_tensor()
    assert _faults_for_fresh_tensor() > pages // 2, "outside, each large tensor is fresh memory"
    with cpu_memory.keep_freed_memory() as applied:
        assert applied
        # The heap settles after two or three blocks (small objects pin the first ones), so the
        # best of several allocations counts.
        assert min(_faults_for_fresh_tensor() for _ in range(5)) < pages // 10, "inside, a freed block is reused"
        with cpu_memory.keep_freed_memory():
            _faults_for_fresh_tensor()
        assert min(_faults_for_fresh_tensor() for _ in range(3)) < pages // 10, "leaving a nested use keeps the policy"
    _faults_for_fresh_tensor()
    assert _faults_for_fresh_tensor() > pages // 2, "after the last use the default policy is back"


@pytest.mark.parametrize("name,value", [("VSRKIT_KEEP_FREED_MEMORY", "0"), ("MALLOC_MMAP_THRESHOLD_", "65536"),
                                        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")])
def test_keep_freed_memory_is_off_when_disabled_or_malloc_is_tuned_by_the_user(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with cpu_memory.keep_freed_memory() as applied:
        assert applied is False
