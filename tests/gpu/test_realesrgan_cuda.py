"""Real-ESRGAN on CUDA: half precision against fp32, the copy/compute-overlapped stream against
one batch at a time, and tile shrinking when the device runs out of memory."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import NETWORKS
from tests.gpu.helpers import calibrated, well_conditioned
from vsrkit.engines.realesrgan.inference import Upscaler
from vsrkit.engines.realesrgan.loading import RealESRGANModel
from vsrkit.engines.realesrgan.rrdbnet import RRDBNet
from vsrkit.engines.realesrgan.srvgg import SRVGGNetCompact
from vsrkit.engines.video.sample import sample_frame

pytestmark = pytest.mark.gpu

# The small CPU-test networks and the released architectures' sizes (realesr-animevideov3 /
# realesr-general: 64 wide, 16 convolutions; RealESRGAN_x4plus: 23 RRDB blocks).
SIZES = {
    **NETWORKS,
    "srvgg-official-x4": lambda: SRVGGNetCompact(num_feat=64, num_conv=16, upscale=4, act_type="prelu"),
    "rrdb-official-x4": lambda: RRDBNet(num_feat=64, num_block=23, num_grow_ch=32, scale=4),
}
MIN_PSNR_DB = 50.0


def random_model(name: str, net: torch.nn.Module, scale: int) -> RealESRGANModel:
    """`net` with well-conditioned random weights, calibrated so its output on textured frames
    lies inside 0..1 (see helpers.calibrated), as a model."""
    net = well_conditioned(net).to("cuda")
    calibrated(net, textured_frames(2, 96, 128, seed=99).to("cuda").permute(0, 3, 1, 2))
    arch = "RRDBNet" if isinstance(net, RRDBNet) else "SRVGGNetCompact"
    return RealESRGANModel(net.cpu(), arch, scale, f"random {name}")


def model_named(name: str) -> RealESRGANModel:
    return random_model(name, SIZES[name](), int(name[-1]))


def textured_frames(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """[count, H, W, 3] in 0..1: the synthetic sample's edges plus fine noise, different per frame."""
    generator = torch.Generator().manual_seed(seed)
    frames = torch.stack([sample_frame(index, count, width, height) for index in range(count)])
    return (frames + 0.05 * torch.randn(frames.shape, generator=generator)).clamp(0, 1)


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


@pytest.fixture
def exact_fp32(monkeypatch):
    """fp32 convolutions and matrix products without TF32, so fp32 is the reference it claims to be."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.fixture
def deterministic(monkeypatch):
    """The same cuDNN algorithm for every call, so two runs of one batch agree bit for bit."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)


# bf16 (8 mantissa bits) falls below 50 dB through 23 random RRDB blocks, whose activations grow
# 60-fold, where the released RealESRGAN_x4plus weights stay above it (both measured on the CPU);
# the small RRDBNets carry bf16 for that architecture.
CASES = [(name, precision) for name in sorted(SIZES) for precision in ("fp16", "bf16")
         if (name, precision) != ("rrdb-official-x4", "bf16")]


@pytest.mark.parametrize("name,precision", CASES)
def test_half_precision_is_within_50_db_of_fp32(exact_fp32, name, precision):
    model = model_named(name)
    frames = textured_frames(2, 96, 128)
    want = Upscaler(model, device="cuda", precision="fp32", tile=-1).upscale(frames)
    got = Upscaler(model, device="cuda", precision=precision, tile=-1).upscale(frames)
    scale = int(name[-1])
    assert got.shape == want.shape == (2, 96 * scale, 128 * scale, 3)
    # The guard: the reference has texture and is not clamped flat, so the PSNR measures the network.
    inside = float(((want > 0) & (want < 1)).float().mean())
    assert inside > 0.8 and float(want.std()) > 0.1, (inside, float(want.std()))
    assert psnr_db(got, want) >= MIN_PSNR_DB, f"{name} {precision}: {psnr_db(got, want):.2f} dB"


def test_overlapped_stream_equals_one_batch_at_a_time(deterministic):
    """`Upscaler.stream` uploads the next batch and downloads the last while it computes; each
    batch must come out as if it had been copied in, computed and copied out on its own."""
    model = model_named("srvgg-official-x4")
    batches = [textured_frames(3, 180, 320, seed=seed) for seed in range(6)]
    upscaler = Upscaler(model, device="cuda")
    streamed = list(upscaler.stream(iter(batches)))
    assert len(streamed) == len(batches)
    for batch, result in zip(batches, streamed, strict=True):
        nchw = batch.to("cuda").permute(0, 3, 1, 2)
        plain = upscaler.to_uint8(upscaler.process_device(nchw).permute(0, 2, 3, 1)).cpu().float() / 255
        assert result.shape == (3, 720, 1280, 3)
        assert torch.equal(result, plain)
    # The guard: different batches give different results (a stale buffer would repeat one).
    assert not torch.equal(streamed[0], streamed[1])


@pytest.fixture
def memory_cap():
    """Sets a cap on this process's CUDA allocations (`cap(bytes)`) and lifts it afterwards."""
    total = torch.cuda.get_device_properties(0).total_memory

    def cap(limit: int) -> None:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total))

    yield cap
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()


def test_tiles_shrink_on_out_of_memory_and_match_the_untiled_output(memory_cap):
    """Capped between what 64-pixel tiles and the whole frame need, the automatic plan (whole
    frames) runs out of memory; the upscaler must shrink its tiles and give the untiled output."""
    # Wide features and x2, so the network's own memory, which tiles divide, outweighs the output's.
    model = random_model("wide srvgg x2", SRVGGNetCompact(num_feat=128, num_conv=16, upscale=2), 2)
    frames = textured_frames(1, 720, 1280)

    def run(upscaler: Upscaler) -> tuple[torch.Tensor, int]:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = upscaler.upscale(frames)
        return result, torch.cuda.max_memory_allocated() - before

    whole, whole_need = run(Upscaler(model, device="cuda", tile=-1))
    _, tiles_need = run(Upscaler(model, device="cuda", tile=64))
    assert tiles_need < whole_need / 2, (tiles_need, whole_need)
    memory_cap(torch.cuda.memory_allocated() + (tiles_need + whole_need) // 2)
    upscaler = Upscaler(model, device="cuda", budget_bytes=1 << 50)
    tiled = upscaler.upscale(frames)
    assert upscaler.plan.tile > 0, "the cap did not make the untiled try run out of memory"
    assert tiled.shape == whole.shape == (1, 1440, 2560, 3)
    assert float((tiled - whole).abs().max()) <= 1 / 255 + 1e-6
