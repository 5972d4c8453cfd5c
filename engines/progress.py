"""Progress reporting and cancellation that engines use without knowing their host.

Engines take a `Progress` (or None) and call `progress.advance(n)` per unit of work,
and `progress.check_cancel()` between chunks. The CLI passes a `ConsoleProgress`;
inside ComfyUI, `nodes/host.py` passes one backed by ComfyUI's progress bar and
interrupt flag.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Cancelled(Exception):
    """The user asked to stop (Ctrl-C, ComfyUI's cancel)."""


class Progress:
    """A silent progress sink: counts work, reports nothing, never cancels."""

    def __init__(self, total: int | None = None, desc: str = ""):
        self.total = total
        self.desc = desc
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._report()

    def set_total(self, total: int | None) -> None:
        self.total = total
        self._report()

    def check_cancel(self) -> None:
        """Raise `Cancelled` if the user asked to stop; called between chunks."""

    def close(self) -> None:
        """Finish the display."""

    def _report(self) -> None:
        pass

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_progress(factory: Callable[[int | None, str], Progress] | None, total: int | None, desc: str) -> Progress:
    """The bar `factory` opens, or a silent one without a factory; use it in a `with` block."""
    return factory(total, desc) if factory is not None else Progress(total, desc)


class ConsoleProgress(Progress):
    """A one-line text bar with rate and ETA on stderr, refreshed at most 5 times a second."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "frames",
                 stream: TextIO | None = None, quiet: bool = False):
        super().__init__(total, desc)
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def _report(self, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.2:
            return
        self._last_draw = now
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            frac = min(1.0, self.done / self.total)
            filled = int(frac * 24)
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            line = (f"\r{self.desc} [{'#' * filled}{'.' * (24 - filled)}] {self.done}/{self.total} {self.unit} "
                    f"{rate:.2f}/s ETA {format_seconds(eta)}")
        else:
            line = f"\r{self.desc} {self.done} {self.unit} {rate:.2f}/s {format_seconds(elapsed)}"
        self.stream.write(line.ljust(79))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.quiet:
            return
        self._report(force=True)
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def format_seconds(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


ProgressFactory = Callable[[int | None, str], Progress]
