"""Run RRDBNet and SRVGGNetCompact on the CPU with vsrkit's own Winograd kernel (`winograd_cpu.cpp`).

Why a kernel of our own: of the libraries tried on these networks (oneDNN and NNPACK inside
PyTorch, ncnn, OpenVINO, MNN), the fastest, ncnn, was still well short of what the CPU can do.
`winograd_cpu.cpp` transforms, multiplies and transforms back one chunk of a tile row at a time
while it is in the core's cache, and applies bias, activation and residual on the way out; one
64->64 layer took 2.2-2.7x less time than ncnn's on one thread, whole networks 1.3-1.7x
(BENCHMARKS.md, run K).

The kernel is compiled on first use by the machine's C++ compiler ($CXX, else c++, g++ or clang++)
for the CPU it runs on, and kept under `<vsrkit home>/kernels/`. Without a compiler the `auto`
backend uses PyTorch instead. Results are fp32 Winograd F(4x4, 3x3): within about 1e-5
of the direct convolution per layer, far below one 8-bit level at the network's output.

Each frame uses all threads: the tile rows of every convolution are shared out between them.
Activations stay NHWC in zero-padded buffers, so RRDBNet's dense concatenations are channel
slices of one buffer and cost no copies. A `NativeNetwork` keeps its buffers from call to call
(a fresh large buffer is fresh memory the system must fault in page by page); make one per
stream, and the buffers go with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..paths import discard, partial_path, publish, user_data_dir
from .rrdbnet import RRDBNet
from .srvgg import SRVGGNetCompact

log = logging.getLogger(__name__)

KERNEL_SOURCE = Path(__file__).with_name("winograd_cpu.cpp")
# Tiles per chunk (a multiple of 6, the kernel's block): 6 to 36 measured within noise of each other.
CHUNK_TILES = 18
# The kernel's channel granularity: input channels in eights, output channels in sixteens.
CIN_MULTIPLE = 8
COUT_MULTIPLE = 16
# Winograd F(4x4, 3x3) kernel transform G (Lavin and Gray, 2016); the kernel holds B^T and A^T.
WINOGRAD_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
              (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_BASE_FLAGS = ("-O3", "-ffp-contract=fast", "-std=c++11", "-shared", "-fPIC")
# Tried in turn: GCC and x86 Clang take -march=native, ARM Clang -mcpu=native; the last is portable.
_TARGET_FLAGS = (("-march=native",), ("-mcpu=native",), ())


class NativeKernelError(RuntimeError):
    """The kernel could not be compiled or loaded here (no compiler, or it failed)."""


_libraries: dict[str | None, ctypes.CDLL | NativeKernelError] = {}
_libraries_lock = threading.Lock()


def _compilers() -> list[str]:
    """Compiler commands to try: $CXX (which may carry arguments, "ccache g++"), else those on PATH."""
    chosen = os.environ.get("CXX")
    if chosen:
        return [chosen]
    return [name for name in ("c++", "g++", "clang++") if shutil.which(name)]


def _cpu_signature() -> str:
    """What the CPU can do, so a kernel built for another CPU (a shared home folder) is not reused."""
    signature = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part"):
                    signature.append(line.strip())
                if not line.strip() and len(signature) > 2:
                    break
    except OSError:
        pass
    return "\n".join(signature)


class _CacheFolderError(NativeKernelError):
    """The kernel cache folder cannot be written: no compiler can help."""


def _ensure_writable(folder: Path) -> None:
    probe = partial_path(folder / "probe")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.touch()
    except OSError as exc:
        raise _CacheFolderError(f"cannot write the kernel cache folder {folder}: {exc}; set VSRKIT_HOME to a "
                                "writable folder") from exc
    finally:
        discard(probe)


def _compile(compiler: str, folder: Path) -> Path:
    """The kernel library in `folder` built by the `compiler` command, compiled unless already there."""
    command = shlex.split(compiler)
    try:
        version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise NativeKernelError(f"C++ compiler {compiler!r} cannot be run: {exc}; install g++ or clang++, or "
                                "set CXX") from exc
    identity = (KERNEL_SOURCE.read_bytes(), compiler.encode(), version.encode(), _cpu_signature().encode())
    suffix = ".dll" if os.name == "nt" else ".so"
    builds = []
    for target in _TARGET_FLAGS:
        flags = [*_BASE_FLAGS, *target]
        key = hashlib.sha256(b"\0".join((*identity, " ".join(flags).encode()))).hexdigest()[:16]
        builds.append((target, flags, folder / f"winograd_cpu-{key}{suffix}"))
    # A build that failed is not recorded, so look for any finished one before compiling again.
    for _target, _flags, library in builds:
        if library.is_file():
            return library
    _ensure_writable(folder)
    failures = []
    for target, flags, library in builds:
        temp = partial_path(library)
        try:
            result = subprocess.run([*command, *flags, str(KERNEL_SOURCE), "-o", str(temp)], capture_output=True,
                                    text=True, timeout=300)
            if result.returncode == 0 and temp.is_file():
                return publish(temp, library, overwrite=True)
            failures.append(f"{' '.join(target) or 'no target flag'}: {result.stderr.strip()[-500:]}")
        except (OSError, subprocess.SubprocessError) as exc:
            failures.append(f"{' '.join(target) or 'no target flag'}: {exc}")
        finally:
            discard(temp)
    raise NativeKernelError(f"{compiler} could not compile {KERNEL_SOURCE.name}: " + " | ".join(failures))


def _bind(library: ctypes.CDLL) -> ctypes.CDLL:
    pointer, integer = ctypes.c_void_p, ctypes.c_int
    library.vsrkit_winograd_scratch.argtypes = [integer, integer, integer]
    library.vsrkit_winograd_scratch.restype = ctypes.c_size_t
    library.vsrkit_winograd_conv3x3.argtypes = [pointer, integer, pointer, integer, integer, integer, integer,
                                                integer, pointer, pointer, pointer, pointer, integer,
                                                ctypes.c_float, integer, integer, integer, pointer]
    library.vsrkit_winograd_conv3x3.restype = None
    return library


def kernel_library(compiler: str | None = None) -> ctypes.CDLL:
    """The compiled kernel (built on first use and cached on disk); NativeKernelError if it cannot be.

    `compiler` (a command, as $CXX) overrides the search. The outcome is remembered per process.
    """
    with _libraries_lock:
        known = _libraries.get(compiler)
        if known is None:
            known = _libraries[compiler] = _load(compiler)
    if isinstance(known, NativeKernelError):
        raise known
    return known


def _load(compiler: str | None) -> ctypes.CDLL | NativeKernelError:
    candidates = [compiler] if compiler else _compilers()
    if not candidates:
        log.info("vsrkit's native CPU kernel needs a C++ compiler and none was found; the CPU uses PyTorch")
        return NativeKernelError("no C++ compiler found (install g++ or clang++, or set CXX)")
    errors = []
    for candidate in candidates:
        try:
            return _bind(ctypes.CDLL(str(_compile(candidate, user_data_dir() / "kernels"))))
        except _CacheFolderError as exc:
            errors = [str(exc)]
            break
        except NativeKernelError as exc:
            errors.append(str(exc))
        except OSError as exc:
            errors.append(f"the kernel built by {candidate} does not load: {exc}")
    error = NativeKernelError("; ".join(errors))
    log.warning("vsrkit's native CPU kernel is not available (%s); the CPU uses PyTorch", error)
    return error


def native_available() -> bool:
    """True when the kernel is compiled (or can be) and loads on this machine."""
    try:
        kernel_library()
    except NativeKernelError:
        return False
    return True


def native_supported(net: nn.Module) -> bool:
    """Whether `NativeNetwork` can run this network: RRDBNet and SRVGGNetCompact (not wrappers) whose
    feature channels (and RRDBNet's growth channels) come in sixteens, as in every official model."""
    if isinstance(net, SRVGGNetCompact):
        return net.num_feat % COUT_MULTIPLE == 0
    if isinstance(net, RRDBNet):
        return net.num_feat % COUT_MULTIPLE == 0 and net.num_grow_ch % COUT_MULTIPLE == 0
    return False


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass
class _Conv:
    """One convolution in the kernel's form: transformed weights [36, cin, cout], padded channels."""

    weights: np.ndarray
    bias: np.ndarray
    slope: np.ndarray | None
    cin: int
    cout: int

    @classmethod
    def of(cls, conv: nn.Conv2d, activation: nn.Module | None = None) -> _Conv:
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.dilation != (1, 1) \
                or conv.groups != 1:
            raise ValueError(f"the native kernel runs 3x3 stride-1 convolutions with padding 1 only, got {conv}")
        out_ch, in_ch = conv.weight.shape[:2]
        cin, cout = _round_up(in_ch, CIN_MULTIPLE), _round_up(out_ch, COUT_MULTIPLE)
        transform = torch.tensor(WINOGRAD_G, dtype=torch.float64)
        tiles = transform @ conv.weight.detach().double().cpu() @ transform.T
        weights = torch.zeros(6, 6, cin, cout, dtype=torch.float64)
        weights[:, :, :in_ch, :out_ch] = tiles.permute(2, 3, 1, 0)
        bias = torch.zeros(cout)
        if conv.bias is not None:
            bias[:out_ch] = conv.bias.detach().float().cpu()
        return cls(weights.reshape(36, cin, cout).float().numpy(), bias.numpy(), _slopes(activation, out_ch, cout),
                   cin, cout)


def _slopes(activation: nn.Module | None, channels: int, padded: int) -> np.ndarray | None:
    """Negative-side slopes per channel for PReLU, LeakyReLU or ReLU; None for no activation."""
    if activation is None:
        return None
    slope = torch.zeros(padded)
    if isinstance(activation, nn.PReLU):
        slope[:channels] = activation.weight.detach().float().cpu().expand(channels)
    elif isinstance(activation, nn.LeakyReLU):
        slope[:channels] = float(activation.negative_slope)
    elif not isinstance(activation, nn.ReLU):
        raise ValueError(f"activation {activation} has no native counterpart")
    return slope.numpy()


class _Image:
    """An NHWC float32 buffer in the kernel's zero-padded geometry for an H x W image.

    Only the padding is zeroed (the kernel never writes it, so it stays zero); the interior is
    left as it was and must be written, by a convolution or a fill, before it is read.
    Zeroing whole buffers took 7% of a 320x240 frame. `storage`, when given, is a flat float32
    array of at least `_Image.floats(...)` elements that the image lives in.
    """

    def __init__(self, height: int, width: int, channels: int, storage: np.ndarray | None = None):
        self.height, self.width = height, width
        shape = (_round_up(height, 4) + 2, _round_up(width, 4) + 2, channels)
        if storage is None:
            self.data = np.empty(shape, dtype=np.float32)
        else:
            self.data = storage[:shape[0] * shape[1] * channels].reshape(shape)
        for padding in (self.data[:1], self.data[height + 1:], self.data[:, :1], self.data[:, width + 1:]):
            padding[...] = 0

    @staticmethod
    def floats(height: int, width: int, channels: int) -> int:
        return (_round_up(height, 4) + 2) * (_round_up(width, 4) + 2) * channels

    @property
    def tile_rows(self) -> int:
        return -(-self.height // 4)

    def pointer(self, channel: int = 0) -> int:
        return self.data.ctypes.data + channel * self.data.itemsize

    def interior(self, channels: slice = slice(None)) -> np.ndarray:
        return self.data[1:self.height + 1, 1:self.width + 1, channels]

    def fill(self, frame: torch.Tensor) -> _Image:
        """Copy a [C, H, W] tensor into the first C channels and zero the others."""
        self.interior(slice(0, frame.shape[0]))[...] = frame.permute(1, 2, 0).numpy()
        self.interior(slice(frame.shape[0], None))[...] = 0
        return self

    def fill_upscaled(self, source: _Image, channels: int) -> _Image:
        """Nearest-neighbour x2 of `source`'s first `channels` channels, as `F.interpolate` gives it."""
        values = source.interior(slice(0, channels))
        interior = self.interior()
        for row in (0, 1):
            for column in (0, 1):
                interior[row::2, column::2] = values
        return self

    def tensor(self, channels: int) -> torch.Tensor:
        """The first `channels` channels as a [C, H, W] tensor."""
        return torch.from_numpy(np.ascontiguousarray(self.interior(slice(0, channels)).transpose(2, 0, 1)))


class _Workspace:
    """The buffers of one runner by role, reused from layer to layer and from call to call.

    Each role keeps one flat array, grown when a call needs more, so tiles of a few sizes share it
    and the memory held is that of the largest call, however many calls there are.
    """

    def __init__(self) -> None:
        self._storage: dict[str, np.ndarray] = {}

    def get(self, role: str, height: int, width: int, channels: int) -> _Image:
        floats = _Image.floats(height, width, channels)
        storage = self._storage.get(role)
        if storage is None or storage.size < floats:
            storage = self._storage[role] = np.empty(floats, dtype=np.float32)
        return _Image(height, width, channels, storage)


# The kernel's form of each network's convolutions, kept while the network lives: it takes seconds
# for RRDBNet, and every stream makes its own runner. Weights are read once per network (models
# are not changed in place; a blend or a new file is a new network).
_layers: weakref.WeakKeyDictionary[nn.Module, list[_Conv]] = weakref.WeakKeyDictionary()
_layers_lock = threading.Lock()


def _kernel_layers(net: nn.Module) -> list[_Conv]:
    with _layers_lock:
        convs = _layers.get(net)
    if convs is not None:
        return convs
    if isinstance(net, SRVGGNetCompact):
        layers = list(net.body)
        convs = [_Conv.of(layer, layers[index + 1] if index + 1 < len(layers) else None)
                 for index, layer in enumerate(layers) if isinstance(layer, nn.Conv2d)]
    else:
        convs = [_Conv.of(net.conv_first)]
        for block in net.body:
            for rdb in (block.rdb1, block.rdb2, block.rdb3):
                convs += [_Conv.of(conv, rdb.lrelu) for conv in (rdb.conv1, rdb.conv2, rdb.conv3, rdb.conv4)]
                convs.append(_Conv.of(rdb.conv5))
        convs.append(_Conv.of(net.conv_body))
        convs += [_Conv.of(conv, net.lrelu) for conv in (net.conv_up1, net.conv_up2, net.conv_hr)]
        convs.append(_Conv.of(net.conv_last))
    with _layers_lock:
        _layers[net] = convs
    return convs


class NativeNetwork(nn.Module):
    """An RRDBNet or SRVGGNetCompact run by the native kernel: NCHW float32 CPU tensors in and out.

    The `threads` (default: PyTorch's CPU thread count) share each convolution's tile rows, so
    frames run one after another and a lone frame is as fast as any. The runner keeps its buffers
    between calls: one runner per stream (calls from several threads take turns).
    """

    def __init__(self, net: nn.Module, threads: int | None = None, compiler: str | None = None):
        super().__init__()
        if not native_supported(net):
            raise ValueError(f"{type(net).__name__} cannot run on the native kernel; only RRDBNet and "
                             f"SRVGGNetCompact with feature channels in multiples of {COUT_MULTIPLE} can")
        self.threads = max(1, threads or torch.get_num_threads())
        self._library = kernel_library(compiler)
        # Not a submodule: the PyTorch network stays the model's, this only reads its weights.
        self.__dict__["module"] = net
        self._convs = _kernel_layers(net)
        scratch_floats = max(self._library.vsrkit_winograd_scratch(CHUNK_TILES, conv.cin, conv.cout)
                             for conv in self._convs)
        self._scratch = [np.empty(scratch_floats, dtype=np.float32) for _ in range(self.threads)]
        self._space = _Workspace()
        self._busy = threading.Lock()

    def _conv(self, pool: ThreadPoolExecutor | None, scratch: list[np.ndarray], conv: _Conv, source: _Image,
              target: _Image, source_channel: int = 0, target_channel: int = 0, residual: _Image | None = None,
              residual_scale: float = 1.0) -> None:
        if source_channel + conv.cin > source.data.shape[2] or target_channel + conv.cout > target.data.shape[2] \
                or (residual is not None and (conv.cout > residual.data.shape[2]
                                              or (residual.height, residual.width) != (source.height, source.width))) \
                or (source.height, source.width) != (target.height, target.width):
            raise ValueError("buffers do not fit the convolution")
        rows = source.tile_rows
        shares = min(self.threads if pool is not None else 1, rows)
        bounds = [round(index * rows / shares) for index in range(shares + 1)]
        slope = conv.slope.ctypes.data if conv.slope is not None else None

        def run(share: int) -> None:
            self._library.vsrkit_winograd_conv3x3(
                source.pointer(source_channel), source.data.shape[2], target.pointer(target_channel),
                target.data.shape[2], source.height, source.width, conv.cin, conv.cout, conv.weights.ctypes.data,
                conv.bias.ctypes.data, slope, residual.pointer() if residual is not None else None,
                residual.data.shape[2] if residual is not None else 0, residual_scale, bounds[share],
                bounds[share + 1], CHUNK_TILES, scratch[share].ctypes.data)

        others = [pool.submit(run, share) for share in range(1, shares)] if pool is not None else []
        run(0)
        for future in others:
            future.result()

    def _srvgg(self, frame: torch.Tensor, space: _Workspace, run) -> torch.Tensor:
        net: SRVGGNetCompact = self.module
        height, width = frame.shape[1:]
        current = space.get("input", height, width, self._convs[0].cin).fill(frame)
        for index, conv in enumerate(self._convs):
            role = f"features{index % 2}" if index + 1 < len(self._convs) else "output"
            following = space.get(role, height, width, conv.cout)
            run(conv, current, following)
            current = following
        # Pixel shuffle and the nearest-neighbour base image in one pass over the output buffer.
        scale, channels = net.upscale, net.num_out_ch
        shuffled = torch.from_numpy(current.interior(slice(0, channels * scale * scale)))
        shuffled = shuffled.unflatten(2, (channels, scale, scale)).permute(2, 0, 3, 1, 4)
        out = torch.empty((channels, height, scale, width, scale))
        torch.add(shuffled, frame[:, :, None, :, None], out=out)
        return out.view(channels, height * scale, width * scale)

    def _rrdb(self, frame: torch.Tensor, space: _Workspace, run) -> torch.Tensor:
        net: RRDBNet = self.module
        convs = iter(self._convs)
        features = net.num_feat
        growth = net.num_grow_ch
        dense = features + 4 * growth
        if net.unshuffle > 1:
            frame = F.pixel_unshuffle(frame[None], net.unshuffle)[0]
        height, width = frame.shape[1:]
        first = space.get("input", height, width, self._convs[0].cin).fill(frame)
        trunk = space.get("trunk", height, width, features)
        run(next(convs), first, trunk)
        buffers = (space.get("dense0", height, width, dense), space.get("dense1", height, width, dense))
        buffers[0].interior(slice(0, features))[...] = trunk.interior()
        current = 0
        for _block in net.body:
            block_input = space.get("block", height, width, features).interior()
            block_input[...] = buffers[current].interior(slice(0, features))
            for _rdb in range(3):
                source, target = buffers[current], buffers[1 - current]
                for index in range(4):
                    run(next(convs), source, source, target_channel=features + index * growth)
                # conv5 reads all `dense` channels; x5 * 0.2 + x goes to the other buffer's first channels.
                run(next(convs), source, target, residual=source, residual_scale=0.2)
                current = 1 - current
            block_output = buffers[current].interior(slice(0, features))
            block_output *= 0.2
            block_output += block_input
        feat = space.get("body", height, width, features)
        run(next(convs), buffers[current], feat, residual=trunk, residual_scale=1.0)
        for step in (1, 2):
            height, width = height * 2, width * 2
            upscaled = space.get(f"upscaled{step}", height, width, features).fill_upscaled(feat, features)
            feat = space.get(f"up{step}", height, width, features)
            run(next(convs), upscaled, feat)
        hr = space.get("hr", height, width, features)
        run(next(convs), feat, hr)
        last_conv = next(convs)
        out = space.get("output", height, width, last_conv.cout)
        run(last_conv, hr, out)
        return out.tensor(net.num_out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise ValueError("the native network runs on the CPU only")
        x = x.detach().float().contiguous()
        frame_fn = self._srvgg if isinstance(self.module, SRVGGNetCompact) else self._rrdb
        with self._busy, ThreadPoolExecutor(max_workers=self.threads - 1, thread_name_prefix="vsrkit-native") \
                if self.threads > 1 else contextlib.nullcontext() as pool:
            def run(conv: _Conv, source: _Image, target: _Image, **options) -> None:
                self._conv(pool, self._scratch, conv, source, target, **options)

            outputs = [frame_fn(frame, self._space, run) for frame in x]
        return outputs[0][None] if len(outputs) == 1 else torch.stack(outputs)
