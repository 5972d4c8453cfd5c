"""FlashVSR modules: official key layout, and the LQ projector, TCDecoder and colour fix
against the golden fixture (independently of the DiT: the decoder is fed the stored latents)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vsrkit.engines.flashvsr.colorfix import color_fix
from vsrkit.engines.flashvsr.loader import (
    load_flashvsr,
    lq_proj_config_from_shapes,
    tcdecoder_config_from_shapes,
)
from vsrkit.engines.flashvsr.lq_proj import BufferLQProjector, CausalLQProjector, ProjectorState
from vsrkit.engines.flashvsr.tcdecoder import DecoderState, TCDecoder
from vsrkit.engines.flashvsr.wan_dit import WanDiT, dit_config_from_shapes

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "flashvsr"
FP32 = {"rtol": 0.0, "atol": 1e-4}
FP16_VIDEO = {"rtol": 1e-3, "atol": 1e-4}

pytestmark = pytest.mark.usefixtures("one_thread")


def shapes_of(module: torch.nn.Module) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in module.state_dict().items()}


@pytest.fixture(scope="module")
def manifest():
    path = REFERENCE / "official_checkpoint_manifest.json"
    if not path.is_file():
        pytest.skip(f"FlashVSR checkpoint manifest absent ({path})")
    data = json.loads(path.read_text())
    return {name: entry["keys"] for name, entry in data["checkpoints"].items() if "keys" in entry}


@pytest.fixture(scope="module")
def fixture_dir():
    folder = REFERENCE / "fixture"
    if not (folder / "case_A.safetensors").is_file():
        pytest.skip(f"golden fixture absent in {folder}")
    return folder


@pytest.fixture(scope="module")
def models(fixture_dir):
    return load_flashvsr(fixture_dir, version="v1.1", dtype="fp32", device="cpu")


def lq_video(case: dict[str, torch.Tensor]) -> torch.Tensor:
    """The fixture's pipeline input: padded frames as [1, 3, F, H, W] in -1..1."""
    frames = case["lq_hr_u8"][case["pad_index"]].float() / 255.0 * 2.0 - 1.0
    return frames.permute(3, 0, 1, 2)[None]


# ---------------------------------------------------------------- official layout on the meta device


def test_official_dit_matches_manifest(manifest):
    shapes = manifest["diffusion_pytorch_model_streaming_dmd.safetensors"]
    config = dit_config_from_shapes(shapes)
    assert config == {"dim": 1536, "in_dim": 16, "ffn_dim": 8960, "out_dim": 16, "text_dim": 4096, "freq_dim": 256,
                      "patch_size": (1, 2, 2), "num_heads": 12, "num_layers": 30}
    # Without a head count: Wan's dim / 128, else 32-wide heads for small models; a given count wins.
    assert dit_config_from_shapes(shapes, num_heads=6)["num_heads"] == 6
    narrow = {**shapes, "patch_embedding.weight": [96, 16, 1, 2, 2]}
    assert dit_config_from_shapes(narrow)["num_heads"] == 3
    with pytest.raises(ValueError, match="pass num_heads"):
        dit_config_from_shapes({**shapes, "patch_embedding.weight": [48, 16, 1, 2, 2]})
    with torch.device("meta"):
        built = WanDiT(**config)
        default = WanDiT()
    assert shapes_of(built) == shapes
    assert shapes_of(default) == shapes


@pytest.mark.parametrize("projector", [BufferLQProjector, CausalLQProjector])
def test_official_lq_projectors_match_manifest(manifest, projector):
    shapes = manifest["LQ_proj_in.ckpt"]
    config = lq_proj_config_from_shapes(shapes)
    assert config == {"in_dim": 3, "out_dim": 1536, "hidden_dim1": 2048, "hidden_dim2": 3072, "layer_num": 1}
    with torch.device("meta"):
        assert shapes_of(projector(**config)) == shapes
        assert shapes_of(projector()) == shapes


def test_official_tcdecoder_matches_manifest(manifest):
    shapes = manifest["TCDecoder.ckpt"]
    config = tcdecoder_config_from_shapes(shapes)
    assert config == {"channels": (512, 256, 128, 128), "latent_channels": 784}
    with torch.device("meta"):
        assert shapes_of(TCDecoder(**config)) == shapes
        assert shapes_of(TCDecoder()) == shapes


# ---------------------------------------------------------------- fixture checkpoints


def test_fixture_loads_strictly_with_sizes_from_shapes(models, fixture_dir):
    stated = json.loads((fixture_dir / "config.json").read_text())["models"]
    dit, proj, dec = stated["dit"], stated["lq_proj"], stated["tcdecoder"]
    got = models.config
    for key in ("dim", "ffn_dim", "text_dim", "freq_dim", "num_heads", "num_layers", "in_dim", "out_dim"):
        assert got["dit"][key] == dit[key], key
    assert tuple(got["dit"]["patch_size"]) == tuple(dit["patch_size"])
    assert (got["lq_proj"]["hidden_dim1"], got["lq_proj"]["hidden_dim2"]) == (proj["hidden_dim1"], proj["hidden_dim2"])
    assert list(got["tcdecoder"]["channels"]) == dec["channels"]
    assert isinstance(models.lq_proj, CausalLQProjector)
    for module, name in ((models.dit, "dit"), (models.lq_proj, "lq_proj"), (models.tcdecoder, "tcdecoder")):
        stored = load_file(str(fixture_dir / f"{name}.safetensors"))
        loaded = module.state_dict()
        assert sorted(loaded) == sorted(stored)
        for key, value in stored.items():
            assert torch.equal(loaded[key], value.float()), key
    # The decoder's identity-initialised convs must hold the file's (random) weights.
    assert not torch.equal(models.tcdecoder.decoder[3].weight, torch.nn.init.dirac_(torch.empty(32, 32, 3, 3)))
    prompt = load_file(str(fixture_dir / "prompt.safetensors"))["context"]
    assert torch.equal(models.prompt, prompt.float())


# ---------------------------------------------------------------- LQ projector


@pytest.mark.parametrize("case_name", ["A", "C"])
def test_lq_projector_tokens_per_chunk_match_fixture(models, fixture_dir, case_name):
    case = load_file(str(fixture_dir / f"case_{case_name}.safetensors"))
    video = lq_video(case)
    proj = models.lq_proj
    with torch.no_grad():
        # Bookkeeping of fixture README section 4: frame 0 alone (warm-up), then chunk 0 = [1:25],
        # chunk c >= 1 = [8c+17 : 8c+25].
        state = ProjectorState()
        assert proj.stream(video[:, :, :1], state) is None
        chunk0 = proj.stream(video[:, :, 1:25], state)
        chunk1 = proj.stream(video[:, :, 25:33], state)
        # The same in the upstream's one-call-per-4-frames rhythm.
        per_call = ProjectorState()
        proj.stream(video[:, :, :1], per_call)
        calls = [proj.stream(video[:, :, s:s + 4], per_call)[0] for s in range(1, 33, 4)]
    assert len(chunk0) == 1 and len(chunk1) == 1
    torch.testing.assert_close(chunk0[0], case["chunk0.lq_latents"], **FP32)
    torch.testing.assert_close(chunk1[0], case["chunk1.lq_latents"], **FP32)
    torch.testing.assert_close(torch.cat(calls[:6], 1), case["chunk0.lq_latents"], **FP32)
    torch.testing.assert_close(torch.cat(calls[6:], 1), case["chunk1.lq_latents"], **FP32)


def test_projector_variants_differ_in_what_they_remember(models):
    """v1 groups are independent; v1.1 carries the previous group into the next."""
    config = models.config["lq_proj"]
    causal = CausalLQProjector(**config)
    buffered = BufferLQProjector(**config)
    buffered.load_state_dict(models.lq_proj.state_dict())
    causal.load_state_dict(models.lq_proj.state_dict())
    generator = torch.Generator().manual_seed(3)
    video = torch.rand(1, 3, 13, 32, 32, generator=generator) * 2 - 1
    changed = video.clone()
    changed[:, :, 1:5] = -changed[:, :, 1:5]
    with torch.no_grad():
        outs = {}
        for name, proj in (("v1", buffered), ("v1.1", causal)):
            outs[name] = [proj(v)[0].reshape(1, 3, 4, 64) for v in (video, changed)]
    tokens_v1, tokens_v1_changed = outs["v1"]
    tokens_v11, tokens_v11_changed = outs["v1.1"]
    # Changing frames 1-4 (group 1) changes latent 0 in both variants ...
    assert not torch.allclose(tokens_v1[:, 0], tokens_v1_changed[:, 0])
    assert not torch.allclose(tokens_v11[:, 0], tokens_v11_changed[:, 0])
    # ... but latent 1 (frames 5-8) only where the stream is causal.
    torch.testing.assert_close(tokens_v1[:, 1], tokens_v1_changed[:, 1], rtol=0, atol=0)
    assert not torch.allclose(tokens_v11[:, 1], tokens_v11_changed[:, 1])
    assert not torch.allclose(tokens_v1[:, 1], tokens_v11[:, 1])


def test_projector_rejects_wrong_frame_counts(models):
    proj = models.lq_proj
    state = ProjectorState()
    with pytest.raises(ValueError, match="frame 0 alone"):
        proj.stream(torch.zeros(1, 3, 4, 32, 32), state)
    proj.stream(torch.zeros(1, 3, 1, 32, 32), state)
    with pytest.raises(ValueError, match="multiple of 4"):
        proj.stream(torch.zeros(1, 3, 3, 32, 32), state)


# ---------------------------------------------------------------- TCDecoder


@pytest.fixture(scope="module")
def decoded(models, fixture_dir):
    """Per case: the stored denoised latents decoded whole (Tiny) and per chunk (Tiny-Long)."""
    results = {}
    for name in ("A", "C"):
        case = load_file(str(fixture_dir / f"case_{name}.safetensors"))
        video = lq_video(case)
        latents0, latents1 = case["chunk0.denoised"], case["chunk1.denoised"]
        decoder = models.tcdecoder
        with torch.no_grad():
            whole = decoder.decode(torch.cat([latents0, latents1], 2), video[:, :, :29], DecoderState(),
                                   latents_per_pass=8)
            state = DecoderState()
            first = decoder.decode(latents0, video[:, :, :21], state)
            second = decoder.decode(latents1, video[:, :, 21:29], state)
        results[name] = (case, video, whole, torch.cat([first, second], dim=2))
    return results


def test_decoder_matches_fixture_before_colour_fix(decoded):
    case, _, whole, chunked = decoded["A"]
    reference = case["video_pre_colorfix"]
    assert whole.shape == (1, 3, 29, 128, 128)
    torch.testing.assert_close(whole[0], reference, **FP32)
    torch.testing.assert_close(chunked[0], reference, **FP32)
    case, _, whole, chunked = decoded["C"]
    reference = case["video_pre_colorfix"].float()
    assert whole.shape == (1, 3, 29, 128, 256)
    torch.testing.assert_close(whole[0], reference, **FP16_VIDEO)
    torch.testing.assert_close(chunked[0], reference, **FP16_VIDEO)


def test_decoder_stream_equals_whole_decode(decoded):
    for name in ("A", "C"):
        _, _, whole, chunked = decoded[name]
        torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


def test_decoder_states_are_independent(models):
    """Two interleaved streams (tiles) on one module give what each gives alone."""
    decoder = models.tcdecoder
    generator = torch.Generator().manual_seed(5)
    latents = [torch.randn(1, 16, 3, 4, 4, generator=generator) for _ in range(2)]
    conds = [torch.rand(1, 3, 12, 32, 32, generator=generator) * 2 - 1 for _ in range(2)]
    with torch.no_grad():
        alone = [decoder.decode(latents[i][:, :, :1], conds[i][:, :, :1], DecoderState()) for i in range(2)]
        states = [DecoderState(), DecoderState()]
        mixed = [[], []]
        for i in range(2):
            mixed[i].append(decoder.decode(latents[i][:, :, :1], conds[i][:, :, :1], states[i]))
        for i in range(2):
            mixed[i].append(decoder.decode(latents[i][:, :, 1:], conds[i][:, :, 1:9], states[i]))
        whole = [decoder.decode(latents[i], conds[i][:, :, :9], DecoderState()) for i in range(2)]
    for i in range(2):
        assert alone[i].shape[2] == 1
        torch.testing.assert_close(mixed[i][0], alone[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.cat(mixed[i], 2), whole[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(whole[i][:, :, :1], alone[i], rtol=0, atol=1e-5)
    assert not torch.allclose(whole[0], whole[1])


def test_decoder_checks_condition_frame_counts(models):
    decoder = models.tcdecoder
    state = DecoderState()
    assert decoder.cond_frames_needed(6, state) == 21
    with pytest.raises(ValueError, match="need 21 LQ frames"):
        decoder.decode(torch.zeros(1, 16, 6, 4, 4), torch.zeros(1, 3, 24, 32, 32), state)
    decoder.decode(torch.zeros(1, 16, 1, 4, 4), torch.zeros(1, 3, 1, 32, 32), state)
    assert decoder.cond_frames_needed(2, state) == 8


# ---------------------------------------------------------------- colour fix


def test_adain_matches_fixture(decoded):
    case, video, _, _ = decoded["A"]
    fixed = color_fix(case["video_pre_colorfix"][None], video[:, :, :29])
    torch.testing.assert_close(fixed[0], case["video_out"], **FP32)
    case, video, _, chunked = decoded["C"]
    fixed = color_fix(chunked, video[:, :, :29])
    torch.testing.assert_close(fixed[0], case["video_out"].float(), **FP16_VIDEO)
    # Frame by frame: fixing in Tiny-Long's pieces gives the same frames.
    pieces = [color_fix(chunked[:, :, s:e], video[:, :, s:e]) for s, e in ((0, 21), (21, 29))]
    torch.testing.assert_close(torch.cat(pieces, 2), fixed, rtol=0, atol=0)


def test_adain_takes_the_reference_statistics():
    generator = torch.Generator().manual_seed(1)
    frames = torch.rand(2, 3, 4, 16, 16, generator=generator) * 0.5 - 0.4
    reference = torch.rand(2, 3, 4, 16, 16, generator=generator) * 0.8 - 0.2
    fixed = color_fix(frames, reference, "adain")
    torch.testing.assert_close(fixed.mean(dim=(3, 4)), reference.mean(dim=(3, 4)), rtol=0, atol=1e-5)
    torch.testing.assert_close(fixed.std(dim=(3, 4), unbiased=False), reference.std(dim=(3, 4), unbiased=False),
                               rtol=1e-3, atol=1e-4)


def test_wavelet_keeps_detail_and_takes_reference_colour():
    generator = torch.Generator().manual_seed(2)
    reference = torch.rand(1, 3, 2, 64, 64, generator=generator) * 0.6 - 0.3
    # Identity: the same frames come back.
    torch.testing.assert_close(color_fix(reference, reference, "wavelet"), reference, rtol=0, atol=1e-5)
    # A colour cast (low frequency) is removed; added fine detail (high frequency) is kept.
    detail = torch.zeros_like(reference)
    detail[..., ::2, :] = 0.05
    detail[..., 1::2, :] = -0.05
    cast = reference + detail + torch.tensor([0.2, -0.1, 0.05])[None, :, None, None, None]
    fixed = color_fix(cast, reference, "wavelet")
    assert (fixed - (reference + detail)).abs().mean() < 0.01
    assert (cast - (reference + detail)).abs().mean() > 0.1
    with pytest.raises(ValueError):
        color_fix(cast, reference, "histogram")
