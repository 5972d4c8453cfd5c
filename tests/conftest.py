"""Shared test fixtures: paths to the real footage and reference data beside the project."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
FOOTAGE = SHARED / "footage"
FLASHVSR_REF = SHARED / "flashvsr"


@pytest.fixture(scope="session")
def footage() -> Path:
    """The folder of real clips; tests that need it skip with a reason when it is absent.

    Session-scoped so that module-scoped fixtures (decoded clips shared by several tests) can use it."""
    if not FOOTAGE.is_dir():
        pytest.skip(f"real footage folder {FOOTAGE} is absent (it sits beside the project as ../shared/footage)")
    return FOOTAGE


@pytest.fixture
def flashvsr_ref() -> Path:
    if not FLASHVSR_REF.is_dir():
        pytest.skip(f"FlashVSR reference folder {FLASHVSR_REF} is absent (../shared/flashvsr)")
    return FLASHVSR_REF


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (use with `pytestmark = pytest.mark.usefixtures("one_thread")`).

    Small models run faster on one thread, and on a busy 2-core CI box several OpenMP threads
    spin against each other: the FlashVSR decoder on 32x32 frames took 80x longer on two.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def chunked_clip():
    """A maker of clips whose in-memory frames arrive in chunks of the given sizes (cycled), so
    tests can put chunk boundaries anywhere: `chunked_clip(frames, [3, 1, 4], fps, **info)`."""
    from vsrkit.engines.clip import Clip

    def make(frames: torch.Tensor, sizes: list[int], fps: Any = 25, **info: Any) -> Clip:
        template = Clip.from_tensor(frames, fps, **info)

        def source() -> Iterator[torch.Tensor]:
            start, turn = 0, 0
            while start < frames.shape[0]:
                size = sizes[turn % len(sizes)]
                yield frames[start:start + size]
                start += size
                turn += 1

        return Clip(template.info, source)

    return make
