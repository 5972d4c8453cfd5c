"""The flicker measure: the warping error of Lai et al. 2018 as the issue defines it, the flow checks
behind its mask, edge sharpness and PSNR, in the engine and through `vsrkit flicker`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsrkit.engines.clip import Clip
from vsrkit.engines.errors import InputError
from vsrkit.engines.video.flicker import measure_flicker
from vsrkit.engines.video.flow import (
    COARSE_SETTINGS,
    DETAILED_SETTINGS,
    DenseFlow,
    boundary_ratio,
    consistency_ratio,
    dis,
    grey_resized,
    grey_u8,
    inside_frame,
    pixel_centres,
    reliable,
    resize_flow,
    sample,
    warp,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def clip(frames: torch.Tensor) -> Clip:
    return Clip.from_tensor(frames, fps=Fraction(25))


def picture(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """[H, W, 3] smooth random texture (blurred noise) with strong edges for the flow to lock on."""
    noise = torch.rand(1, 3, height // 4, width // 4, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)[0].permute(1, 2, 0)


def sliding(count: int, height: int, width: int, step: int = 2) -> torch.Tensor:
    """A wide picture seen through a window moving `step` px right per frame (whole pixels: exact)."""
    wide = picture(height, width + step * count)
    return torch.stack([wide[:, step * t:step * t + width] for t in range(count)])


def test_flow_checks_pass_inverse_flows_and_flag_contradictions_boundaries_and_the_frame_edge():
    right = torch.zeros(1, 2, 16, 20)
    right[:, 0] = 2.0
    assert (consistency_ratio(right, -right) <= 1).all()
    assert (consistency_ratio(right, right) > 1).all()
    assert not inside_frame(right)[..., -2:].any() and inside_frame(right)[..., :-2].all()
    step = torch.zeros(1, 2, 16, 20)
    step[:, 0, :, 10:] = 3.0
    boundary = boundary_ratio(step) > 1
    assert boundary[..., 9:11].all() and not boundary[..., :8].any() and not boundary[..., 12:].any()
    assert torch.allclose(warp(torch.arange(20.0).expand(1, 1, 16, 20), right)[0, 0, 0, :4], torch.tensor([2., 3, 4, 5]))
    assert not reliable(right, right).any()


def test_two_scale_flow_takes_the_coarse_flow_where_it_explains_the_input_and_the_detailed_one_elsewhere():
    """A 3-pixel bright square moves 3 input px over a still picture, seen 4x upscaled: the coarse DIS
    alone misses the square by over a pixel, the two-scale flow follows it as DIS medium does;
    on the still background, where both explain the frames, it is the coarse flow."""
    height, width, scale = 40, 56, 4
    background = picture(height, width, seed=1) * 0.4

    def frame(left: int) -> np.ndarray:
        seen = background.clone()
        seen[18:21, left:left + 3] = 0.9
        return grey_resized(grey_u8(seen), height * scale, width * scale)

    now, before = frame(23), frame(20)
    coarse = torch.from_numpy(dis("medium", COARSE_SETTINGS).calc(now, before, None).transpose(2, 0, 1).copy())
    two_scale = DenseFlow("two-scale", (height, width))(now, before)[0]
    medium = DenseFlow("medium")(now, before)[0]
    square = (slice(18 * scale + 2, 21 * scale - 2), slice(23 * scale + 2, 26 * scale - 2))
    truth = torch.tensor([-3.0 * scale, 0.0]).view(2, 1, 1)

    def error(flow: torch.Tensor) -> float:
        return float((flow[:, square[0], square[1]] - truth).norm(dim=0).mean())

    assert error(coarse) > 1.0
    assert error(two_scale) < error(medium) + 0.25
    still = (slice(2 * scale, 10 * scale), slice(2 * scale, 12 * scale))
    assert torch.allclose(two_scale[:, still[0], still[1]], coarse[:, still[0], still[1]], rtol=1e-4, atol=0)


def test_two_scale_flow_below_4x_is_the_detailed_flow_alone():
    """Frames 2x the input: the detailed flow's grid is already the input's, so the coarse one, a grid
    coarser still, is not run (nor blended in); at 4x it is."""
    height, width = 40, 56
    background = picture(height, width, seed=2)
    shifted = torch.roll(background, 1, dims=1)
    for scale in (2, 4):
        now, before = (grey_resized(grey_u8(f), height * scale, width * scale) for f in (shifted, background))
        detailed = torch.from_numpy(dis("medium", DETAILED_SETTINGS).calc(now, before, None).transpose(2, 0, 1).copy())
        two_scale = DenseFlow("two-scale", (height, width))(now, before)[0]
        assert torch.equal(two_scale, detailed) == (scale == 2)


def test_bicubic_sampling_on_the_cpu_in_row_bands_gives_one_calls_values():
    """`sample` cuts a CPU image's rows into one band per torch thread; the values and the size are
    those of one grid_sample call, whatever the height (padded bands, fewer rows than threads)."""
    threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(4)
    try:
        torch.set_num_threads(3)
        for height in (1, 2, 7, 48, 49):
            image = torch.rand(1, 3, height, 20, generator=generator)
            grid = torch.rand(1, height, 20, 2, generator=generator) * 2.4 - 1.2
            plain = F.grid_sample(image, grid, mode="bicubic", padding_mode="border", align_corners=False)
            assert torch.equal(sample(image, grid, "bicubic"), plain)
    finally:
        torch.set_num_threads(threads)


def test_bspline_sampling_keeps_the_pixels_and_follows_a_smooth_picture_between_them():
    frame = picture(24, 32).permute(2, 0, 1)[None]
    centres = pixel_centres(24, 32)
    assert torch.allclose(sample(frame, centres, "bspline"), frame, atol=2e-3)
    # Between pixels, a cubic (no overshoot, exact on quadratics) on a quadratic ramp.
    xs = torch.arange(32.0)
    ramp = (0.3 + 0.02 * xs + 0.0004 * xs * xs).expand(1, 1, 24, 32)
    shifted = centres + torch.tensor([0.37 * 2 / 32, 0.0])
    expected = 0.3 + 0.02 * (xs + 0.37) + 0.0004 * (xs + 0.37) ** 2
    inner = sample(ramp, shifted, "bspline")[0, 0, :, 8:-8]
    assert torch.allclose(inner, expected[8:-8].expand(24, -1), atol=2e-5)
    assert not torch.allclose(sample(ramp, shifted, "bilinear")[0, 0, :, 8:-8], expected[8:-8].expand(24, -1), atol=2e-5)


def test_shrinking_a_flow_averages_it_and_scales_its_vectors():
    flow = torch.zeros(1, 2, 8, 12)
    flow[:, 0, :, :6] = 4.0
    flow[:, 1, :4] = -2.0
    small = resize_flow(flow, 4, 6)
    assert small.shape == (1, 2, 4, 6)
    assert torch.equal(small[0, 0, :, :3], torch.full((4, 3), 2.0)) and torch.equal(small[0, 0, :, 3:], torch.zeros(4, 3))
    assert torch.equal(small[0, 1, :2], torch.full((2, 6), -1.0)) and torch.equal(small[0, 1, 2:], torch.zeros(2, 6))
    assert resize_flow(flow, 16, 24).shape == (1, 2, 16, 24)


def test_warping_error_is_the_papers_formula_on_a_still_reference():
    reference = picture(24, 32).expand(5, -1, -1, -1).contiguous()
    candidate = torch.rand(5, 24, 32, 3, generator=torch.Generator().manual_seed(1))
    (report,) = measure_flicker([clip(candidate)], clip(reference))
    # Still frames: the flow is zero and the mask keeps every pixel, so E is the mean squared
    # difference between consecutive frames over pixels and the three channels.
    expected = (candidate[:-1] - candidate[1:]).square().mean(dim=(1, 2, 3)).mean()
    assert report.warping_error == pytest.approx(float(expected), rel=1e-3)
    assert report.frames == 5


def test_warping_error_follows_motion_and_counts_only_what_changes_along_it():
    truth = sliding(6, 32, 48)
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(2)) * 0.02
    blurred = F.avg_pool2d(truth.permute(0, 3, 1, 2), 5, 1, 2, count_include_pad=False).permute(0, 2, 3, 1)
    steady, flickering, soft = measure_flicker([clip(truth), clip(truth + noise), clip(blurred)], clip(truth))
    assert steady.warping_error < 1e-5
    assert flickering.warping_error == pytest.approx(2 * 0.02 ** 2, rel=0.2)  # two independent frames' noise
    assert steady.psnr == math.inf and flickering.psnr == pytest.approx(-10 * math.log10(0.02 ** 2), abs=0.3)
    assert steady.edge_ratio == 1.0 and soft.edge_ratio < 0.8 < flickering.edge_ratio
    assert steady.detail_ratio == 1.0 and soft.detail_ratio < 0.8 < steady.detail_ratio < flickering.detail_ratio


def test_detail_sees_texture_smoothed_away_between_edges_that_stay_sharp():
    """Blocks with hard outlines and fine texture inside: smoothing only the texture keeps the
    edge measure (the outlines are the strongest edges) but not the detail measure."""
    rows, cols = torch.arange(48).view(-1, 1), torch.arange(64).view(1, -1)
    blocks = (((rows // 24) + (cols // 32)) % 2).float()
    inside = ((rows % 24 >= 2) & (rows % 24 < 22) & (cols % 32 >= 2) & (cols % 32 < 30)).float()
    texture = torch.rand(48, 64, generator=torch.Generator().manual_seed(4)) * 0.08 * inside
    smoothed = F.avg_pool2d(texture[None, None], 3, 1, 1, count_include_pad=False)[0, 0] * inside
    textured = (0.2 + 0.6 * blocks + texture)[..., None].expand(4, -1, -1, 3).contiguous()
    smooth = (0.2 + 0.6 * blocks + smoothed)[..., None].expand(4, -1, -1, 3).contiguous()
    sharp, soft = measure_flicker([clip(textured), clip(smooth)], clip(textured))
    assert soft.edge_ratio > 0.97 and soft.detail_ratio < 0.8
    assert sharp.detail > soft.detail > 0 and sharp.to_dict()["detail_ratio"] == 1.0


def test_a_smaller_reference_gives_the_flow_but_no_psnr_and_mismatches_are_refused():
    truth = sliding(4, 32, 48)
    small = F.interpolate(truth.permute(0, 3, 1, 2), size=(16, 24), mode="area").permute(0, 2, 3, 1)
    (report,) = measure_flicker([clip(truth)], clip(small), clip(small))
    assert report.psnr is None and report.warping_error < 1e-3
    with pytest.raises(InputError, match="different frames"):
        measure_flicker([clip(truth)], clip(truth[:3]))
    with pytest.raises(InputError, match="one size"):
        measure_flicker([clip(truth), clip(small)], clip(truth))


def test_flicker_command_compares_videos_as_a_user_runs_it(tmp_path):
    from vsrkit.engines.video.encode import EncodeOptions, save_clip

    truth = sliding(6, 48, 64)
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(3)) * 0.03
    files = {}
    for name, frames in (("truth", truth), ("noisy", (truth + noise).clamp(0, 1))):
        files[name] = save_clip(clip(frames), tmp_path / f"{name}.mkv", EncodeOptions(codec="ffv1", pix_fmt="yuv444p"))
    command = [sys.executable, "-m", "vsrkit.cli", "flicker", str(files["noisy"]), str(files["truth"]),
               "--reference", str(files["truth"]), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert result.returncode == 0, result.stderr
    noisy, steady = json.loads(result.stdout)
    assert noisy["video"].endswith("noisy.mkv") and noisy["edge_ratio"] == noisy["detail_ratio"] == 1.0
    assert noisy["frames"] == 6 and steady["detail_ratio"] < 1.0  # the noise is detail too
    assert steady["warping_error"] < noisy["warping_error"] / 5 and steady["psnr"] == "inf"
    assert 25 < noisy["psnr"] < 35
