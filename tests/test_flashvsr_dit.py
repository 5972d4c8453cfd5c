"""FlashVSR's Wan DiT and block-sparse attention against the golden fixture and dense references.

The fixture (../shared/flashvsr/fixture) holds tiny random weights in the official layout
and the reference implementation's tensors per stage; fp32 tolerance is atol 1e-4 and
block masks must match exactly (fixture README §7).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.flashvsr_stages import DiTRecorder
from vsrkit.engines.flashvsr import sparse_attention as sa
from vsrkit.engines.flashvsr.wan_dit import Rope, StreamContext, WanDiT, dit_config_from_shapes

ATOL = 1e-4
CASES = {
    "A": {"topk_ratio": 120.0, "kv_ratio": 3.0, "local_range": 11, "cached_windows": 3},
    "C": {"topk_ratio": 2.0, "kv_ratio": 2.0, "local_range": 2, "cached_windows": 4},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.shape == want.shape and torch.allclose(got.float(), want.float(), rtol=0, atol=ATOL)


@pytest.fixture(scope="module")
def reference_dir():
    folder = Path(__file__).resolve().parents[1].parent / "shared" / "flashvsr"
    if not (folder / "fixture" / "config.json").is_file():
        pytest.skip(f"FlashVSR golden fixture {folder / 'fixture'} is absent (../shared/flashvsr/fixture)")
    return folder


@pytest.fixture(scope="module")
def fixture(reference_dir):
    return reference_dir / "fixture"


@pytest.fixture(scope="module")
def config(fixture):
    return json.loads((fixture / "config.json").read_text())


@pytest.fixture(scope="module")
def dit(fixture, config):
    state = load_file(fixture / "dit.safetensors")
    model = WanDiT(**dit_config_from_shapes({k: v.shape for k, v in state.items()},
                                            num_heads=config["models"]["dit"]["num_heads"]))
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def prompt(fixture, dit):
    return dit.embed_prompt(load_file(fixture / "prompt.safetensors")["context"].float())


def test_time_and_text_embeddings_match_fixture(fixture, dit, prompt):
    debug = load_file(fixture / "case_A_debug.safetensors")
    time = dit.embed_time()
    assert close(time.t, debug["t"])
    assert close(time.t_mod, debug["t_mod"])
    assert close(prompt.embedded, debug["text_context_embedded"])
    for block in range(len(dit.blocks)):
        assert close(prompt.k[block], debug[f"cross_attn_cache_k.block{block}"])
        assert close(prompt.v[block], debug[f"cross_attn_cache_v.block{block}"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_dit_chunks_match_fixture(fixture, dit, prompt, case):
    """Each chunk from the stored LQ tokens and noise: masks exact, blocks, prediction, cache."""
    settings = CASES[case]
    data = load_file(fixture / f"case_{case}.safetensors")
    debug = load_file(fixture / f"case_{case}_debug.safetensors")
    noise = data["noise"]
    height, width = noise.shape[-2] * 8, noise.shape[-1] * 8
    sparse = sa.SparseSettings.from_ratios(height, width, 0.0,
                                           settings["kv_ratio"], settings["local_range"],
                                           topk_ratio=settings["topk_ratio"])
    context = StreamContext(dit.embed_time(), prompt, sparse, backend="sdpa")
    caches = None
    for chunk, (first, count) in enumerate([(0, 6), (6, 2)]):
        latents = noise[:, :, first:first + count]
        with DiTRecorder(dit) as recorder:
            prediction, caches = dit.forward_chunk(latents, [data[f"chunk{chunk}.lq_latents"]], caches, first, context)
        record = recorder.calls[0]
        for block in range(len(dit.blocks)):
            assert torch.equal(record[f"block{block}.blockmask"], debug[f"chunk{chunk}.block{block}.blockmask"])
            assert close(record[f"block{block}_out"], debug[f"chunk{chunk}.block{block}_out"])
        assert close(prediction, data[f"chunk{chunk}.noise_pred"])
        assert close(latents - prediction, data[f"chunk{chunk}.denoised"])
        if chunk == 0:
            for block, cache in enumerate(caches):
                assert cache.k.shape[0] == settings["cached_windows"]
                assert close(cache.k, debug[f"chunk0.self_attn_cache_k.block{block}"])
                assert close(cache.v, debug[f"chunk0.self_attn_cache_v.block{block}"])


def test_selected_blocks_listing_matches_masks(fixture, config):
    """config.json's readable `selected_blocks` and the stored masks say the same (our masks are checked
    against the latter), e.g. case A chunk 1 block 0 head 0 keeps k-blocks [0, 1, 3]."""
    debug = load_file(fixture / "case_A_debug.safetensors")
    listing = config["selected_blocks"]["A"]["chunk1.block0"]
    mask = debug["chunk1.block0.blockmask"][0]
    for head, rows in enumerate(listing):
        for q_block, selected in enumerate(rows):
            assert mask[head, q_block].nonzero().flatten().tolist() == selected
    assert listing[0][0] == [0, 1, 3]


def test_mask_unit_draft_masks(fixture, config):
    data = load_file(fixture / "mask_unit.safetensors")
    for name, spec in config["mask_unit"]["tests"].items():
        grid_h, grid_w = spec["block_grid_hw"]
        q_pooled, k_pooled = data[f"{name}.q_pooled"], data[f"{name}.k_pooled"]
        local = sa.tile_local_mask(sa.local_block_mask(grid_h, grid_w, spec["local_range"]), q_pooled.shape[0],
                                   k_pooled.shape[0])
        assert sa.topk_for(spec["window_size"], 2.0) == spec["topk"]
        mask = sa.draft_block_mask(q_pooled, k_pooled, spec["num_heads"], spec["seqlen"], spec["topk"], local)
        assert torch.equal(mask[None].to(torch.uint8), data[f"{name}.mask"]), name
        kept = mask.reshape(spec["num_heads"], spec["seqlen"], -1).sum(-1)
        assert kept.tolist() == spec["selected_per_head_slice"]
        if (grid_h * grid_w,) * 2 != (q_pooled.shape[0], k_pooled.shape[0]):
            with pytest.raises(ValueError, match="does not fit"):
                sa.draft_block_mask(q_pooled, k_pooled, spec["num_heads"], spec["seqlen"], spec["topk"],
                                    sa.local_block_mask(grid_h, grid_w, spec["local_range"]))


@pytest.mark.parametrize("grid_h, grid_w, local_range", [(6, 10, 11), (6, 10, 9), (3, 5, 4), (1, 2, 2), (2, 3, 3)])
def test_local_window_masks(fixture, grid_h, grid_w, local_range):
    want = load_file(fixture / "mask_unit.safetensors")[f"local_mask_{grid_h}x{grid_w}_r{local_range}"]
    assert torch.equal(sa.local_block_mask(grid_h, grid_w, local_range).to(torch.uint8), want)


def test_topk_settings_follow_the_sparse_ratio():
    assert sa.topk_ratio_for(2.0, 128, 128) == 120.0
    settings = sa.SparseSettings.from_ratios(128, 128, 2.0, 3.0, 11)
    assert (settings.topk, settings.kv_len, settings.local_range) == (119, 3, 11)
    # The token grid comes from the pixels: 256x384 is 16x24 tokens, 6 windows per time slice.
    assert sa.SparseSettings.from_ratios(256, 384, 2.0, 3.0, 11).topk == sa.topk_for(6, sa.topk_ratio_for(2.0, 256, 384))
    assert sa.topk_for(2, 2.0) == 7
    assert sa.topk_for(60, sa.topk_ratio_for(2.0, 768, 1280)) == 7199


def _dense_reference(q, k, v, block_mask):
    """softmax(q k^T / sqrt(d)) v over the expanded block mask, einsum-style; dead rows give 0."""
    full = block_mask.repeat_interleave(128, 1).repeat_interleave(128, 2)
    scores = torch.einsum("hqd,hkd->hqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    probs = torch.softmax(scores.masked_fill(~full, float("-inf")), dim=-1)
    return torch.nan_to_num(torch.einsum("hqk,hkd->hqd", probs, v.double()), nan=0.0).float()


def _random_problem(seed=0, heads=2, n_q=3, n_k=5, dim=32):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(heads, n_q * 128, dim, generator=generator)
    k = torch.randn(heads, n_k * 128, dim, generator=generator)
    v = torch.randn(heads, n_k * 128, dim, generator=generator)
    mask = torch.rand(heads, n_q, n_k, generator=generator) > 0.5
    mask[0, 1] = False
    mask[1, 2] = True
    return q, k, v, mask


def test_sdpa_block_attention_matches_dense_reference(monkeypatch):
    q, k, v, mask = _random_problem()
    want = _dense_reference(q, k, v, mask)
    got = sa.block_sparse_attention(q, k, v, mask, backend="sdpa")
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(got[0, 128:256], torch.zeros_like(got[0, 128:256]))
    monkeypatch.setattr(sa, "SDPA_MASK_BUDGET", 1)
    assert torch.allclose(sa.block_sparse_attention(q, k, v, mask, backend="sdpa"), want, atol=1e-5)
    everything = torch.ones_like(mask)
    assert torch.allclose(sa.block_sparse_attention(q, k, v, everything, backend="sdpa"),
                          _dense_reference(q, k, v, everything), atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_block_attention_keeps_the_same_blocks():
    """The FlexAttention path (here its unfused fallback) attends to exactly the kept blocks."""
    q, k, v, mask = _random_problem(seed=1)
    got = sa._flex_block_attention(q, k, v, mask, compiled=False)
    assert torch.allclose(got, _dense_reference(q, k, v, mask), atol=1e-5)


def test_auto_backend_is_sdpa_on_cpu():
    q, k, v, mask = _random_problem(seed=2)
    assert torch.equal(sa.block_sparse_attention(q, k, v, mask), sa.block_sparse_attention(q, k, v, mask, "sdpa"))
    with pytest.raises(ValueError, match="backend"):
        sa.block_sparse_attention(q, k, v, mask, backend="triton")


def test_windows_round_trip_and_hold_2x8x8_blocks():
    frames, rows, cols = 4, 16, 24
    index = torch.arange(frames * rows * cols).reshape(-1, 1).float()
    windows = sa.to_windows(index, frames, rows, cols)
    assert windows.shape == (2 * 2 * 3, 128, 1)
    assert torch.equal(sa.from_windows(windows, frames, rows, cols), index)
    # Window 1 of slice 0 is rows 0-7, columns 8-15 of frames 0 and 1.
    expected = torch.tensor([f * rows * cols + r * cols + c for f in range(2) for r in range(8) for c in range(8, 16)])
    assert torch.equal(windows[1, :, 0].long(), expected)


def test_cache_drops_one_oldest_slice_when_over_kv_len():
    per_slice = 2
    windows = torch.arange(8).float().reshape(8, 1, 1).expand(8, 128, 4)
    kept = sa.extend_cache(None, windows[:6], windows[:6], per_slice, kv_len=3)
    assert kept.slices == 3 and torch.equal(kept.k, windows[:6])
    evicted = sa.extend_cache(None, windows[:6], windows[:6], per_slice, kv_len=2)
    assert evicted.slices == 2 and torch.equal(evicted.k[:, 0, 0], torch.tensor([2.0, 3, 4, 5]))
    # Only one slice goes per chunk, even when the cache is further over its length.
    once = sa.extend_cache(None, windows, windows, per_slice, kv_len=1)
    assert once.slices == 3


def test_rope_depends_only_on_position_differences():
    """So RoPE positions past upstream's 1024-entry table (clips over 4100 frames) stay exact."""
    head_dim, heads = 32, 2
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4 * 8 * 8, heads * head_dim, generator=generator)
    k = torch.randn(1, 4 * 8 * 8, heads * head_dim, generator=generator)

    def scores(first_frame):
        rope = Rope.build(head_dim, first_frame, 4, 8, 8, device=torch.device("cpu"), dtype=torch.float32)
        return rope.apply(q, heads) @ rope.apply(k, heads).transpose(1, 2)

    assert torch.allclose(scores(0), scores(5000), atol=1e-3)
    assert not torch.allclose(scores(0), q @ k.transpose(1, 2), atol=1e-1)


@pytest.mark.skipif(os.environ.get("VSRKIT_TEST_FLEX") != "1",
                    reason="compiles FlexAttention (about a minute on CPU, needs a C++ compiler); VSRKIT_TEST_FLEX=1 runs it")
def test_compiled_flex_attention_matches_sdpa():
    assert sa.flex_matches_sdpa(torch.device("cpu"), torch.float32)
    q, k, v, mask = _random_problem(seed=4, n_q=6, n_k=9)
    assert torch.allclose(sa.block_sparse_attention(q, k, v, mask, backend="flex"),
                          _dense_reference(q, k, v, mask), atol=1e-5)
