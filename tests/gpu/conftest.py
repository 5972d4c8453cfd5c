"""The GPU tests: marked `gpu`, skipped with the reason where PyTorch sees no CUDA device.

`python bench/gpu_check.py "$OUT"` runs them on a CUDA machine (docs/gpu.md); everywhere else
they are collected and skipped, so CI at least imports them.
"""

from __future__ import annotations

import pytest
import torch

NO_CUDA = ("needs a CUDA device (torch.cuda.is_available() is False); "
           "bench/gpu_check.py runs these on a GPU machine, see docs/gpu.md")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
