"""FlashVSR on CUDA: FlexAttention against the masked-SDPA path at the golden fixture's sizes and
at the official head size, and the official-size model (random bf16 weights) on a 33-frame clip.

The tolerance is the golden fixture's for fp32 (atol 1e-4 with TF32 off; fixture README §7).
bf16 is held to the bound the engine's own FlexAttention self-check uses.
"""

from __future__ import annotations

import pytest
import torch

from tests.gpu.helpers import bench_module
from vsrkit.engines.clip import Clip
from vsrkit.engines.flashvsr import sparse_attention as sa
from vsrkit.engines.flashvsr.pipeline import FlashVSRPipeline, StreamSettings
from vsrkit.engines.flashvsr.upscale import upscale_clip

pytestmark = pytest.mark.gpu

FIXTURE_ATOL = 1e-4
BF16_ATOL = 3e-2
# The fixture's cases A and C (input size, scale, frames, settings); case C states topk_ratio.
FIXTURE_CASES = {
    "A": ((64, 64), 2, 29, StreamSettings(sparse_ratio=2.0, kv_ratio=3.0, local_range=11)),
    "C": ((36, 68), 4, 30, StreamSettings(topk_ratio=2.0, kv_ratio=2.0, local_range=2)),
}


@pytest.fixture(scope="module")
def bench():
    """bench/flashvsr.py: its TINY (the fixture's sizes) and OFFICIAL configurations and random models."""
    return bench_module("flashvsr")


@pytest.fixture
def exact_fp32(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def official_chunk(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """q, k, v and block mask of one steady Tiny-Long chunk at 1024x1024 output with Wan 2.1 1.3B
    heads (12 x 128): 64x64 tokens in 8x8 windows per time slice, one query slice over itself and
    three cached slices (kv_ratio 3), the mask drafted as the DiT drafts it (sparse_ratio 2, local 11)."""
    heads, head_dim, grid = 12, 128, 8
    per_slice = grid * grid
    n_q, n_k = per_slice, 4 * per_slice
    generator = torch.Generator(device="cuda").manual_seed(0)

    def tokens(windows: int) -> torch.Tensor:
        return torch.randn(heads, windows * sa.BLOCK_TOKENS, head_dim, generator=generator, device="cuda")

    # Queries 3x keys: attention logits spread over about +-3, peaked as a trained model's are
    # (with unit queries the softmax is near uniform and every output near zero).
    q, k, v = 3 * tokens(n_q), tokens(n_k), tokens(n_k)
    sparse = sa.SparseSettings.from_ratios(1024, 1024, 2.0, 3.0, 11)
    local = sa.tile_local_mask(sa.local_block_mask(grid, grid, sparse.local_range, q.device), n_q, n_k)

    def pooled(x: torch.Tensor, windows: int) -> torch.Tensor:
        return x.reshape(heads, windows, sa.BLOCK_TOKENS, head_dim).mean(2).transpose(0, 1).reshape(windows, -1)

    mask = sa.draft_block_mask(pooled(q, n_q), pooled(k, n_k), heads, 1, sparse.topk, local)
    mask[0, :3] = False  # a few query blocks that see nothing, which must come out as zeros
    return q.to(dtype), k.to(dtype), v.to(dtype), mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_flex_equals_sdpa_at_the_official_head_size(exact_fp32, dtype):
    q, k, v, mask = official_chunk(dtype)
    assert 0 < float(mask.float().mean()) < 1
    flex = sa.block_sparse_attention(q, k, v, mask, backend="flex").float()
    if dtype == torch.float32:
        want, atol = sa.block_sparse_attention(q, k, v, mask, backend="sdpa"), FIXTURE_ATOL
    else:
        want, atol = sa.block_sparse_attention(q.float(), k.float(), v.float(), mask, backend="sdpa"), BF16_ATOL
    assert torch.equal(flex[0, :3 * sa.BLOCK_TOKENS], torch.zeros_like(flex[0, :3 * sa.BLOCK_TOKENS]))
    difference = float((flex - want).abs().max())
    assert difference <= atol, f"flex and sdpa differ by {difference:.2e} in {dtype}"
    # The guard: attending to every block moves the result far beyond the tolerance.
    dense = sa.block_sparse_attention(q.float(), k.float(), v.float(), torch.ones_like(mask), backend="sdpa")
    assert float((dense - want).abs().max()) > 10 * atol
    # And on CUDA the automatic choice is FlexAttention (its self-check passed).
    assert torch.equal(sa.block_sparse_attention(q, k, v, mask).float(), flex)


def test_official_size_model_upscales_a_33_frame_512x512_clip(bench):
    """Random bf16 weights of the released sizes (tests/test_flashvsr_modules.py holds these
    constructors to the official checkpoint manifest): every frame out, finite, exactly 2x."""
    models = bench.random_models(bench.OFFICIAL, torch.bfloat16, torch.device("cuda"))
    frames = torch.cat(list(bench.moving_frames(33, 512, 512)))
    upscaled = upscale_clip(Clip.from_tensor(frames, 24), models, scale=2)
    assert (upscaled.info.width, upscaled.info.height) == (1024, 1024)
    produced = 0
    for chunk in upscaled.chunks():
        assert chunk.shape[1:] == (1024, 1024, 3)
        assert bool(torch.isfinite(chunk).all())
        produced += chunk.shape[0]
    assert produced == 33


@pytest.mark.parametrize("case", sorted(FIXTURE_CASES))
def test_flex_equals_sdpa_through_the_fixture_sized_pipeline(exact_fp32, bench, case):
    (height, width), scale, count, settings = FIXTURE_CASES[case]
    models = bench.random_models(bench.TINY, torch.float32, torch.device("cuda"))
    frames = torch.cat(list(bench.moving_frames(count, height, width)))
    outputs = {}
    for backend in ("sdpa", "flex"):
        pipeline = FlashVSRPipeline.from_models(models, backend)
        outputs[backend] = torch.cat(list(pipeline.upscale(iter([frames]), scale, settings)))
    assert outputs["flex"].shape == outputs["sdpa"].shape == (count, height * scale, width * scale, 3)
    difference = float((outputs["flex"] - outputs["sdpa"]).abs().max())
    assert difference <= FIXTURE_ATOL, f"case {case}: flex and sdpa differ by {difference:.2e}"
