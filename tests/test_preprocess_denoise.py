"""Denoise and deblock: PSNR gains on synthetic noise, no loss on the real compressed carphone
clip, chunked == whole with temporal filters, IMAGE batches, alpha, nodes, parameter errors."""

from __future__ import annotations

import math

import pytest
import torch

from vsrkit.engines.clip import Clip
from vsrkit.engines.errors import InputError
from vsrkit.engines.video.filters import FILTER_PARAMS, FilterStep, Param, available, make_step
from vsrkit.engines.video.preprocess import (
    DEFAULT_DENOISE_METHOD,
    denoise_clip,
    denoise_images,
    denoise_methods_available,
    denoise_steps,
)
from vsrkit.nodes.preprocess import NODE_CLASS_MAPPINGS

METHODS = denoise_methods_available()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / float(((a - b) ** 2).mean()))


def clean_clip(count: int = 16, height: int = 64, width: int = 96) -> torch.Tensor:
    """Smooth moving colour waves and a sliding bar pattern: easy to tell apart from noise."""
    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None, :]
    frames = []
    for t in range(count):
        red = 0.5 + 0.35 * torch.sin(2 * math.pi * (2 * xs + 1.5 * ys) + 0.15 * t)
        green = 0.5 + 0.3 * torch.cos(2 * math.pi * (1.2 * xs - 2.2 * ys) - 0.1 * t)
        blue = (((4 * xs + 0.05 * t).floor() % 2) * 0.5 + 0.25).expand(height, width)
        frames.append(torch.stack([red, green, blue], dim=-1))
    return torch.stack(frames).clamp(0, 1)


def noisy(frames: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (frames + sigma * torch.randn(frames.shape, generator=generator)).clamp(0, 1)


@pytest.mark.parametrize("method", METHODS)
def test_medium_preset_raises_psnr_by_more_than_3db(method):
    clean = clean_clip()
    dirty = noisy(clean, 0.03)
    out = denoise_clip(Clip.from_tensor(dirty, 25), preset="medium", method=method).to_tensor()
    assert out.shape == dirty.shape
    gain = psnr(out, clean) - psnr(dirty, clean)
    assert gain > 3.0, (method, gain)


def test_presets_order_by_strength():
    clean = clean_clip()
    dirty = noisy(clean, 0.03)
    scores = [psnr(denoise_clip(Clip.from_tensor(dirty, 25), preset=p).to_tensor(), clean)
              for p in ("light", "medium", "strong")]
    assert scores[0] < scores[1] < scores[2], scores


@pytest.fixture(scope="module")
def carphone(footage):
    """The carphone clip's pristine and distorted (14 kb/s H.264) frames, all 120 of each."""
    from vsrkit.engines.video.decode import open_clip

    distorted = open_clip(footage / "carphone_qcif_distorted.mp4")
    pristine = open_clip(footage / "carphone_qcif_pristine.mp4").to_tensor()
    return pristine, distorted.to_tensor(), distorted.info


@pytest.mark.parametrize(("method", "preset", "frames"), [
    (DEFAULT_DENOISE_METHOD, "medium", 120),
    ("atadenoise", "medium", 120),
    ("nlmeans", "medium", 30),  # nlmeans is slow on 2 cores: the first second only
])
def test_deblock_plus_denoise_does_not_lower_psnr_on_carphone(carphone, method, preset, frames):
    pristine, distorted, info = carphone
    assert distorted.shape[0] == pristine.shape[0] == 120
    pristine, distorted = pristine[:frames], distorted[:frames]
    clip = Clip.from_tensor(distorted, info.fps)
    out = denoise_clip(clip, preset=preset, method=method, deblock=True).to_tensor()
    assert out.shape == pristine.shape
    before = psnr(distorted, pristine)
    assert psnr(out, pristine) >= before, (method, preset, psnr(out, pristine), before)


@pytest.mark.parametrize("method", METHODS)
def test_chunked_equals_whole_clip_for_every_method(method, chunked_clip):
    dirty = noisy(clean_clip(count=13, height=32, width=48), 0.03)
    options = {"s": 9} if method == "atadenoise" else None  # a wide window: state spans several chunks
    whole = denoise_clip(chunked_clip(dirty, [13]), method=method, options=options, deblock=True).to_tensor()
    assert whole.shape == dirty.shape
    assert not torch.equal(whole, dirty)
    for sizes in ([1], [3, 1, 4], [5]):
        parts = denoise_clip(chunked_clip(dirty, sizes), method=method, options=options, deblock=True).to_tensor()
        assert torch.equal(parts, whole), (method, sizes)


def test_temporal_method_really_uses_neighbouring_frames():
    """The chunk test means something only if output depends on other frames: check that."""
    dirty = noisy(clean_clip(count=9, height=32, width=48), 0.03)
    whole = denoise_clip(Clip.from_tensor(dirty, 25), method="atadenoise").to_tensor()
    alone = torch.cat([denoise_clip(Clip.from_tensor(dirty[i:i + 1], 25), method="atadenoise").to_tensor()
                       for i in range(dirty.shape[0])])
    assert not torch.equal(whole[4], alone[4])


def test_image_batch_matches_clip_and_alpha_is_carried():
    dirty = noisy(clean_clip(count=6, height=32, width=48), 0.03)
    alpha = torch.linspace(0, 1, 48).expand(6, 32, 48)[..., None]
    rgba = torch.cat([dirty, alpha], dim=-1)
    images = denoise_images(rgba, preset="light")
    clip_out = denoise_clip(Clip.from_tensor(dirty, 25), preset="light").to_tensor()
    assert images.shape == rgba.shape
    assert torch.equal(images[..., :3], clip_out)
    assert torch.equal(images[..., 3:], alpha)


def test_preset_none_without_deblock_returns_the_clip_itself():
    clip = Clip.from_tensor(torch.rand(3, 8, 8, 3), 25)
    assert denoise_clip(clip, preset="none") is clip
    deblocked = denoise_clip(clip, preset="none", deblock=True)
    assert deblocked is not clip and [s.filter for s in denoise_steps("none", deblock=True)] == ["deblock"]


def test_strength_sets_the_methods_main_option():
    steps = denoise_steps("medium", "fftdnoiz", strength=9)
    assert dict(steps[0].options)["sigma"] == "9.0"
    steps = denoise_steps("light", "atadenoise", strength=0.25)
    assert all(dict(steps[0].options)[k] == "0.25" for k in ("0a", "1a", "2a"))


def test_hqdn3d_only_where_the_build_has_it():
    if available("hqdn3d"):
        assert "hqdn3d" in METHODS
        denoise_steps("medium", "hqdn3d")
    else:
        assert "hqdn3d" not in METHODS
        with pytest.raises(InputError, match="hqdn3d.*not in this FFmpeg build"):
            denoise_steps("medium", "hqdn3d")
    # With the preset "none" the method never runs, so its absence must not stop a deblock-only pass.
    steps = denoise_steps("none", "hqdn3d", deblock=True)
    assert [step.filter for step in steps] == ["deblock"]


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"strength": 250.0}, ["'strength'", "fftdnoiz", "0 to 100", "250"]),
    ({"strength": "5"}, ["'strength'", "0 to 100", "str"]),
    ({"strength": True}, ["'strength'", "bool"]),
    ({"strength": float("nan")}, ["'strength'", "0 to 100"]),
    ({"method": "nlmeans", "strength": 0.5}, ["'strength'", "nlmeans", "1 to 30"]),
    ({"method": "atadenoise", "options": {"s": 8}}, ["'s'", "odd", "5 to 129", "even"]),
    ({"method": "atadenoise", "options": {"s": 7.5}}, ["'s'", "not whole"]),
    ({"method": "atadenoise", "options": {"s": float("nan")}}, ["'s'", "odd", "5 to 129", "nan"]),
    ({"method": "atadenoise", "options": {"s": float("inf")}}, ["'s'", "odd", "5 to 129", "inf"]),
    ({"deblock": True, "deblock_block": float("inf")}, ["'deblock_block'", "4 to 512"]),
    ({"method": "nlmeans", "options": {"s": "1:r=99"}}, ["'s'", "str"]),
    ({"options": {"planes": 1}}, ["'planes'", "sigma"]),
    ({"preset": "extreme"}, ["'preset'", "'light'", "'medium'", "'strong'"]),
    ({"method": "median"}, ["'method'", "'fftdnoiz'", "'nlmeans'"]),
    ({"deblock": True, "deblock_strength": 2}, ["'deblock_strength'", "0 to 1"]),
    ({"deblock": True, "deblock_block": 2}, ["'deblock_block'", "4 to 512"]),
    ({"deblock": "yes"}, ["'deblock'", "true or false"]),
    ({"preset": "none", "strength": 3.0}, ["'none'", "strength"]),
])
def test_bad_denoise_parameters_are_refused_by_name_and_range(kwargs, expected):
    clip = Clip.from_tensor(torch.zeros(2, 8, 8, 3), 25)
    with pytest.raises(InputError) as caught:
        denoise_clip(clip, **kwargs)
    for text in expected:
        assert text in str(caught.value), (text, str(caught.value))


def test_options_reach_ffmpeg_only_as_formatted_numbers_and_fixed_constants():
    for spec in FILTER_PARAMS.values():
        for name, param in spec.items():
            assert name == param.name
    step = make_step("deblock", {"filter": "weak", "block": 16, "alpha": 0.1})
    assert step == FilterStep("deblock", (("filter", "0"), ("block", "16"), ("alpha", "0.1")))
    with pytest.raises(InputError, match="'filter' must be one of 'weak', 'strong'"):
        make_step("deblock", {"filter": "weak:block=4"})
    assert Param("x", int, 0, 9).to_option(Param("x", int, 0, 9).check(4.0, "t")) == "4"


def test_nodes_run_on_clips_and_image_batches():
    dirty = noisy(clean_clip(count=5, height=32, width=48), 0.03)
    for name in ("vsrkitDenoise", "vsrkitDenoiseImages"):
        spec = NODE_CLASS_MAPPINGS[name].INPUT_TYPES()["required"]
        assert "atadenoise" in spec["method"][0] and "strong" in spec["preset"][0]
        defaults = {key: spec[key][1]["default"] for key in ("method", "preset", "deblock_strength")}
        assert defaults == {"method": "fftdnoiz", "preset": "medium", "deblock_strength": 0.5}
    # Settings away from the defaults; each variant puts one back, so a node dropping it gives other frames.
    cases = [
        ({"method": "atadenoise", "preset": "strong", "strength": 0.0, "deblock": True, "deblock_strength": 0.8},
         {"method": "fftdnoiz", "preset": "medium", "deblock": False, "deblock_strength": 0.5}),
        ({"method": "nlmeans", "preset": "light", "strength": 3.0, "deblock": False, "deblock_strength": 0.5},
         {"strength": None}),
    ]
    for settings, variants in cases:
        engine = {**settings, "strength": settings["strength"] or None}  # node strength 0: use the preset
        expected = denoise_images(dirty, **engine)
        for key, default in variants.items():
            assert not torch.equal(denoise_images(dirty, **{**engine, key: default}), expected), (settings, key)
        (clip,) = NODE_CLASS_MAPPINGS["vsrkitDenoise"]().denoise(Clip.from_tensor(dirty, 25), **settings)
        assert torch.equal(clip.to_tensor(), denoise_clip(Clip.from_tensor(dirty, 25), **engine).to_tensor())
        (images,) = NODE_CLASS_MAPPINGS["vsrkitDenoiseImages"]().denoise(dirty, **settings)
        assert torch.equal(images, expected)
    woven = torch.rand(4, 16, 16, 3)
    node = NODE_CLASS_MAPPINGS["vsrkitDeinterlace"]()
    progressive = Clip.from_tensor(woven, 25)
    assert node.deinterlace(progressive, method="bwdif", mode="auto", rate="frame", parity="auto")[0] is progressive
    (forced,) = node.deinterlace(progressive, method="yadif", mode="on", rate="field", parity="tff")
    assert forced.info.frame_count == 8 and forced.to_tensor().shape[0] == 8
    with pytest.raises(InputError, match="'strength'"):
        NODE_CLASS_MAPPINGS["vsrkitDenoise"]().denoise(progressive, method="atadenoise", strength=5.0)
