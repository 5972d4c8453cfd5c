"""The stabiliser's edge floor: it keeps the strongest edges about as crisp as the per-frame
output's when the blend averages edges that a GAN redraws a little differently in every frame."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsrkit.engines.clip import Clip
from vsrkit.engines.errors import InputError
from vsrkit.engines.video.edges import EdgeFloor, footprint_mean, luma
from vsrkit.engines.video.flicker import luma_gradient, measure_flicker, strongest_edges
from vsrkit.engines.video.flow import differences, grey_resized, grey_u8
from vsrkit.engines.video.stabilize import StabilizeSettings, stabilize_clip

pytestmark = pytest.mark.usefixtures("one_thread")

SCALE = 4
LOW = (24, 32)
FRAMES = 8


def clip(frames: torch.Tensor) -> Clip:
    return Clip.from_tensor(frames, fps=Fraction(25))


def blocks(height: int, width: int, scale: int, shift: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """[H, W, 3] grey blocks 6 input px wide with crisp, anti-aliased outlines, moved by `shift`
    input pixels: the same picture at any scale."""
    fine = 4  # samples per pixel and axis, averaged
    ys = (torch.arange(height * fine, dtype=torch.float64) + 0.5) / (scale * fine) - shift[1]
    xs = (torch.arange(width * fine, dtype=torch.float64) + 0.5) / (scale * fine) - shift[0]
    cells = ((ys // 6).view(-1, 1) + (xs // 6).view(1, -1)) % 2
    picture = F.avg_pool2d((0.3 + 0.4 * cells).float()[None, None], fine)[0, 0]
    return picture[..., None].expand(height, width, 3).contiguous()


def redrawn_edges() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input, clean upscale, per-frame upscale) of blocks panning 0.2 input px a frame, the
    'upscaler' adding strong fresh fine detail in every frame, as a GAN redraws foliage: averaged
    over frames, that detail goes, and the edges' contrast with it."""
    h, w = LOW
    steps = [(0.2 * t, 0.12 * t) for t in range(FRAMES)]
    clean = torch.stack([blocks(h * SCALE, w * SCALE, SCALE, step) for step in steps])
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(2)) * 0.16
    source = torch.stack([blocks(h, w, 1, step) for step in steps])
    return ((source * 255).round() / 255).contiguous(), clean, (clean + noise).clamp(0, 1)


def test_the_edge_floor_keeps_edges_the_blend_would_soften_and_0_turns_it_off():
    source, clean, per_frame = redrawn_edges()
    softened = stabilize_clip(clip(per_frame), clip(source), StabilizeSettings(edge_floor=0)).to_tensor()
    kept = stabilize_clip(clip(per_frame), clip(source), StabilizeSettings()).to_tensor()
    plain, without, with_floor = measure_flicker([clip(per_frame), clip(softened), clip(kept)], clip(clean),
                                                 clip(source))
    assert without.edge_ratio < 0.93 and with_floor.edge_ratio >= 0.95
    assert with_floor.warping_error <= 0.4 * plain.warping_error and with_floor.psnr > plain.psnr + 3
    assert torch.equal(kept[0], per_frame[0])  # the first frame of a shot is the per-frame frame


def floor_inputs() -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(guide, per-frame, blended): still blocks under a light ramp (so that the edges'
    strengths differ), and the same with half its fine band."""
    h, w = LOW
    ramp = torch.linspace(0.8, 1.2, w * SCALE).view(1, 1, 1, -1)
    sharp = blocks(h * SCALE, w * SCALE, SCALE).permute(2, 0, 1)[None] * ramp
    low = F.interpolate(sharp, size=LOW, mode="area")
    coarse = F.interpolate(footprint_mean(sharp, LOW), size=(h * SCALE, w * SCALE), mode="bilinear", align_corners=False)
    soft = coarse + 0.5 * (sharp - coarse)
    return grey_resized(grey_u8(low[0].permute(1, 2, 0)), h * SCALE, w * SCALE), sharp, soft


def mean_edge(frame: torch.Tensor, guide: np.ndarray) -> float:
    picked = strongest_edges(torch.from_numpy(guide).float().div(255).expand(1, 3, -1, -1))
    return float(luma_gradient(frame)[picked].mean())


def test_the_edge_floor_raises_a_softened_frame_to_the_floor_and_smooths_its_gain_within_a_shot():
    guide, sharp, soft = floor_inputs()
    assert mean_edge(soft, guide) < 0.85 * mean_edge(sharp, guide)
    floor = EdgeFloor(0.96, LOW)
    raised = floor(floor.pick(guide), sharp, soft.clone())
    assert mean_edge(raised, guide) == pytest.approx(0.96 * mean_edge(sharp, guide), rel=0.02)
    assert float(raised.min()) >= 0 and float(raised.max()) <= 1
    assert not torch.equal(floor(floor.pick(guide), soft, soft.clone()), soft)  # the running gain carries on
    settled = [torch.equal(floor(floor.pick(guide), soft, soft.clone()), soft) for _ in range(20)]
    assert settled[-1] and not settled[0]  # the running gain comes back to exactly 1
    floor(floor.pick(guide), sharp, soft.clone())
    floor.reset()
    assert torch.equal(floor(floor.pick(guide), soft, soft.clone()), soft)  # a new shot: nothing to raise
    assert torch.equal(EdgeFloor(0.0, LOW)(EdgeFloor(0.0, LOW).pick(guide), sharp, soft.clone()), soft)
    flat = np.full_like(guide, 128)
    assert EdgeFloor(0.96, LOW).pick(flat) is None
    assert EdgeFloor(0.96, LOW).pick(guide[:2]) is None  # no inner pixels: nothing to measure


def test_luma_and_differences_follow_bt601_and_central_differences():
    frame = torch.rand(1, 3, 5, 6)
    expected = 0.299 * frame[:, 0] + 0.587 * frame[:, 1] + 0.114 * frame[:, 2]
    assert torch.allclose(luma(frame)[:, 0], expected)
    dx, dy = differences(expected[None])
    assert torch.allclose(dx[..., 2, 3], (expected[..., 2, 4] - expected[..., 2, 2]) / 2)
    assert torch.allclose(dy[..., 2, 3], (expected[..., 3, 3] - expected[..., 1, 3]) / 2)
    assert float(dx[..., :, 0].abs().max()) == 0 and float(dy[..., -1, :].abs().max()) == 0


def test_an_edge_floor_out_of_range_is_refused_by_name():
    source, _, per_frame = redrawn_edges()
    with pytest.raises(InputError, match="'edge_floor'"):
        stabilize_clip(clip(per_frame), clip(source), StabilizeSettings(edge_floor=1.5))
