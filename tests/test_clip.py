"""The streaming clip type: laziness, re-iteration, chunk regrouping, exact rates."""

from fractions import Fraction

import pytest
import torch

from vsrkit.engines.clip import Clip, chunk_frames_for, rechunk, to_fraction


def _counting_clip(frames: torch.Tensor, pulls: list[int]) -> Clip:
    base = Clip.from_tensor(frames, fps=24)

    def stage(chunks):
        for chunk in chunks:
            pulls.append(chunk.shape[0])
            yield chunk

    return base.then(stage)


def test_clip_is_lazy_and_reiterable():
    frames = torch.rand(10, 8, 6, 3)
    pulls: list[int] = []
    clip = _counting_clip(frames, pulls).map(lambda c: 1 - c)
    assert pulls == []
    first = torch.cat(list(clip.chunks()))
    second = torch.cat(list(clip.chunks()))
    assert torch.equal(first, 1 - frames)
    assert torch.equal(first, second)
    assert sum(pulls) == 20


def test_stage_state_crosses_chunk_boundaries():
    frames = torch.arange(7, dtype=torch.float32).view(7, 1, 1, 1).expand(7, 2, 2, 3) / 10

    def running_sum(chunks):
        total = torch.zeros(2, 2, 3)
        for chunk in chunks:
            out = []
            for frame in chunk:
                total = total + frame
                out.append(total.clone())
            yield torch.stack(out)

    clip = Clip(Clip.from_tensor(frames, 24).info, lambda: rechunk([frames], 3)).then(running_sum)
    result = clip.to_tensor()
    assert torch.allclose(result[:, 0, 0, 0], torch.cumsum(frames[:, 0, 0, 0], 0))


def test_rechunk_exact_sizes():
    parts = [torch.zeros(n, 1, 1, 3) for n in (5, 1, 7, 2)]
    sizes = [c.shape[0] for c in rechunk(parts, 4)]
    assert sizes == [4, 4, 4, 3]
    with pytest.raises(ValueError, match="chunk size"):
        list(rechunk(parts, 0))


def test_to_tensor_refuses_above_limit_before_decoding():
    pulls: list[int] = []
    clip = _counting_clip(torch.zeros(100, 64, 64, 3), pulls)
    with pytest.raises(MemoryError, match=r"GiB.*100 frames of 64x64.*raise the limit"):
        clip.to_tensor(max_bytes=1024)
    assert pulls == []


def test_from_tensor_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[frames, height, width, 3 or 4\]"):
        Clip.from_tensor(torch.zeros(4, 4, 3), fps=24)


@pytest.mark.parametrize(("given", "expected"), [
    (29.97, Fraction(30000, 1001)), (23.976, Fraction(24000, 1001)), (59.94, Fraction(60000, 1001)),
    (25, Fraction(25)), ("12.5", Fraction(25, 2)), (Fraction(30000, 1001), Fraction(30000, 1001)),
])
def test_to_fraction_is_exact(given, expected):
    assert to_fraction(given) == expected


def test_to_fraction_rejects_non_positive():
    with pytest.raises(ValueError, match="positive"):
        to_fraction(0)


def test_chunk_size_shrinks_with_frame_size():
    assert chunk_frames_for(64, 64) > chunk_frames_for(3840, 2160) >= 1
    assert chunk_frames_for(7680, 4320, budget_bytes=1) == 1
