"""The temporal stabiliser on CUDA: its resampling and blending run on the clip's device, the flow
in OpenCV on the CPU. On the GPU it must give what it gives on the CPU, and stream as it does there."""

from __future__ import annotations

import pytest
import torch

from tests.test_temporal_stabilize import FRAMES, LOW, SCALE, STEP, hallucinated, pattern
from vsrkit.engines.clip import Clip
from vsrkit.engines.video.stabilize import StabilizeSettings, stabilize_clip

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def moving_texture() -> tuple[torch.Tensor, torch.Tensor]:
    pytest.importorskip("cv2", reason="the stabiliser's flow needs OpenCV, which this machine's Python lacks")
    h, w = LOW
    source = torch.stack([pattern(h, w, (STEP[0] * t, STEP[1] * t), 1) for t in range(FRAMES)])
    clean = torch.stack([pattern(h * SCALE, w * SCALE, (STEP[0] * t, STEP[1] * t), SCALE) for t in range(FRAMES)])
    return source, hallucinated(clean)


def stabilised(per_frame: torch.Tensor, source: torch.Tensor, device: str, chunk: int = 64) -> torch.Tensor:
    def clip(frames: torch.Tensor) -> Clip:
        return Clip(Clip.from_tensor(frames, 25).info, lambda: iter(frames.split(chunk)))

    return stabilize_clip(clip(per_frame), clip(source), StabilizeSettings(), device=device).to_tensor()


def test_cuda_gives_the_cpu_result(moving_texture):
    source, per_frame = moving_texture
    on_cpu = stabilised(per_frame, source, "cpu")
    on_gpu = stabilised(per_frame, source, "cuda")
    assert on_gpu.shape == on_cpu.shape and on_gpu.device.type == "cpu"
    off = (on_gpu - on_cpu).abs()
    # bicubic resampling rounds differently on the two devices; a pixel whose carried position
    # lands exactly on the frame's edge may fall on either side of it
    assert float(off.mean()) < 1e-5 and float((off > 1e-3).float().mean()) < 1e-3, (off.mean(), off.max())


def test_on_cuda_chunked_equals_whole(moving_texture):
    source, per_frame = moving_texture
    whole = stabilised(per_frame, source, "cuda")
    assert torch.equal(stabilised(per_frame, source, "cuda", chunk=3), whole)


def test_on_cuda_the_edge_floor_raises_edges_as_on_the_cpu():
    pytest.importorskip("cv2", reason="the stabiliser's flow needs OpenCV, which this machine's Python lacks")
    from tests.test_temporal_edges import redrawn_edges

    source, _, per_frame = redrawn_edges()  # the floor raises most frames of this clip
    on_cpu = stabilised(per_frame, source, "cpu")
    on_gpu = stabilised(per_frame, source, "cuda")
    without = stabilize_clip(Clip.from_tensor(per_frame, 25), Clip.from_tensor(source, 25),
                             StabilizeSettings(edge_floor=0), device="cuda").to_tensor()
    # the gain is solved from values gathered on each device: it may differ by a bisection step
    assert float((on_gpu - on_cpu).abs().mean()) < 1e-3
    assert float((on_gpu - without).abs().mean()) > 5e-4  # 2e-3 on the CPU
