"""FlashVSR frame and size bookkeeping: N frames in give N frames out, W x H gives exactly scale*W x scale*H,
Tiny-Long equals Tiny and streams in bounded memory. Runs a tiny random model in the official layout."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from tests.flashvsr_stages import PipelineRecorder
from vsrkit.engines.clip import Clip
from vsrkit.engines.cluster.chain import ChainSettings, build_chain, load_engine
from vsrkit.engines.errors import InputError
from vsrkit.engines.flashvsr.chunks import chunk_count, pad_index, padded_frame_count, plan_chunk
from vsrkit.engines.flashvsr.loader import FlashVSRModels
from vsrkit.engines.flashvsr.lq_proj import CausalLQProjector
from vsrkit.engines.flashvsr.pipeline import FlashVSRPipeline, StreamSettings
from vsrkit.engines.flashvsr.tcdecoder import TCDecoder
from vsrkit.engines.flashvsr.upscale import upscale_clip
from vsrkit.engines.flashvsr.wan_dit import WanDiT
from vsrkit.engines.tiling import pad_to

FRAME_COUNTS = [1, 2, 7, 20, 21, 24, 25, 29, 33, 40, 100]
FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "flashvsr" / "fixture"


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_models(seed: int = 0) -> FlashVSRModels:
    """A random FlashVSR in the official structure, small enough to run hundreds of frames on a CPU."""
    torch.manual_seed(seed)
    dit = WanDiT(dim=32, in_dim=16, ffn_dim=32, out_dim=16, text_dim=16, freq_dim=16, num_heads=1, num_layers=1)
    projector = CausalLQProjector(in_dim=3, out_dim=32, hidden_dim1=8, hidden_dim2=8, layer_num=1)
    decoder = TCDecoder(channels=(8, 8, 8, 8), latent_channels=784)
    return FlashVSRModels("v1.1", dit, projector, decoder, torch.randn(1, 4, 16), config={}, files={}).eval()


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.fixture(scope="module")
def pipeline(models):
    return FlashVSRPipeline.from_models(models, attention_backend="sdpa")


def frames_with_levels(count: int, height: int, width: int) -> torch.Tensor:
    """[count, h, w, 3] frames whose brightness steps with the frame index, over a fixed texture."""
    texture = torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(1)) * 0.2
    levels = torch.linspace(0.1, 0.7, count).reshape(count, 1, 1, 1)
    return (levels + texture).clamp(0, 1)


def upscale(pipeline, frames: torch.Tensor, scale: int = 2, chunk: int = 5, **settings) -> torch.Tensor:
    chunks = [frames[i:i + chunk] for i in range(0, frames.shape[0], chunk)]
    return torch.cat(list(pipeline.upscale(chunks, scale, StreamSettings(**settings))))


def test_padding_plan_keeps_every_frame():
    for frames in range(1, 120):
        padded = padded_frame_count(frames)
        assert padded % 8 == 1 and padded >= 25 and padded - 4 >= frames
        assert padded - 8 < max(frames + 4, 25), "F is the smallest valid count"
        index = pad_index(frames)
        assert index[:frames] == list(range(frames)) and set(index[frames:]) <= {frames - 1}
        outputs = [f for c in range(chunk_count(frames)) for f in range(plan_chunk(c).output_start,
                                                                       plan_chunk(c).output_stop)]
        assert outputs == list(range(padded - 4))


@pytest.mark.skipif(not (FIXTURE / "config.json").is_file(), reason="golden fixture ../shared/flashvsr absent")
def test_chunk_plan_matches_the_reference_plan():
    config = json.loads((FIXTURE / "config.json").read_text())
    for case in ("A", "C"):
        frames = config["cases"][case]["frames"]["N_input"]
        for chunk in config["cases"][case]["plan"]["chunks"]:
            plan = plan_chunk(chunk["chunk"])
            assert [plan.latent_start, plan.latent_start + plan.latent_count] == chunk["latent_frames"]
            calls = chunk["lq_proj_stream_forward_calls"]
            assert calls[-1][1] == plan.lq_stop
            assert (calls[1][0] if chunk["chunk"] == 0 else calls[0][0]) == plan.lq_start
            assert [plan.output_start, plan.output_stop] == chunk["output_frames"] == chunk["decoder_cond_lq_frames"]
        # Where the reference's F is valid for us too (N = 8k+5), the padding is the same.
        if padded_frame_count(frames) == config["cases"][case]["frames"]["F_padded"]:
            assert pad_index(frames) == config["cases"][case]["frames"]["padded_index"]


@pytest.mark.parametrize("mode", ["tiny-long", "tiny"])
@pytest.mark.parametrize("frames", [1, 21, 22, 30, 41])
def test_stream_runs_the_planned_chunks_on_the_padded_clip(pipeline, mode, frames):
    """A real stream (input in chunks of 5, its end found late) runs chunk_count(N) chunks, and
    the model sees exactly the clip padded per pad_index: padded_frame_count(N) frames."""
    lq = (torch.arange(frames, dtype=torch.float32) / 100).reshape(frames, 1, 1, 1).expand(frames, 3, 128, 128)
    source = [lq[i:i + 5] for i in range(0, frames, 5)]
    with PipelineRecorder(pipeline) as recorder:
        out = torch.cat(list(pipeline.stream(source, settings=StreamSettings(mode=mode, color_fix="none"))))
    assert out.shape == (frames, 3, 128, 128)
    assert recorder.latent_starts == [plan_chunk(index).latent_start for index in range(chunk_count(frames))]
    model_frames = torch.cat(recorder.projector_frames)
    assert model_frames.shape[0] == padded_frame_count(frames)
    assert torch.equal(model_frames, torch.tensor(pad_index(frames), dtype=torch.float32) / 100)


@pytest.mark.parametrize("frames", FRAME_COUNTS)
def test_n_frames_in_give_n_frames_out(pipeline, frames):
    out = upscale(pipeline, frames_with_levels(frames, 12, 20))
    assert out.shape == (frames, 24, 40, 3)
    assert out.dtype == torch.float32 and 0 <= float(out.min()) and float(out.max()) <= 1


def test_output_frames_stay_aligned_with_their_inputs(pipeline):
    """AdaIN gives each output frame its own input frame's mean colour, so the means identify the frame."""
    frames = frames_with_levels(29, 12, 20)
    out = upscale(pipeline, frames, chunk=4)
    got = out.mean(dim=(1, 2, 3))
    want = frames.mean(dim=(1, 2, 3))
    nearest = (got[:, None] - want[None, :]).abs().argmin(dim=1)
    assert nearest.tolist() == list(range(29))


@pytest.mark.parametrize("height, width, scale", [(7, 13, 2), (36, 68, 4), (40, 72, 3), (1, 1, 2), (65, 33, 2)])
def test_output_size_is_exactly_scale_times_input(pipeline, height, width, scale):
    out = upscale(pipeline, torch.rand(2, height, width, 3), scale=scale)
    assert out.shape == (2, height * scale, width * scale, 3)


def test_padding_is_cropped_back_from_the_top_left(pipeline):
    """The model sees the frame padded on the bottom and right; the output is the top-left crop."""
    lq = torch.rand(25, 3, 128, 256) * 2 - 1
    with PipelineRecorder(pipeline) as recorder:
        out = torch.cat(list(pipeline.stream([lq], (80, 144), StreamSettings(color_fix="none"))))
    padded = torch.cat(recorder.stages["video_pre_colorfix"])
    assert padded.shape == (21 + 8, 3, 128, 256) and out.shape == (25, 3, 80, 144)
    assert torch.equal(out, padded[:25, :, :80, :144])


def test_pad_to_mirrors_the_content_edges():
    frames = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    padded = pad_to(frames, 8, 9)
    assert padded.shape == (2, 3, 8, 9) and torch.equal(padded[..., :5, :7], frames)
    assert torch.equal(padded[..., 5, :7], frames[..., 3, :])
    assert pad_to(torch.ones(1, 3, 2, 2), 128, 128).shape == (1, 3, 128, 128)


def test_tiny_long_equals_tiny(pipeline):
    frames = frames_with_levels(40, 12, 20)
    long = upscale(pipeline, frames, mode="tiny-long")
    tiny = upscale(pipeline, frames, mode="tiny")
    assert torch.allclose(long, tiny, rtol=0, atol=1e-6)


def test_tiled_run_keeps_frames_and_size(pipeline, models):
    frames = frames_with_levels(1, 60, 100)
    tiled = upscale(pipeline, frames, scale=2, tile_size=128, tile_overlap=64)
    whole = upscale(pipeline, frames, scale=2)
    assert tiled.shape == whole.shape == (1, 120, 200, 3)
    assert not torch.equal(tiled, whole)
    # One tile as large as the frame is the untiled run.
    assert torch.equal(upscale(pipeline, frames, scale=2, tile_size=256), whole)
    # Parking idle tiles' caches and memories in RAM (done on accelerators) changes nothing.
    parked = FlashVSRPipeline.from_models(models, attention_backend="sdpa")
    parked.park_tiles = True
    assert torch.equal(upscale(parked, frames, scale=2, tile_size=128, tile_overlap=64), tiled)


def out_of_memory_above(pipeline, monkeypatch, latent_pixels: int, from_chunk: int = 0) -> list[tuple[int, int]]:
    """Make the DiT step run out of memory (CUDA's error) on more than `latent_pixels` latent pixels,
    from the chunk whose first latent is `from_chunk`'s on; returns the latent sizes it was asked for."""
    sizes: list[tuple[int, int]] = []
    step = pipeline.dit.forward_chunk

    def limited(latents, lq_tokens, caches, first_frame, context):
        sizes.append(tuple(latents.shape[-2:]))
        if first_frame >= plan_chunk(from_chunk).latent_start and latents.shape[-2] * latents.shape[-1] > latent_pixels:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return step(latents, lq_tokens, caches, first_frame, context)

    monkeypatch.setattr(pipeline.dit, "forward_chunk", limited)
    return sizes


def test_out_of_memory_in_the_first_chunk_retries_on_smaller_tiles(pipeline, monkeypatch, caplog):
    frames = frames_with_levels(1, 64, 64)
    explicit = upscale(pipeline, frames, scale=4, tile_size=128, tile_overlap=64)
    sizes = out_of_memory_above(pipeline, monkeypatch, 16 * 16)
    shrunk = upscale(pipeline, frames, scale=4, tile_overlap=64)
    assert sizes[0] == (32, 32) and set(sizes[1:]) == {(16, 16)} and len(sizes) == 1 + 9
    assert torch.equal(shrunk, explicit)
    assert "ran out of memory on whole frames; continuing with 128 px tiles" in caplog.text


def test_out_of_memory_that_smaller_tiles_cannot_fix_is_raised(pipeline, monkeypatch):
    frames = frames_with_levels(22, 16, 16)
    sizes = out_of_memory_above(pipeline, monkeypatch, 8 * 8)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        upscale(pipeline, frames, tile_overlap=64)
    assert sizes == [(16, 16)], "a 128 px frame has no smaller tiles"


def test_out_of_memory_after_the_first_chunk_is_raised(pipeline, monkeypatch):
    """Past the first chunk, frames have gone out: the error is raised, not retried on other tiles."""
    sizes = out_of_memory_above(pipeline, monkeypatch, 8 * 8, from_chunk=1)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        upscale(pipeline, frames_with_levels(22, 64, 64), scale=4, tile_overlap=64)
    assert sizes == [(32, 32), (32, 32)]


def test_seed_fixes_the_noise(pipeline):
    frames = frames_with_levels(2, 12, 20)
    first = upscale(pipeline, frames, seed=3, color_fix="none")
    assert torch.equal(first, upscale(pipeline, frames, seed=3, color_fix="none"))
    assert not torch.equal(first, upscale(pipeline, frames, seed=4, color_fix="none"))


MEMORY_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_flashvsr_frames import tiny_models
    from vsrkit.engines.flashvsr.pipeline import FlashVSRPipeline, StreamSettings
    torch.set_num_threads(1)
    pipeline = FlashVSRPipeline.from_models(tiny_models(), attention_backend="sdpa")
    def source(frames):
        for start in range(0, frames, 4):
            yield torch.rand(min(4, frames - start), 64, 64, 3)
    for run in sys.argv[1:]:
        frames, mode = int(run.split(":")[0]), run.split(":")[1]
        count = 0
        for chunk in pipeline.upscale(source(frames), 2, StreamSettings(mode=mode)):
            count += chunk.shape[0]
        assert count == frames
        # VmHWM: this process image's peak resident set so far (ru_maxrss would include the forking parent's).
        status = open("/proc/self/status").read()
        print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
""")


def peak_rss_kib(*runs: tuple[int, str]) -> list[int]:
    """Peak RSS after each (frames, mode) run, one after the other in one fresh process.

    The peak only rises, so run k's own growth beyond every earlier run shows as the rise
    from entry k-1 to entry k; one process instead of one per run saves the torch imports.
    """
    script = MEMORY_SCRIPT.format(tests=str(Path(__file__).resolve().parent))
    result = subprocess.run([sys.executable, "-c", script, *(f"{frames}:{mode}" for frames, mode in runs)],
                            capture_output=True, text=True, check=True)
    return [int(value) for value in result.stdout.split()[-len(runs):]]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc for peak RSS")
def test_tiny_long_peak_memory_does_not_grow_with_clip_length():
    """Peak RSS of a 64-frame and a 320-frame Tiny-Long run at 128x128 output stays flat (keeping the
    256 extra output frames would cost 50 MB), while Tiny, which keeps the clip, grows: the probe sees
    growth. A 32-frame run goes first: the process's first run grows by about 10 MB whatever its length
    (one-time allocations), which is not what this test is about."""
    _, short_long, long_long, long_tiny = peak_rss_kib(
        (32, "tiny-long"), (64, "tiny-long"), (320, "tiny-long"), (160, "tiny"))
    assert long_long - short_long < 16 * 1024, (short_long, long_long)
    assert long_tiny - long_long > 64 * 1024, (long_long, long_tiny)


def test_upscale_clip_streams_a_clip_with_alpha(models):
    frames = torch.rand(9, 10, 14, 4)
    frames[..., 3] = torch.linspace(0, 1, 14)
    clip = Clip.from_tensor(frames, Fraction(24000, 1001))
    out = upscale_clip(clip, models, scale=3, attention_backend="sdpa")
    assert (out.info.width, out.info.height, out.info.frame_count, out.info.channels) == (42, 30, 9, 4)
    assert out.info.fps == Fraction(24000, 1001)
    pulled = out.to_tensor()
    assert pulled.shape == (9, 30, 42, 4)
    alpha = pulled[0, :, :, 3].mean(dim=0)
    assert alpha[0] < 0.1 and alpha[-1] > 0.9 and bool((alpha.diff() >= -1e-6).all())


def test_upscale_clip_rejects_bad_settings(models):
    clip = Clip.from_tensor(torch.rand(2, 8, 8, 3), 24)
    with pytest.raises(InputError, match="scale"):
        upscale_clip(clip, models, scale=5)
    with pytest.raises(InputError, match="tile size"):
        upscale_clip(clip, models, tile_size=100)
    with pytest.raises(InputError, match="mode"):
        upscale_clip(clip, models, mode="full")
    # A 1600x1600 output gets automatic 1024 px tiles: an overlap above 512 is refused up front, by name.
    large = Clip.from_tensor(torch.zeros(1, 400, 400, 3), 24)
    with pytest.raises(InputError, match="tile_overlap to at most 512"):
        upscale_clip(large, models, tile_size=0, tile_overlap=768)
    assert upscale_clip(large, models, tile_size=0, tile_overlap=512).info.width == 1600


@pytest.mark.skipif(not (FIXTURE / "config.json").is_file(), reason="golden fixture ../shared/flashvsr absent")
def test_cli_entry_loads_from_model_dir_and_upscales():
    clip = Clip.from_tensor(torch.rand(3, 9, 11, 3), 25)
    settings = ChainSettings(engine="flashvsr", model_dir=str(FIXTURE), scale=2, device="cpu", precision="fp32",
                             flashvsr_version="v1.1")
    out = build_chain(clip, settings, load_engine(settings))
    assert (out.info.width, out.info.height, out.info.frame_count) == (22, 18, 3)
    assert out.to_tensor().shape == (3, 18, 22, 3)


def test_real_clip_keeps_count_size_and_rate(footage, models):
    from vsrkit.engines.video.decode import open_clip

    clip = open_clip(footage / "carphone_qcif_pristine.mp4", max_frames=11)
    out = upscale_clip(clip, models, scale=2, attention_backend="sdpa")
    assert (out.info.width, out.info.height, out.info.frame_count) == (352, 288, 11)
    assert out.info.fps == clip.info.fps
    pulled = out.to_tensor()
    assert pulled.shape == (11, 288, 352, 3)
    # AdaIN carries each input frame's mean colour to its output frame.
    source = clip.to_tensor()
    assert torch.allclose(pulled.mean(dim=(1, 2)), source.mean(dim=(1, 2)), atol=0.02)
