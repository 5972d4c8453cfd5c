"""Run RRDBNet and SRVGGNetCompact on the CPU with ncnn, where the native kernel cannot be built.

ncnn's CPU convolutions (Winograd on packed layouts, for x86 and ARM) beat both oneDNN and
NNPACK inside PyTorch on these networks (BENCHMARKS.md); only vsrkit's own kernel
(`native_runtime.py`) is faster, and it needs a C++ compiler. The ncnn graph is written from the
module's own weights, so every model the loader accepts runs this way, not only the files that
ship in ncnn format. ncnn is optional (`pip install ncnn`); without it the PyTorch path is used.

Frames of a batch run side by side, each with a share of the threads: on the 2-core test machine
two frames on one thread each took 7-29% less time per frame than ncnn's two threads on one
frame at a time (animevideov3 at 320x240 and 640x360, x4plus at 160x120; BENCHMARKS.md).
"""

from __future__ import annotations

import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .ncnn_import import PARAM_MAGIC
from .rrdbnet import RRDBNet
from .srvgg import SRVGGNetCompact

INPUT_BLOB = "data"
OUTPUT_BLOB = "output"
# ncnn's Convolution activation_type values and the error code of a failed allocation.
ACTIVATION_RELU = 1
ACTIVATION_LEAKY_RELU = 2
NCNN_OUT_OF_MEMORY = -100
# Frames run side by side at most; more threads than this are shared out within each frame.
MAX_FRAMES_IN_PARALLEL = 4
# The options that would let ncnn compute in fp16, bf16 or int8 on CPUs that have them (ARM);
# all are turned off so the results are fp32 everywhere.
_REDUCED_PRECISION_OPTIONS = ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage",
                              "use_bf16_packed", "use_int8_inference")


def ncnn_available() -> bool:
    """True when the `ncnn` package can be imported."""
    try:
        import ncnn  # noqa: F401
    except ImportError:
        return False
    return True


def ncnn_supported(net: nn.Module) -> bool:
    """Whether `export_ncnn` can write this network (RRDBNet and SRVGGNetCompact, not wrappers)."""
    return isinstance(net, (RRDBNet, SRVGGNetCompact))


class _Graph:
    """An ncnn graph under construction: layers in order, weights in the order ncnn reads them."""

    def __init__(self) -> None:
        self.layers: list[tuple[str, str, list[str], str, str]] = []
        self.weights: list[bytes] = []
        self._count = 0
        self.layers.append(("Input", "input", [], INPUT_BLOB, ""))

    def add(self, kind: str, inputs: list[str], params: str = "", output: str | None = None) -> str:
        self._count += 1
        name = f"{kind.lower()}_{self._count}"
        blob = output or name
        self.layers.append((kind, name, inputs, blob, params))
        return blob

    def conv(self, source: str, conv: nn.Conv2d, activation: int = 0, slope: float = 0.0,
             output: str | None = None) -> str:
        if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1 or not isinstance(conv.padding, tuple):
            raise ValueError(f"only stride-1, undilated, ungrouped convolutions can run on ncnn, got {conv}")
        out_ch, in_ch, kernel_h, kernel_w = conv.weight.shape
        weight = conv.weight.detach().float().contiguous().numpy().astype("<f4")
        bias = (conv.bias.detach().float().numpy() if conv.bias is not None else np.zeros(out_ch)).astype("<f4")
        params = (f"0={out_ch} 1={kernel_w} 11={kernel_h} 4={conv.padding[1]} 14={conv.padding[0]} 5=1 "
                  f"6={weight.size}")
        if activation:
            params += f" 9={activation}"
        if activation == ACTIVATION_LEAKY_RELU:
            params += f" -23310=1,{slope:.9e}"
        # A zero tag before the weights means raw fp32; the bias follows untagged.
        self.weights += [struct.pack("<I", 0), weight.tobytes(), bias.tobytes()]
        return self.add("Convolution", [source], params, output)

    def prelu(self, source: str, prelu: nn.PReLU) -> str:
        slopes = prelu.weight.detach().float().numpy().astype("<f4")
        self.weights.append(slopes.tobytes())
        return self.add("PReLU", [source], f"0={slopes.size}")

    def text(self) -> str:
        """The .param text, with a Split layer wherever a blob feeds more than one layer (ncnn needs it)."""
        uses: dict[str, int] = {}
        for _kind, _name, inputs, _blob, _params in self.layers:
            for source in inputs:
                uses[source] = uses.get(source, 0) + 1
        taken: dict[str, int] = {}
        lines: list[tuple[str, str, list[str], list[str], str]] = []
        for kind, name, inputs, blob, params in self.layers:
            renamed = []
            for source in inputs:
                if uses[source] > 1:
                    taken[source] = taken.get(source, 0) + 1
                    source = f"{source}_split_{taken[source] - 1}"
                renamed.append(source)
            lines.append((kind, name, renamed, [blob], params))
            if uses.get(blob, 0) > 1:
                lines.append(("Split", f"split_{blob}", [blob], [f"{blob}_split_{i}" for i in range(uses[blob])], ""))
        blob_count = sum(len(outputs) for *_, outputs, _params in lines)
        text = [PARAM_MAGIC, f"{len(lines)} {blob_count}"]
        for kind, name, inputs, outputs, params in lines:
            text.append(" ".join([kind, name, str(len(inputs)), str(len(outputs)), *inputs, *outputs, params]).rstrip())
        return "\n".join(text) + "\n"


def _activation_of(module: nn.Module) -> tuple[int, float] | None:
    if isinstance(module, nn.LeakyReLU):
        return ACTIVATION_LEAKY_RELU, float(module.negative_slope)
    if isinstance(module, nn.ReLU):
        return ACTIVATION_RELU, 0.0
    return None


def _srvgg_graph(net: SRVGGNetCompact) -> _Graph:
    graph = _Graph()
    layers = list(net.body)
    blob = INPUT_BLOB
    for index, layer in enumerate(layers):
        if not isinstance(layer, nn.Conv2d):
            continue
        activation = layers[index + 1] if index + 1 < len(layers) else None
        fused = _activation_of(activation) if activation is not None else None
        blob = graph.conv(blob, layer, *(fused or (0, 0.0)))
        if isinstance(activation, nn.PReLU):
            blob = graph.prelu(blob, activation)
        elif activation is not None and fused is None:
            raise ValueError(f"SRVGGNetCompact activation {activation} has no ncnn counterpart")
    shuffled = graph.add("PixelShuffle", [blob], f"0={net.upscale}")
    base = graph.add("Interp", [INPUT_BLOB], f"0=1 1={float(net.upscale):.9e} 2={float(net.upscale):.9e}")
    graph.add("BinaryOp", [shuffled, base], "0=0", output=OUTPUT_BLOB)
    return graph


def _rrdb_graph(net: RRDBNet) -> _Graph:
    """The network after its pixel-unshuffle (done in PyTorch: ncnn's Reorg orders channels differently)."""
    graph = _Graph()
    lrelu = ACTIVATION_LEAKY_RELU, float(net.lrelu.negative_slope)
    residual = "0=1 -23301=2,2.000000e-01,1.000000e+00"
    first = graph.conv(INPUT_BLOB, net.conv_first)
    blob = first
    for block in net.body:
        block_input = blob
        for rdb in (block.rdb1, block.rdb2, block.rdb3):
            features = [blob]
            for conv in (rdb.conv1, rdb.conv2, rdb.conv3, rdb.conv4):
                source = features[0] if len(features) == 1 else graph.add("Concat", list(features), "0=0")
                features.append(graph.conv(source, conv, *lrelu))
            x5 = graph.conv(graph.add("Concat", list(features), "0=0"), rdb.conv5)
            blob = graph.add("Eltwise", [x5, features[0]], residual)
        blob = graph.add("Eltwise", [blob, block_input], residual)
    body = graph.conv(blob, net.conv_body)
    blob = graph.add("BinaryOp", [first, body], "0=0")
    for conv in (net.conv_up1, net.conv_up2):
        blob = graph.conv(graph.add("Interp", [blob], "0=1 1=2.000000e+00 2=2.000000e+00"), conv, *lrelu)
    blob = graph.conv(blob, net.conv_hr, *lrelu)
    graph.conv(blob, net.conv_last, output=OUTPUT_BLOB)
    return graph


def export_ncnn(net: nn.Module) -> tuple[str, bytes]:
    """The ncnn `.param` text and `.bin` bytes of an RRDBNet or SRVGGNetCompact (fp32 weights)."""
    if not ncnn_supported(net):
        raise ValueError(f"{type(net).__name__} cannot run on ncnn; only RRDBNet and SRVGGNetCompact can")
    graph = _srvgg_graph(net) if isinstance(net, SRVGGNetCompact) else _rrdb_graph(net)
    return graph.text(), b"".join(graph.weights)


class NcnnNetwork(nn.Module):
    """An RRDBNet or SRVGGNetCompact run by ncnn: NCHW float32 CPU tensors in and out, like the module.

    The `threads` (default: PyTorch's CPU thread count) are split into `frames_in_parallel` groups,
    each running one frame. The split is fixed when the net loads: ncnn lays out its Winograd
    weights for the thread count it was loaded with. A lone frame (the last of an odd clip, a single
    image) would get one group only; SRVGGNetCompact then runs it as horizontal strips side by
    side, each with its receptive radius of context, which gives the same result, and RRDBNet,
    whose receptive field covers the frame, runs it through the PyTorch module on all threads.
    """

    def __init__(self, net: nn.Module, threads: int | None = None):
        super().__init__()
        threads = max(1, threads or torch.get_num_threads())
        self.frames_in_parallel = min(threads, MAX_FRAMES_IN_PARALLEL)
        self.threads_per_frame = threads // self.frames_in_parallel
        # Not a submodule: the PyTorch network stays the model's, this only borrows it.
        self.__dict__["module"] = net
        self._net = self._load(*export_ncnn(net))

    def _load(self, param_text: str, weights: bytes):
        import ncnn

        net = ncnn.Net()
        net.opt.use_vulkan_compute = False
        net.opt.num_threads = self.threads_per_frame
        for option in _REDUCED_PRECISION_OPTIONS:
            if hasattr(net.opt, option):
                setattr(net.opt, option, False)
        with tempfile.TemporaryDirectory(prefix="vsrkit-ncnn-") as folder:
            param, model = Path(folder) / "net.param", Path(folder) / "net.bin"
            param.write_text(param_text, encoding="utf-8")
            model.write_bytes(weights)
            if net.load_param(str(param)) != 0 or net.load_model(str(model)) != 0:
                raise RuntimeError("ncnn could not load the network written by vsrkit")
        return net

    def _frame(self, frame: torch.Tensor) -> torch.Tensor:
        """One [C, H, W] input (after any pixel-unshuffle) through ncnn."""
        import ncnn

        # ncnn.Mat wraps the array's memory without copying: `planar` must outlive the extraction.
        planar = np.ascontiguousarray(frame.numpy(), dtype=np.float32)
        extractor = self._net.create_extractor()
        extractor.input(INPUT_BLOB, ncnn.Mat(planar))
        status, out = extractor.extract(OUTPUT_BLOB)
        if status == NCNN_OUT_OF_MEMORY:
            raise MemoryError("ncnn ran out of memory")
        if status != 0:
            raise RuntimeError(f"ncnn failed with status {status}")
        return torch.from_numpy(np.array(out))

    def _side_by_side(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(inputs) == 1:
            return [self._frame(inputs[0])]
        workers = min(len(inputs), self.frames_in_parallel)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vsrkit-ncnn") as pool:
            return list(pool.map(self._frame, inputs))

    def _in_strips(self, frame: torch.Tensor) -> torch.Tensor:
        context, scale = self.module.receptive_radius, self.module.upscale
        height = frame.shape[1]
        count = min(self.frames_in_parallel, max(1, height // (2 * context)))
        edges = [round(index * height / count) for index in range(count + 1)]
        spans = [(max(0, top - context), min(height, bottom + context), top, bottom)
                 for top, bottom in zip(edges[:-1], edges[1:], strict=True)]
        results = self._side_by_side([frame[:, start:stop] for start, stop, _, _ in spans])
        return torch.cat([result[:, (top - start) * scale:(bottom - start) * scale]
                          for result, (start, _, top, bottom) in zip(results, spans, strict=True)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise ValueError("the ncnn network runs on the CPU only")
        x = x.float()
        if x.shape[0] == 1 and self.frames_in_parallel > 1:
            if isinstance(self.module, SRVGGNetCompact):
                return self._in_strips(x[0])[None]
            return self.module(x)
        if isinstance(self.module, RRDBNet) and self.module.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.module.unshuffle)
        return torch.stack(self._side_by_side(list(x.contiguous())))
