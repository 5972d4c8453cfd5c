"""The streaming FlashVSR pipeline against the golden fixture, stage by stage, in both modes.

Models load through `load_flashvsr` from the fixture folder (official key layout, sizes
read off the shapes). The fixture's LQ input `lq_hr_u8` is fed as is (fixture README §3).
Our pipeline keeps every input frame, so it may run more chunks than the reference; it is
compared on the frames the reference produced.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.flashvsr_stages import PipelineRecorder
from vsrkit.engines.errors import InputError
from vsrkit.engines.flashvsr.bicubic import bicubic_resize
from vsrkit.engines.flashvsr.loader import load_flashvsr
from vsrkit.engines.flashvsr.noise import FixedNoise
from vsrkit.engines.flashvsr.pipeline import FlashVSRPipeline, StreamSettings
from vsrkit.engines.flashvsr.settings import plan_tiles
from vsrkit.engines.tiling import BlendWeights, TileBlender

ATOL = 1e-4
CASE_SETTINGS = {
    "A": {"topk_ratio": 120.0, "kv_ratio": 3.0, "local_range": 11},
    "C": {"topk_ratio": 2.0, "kv_ratio": 2.0, "local_range": 2},
}
CACHED_WINDOWS = {"A": 3, "C": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fixture():
    folder = Path(__file__).resolve().parents[1].parent / "shared" / "flashvsr" / "fixture"
    if not (folder / "config.json").is_file():
        pytest.skip(f"FlashVSR golden fixture {folder} is absent (../shared/flashvsr/fixture)")
    return folder


@pytest.fixture(scope="module")
def pipeline(fixture):
    models = load_flashvsr(fixture, dtype="fp32", device="cpu")
    return FlashVSRPipeline.from_models(models, attention_backend="sdpa")


@pytest.fixture(scope="module")
def runs(fixture, pipeline):
    """Memoised pipeline runs: (case, mode, frames) -> (output [T, 3, H, W], per-stage values)."""
    cache: dict[tuple[str, str, int | None], tuple[torch.Tensor, dict]] = {}

    def run(case: str, mode: str, frames: int | None = None):
        key = (case, mode, frames)
        if key not in cache:
            data = load_file(fixture / f"case_{case}.safetensors")
            lq = data["lq_hr_u8"].float().permute(0, 3, 1, 2) / 255.0 * 2.0 - 1.0
            lq = lq[:frames] if frames else lq
            noise = data["noise"]
            # Our pipeline may run one chunk past the reference's last; its noise is free to choose.
            extra = torch.randn(1, noise.shape[1], 4, *noise.shape[-2:], generator=torch.Generator().manual_seed(5))
            chunks = [lq[i:i + 7] for i in range(0, lq.shape[0], 7)]
            with PipelineRecorder(pipeline) as recorder:
                out = torch.cat(list(pipeline.stream(chunks, None, StreamSettings(mode=mode, **CASE_SETTINGS[case]),
                                                     noise=FixedNoise(torch.cat([noise, extra], dim=2)))))
            cache[key] = (out, recorder.stages)
        return cache[key]

    return run


def video_close(case: str, got: torch.Tensor, want: torch.Tensor) -> bool:
    """fp32 videos: atol 1e-4; case C's videos are stored in fp16: rtol 1e-3, atol 1e-4 (README §7)."""
    if got.shape != want.shape:
        return False
    if want.dtype == torch.float16:
        return torch.allclose(got.float(), want.float(), rtol=1e-3, atol=1e-4)
    return torch.allclose(got.float(), want.float(), rtol=0, atol=ATOL)


@pytest.mark.parametrize("case", ["A", "C"])
def test_tiny_long_matches_every_fixture_stage(fixture, runs, case):
    data = load_file(fixture / f"case_{case}.safetensors")
    debug = load_file(fixture / f"case_{case}_debug.safetensors")
    out, stages = runs(case, "tiny-long")
    frames = data["lr_u8"].shape[0]
    assert out.shape[0] == frames
    for chunk in (0, 1):
        prefix = f"chunk{chunk}."
        assert torch.allclose(stages[prefix + "lq_latents"], data[prefix + "lq_latents"], atol=ATOL)
        for block in (0, 1):
            assert torch.equal(stages[f"{prefix}block{block}.blockmask"], debug[f"{prefix}block{block}.blockmask"])
            assert torch.allclose(stages[f"{prefix}block{block}_out"], debug[f"{prefix}block{block}_out"], atol=ATOL)
        assert torch.allclose(stages[prefix + "noise_pred"], data[prefix + "noise_pred"], atol=ATOL)
        assert torch.allclose(stages[prefix + "denoised"], data[prefix + "denoised"], atol=ATOL)
    for block in (0, 1):
        for kind in ("k", "v"):
            name = f"chunk0.self_attn_cache_{kind}.block{block}"
            assert stages[name].shape[0] == CACHED_WINDOWS[case]
            assert torch.allclose(stages[name], debug[name], atol=ATOL)
    reference_frames = data["video_out"].shape[1]
    pre = torch.cat(stages["video_pre_colorfix"])[:reference_frames].transpose(0, 1)
    assert video_close(case, pre, data["video_pre_colorfix"])
    assert video_close(case, out[:reference_frames].transpose(0, 1), data["video_out"])


@pytest.mark.parametrize("case", ["A", "C"])
def test_tiny_matches_fixture_and_equals_tiny_long(fixture, runs, case):
    data = load_file(fixture / f"case_{case}.safetensors")
    tiny, stages = runs(case, "tiny")
    tiny_long, _ = runs(case, "tiny-long")
    reference_frames = data["video_out"].shape[1]
    assert len(stages["video_pre_colorfix"]) == 1, "Tiny decodes once, at the end"
    assert video_close(case, stages["video_pre_colorfix"][0][:reference_frames].transpose(0, 1),
                       data["video_pre_colorfix"])
    assert video_close(case, tiny[:reference_frames].transpose(0, 1), data["video_out"])
    assert torch.allclose(tiny, tiny_long, rtol=0, atol=1e-6)


def test_case_b_is_a_prefix_of_case_a(fixture, runs):
    """25 frames (case B) share chunk 0 with case A; our run keeps all 25 frames (upstream keeps 21)."""
    data = load_file(fixture / "case_A.safetensors")
    out_b, stages_b = runs("A", "tiny-long", 25)
    out_a, stages_a = runs("A", "tiny-long")
    assert out_b.shape[0] == 25
    assert torch.equal(out_b[:21], out_a[:21])
    assert torch.allclose(out_b[:21].transpose(0, 1), data["video_out"][:, :21], atol=ATOL)
    for name in ("lq_latents", "noise_pred", "denoised", "block0.blockmask", "block1.blockmask"):
        assert torch.equal(stages_b[f"chunk0.{name}"], stages_a[f"chunk0.{name}"])


def test_frame_bookkeeping_matches_the_fixture_plan(fixture, runs):
    """Decoder calls and colour-fix shapes per chunk, as config.json lists them for Tiny-Long."""
    config = json.loads((fixture / "config.json").read_text())
    _, stages = runs("A", "tiny-long")
    calls = config["cases"]["A"]["decoder_calls"]["tiny_long"]
    sizes = [piece.shape[0] for piece in stages["video_pre_colorfix"]]
    assert sizes[:len(calls)] == [call["out_frames"] for call in calls]


def test_bicubic_upscale_matches_pil_within_one_level(fixture):
    """Our float bicubic (PIL's kernel, a = -0.5) against the fixture's PIL-made `lq_hr_u8`."""
    config = json.loads((fixture / "config.json").read_text())
    for case in ("A", "C"):
        data = load_file(fixture / f"case_{case}.safetensors")
        upscale = config["cases"][case]["upscale"]
        lr = data["lr_u8"].float().permute(0, 3, 1, 2)
        hr = bicubic_resize(lr, upscale["sH"], upscale["sW"]).round().clamp(0, 255)
        top, left = upscale["crop_top"], upscale["crop_left"]
        hr = hr[..., top:top + upscale["tH"], left:left + upscale["tW"]]
        diff = (hr - data["lq_hr_u8"].float().permute(0, 3, 1, 2)).abs()
        assert diff.max() <= 1
        assert (diff > 0).float().mean() < 0.3


def test_tiles_cover_the_frame_and_weights_sum_to_one():
    tiles = plan_tiles(640, 896, tile_size=384, overlap=128)
    assert len(tiles) > 1
    total = torch.zeros(640, 896)
    for tile in tiles:
        assert tile.height == tile.width == 384 and tile.y0 % 16 == 0 and tile.x0 % 16 == 0
        total[tile.y0:tile.y0 + tile.height, tile.x0:tile.x0 + tile.width] += tile.weights()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    assert plan_tiles(256, 384) == plan_tiles(256, 384, tile_size=512)
    with pytest.raises(ValueError, match="multiple of 128"):
        plan_tiles(256, 256, tile_size=200)


def test_stream_settings_are_checked_once_with_the_user_facing_ranges():
    StreamSettings().validate()
    with pytest.raises(InputError, match="sparse_ratio must be between 0.5 and 8"):
        StreamSettings(sparse_ratio=0.1).validate()
    with pytest.raises(InputError, match="kv_ratio must be between 1 and 16"):
        StreamSettings(kv_ratio=20.0).validate()
    with pytest.raises(InputError, match="colour fix"):
        StreamSettings(color_fix="none-such").validate()
    with pytest.raises(InputError, match="at most half the tile size"):
        StreamSettings(tile_size=256, tile_overlap=192).validate()
    with pytest.raises(ValueError, match="FlashVSR mode"):
        StreamSettings(mode="full").validate()


def test_feathered_blend_has_no_seams():
    """Tiles that disagree by a constant blend with small steps; tiles that agree blend exactly."""
    height, width = 256, 640
    tiles = plan_tiles(height, width, tile_size=256, overlap=128)
    image = torch.rand(1, 3, height, width)
    weights = BlendWeights(tiles, torch.device("cpu"))
    agree = TileBlender(weights, 1, 3)
    disagree = TileBlender(weights, 1, 3)
    for number, tile in enumerate(tiles):
        region = image[..., tile.y0:tile.y0 + tile.height, tile.x0:tile.x0 + tile.width]
        agree.add(tile, region)
        disagree.add(tile, torch.full_like(region, float(number % 2)))
    assert torch.allclose(agree.frames(), image, atol=1e-6)
    steps = disagree.frames()[0, 0].diff(dim=1).abs()
    assert steps.max() < 0.02, "a hard seam would jump by 1"
