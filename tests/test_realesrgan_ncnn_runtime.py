"""The ncnn CPU path: the graph vsrkit writes, its results against the PyTorch modules, frames run
side by side, the automatic choice of CPU backend and out-of-memory handling."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from tests.conftest import NETWORKS, randomised, without_native_kernel
from vsrkit.engines.errors import InputError
from vsrkit.engines.realesrgan import models as models_module
from vsrkit.engines.realesrgan.inference import Upscaler
from vsrkit.engines.realesrgan.models import RealESRGANModel
from vsrkit.engines.realesrgan.ncnn_import import import_ncnn, parse_param
from vsrkit.engines.realesrgan.ncnn_runtime import NcnnNetwork, export_ncnn, ncnn_available, ncnn_supported
from vsrkit.engines.realesrgan.srvgg import SRVGGNetCompact

needs_ncnn = pytest.mark.skipif(not ncnn_available(), reason="the ncnn package is not installed (it is in the test extra)")




def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", ["srvgg-prelu-x4", "rrdb-x4", "rrdb-x2"])
def test_exported_graph_reads_back_as_the_same_state_dict(tmp_path, name):
    net = randomised(NETWORKS[name]())
    param, weights = export_ncnn(net)
    (tmp_path / "net.param").write_text(param, encoding="utf-8")
    (tmp_path / "net.bin").write_bytes(weights)
    imported = import_ncnn(tmp_path / "net.param", tmp_path / "net.bin")
    state = net.state_dict()
    assert imported.arch == type(net).__name__
    assert set(imported.state_dict) == set(state)
    for key, value in state.items():
        assert torch.equal(imported.state_dict[key], value), key


@pytest.mark.parametrize("name", ["srvgg-prelu-x4", "rrdb-x4"])
def test_every_blob_feeds_exactly_one_layer(tmp_path, name):
    """ncnn needs a Split wherever a result is used twice; the header counts must match the body."""
    param, _ = export_ncnn(randomised(NETWORKS[name]()))
    (tmp_path / "net.param").write_text(param, encoding="utf-8")
    layers = parse_param(tmp_path / "net.param")
    produced = [blob for layer in layers for blob in layer.outputs]
    consumed = [blob for layer in layers for blob in layer.inputs]
    assert len(produced) == len(set(produced)) == int(param.splitlines()[1].split()[1])
    assert sorted(consumed) == sorted(set(consumed))
    assert set(produced) - set(consumed) == {"output"}
    assert any(layer.type == "Split" for layer in layers)


def test_only_real_esrgan_networks_are_exported():
    wrapper = nn.Sequential(SRVGGNetCompact(num_feat=8, num_conv=1))
    assert not ncnn_supported(wrapper)
    with pytest.raises(ValueError, match="Sequential"):
        export_ncnn(wrapper)
    strided = SRVGGNetCompact(num_feat=8, num_conv=1)
    strided.body[0] = nn.Conv2d(3, 8, 3, 2, 1)
    with pytest.raises(ValueError, match="stride-1"):
        export_ncnn(strided)


@needs_ncnn
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_ncnn_gives_the_modules_result(name):
    """Batches side by side, on one thread, and lone frames (in strips, or through the module)."""
    net = randomised(NETWORKS[name]())
    size_multiple = getattr(net, "size_multiple", 1)
    x = torch.rand(3, 3, 12 * size_multiple + (0 if size_multiple > 1 else 3), 14 * size_multiple)
    with torch.no_grad():
        expected = net(x)
        for threads in (1, 2):
            runner = NcnnNetwork(net, threads=threads)
            got = runner(x)
            assert got.shape == expected.shape
            assert _relative_error(got, expected) < 1e-5, threads
            single = runner(x[1:2])
            assert single.shape == expected[1:2].shape
            assert _relative_error(single[0], expected[1]) < 1e-5, threads


@needs_ncnn
def test_threads_are_split_into_frames_side_by_side():
    net = randomised(NETWORKS["srvgg-prelu-x4"]())
    for threads, parallel, per_frame in ((1, 1, 1), (2, 2, 1), (3, 3, 1), (4, 4, 1), (16, 4, 4)):
        runner = NcnnNetwork(net, threads=threads)
        assert (runner.frames_in_parallel, runner.threads_per_frame) == (parallel, per_frame)
        assert runner._net.opt.num_threads == per_frame


class _RecordingNcnn(NcnnNetwork):
    """Records the input height of every ncnn run; with `meet=n`, runs only once n of them are under
    way at the same time (a barrier that breaks after 10 s if they come one after the other)."""

    def __init__(self, net: nn.Module, threads: int, meet: int = 0):
        super().__init__(net, threads)
        self.heights: list[int] = []
        self._record = threading.Lock()
        self.barrier = threading.Barrier(meet, timeout=10) if meet else None

    def _frame(self, frame):
        with self._record:
            self.heights.append(frame.shape[1])
        if self.barrier is not None:
            self.barrier.wait()
        return super()._frame(frame)


@needs_ncnn
def test_frames_of_a_batch_and_strips_of_a_lone_frame_run_side_by_side():
    net = randomised(NETWORKS["srvgg-prelu-x4"]())
    runner = _RecordingNcnn(net, threads=2, meet=2)
    runner(torch.rand(2, 3, 40, 40))
    assert runner.heights == [40, 40]
    runner.heights.clear()
    lone = torch.rand(1, 3, 61, 33)
    with torch.no_grad():
        out = runner(lone)
        assert _relative_error(out, net(lone)) < 1e-5
    context = net.receptive_radius
    assert sorted(runner.heights) == [30 + context, 31 + context]


@needs_ncnn
def test_a_lone_rrdb_frame_runs_through_the_module_on_all_threads():
    net = randomised(NETWORKS["rrdb-x4"]())
    runner = _RecordingNcnn(net, threads=2)
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(runner(x), net(x))
    assert runner.heights == []
    assert dict(runner.named_parameters()) == {}


def test_backend_choice_without_ncnn_and_for_other_networks(monkeypatch):
    srvgg = RealESRGANModel(randomised(NETWORKS["srvgg-prelu-x4"]()), "SRVGGNetCompact", 4, "small")
    with pytest.raises(InputError, match="cpu_backend must be one of"):
        srvgg.runner(torch.device("cpu"), torch.float32, "onnx")
    wrapped = RealESRGANModel(nn.Sequential(SRVGGNetCompact(num_feat=8, num_conv=1)), "SRVGGNetCompact", 4, "wrapped")
    assert wrapped.runner(torch.device("cpu"), torch.float32, "auto") != "ncnn"
    with pytest.raises(InputError, match="Sequential"):
        wrapped.runner(torch.device("cpu"), torch.float32, "ncnn")
    monkeypatch.setattr(models_module, "ncnn_available", lambda: False)
    monkeypatch.setattr(models_module, "kernel_library", without_native_kernel)
    assert srvgg.runner(torch.device("cpu"), torch.float32, "auto") in ("tuned", "module")
    with pytest.raises(InputError, match="pip install ncnn"):
        srvgg.runner(torch.device("cpu"), torch.float32, "ncnn")


class _SmallMemoryNcnn(NcnnNetwork):
    """Fails like ncnn's allocator above a given number of pixels per call."""

    def __init__(self, net: nn.Module, max_pixels: int):
        super().__init__(net, threads=2)
        self.max_pixels = max_pixels
        self.sizes: list[tuple[int, int, int]] = []

    def forward(self, x):
        self.sizes.append((x.shape[0], x.shape[2], x.shape[3]))
        if x.shape[0] * x.shape[2] * x.shape[3] > self.max_pixels:
            raise MemoryError("ncnn ran out of memory")
        return super().forward(x)


@needs_ncnn
def test_out_of_memory_in_ncnn_shrinks_the_batch_then_the_tile(monkeypatch):
    net = randomised(NETWORKS["srvgg-prelu-x4"]())
    model = RealESRGANModel(net, "SRVGGNetCompact", 4, "limited")
    limited = _SmallMemoryNcnn(net, max_pixels=1500)
    monkeypatch.setattr(model, "prepared", lambda *args: limited)
    frames = torch.rand(2, 48, 44, 3)
    upscaler = Upscaler(model, device="cpu")
    out = upscaler.upscale(frames)
    assert upscaler.plan.batch == 1 and 0 < upscaler.plan.tile < 48
    assert max(b * h * w for b, h, w in limited.sizes[-4:]) <= 1500
    whole = Upscaler(model, device="cpu", cpu_backend="pytorch-default", tile=-1).upscale(frames)
    assert float((out - whole).abs().max()) * 255 <= 1.0001


@needs_ncnn
def test_a_failed_ncnn_allocation_is_an_out_of_memory_error():
    runner = NcnnNetwork(randomised(NETWORKS["srvgg-prelu-x4"]()), threads=1)

    class _Extractor:
        def input(self, name, mat):
            return 0

        def extract(self, name):
            return -100, None

    class _Net:
        def create_extractor(self):
            return _Extractor()

    runner._net = _Net()
    with pytest.raises(MemoryError, match="ncnn"):
        runner(torch.rand(1, 3, 8, 8))
