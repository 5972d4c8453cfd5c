"""Scene cuts: scdet finds them streaming, and every stage that carries state across frames (the
stabiliser, FlashVSR, the temporal denoisers) treats each shot as if it were a clip of its own."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from fractions import Fraction

import pytest
import torch

from vsrkit.engines.clip import Clip
from vsrkit.engines.errors import InputError
from vsrkit.engines.video.scenes import SceneDetector, scene_cuts, split_shots
from vsrkit.engines.video.stabilize import stabilize_clip

pytestmark = pytest.mark.usefixtures("one_thread")

CUT = 7
FRAMES = 12


def shot(count: int, height: int, width: int, seed: int, scale: int = 1, level: float = 0.5) -> torch.Tensor:
    """[count, H, W, 3] a smooth random picture drifting by 0.4 input px a frame."""
    generator = torch.Generator().manual_seed(seed)
    waves = [(torch.rand(2, generator=generator) - 0.5) * 0.5 for _ in range(6)]
    phases = torch.rand(6, 3, generator=generator) * 2 * math.pi
    ys = ((torch.arange(height) + 0.5) / scale - 0.5).view(-1, 1)
    frames = []
    for t in range(count):
        xs = ((torch.arange(width) + 0.5) / scale - 0.5 - 0.4 * t).view(1, -1)
        picture = torch.stack([sum(0.08 * torch.sin(2 * math.pi * (f[0] * xs + f[1] * ys) + phases[i, c])
                                   for i, f in enumerate(waves)) for c in range(3)], dim=-1)
        frames.append((picture + level).clamp(0, 1))
    return torch.stack(frames)


def joined(height: int, width: int, scale: int = 1) -> torch.Tensor:
    """Two different shots, the second starting at frame CUT."""
    return torch.cat([shot(CUT, height, width, 1, scale, 0.35), shot(FRAMES - CUT, height, width, 2, scale, 0.65)])


def clip(frames: torch.Tensor, chunk: int = 5) -> Clip:
    info = Clip.from_tensor(frames, fps=Fraction(25)).info
    return Clip(info, lambda: iter(frames.split(chunk)))


def test_scdet_finds_the_cut_frame_and_nothing_inside_the_shots():
    frames = joined(24, 32)
    assert scene_cuts(clip(frames)) == [CUT]
    assert scene_cuts(clip(frames), threshold=0) == []
    assert scene_cuts(clip(frames[:CUT])) == [] and scene_cuts(clip(frames[CUT:])) == []
    with pytest.raises(InputError, match="'scene_threshold'"):
        SceneDetector(101, 32, 24)


def test_shots_split_inside_chunks_and_unread_rest_is_skipped():
    frames = joined(24, 32)
    for chunk in (1, 3, 5, FRAMES):
        shots = [torch.cat(list(s)) for s in split_shots(clip(frames, chunk).chunks(), SceneDetector(10, 32, 24))]
        assert [s.shape[0] for s in shots] == [CUT, FRAMES - CUT], f"chunks of {chunk}"
        assert torch.equal(torch.cat(shots), frames)
    shots = split_shots(clip(frames, 3).chunks(), SceneDetector(10, 32, 24))
    first = next(shots)
    assert next(first).shape[0] == 3  # the rest of the first shot is never read
    assert torch.equal(torch.cat(list(next(shots))), frames[CUT:])
    assert next(shots, None) is None


def test_the_stabiliser_starts_afresh_at_the_cut():
    source = joined(16, 20)
    upscaled = joined(64, 80, scale=4) + torch.randn(FRAMES, 64, 80, 3, generator=torch.Generator().manual_seed(3)) * 0.03
    steady = stabilize_clip(clip(upscaled), clip(source)).to_tensor()
    assert torch.equal(steady[CUT], upscaled[CUT])
    alone = stabilize_clip(clip(upscaled[CUT:]), clip(source[CUT:])).to_tensor()
    assert torch.equal(steady[CUT:], alone)
    assert not torch.equal(steady[CUT + 1], upscaled[CUT + 1])
    assert not torch.equal(steady[CUT - 1], upscaled[CUT - 1])


def tiny_flashvsr():
    """A random FlashVSR in the official structure, small enough for a CPU test."""
    from vsrkit.engines.flashvsr.loader import FlashVSRModels
    from vsrkit.engines.flashvsr.lq_proj import CausalLQProjector
    from vsrkit.engines.flashvsr.tcdecoder import TCDecoder
    from vsrkit.engines.flashvsr.wan_dit import WanDiT

    torch.manual_seed(0)
    dit = WanDiT(dim=32, in_dim=16, ffn_dim=32, out_dim=16, text_dim=16, freq_dim=16, num_heads=1, num_layers=1)
    projector = CausalLQProjector(in_dim=3, out_dim=32, hidden_dim1=8, hidden_dim2=8, layer_num=1)
    decoder = TCDecoder(channels=(8, 8, 8, 8), latent_channels=784)
    return FlashVSRModels("v1.1", dit, projector, decoder, torch.randn(1, 4, 16), config={}, files={}).eval()


def test_flashvsr_upscales_the_shot_after_a_cut_exactly_as_that_shot_alone():
    from vsrkit.engines.flashvsr.upscale import upscale_clip

    models = tiny_flashvsr()
    frames = joined(16, 16)
    whole = upscale_clip(clip(frames, 4), models, scale=2, attention_backend="sdpa").to_tensor()
    second = upscale_clip(clip(frames[CUT:], 4), models, scale=2, attention_backend="sdpa").to_tensor()
    first = upscale_clip(clip(frames[:CUT], 4), models, scale=2, attention_backend="sdpa").to_tensor()
    assert whole.shape == (FRAMES, 32, 32, 3)
    assert torch.equal(whole[CUT:], second) and torch.equal(whole[:CUT], first)
    carried = upscale_clip(clip(frames, 4), models, scale=2, attention_backend="sdpa",
                           scene_threshold=0).to_tensor()
    assert carried.shape == whole.shape and not torch.equal(carried[CUT:], second)


@pytest.mark.parametrize("method", ["atadenoise", "fftdnoiz"])
def test_temporal_denoisers_restart_at_the_cut(method):
    from vsrkit.engines.video.preprocess import denoise_clip

    frames = joined(24, 32) + torch.randn(FRAMES, 24, 32, 3, generator=torch.Generator().manual_seed(4)) * 0.05
    frames = frames.clamp(0, 1)
    whole = denoise_clip(clip(frames, 3), preset="strong", method=method).to_tensor()
    parts = [denoise_clip(clip(part, 3), preset="strong", method=method).to_tensor()
             for part in (frames[:CUT], frames[CUT:])]
    assert torch.equal(whole, torch.cat(parts))
    across = denoise_clip(clip(frames, 3), preset="strong", method=method, scene_threshold=0).to_tensor()
    assert not torch.equal(across[CUT - 1:CUT + 1], whole[CUT - 1:CUT + 1])


@pytest.mark.parametrize("method", ["bwdif", "yadif"])
def test_deinterlacers_restart_at_the_cut(method):
    """Each shot deinterlaced as if alone: no field of the last frame before the cut is woven into the
    first frame after it, and the other way round."""
    from vsrkit.engines.video.preprocess import deinterlace_clip

    frames = joined(24, 32)

    def deinterlaced(part: torch.Tensor, **settings) -> torch.Tensor:
        return deinterlace_clip(clip(part, 3), mode="on", method=method, parity="tff", **settings).to_tensor()

    whole = deinterlaced(frames)
    assert torch.equal(whole, torch.cat([deinterlaced(frames[:CUT]), deinterlaced(frames[CUT:])]))
    across = deinterlaced(frames, scene_threshold=0)
    assert not torch.equal(across[CUT - 1:CUT + 1], whole[CUT - 1:CUT + 1])


def test_flashvsr_denoise_and_deinterlace_nodes_pass_their_scene_threshold_on():
    from vsrkit.nodes import host
    from vsrkit.nodes.flashvsr import FlashVSRModel, FlashVSRUpscale
    from vsrkit.nodes.preprocess import Deinterlace, Denoise

    models = tiny_flashvsr()
    model = FlashVSRModel(models, host.managed_model(models, "cpu"), False)
    frames = joined(16, 16)
    upscale = FlashVSRUpscale().upscale
    _, alone = upscale(model, scale=2, images=frames[CUT:])
    _, split = upscale(model, scale=2, images=frames)
    _, carried = upscale(model, scale=2, images=frames, scene_threshold=0)
    assert split.shape == carried.shape == (FRAMES, 32, 32, 3)
    assert torch.equal(split[CUT:], alone) and not torch.equal(carried[CUT:], alone)

    noisy = (joined(24, 32) + torch.randn(FRAMES, 24, 32, 3, generator=torch.Generator().manual_seed(4)) * 0.05)
    noisy = noisy.clamp(0, 1)
    for run, settings in ((Denoise().denoise, {"method": "atadenoise", "preset": "strong"}),
                          (Deinterlace().deinterlace, {"mode": "on", "parity": "tff"})):
        (after,) = run(clip(noisy[CUT:], 3), **settings)
        (restarted,) = run(clip(noisy, 3), **settings)
        (across,) = run(clip(noisy, 3), **settings, scene_threshold=0)
        assert torch.equal(restarted.to_tensor()[CUT:], after.to_tensor()), run
        assert not torch.equal(across.to_tensor()[CUT:], after.to_tensor()), run


def test_probe_scenes_lists_the_cut_frames(tmp_path, capsys):
    from vsrkit.cli import main
    from vsrkit.engines.video.encode import EncodeOptions, save_clip

    video = save_clip(clip(joined(48, 64)), tmp_path / "two_shots.mkv", EncodeOptions(codec="ffv1"))
    command = [sys.executable, "-m", "vsrkit.cli", "probe", "--scenes", "--json", str(video)]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["scenes"] == {"threshold": 10.0, "cuts": [CUT]}
    assert main(["probe", "--scenes", "--scene-threshold", "0", str(video)]) == 0
    assert "scene cuts (scdet, threshold 0) at frames: none" in capsys.readouterr().out
