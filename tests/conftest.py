"""Shared test fixtures: paths to the real footage and reference data beside the project."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
FOOTAGE = SHARED / "footage"
FLASHVSR_REF = SHARED / "flashvsr"


@pytest.fixture
def footage() -> Path:
    """The folder of real clips; tests that need it skip with a reason when it is absent."""
    if not FOOTAGE.is_dir():
        pytest.skip(f"real footage folder {FOOTAGE} is absent (it sits beside the project as ../shared/footage)")
    return FOOTAGE


@pytest.fixture
def flashvsr_ref() -> Path:
    if not FLASHVSR_REF.is_dir():
        pytest.skip(f"FlashVSR reference folder {FLASHVSR_REF} is absent (../shared/flashvsr)")
    return FLASHVSR_REF
