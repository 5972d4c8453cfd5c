"""The tiling both engines share: tile plans cover the frame with their context, blend weights sum
to one, tiles that agree blend back to the whole, padding to a multiple, smaller tiles after
running out of memory."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from vsrkit.engines import tiling
from vsrkit.engines.flashvsr.settings import plan_tiles
from vsrkit.engines.realesrgan.inference import network_tiles
from vsrkit.engines.realesrgan.loading import RealESRGANModel
from vsrkit.engines.realesrgan.rrdbnet import RRDBNet


def weight_sum(tiles: list[tiling.Tile], scale: int = 1) -> torch.Tensor:
    """Each tile's weights added over its kept region of the output frame."""
    weights = tiling.BlendWeights(tiles, "cpu", scale)
    total = torch.zeros(weights.height, weights.width, dtype=torch.float64)
    for tile in tiles:
        total[weights.kept(tile)] += tile.weights(scale).double()
    return total


@pytest.mark.parametrize("length,tile,context,feather,multiple", [
    (104, 25, 8, 2, 1), (72, 37, 12, 3, 1), (61, 20, 64, 16, 4), (45, 16, 10, 2, 2), (90, 40, 0, 0, 1)])
def test_core_spans_cover_the_axis_with_context_and_feathered_cores(length, tile, context, feather, multiple):
    spans = tiling.core_spans(length, tile, context, feather, multiple)
    cores = tiling.cores(length, tile, multiple)
    assert len(spans) == len(cores) > 1
    assert cores[0][0] == 0 and cores[-1][1] == length and all(a[1] == b[0] for a, b in itertools.pairwise(cores))
    assert all(low % multiple == 0 and high - low <= tile for low, high in cores[:-1])
    for span, (low, high) in zip(spans, cores, strict=True):
        assert span.start == max(0, low - context) and span.stop == min(length, high + context)
        assert span.start <= span.keep_start <= low and high <= span.keep_stop <= span.stop
    weights = [span.weights() for span in spans]
    total = torch.zeros(length, dtype=torch.float64)
    for span, weight in zip(spans, weights, strict=True):
        total[span.keep_start:span.keep_stop] += weight
    assert torch.allclose(total, torch.ones(length, dtype=torch.float64), atol=1e-12)


def test_overlapping_spans_are_equal_aligned_windows_that_overlap_enough():
    spans = tiling.overlapping_spans(640, 256, 128, 16)
    assert len(spans) == 4
    assert all(span.size == 256 and span.start % 16 == 0 for span in spans)
    assert spans[0].start == 0 and spans[-1].stop == 640
    assert all(b.start <= a.stop - 128 for a, b in itertools.pairwise(spans))
    assert all((span.keep_start, span.keep_stop) == (span.start, span.stop) for span in spans)
    assert tiling.overlapping_spans(640, 0, 128, 16) == tiling.overlapping_spans(640, 640, 128, 16) == \
        tiling.whole(640)


RRDB_X2 = RealESRGANModel(RRDBNet(num_feat=8, num_block=1, num_grow_ch=8, scale=2), "RRDBNet", 2, "x2")


@pytest.mark.parametrize("tiles,scale,partition,complementary", [
    (plan_tiles(640, 896, tile_size=384, overlap=128), 1, True, False),
    (plan_tiles(384, 1152, tile_size=256, overlap=128), 1, True, False),
    (network_tiles(RRDB_X2, 48, 64, 20, 12), 2, True, True),
    # Windows 0 and 2 overlap too: their cross-fades meet, and the blend divides by the weights' sum.
    (plan_tiles(128, 2688, tile_size=1280, overlap=640), 1, False, False),
])
def test_blend_weights_sum_to_one_and_agreeing_tiles_blend_back_to_the_whole(tiles, scale, partition,
                                                                             complementary):
    assert len(tiles) > 2
    total = weight_sum(tiles, scale)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6) == partition
    assert float(total.min()) > 0
    weights = tiling.BlendWeights(tiles, "cpu", scale)
    # Complementary cross-fades keep only axis weights and need no division by the weights' sum.
    assert weights.complementary == complementary and (weights.total is None) == complementary
    assert all(torch.equal(weights.weight(tile), tile.weights(scale)) for tile in tiles)
    frame = torch.rand(2, 3, weights.height // scale, weights.width // scale)
    blender = tiling.TileBlender(weights, 2, 3)
    for tile in tiles:
        blender.add(tile, F.interpolate(tile.crop(frame), scale_factor=scale, mode="nearest"))
    whole = F.interpolate(frame, scale_factor=scale, mode="nearest")
    assert torch.allclose(blender.frames(), whole, atol=1e-6)


def test_one_tile_passes_through_as_float():
    tiles = tiling.grid(tiling.whole(8), tiling.whole(12))
    blender = tiling.TileBlender(tiling.BlendWeights(tiles, "cpu"), 1, 3)
    frames = torch.rand(1, 3, 8, 12, dtype=torch.float64)
    blender.add(tiles[0], frames)
    assert blender.frames().dtype == torch.float32 and torch.equal(blender.frames(), frames.float())


def test_cross_fades_are_linear_ramps_over_their_band():
    span = tiling.Span(10, 30, 12, 28, (tiling.Fade(12, 16, rising=True), tiling.Fade(24, 28, rising=False)))
    weights = span.weights(scale=2)
    assert weights.shape == (32,)
    assert torch.allclose(weights[:8], (torch.arange(8, dtype=torch.float64) + 0.5) / 8)
    assert torch.equal(weights[8:24], torch.ones(16, dtype=torch.float64))
    assert torch.allclose(weights[24:], (8 - torch.arange(8, dtype=torch.float64) - 0.5) / 8)


def test_padding_mirrors_where_it_can_and_repeats_the_edge_otherwise():
    frames = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    padded = tiling.pad_to(frames, 8, 9)
    assert padded.shape == (2, 3, 8, 9) and torch.equal(padded[..., :5, :7], frames)
    assert torch.equal(padded[..., 5, :7], frames[..., 3, :]) and torch.equal(padded[..., :5, 7], frames[..., :, 5])
    tiny = torch.rand(1, 3, 2, 2)
    edge = tiling.pad_to(tiny, 6, 6)
    assert torch.equal(edge[..., 5, :2], tiny[..., 1, :]) and torch.equal(edge[..., :2, 5], tiny[..., :, 1])
    assert tiling.pad_to_multiple(frames, 4).shape == (2, 3, 8, 8)
    assert tiling.pad_to_multiple(frames, 1) is frames and tiling.pad_to(frames, 5, 7) is frames
    assert tiling.round_up(129, 128) == 256 and tiling.round_up(128, 128) == 128


def test_smaller_tile_halves_down_to_the_minimum():
    assert tiling.smaller_tile(0, 1000, 32) == 500
    assert tiling.smaller_tile(200, 1000, 32) == 100
    assert tiling.smaller_tile(40, 1000, 32) == 32
    assert tiling.smaller_tile(32, 1000, 32) is None
    assert tiling.smaller_tile(2000, 1000, 32) == 500, "a tile larger than the frame is the frame"
    # FlashVSR: multiples of 128, at least twice the overlap.
    assert tiling.smaller_tile(0, 1280, 256, 128) == 640
    assert tiling.smaller_tile(640, 1280, 256, 128) == 256
    assert tiling.smaller_tile(256, 1280, 256, 128) is None


def test_out_of_memory_is_recognised_from_each_kind_of_error():
    assert tiling.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert tiling.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"))
    assert tiling.is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert tiling.is_out_of_memory(MemoryError())
    assert not tiling.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not tiling.is_out_of_memory(ValueError("out of memory"))
