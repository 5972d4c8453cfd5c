"""What runs on a cluster worker: load the model once, then render segments into the shared folder.

The classes here are plain Python; `run.py` turns them into Ray actors (`ray.remote(...)`), so this
module imports without Ray installed.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from ..clip import Clip, ClipInfo
from ..errors import InputError
from ..paths import TEMP_MARK
from ..progress import Progress
from ..video.decode import open_clip
from ..video.encode import save_clip
from ..video.formats import EncodeOptions
from ..video.scenes import scene_cuts
from ..video.segments import Segment, file_identity, trim_clip
from .chain import ChainSettings, build_chain, load_engine, preprocessed


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What every segment of one run shares: the input (and its identity), the settings, the folder."""

    input: str
    identity: str
    settings: ChainSettings
    encode: EncodeOptions
    folder: str


@dataclasses.dataclass(frozen=True)
class SegmentJob:
    index: int
    segment: Segment
    path: str


def check_visible(plan: RunPlan) -> None:
    """InputError, naming this machine, when it cannot read the input the run was planned with or
    cannot write into the segment folder (every machine must see both at the same paths)."""
    node = socket.gethostname()
    try:
        identity = file_identity(plan.input)
    except OSError as exc:
        raise InputError(f"a worker on {node} cannot read the input '{plan.input}' ({exc.strerror or exc}): every "
                         "machine of the cluster needs the input at this same path (a shared folder)") from exc
    if identity != plan.identity:
        raise InputError(f"the input '{plan.input}' on {node} is not the file this run was planned with (its "
                         "content differs): give every machine the same file at the same path")
    folder = Path(plan.folder)
    probe = folder / f"{TEMP_MARK}probe-{secrets.token_hex(4)}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"a worker on {node} cannot write to the segment folder '{folder}' "
                         f"({exc.strerror or exc}): every machine of the cluster needs it at this same path "
                         "(a shared folder); choose one with --segments-dir") from exc


def decoded_range(plan: RunPlan, segment: Segment) -> Clip:
    """The input's frames a worker decodes for `segment`: its own plus the context the chain needs."""
    return open_clip(plan.input, skip_first=segment.decode_start, max_frames=segment.decode_end - segment.decode_start)


REPORT_SECONDS = 1.0
"""How often a rendering worker sends the frames it has written so far to the driver's progress bar."""


class SegmentWorker:
    """One per GPU (or CPU slot): the model is loaded once and kept for every segment.

    A model that cannot be loaded is reported by the first call, as the error it is, rather than
    as a worker that died.
    """

    def __init__(self, settings: ChainSettings, threads: int = 0):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.settings = settings
        self.engine = None
        self.error: BaseException | None = None
        try:
            self.engine = load_engine(settings)
        except Exception as exc:  # re-raised by every call, with its own message
            self.error = exc

    def ready(self) -> str:
        """This worker's machine and process, once its model is loaded."""
        if self.error is not None:
            raise self.error
        return f"{socket.gethostname()} pid {os.getpid()}"

    def chain_info(self, input: str, settings: ChainSettings) -> ClipInfo:
        """What the chain makes of the whole input (size, rate, colour, source format), without running it:
        the driver chooses the output format from it once for all segments."""
        self.ready()
        return build_chain(open_clip(input), settings, self.engine).info

    def find_cuts(self, plan: RunPlan, segment: Segment) -> list[int]:
        """The scene cuts in [segment.start, segment.end), found by scdet on the chain's input to the
        engine (deinterlaced, denoised) exactly as one pass finds them: the decoded range holds the frames
        the pre-processing and scdet need before and after."""
        self.ready()
        check_visible(plan)
        clip = decoded_range(plan, segment)
        found = scene_cuts(preprocessed(clip, plan.settings), plan.settings.scene_threshold)
        return [segment.decode_start + cut for cut in found
                if segment.start <= segment.decode_start + cut < segment.end]

    def render(self, plan: RunPlan, job: SegmentJob) -> Iterator[int]:
        """Write the segment's file (atomically: temp file and rename), yielding the frames written so
        far about once a second and, last, the segment's frame count.

        A generator, so that Ray streams the counts to the driver as they come (a streaming generator)
        and the progress bar needs no extra actor: the encode runs on a thread of this worker while
        this one reports.
        """
        self.ready()
        check_visible(plan)
        if not Path(job.path).exists():
            progress = Progress(job.segment.frames, "segment")
            failures: list[BaseException] = []

            def encode() -> None:
                try:
                    self._encode(plan, job, progress)
                except BaseException as exc:  # raised again below, in the task itself
                    failures.append(exc)

            thread = threading.Thread(target=encode, name=f"vsrkit segment {job.index}", daemon=True)
            thread.start()
            while True:
                thread.join(REPORT_SECONDS)
                if not thread.is_alive():
                    break
                yield progress.done
            if failures:
                raise failures[0]
        yield job.segment.frames

    def _encode(self, plan: RunPlan, job: SegmentJob, progress: Progress) -> None:
        target = Path(job.path)
        segment = job.segment
        clip = decoded_range(plan, segment)
        chain = build_chain(clip, plan.settings, self.engine)
        kept = trim_clip(chain, segment.start - segment.decode_start, segment.frames)
        options = dataclasses.replace(plan.encode, audio=False, metadata={})
        try:
            save_clip(kept, target, options, progress=progress)
        except InputError:
            if not target.exists():  # another attempt at the same segment finished first
                raise
