"""Writing a benchmark's figures: shared by the benchmarks that bench/gpu_check.py reads."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path | None, report: dict) -> None:
    """Write `report` to `path` (if given) through a temporary file, so a reader never sees half of it."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(report, indent=1))
        partial.replace(path)
