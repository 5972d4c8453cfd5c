"""The temporal stabiliser on synthetic video whose truth is known: a textured pattern moving by
sub-pixel steps, upscaled "per frame" as the clean pattern plus fresh random fine texture in every
frame (the stand-in for a GAN's invented detail), and a moving object over a still background."""

from __future__ import annotations

import math
import sys
from fractions import Fraction

import pytest
import torch

from vsrkit.engines.clip import Clip
from vsrkit.engines.errors import InputError, MissingDependencyError
from vsrkit.engines.video.flicker import measure_flicker
from vsrkit.engines.video.stabilize import (
    DEFAULT_STRENGTH,
    StabilizeSettings,
    _dissimilarity,
    stabilize_clip,
    stabilized_upscale,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SCALE = 4
LOW = (32, 40)
FRAMES = 10
STEP = (0.37, 0.23)  # input pixels per frame, x and y


def pattern(height: int, width: int, shift: tuple[float, float], scale: int, seed: int = 3) -> torch.Tensor:
    """[H, W, 3] sum of sinusoids at pixel centres of a grid `scale` times finer than the input's,
    moved by `shift` input pixels: the same continuous picture at any resolution."""
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) / scale - 0.5 - shift[1]
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) / scale - 0.5 - shift[0]
    generator = torch.Generator().manual_seed(seed)
    out = torch.full((3, height, width), 0.5, dtype=torch.float64)
    for _ in range(10):
        fx, fy = ((torch.rand(2, generator=generator, dtype=torch.float64) - 0.5) * 0.6).tolist()
        phase = float(torch.rand(1, generator=generator)) * 2 * math.pi
        amplitude = torch.rand(3, 1, 1, generator=generator, dtype=torch.float64) * 0.07
        out += amplitude * torch.sin(2 * math.pi * (fx * xs.view(1, -1) + fy * ys.view(-1, 1)) + phase)
    return out.clamp(0, 1).permute(1, 2, 0).float()


def hallucinated(clean: torch.Tensor, seed: int = 9, amount: float = 0.04) -> torch.Tensor:
    """Clean frames plus fresh random fine texture in every frame."""
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed)) * amount
    return (clean + noise).clamp(0, 1)


@pytest.fixture(scope="module")
def moving_texture():
    """(input, clean upscale, per-frame upscale) of the sub-pixel moving pattern."""
    h, w = LOW
    source = torch.stack([pattern(h, w, (STEP[0] * t, STEP[1] * t), 1) for t in range(FRAMES)])
    clean = torch.stack([pattern(h * SCALE, w * SCALE, (STEP[0] * t, STEP[1] * t), SCALE) for t in range(FRAMES)])
    return source, clean, hallucinated(clean)


def clip(frames: torch.Tensor) -> Clip:
    return Clip.from_tensor(frames, fps=Fraction(25))


def stabilised(per_frame: torch.Tensor, source: torch.Tensor, **settings) -> torch.Tensor:
    return stabilize_clip(clip(per_frame), clip(source), StabilizeSettings(**settings)).to_tensor()


def test_flicker_of_invented_texture_falls_below_40_percent_and_the_result_nears_the_truth(moving_texture):
    source, clean, per_frame = moving_texture
    steady = stabilised(per_frame, source)
    plain, stable = measure_flicker([clip(per_frame), clip(steady)], clip(clean), clip(source))
    assert stable.warping_error <= 0.4 * plain.warping_error
    assert (steady - clean).square().mean() < (per_frame - clean).square().mean()
    assert stable.psnr > plain.psnr and stable.edge_ratio >= 0.95


def test_a_moving_object_leaves_no_ghost_on_the_still_background():
    h, w = LOW
    background_low, background = pattern(h, w, (0, 0), 1, seed=4), pattern(h * SCALE, w * SCALE, (0, 0), SCALE, seed=4)

    def scene(height: int, width: int, scale: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The frame and the object's mask: a bright textured square moving 1.5 input px a frame."""
        frame = (background_low if scale == 1 else background).clone()
        ys = (torch.arange(height) + 0.5) / scale
        xs = (torch.arange(width) + 0.5) / scale
        left = 6 + 1.5 * t
        inside = ((ys >= 8) & (ys < 22)).view(-1, 1) & ((xs >= left) & (xs < left + 10)).view(1, -1)
        frame[inside] = pattern(height, width, (1.5 * t, 0), scale, seed=5)[inside] * 0.3 + 0.65
        return frame, inside

    source = torch.stack([scene(h, w, 1, t)[0] for t in range(FRAMES)])
    clean, masks = zip(*(scene(h * SCALE, w * SCALE, SCALE, t) for t in range(FRAMES)), strict=True)
    clean = torch.stack(clean)
    per_frame = hallucinated(clean)

    def worst_edge_error(steady: torch.Tensor) -> float:
        """The largest ratio over frames of the error near the object's outlines to per-frame's there."""
        worst = 0.0
        for t in range(1, FRAMES):
            now, before = masks[t].float()[None, None], masks[t - 1].float()[None, None]
            grown = torch.nn.functional.max_pool2d(torch.maximum(now, before), 17, 1, 8)
            shrunk = -torch.nn.functional.max_pool2d(-torch.minimum(now, before), 17, 1, 8)
            near_edges = (grown - shrunk)[0, 0].bool()  # a band 8 output px either side of both outlines
            plain_error = (per_frame[t] - clean[t])[near_edges].square().mean()
            worst = max(worst, float((steady[t] - clean[t])[near_edges].square().mean() / plain_error))
        return worst

    assert worst_edge_error(stabilised(per_frame, source)) <= 1.0
    # The check on the size of the change is what keeps the ghost away here.
    assert worst_edge_error(stabilised(per_frame, source, change_tolerance=0)) > 1.2
    # The clamped history (off by default) keeps what the check rejects within the new frame's
    # local colours, which span both sides of an outline: it lets the outline move, and ghosts.
    assert worst_edge_error(stabilised(per_frame, source, history_clamp=True)) > 1.2


def test_the_history_clamp_steadies_texture_where_trust_is_low(moving_texture):
    source, clean, per_frame = moving_texture
    distrustful = {"change_tolerance": 0.005}  # the invented texture alone fails this change check
    plain, rejected, clamped = measure_flicker(
        [clip(per_frame), clip(stabilised(per_frame, source, **distrustful)),
         clip(stabilised(per_frame, source, history_clamp=True, **distrustful))], clip(clean), clip(source))
    assert rejected.warping_error > 0.5 * plain.warping_error
    assert clamped.warping_error < 0.25 * rejected.warping_error
    assert clamped.psnr > plain.psnr and clamped.edge_ratio >= 0.95


def test_the_colour_check_with_reach_forgives_sub_pixel_shifts_of_fine_detail_but_not_changes():
    xs = torch.arange(16.0)
    stripes = (0.5 + 0.4 * torch.sin(xs * 2.2)).expand(1, 3, 8, 16)
    moved = (0.5 + 0.4 * torch.sin((xs + 0.3) * 2.2)).expand(1, 3, 8, 16)  # a third of a pixel on
    changed = moved.clone()
    changed[..., 2:6, 5:11] = 0.0  # something dark came in
    plain = _dissimilarity(stripes, moved, 0.0)[..., 1:-1]
    forgiving = _dissimilarity(stripes, moved, 0.5)[..., 1:-1]
    assert plain.mean() > 0.1 and forgiving.max() < 0.02
    assert _dissimilarity(stripes, changed, 0.5)[..., 3:5, 6:10].mean() > 0.2
    assert torch.equal(_dissimilarity(stripes, moved, 0.0), (stripes - moved).abs())


def test_stabilised_frames_stay_within_0_and_1():
    """Black-and-white texture invented anew in every frame over a still grey input: where the coarse
    band's share of the blend lands on a pixel already at 0 or 1, it must stop there."""
    generator = torch.Generator().manual_seed(5)
    source = torch.full((6, 8, 10, 3), 0.5)
    per_frame = (torch.rand(6, 32, 40, 1, generator=generator) > 0.5).float().expand(-1, -1, -1, 3)
    steady = stabilised(per_frame, source, change_tolerance=0.0, colour_tolerance=1.0)
    assert not torch.equal(steady, per_frame)
    assert steady.min() >= 0 and steady.max() <= 1, (steady.min(), steady.max())


def test_an_input_change_within_the_colour_noise_keeps_full_trust():
    """A still input whose second frame is 0.01 brighter (resampling noise, not a change) under an
    upscale that brightens by 0.1: the carried frame is trusted as if the input had not changed;
    without the allowance it is trusted 0.01 / 0.15 less, which shows as about 0.63 x 0.1 x 0.067 =
    0.0042 on average (the flow DIS finds between the two inputs moves the carried frame a little in
    both cases)."""
    h, w = LOW
    first = pattern(h, w, (0, 0), 1)[None]
    upscaled = pattern(h * SCALE, w * SCALE, (0, 0), SCALE)[None]
    per_frame = torch.cat([upscaled, upscaled + 0.1])
    still, brighter = torch.cat([first, first]), torch.cat([first, first + 0.01])

    def second_frame(source: torch.Tensor, **settings) -> torch.Tensor:
        return stabilised(per_frame, source, change_tolerance=0.0, **settings)[1]

    reference = second_frame(still)
    assert (second_frame(brighter) - reference).abs().mean() < 2.5e-3
    assert (second_frame(brighter, colour_noise=0.0) - reference).abs().mean() > 4e-3


def test_strength_0_is_the_per_frame_output_bit_for_bit(moving_texture):
    source, _, per_frame = moving_texture
    upscaled = clip(per_frame)
    assert stabilize_clip(upscaled, clip(source), StabilizeSettings(strength=0)) is upscaled
    through = stabilized_upscale(clip(source), lambda low: upscaled, StabilizeSettings(strength=0))
    assert torch.equal(through.to_tensor(), per_frame)


def test_chunked_equals_whole_and_every_frame_comes_out_at_its_size(moving_texture):
    source, _, per_frame = moving_texture
    whole = stabilised(per_frame, source)
    assert whole.shape == per_frame.shape
    for size in (1, 3):
        def chunked(frames: torch.Tensor, size=size) -> Clip:
            return Clip(clip(frames).info, lambda: iter(frames.split(size)))

        out = stabilize_clip(chunked(per_frame), chunked(source), StabilizeSettings()).to_tensor()
        assert torch.equal(out, whole), f"chunks of {size}"

    def replay(low: Clip) -> Clip:
        """An 'upscaler' that reads the source chunk by chunk and gives the matching per-frame frames."""
        def frames():
            done = 0
            for chunk in low.chunks():
                yield per_frame[done:done + chunk.shape[0]]
                done += chunk.shape[0]
        return Clip(clip(per_frame).info, frames)

    assert torch.equal(stabilized_upscale(clip(source), replay).to_tensor(), whole)


def test_alpha_passes_through_and_odd_sizes_and_scales_are_kept():
    source = torch.rand(4, 11, 13, 4)
    upscaled = torch.rand(4, 22, 26, 4)
    out = stabilize_clip(clip(upscaled), clip(source)).to_tensor()
    assert out.shape == (4, 22, 26, 4)
    assert torch.equal(out[..., 3], upscaled[..., 3]) and torch.equal(out[0], upscaled[0])


def nearest(low: Clip, repeat: int = 1) -> Clip:
    """A stand-in upscaler: nearest-neighbour x4, each frame given `repeat` times."""
    def grow(chunk: torch.Tensor) -> torch.Tensor:
        big = torch.nn.functional.interpolate(chunk.permute(0, 3, 1, 2), scale_factor=SCALE).permute(0, 2, 3, 1)
        return big.repeat_interleave(repeat, dim=0)

    return low.map(grow, width=low.info.width * SCALE, height=low.info.height * SCALE)


def test_the_teed_source_is_decoded_once_and_upscalers_must_keep_the_frame_count(moving_texture):
    source, _, _ = moving_texture
    pulls = []
    low = clip(source)

    def counted():
        pulls.append(1)
        yield from low.chunks()

    out = stabilized_upscale(Clip(low.info, counted), nearest).to_tensor()
    assert out.shape == (FRAMES, LOW[0] * SCALE, LOW[1] * SCALE, 3) and len(pulls) == 1
    assert torch.equal(out, stabilised(nearest(low).to_tensor(), source))
    with pytest.raises(RuntimeError, match="one output frame per input frame"):
        stabilized_upscale(low, lambda frames: nearest(frames, repeat=2)).to_tensor()


def test_mismatched_inputs_and_settings_are_refused_by_name(moving_texture):
    source, _, per_frame = moving_texture
    with pytest.raises(InputError, match="frames"):
        stabilize_clip(clip(per_frame[:5]), clip(source))
    with pytest.raises(InputError, match="smaller than its source"):
        stabilize_clip(clip(source), clip(per_frame))
    with pytest.raises(InputError, match="'strength'"):
        stabilize_clip(clip(per_frame), clip(source), StabilizeSettings(strength=1.5))
    with pytest.raises(InputError, match="'scene_threshold'"):
        stabilize_clip(clip(per_frame), clip(source), StabilizeSettings(scene_threshold=-1))
    with pytest.raises(InputError, match="'colour_noise' \\(0.2\\) must be below 'colour_tolerance' \\(0.15\\)"):
        stabilize_clip(clip(per_frame), clip(source), StabilizeSettings(colour_noise=0.2))
    with pytest.raises(InputError, match="'history_clamp' must be true or false"):
        stabilize_clip(clip(per_frame), clip(source), StabilizeSettings(history_clamp="yes"))


def test_without_opencv_the_error_says_what_to_install(moving_texture, monkeypatch):
    source, _, per_frame = moving_texture
    monkeypatch.setitem(sys.modules, "cv2", None)  # what `import cv2` meets where OpenCV is not installed
    with pytest.raises(MissingDependencyError, match="pip install opencv-python-headless") as caught:
        stabilize_clip(clip(per_frame), clip(source))
    assert "--stabilize 0" in str(caught.value) and f"strength {DEFAULT_STRENGTH:g}" in str(caught.value)
    assert stabilize_clip(clip(per_frame), clip(source), StabilizeSettings(strength=0)).to_tensor().shape[0] == FRAMES


def test_nodes_stabilise_clips_and_image_batches(moving_texture):
    from vsrkit.nodes.temporal import TemporalStabilize

    source, _, per_frame = moving_texture
    node = TemporalStabilize()
    lazy, empty = node.stabilize(DEFAULT_STRENGTH, device="cpu", clip=clip(per_frame), source_clip=clip(source))
    assert empty.shape[0] == 0
    _, images = node.stabilize(DEFAULT_STRENGTH, device="cpu", images=per_frame, source_images=source)
    assert torch.equal(images, lazy.to_tensor()) and torch.equal(images, stabilised(per_frame, source))
    with pytest.raises(InputError, match="one upscaled input"):
        node.stabilize(DEFAULT_STRENGTH, device="cpu", images=per_frame)


def test_realesrgan_upscale_node_stabilises_by_default_and_0_gives_the_per_frame_frames(moving_texture):
    from vsrkit.engines.realesrgan.loading import model_from_state
    from vsrkit.engines.realesrgan.srvgg import SRVGGNetCompact
    from vsrkit.engines.realesrgan.upscale import upscale_clip
    from vsrkit.nodes.realesrgan import RealESRGANUpscale

    source, _, _ = moving_texture
    torch.manual_seed(0)
    model = model_from_state(SRVGGNetCompact(num_feat=16, num_conv=2, upscale=4).state_dict(), "tiny")
    per_frame = upscale_clip(clip(source), model, device="cpu").to_tensor()
    node = RealESRGANUpscale()
    _, plain = node.upscale(model, device="cpu", images=source, stabilize=0.0)
    _, steady = node.upscale(model, device="cpu", images=source)
    assert torch.equal(plain, per_frame)
    assert torch.equal(steady, stabilised(per_frame, source)) and not torch.equal(steady, per_frame)
