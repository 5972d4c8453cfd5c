"""Upscale one video on a Ray cluster: plan segments, render them on workers, join them.

The driver (this process) probes the input, fixes every automatic choice once for the whole clip,
plans segments (`video.segments`), starts one worker actor per GPU (or per CPU slot), feeds them
the segments not already in the segment folder, shows one progress bar over frames, and joins
the finished segments with the source's audio (`video.join`). A worker that dies is restarted and
its segment retried by Ray; a re-run of the same command reuses every finished segment; Ctrl-C
stops the workers, removes their unfinished files and keeps the finished ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError, VsrkitError
from ..paths import TEMP_MARK, discard
from ..progress import Progress
from ..video.decode import open_clip
from ..video.encode import planned_output
from ..video.formats import EncodeOptions, FormatChoice, choose_format, codec_spec, output_path_for
from ..video.join import join_segments
from ..video.probe import check_readable
from ..video.segments import (
    ChainReach,
    Segment,
    file_identity,
    plan_segments,
    segment_container,
    segment_name,
    segment_ranges,
)
from .chain import SCDET_FRAMES, ChainSettings, absolute_paths, chain_reaches, preprocess_reaches, resolved
from .runtime import ray_session
from .worker import RunPlan, SegmentJob, SegmentWorker

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_SECONDS = 20.0
"""At 24 fps a segment of 480 frames: the stabiliser's lead-in inside a shot costs under 6% more frames,
and a two-hour film still gives 360 segments to share out."""
DEFAULT_WORKER_CPUS = 4
WORKER_RESTARTS = 3
"""How often a worker that dies (killed, out of memory, machine lost) is restarted, its segment retried."""
POLL_SECONDS = 1.0
"""The longest the driver waits for the workers before it looks for a cancel (ComfyUI's, or the bar's)."""


@dataclasses.dataclass(frozen=True)
class ClusterOptions:
    """Where and how to split the work.

    address: see `runtime.parse_address`. workers: how many (0: one per GPU, or one per
    `worker_cpus` CPUs of each machine without GPUs). segments_dir: a folder every machine sees at
    the same path (default: OUTPUT.segments beside the output). keep_segments: leave the segment
    files after a successful join.
    """

    address: str = "ray"
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS
    workers: int = 0
    worker_cpus: int = 0
    segments_dir: str | None = None
    keep_segments: bool = False


@dataclasses.dataclass(frozen=True)
class ClusterResult:
    output: Path
    frames: int
    segments: int
    rendered: int
    reused: int
    workers: int
    seconds: float
    choice: FormatChoice


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a cluster run: the workers are stopped, no output was written, and the finished
    segments are kept in `folder` for a re-run of the same command."""

    def __init__(self, folder: Path, finished: int):
        super().__init__(f"{finished} finished segments kept in {folder}")
        self.folder = folder
        self.finished = finished


def settings_key(identity: str, settings: ChainSettings, encode: EncodeOptions) -> str:
    """Everything that decides a segment's bytes, as one string to hash into its name."""
    from ... import __version__

    chosen = {"codec": codec_spec(encode.codec)[0], "crf": encode.crf, "preset": encode.preset,
              "pix_fmt": encode.pix_fmt, "odd_size": encode.odd_size, "color_matrix": encode.color_matrix,
              "color_range": encode.color_range}
    model = settings.model
    if model and Path(model).is_file():
        stat = Path(model).stat()
        model = f"{model}|{stat.st_size}|{stat.st_mtime_ns}"
    return json.dumps({"input": identity, "settings": {**settings.key(), "model": model}, "encode": chosen,
                       "vsrkit": __version__}, sort_keys=True)


def upscale_file(input: str | os.PathLike, output: str | os.PathLike, settings: ChainSettings | None = None,
                 encode: EncodeOptions | None = None, options: ClusterOptions | None = None,
                 progress_factory: Callable[[int | None, str], Progress] | None = None) -> ClusterResult:
    """Upscale `input` into `output` on a Ray cluster, as `vsrkit upscale --cluster` does.

    `settings` is the chain (as for one process), `encode` the output codec and audio, `options`
    the cluster and segmenting. `progress_factory(total, desc)` opens the progress bars (frames).
    """
    started = time.monotonic()
    settings = settings or ChainSettings()
    encode = encode or EncodeOptions()
    options = options or ClusterOptions()
    if options.workers < 0 or options.worker_cpus < 0:
        raise InputError("workers and worker_cpus must be 0 (automatic) or more")
    if encode.codec.strip().lower() != "auto":
        segment_container(codec_spec(encode.codec)[0])
    planned_output(output, encode.codec)
    source = check_readable(input).resolve()
    clip = open_clip(source)
    settings = resolved(absolute_paths(settings), clip)
    reach = ChainReach.of(chain_reaches(settings))
    identity = file_identity(source)
    with ray_session(options.address) as ray:
        workers = _start_workers(ray, settings, options)
        folder: Path | None = None
        jobs: list[SegmentJob] = []
        try:
            info = _results(ray, [workers[0].chain_info.remote(str(source), settings)])[0]
            choice, encode, final = _output_format(info, encode, output, source)
            extension = segment_container(choice.codec)
            folder = Path(options.segments_dir or final.with_name(final.name + ".segments")).expanduser().resolve()
            folder.mkdir(parents=True, exist_ok=True)
            plan = RunPlan(str(source), identity, settings, encode, str(folder))
            key = settings_key(identity, settings, encode)
            cuts = _find_cuts(ray, workers, plan, clip.info, options, settings, progress_factory) \
                if reach.uses_cuts else []
            segments = plan_segments(clip.info.frame_count, clip.info.fps, options.segment_seconds, cuts, reach)
            jobs = [SegmentJob(i, s, str(folder / segment_name(s, key, extension))) for i, s in enumerate(segments)]
            todo = [job for job in jobs if not Path(job.path).exists()]
            if len(todo) < len(jobs):
                log.info("reusing %d finished segments in %s", len(jobs) - len(todo), folder)
            _render(ray, workers, plan, todo, progress_factory)
        except KeyboardInterrupt as exc:
            if folder is None:
                raise
            finished = sum(Path(job.path).exists() for job in jobs)
            raise RunInterrupted(folder, finished) from exc
        finally:
            _stop_workers(ray, workers)
            if folder is not None:
                _remove_partials(folder, [Path(job.path).name for job in jobs])
    paths = [job.path for job in jobs]
    counts = [job.segment.frames for job in jobs]
    total = sum(counts)
    try:
        with _opened(progress_factory, total, "join") as bar:
            joined = join_segments(paths, counts, final, clip.info.fps, clip.info.audio if encode.audio else None,
                                   encode.audio_codec, progress=bar)
    except KeyboardInterrupt as exc:
        raise RunInterrupted(folder, len(jobs)) from exc
    if not options.keep_segments:
        for path in paths:
            discard(Path(path))
        _remove_if_empty(folder)
    return ClusterResult(joined, total, len(jobs), len(todo), len(jobs) - len(todo), len(workers),
                         time.monotonic() - started, choice)


def _output_format(info: Any, encode: EncodeOptions, output: str | os.PathLike,
                   source: Path) -> tuple[FormatChoice, EncodeOptions, Path]:
    """The format chosen once for every segment from what the chain makes, the options that pin it,
    and the output file (refused if taken or the input itself)."""
    choice = choose_format(info, encode, output)
    final = output_path_for(output, choice.codec)
    if final.exists():
        raise InputError(f"output '{final}' already exists; choose another name (vsrkit never overwrites)")
    if final.resolve() == source:
        raise InputError(f"output '{final}' is the input file; vsrkit never overwrites its input")
    return choice, choice.encode_options(encode), final


def _opened(factory: Callable[[int | None, str], Progress] | None, total: int, desc: str) -> Progress:
    return factory(total, desc) if factory is not None else Progress(total, desc)


def worker_layout(ray: Any, settings: ChainSettings, options: ClusterOptions) -> tuple[int, dict[str, Any], int]:
    """(how many workers, the Ray resources of each, torch threads of each: 0 leaves the default)."""
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    gpus = sum(int(node["Resources"].get("GPU", 0)) for node in nodes)
    wants_gpu = settings.device is None or str(settings.device).startswith("cuda")
    if gpus and wants_gpu:
        return options.workers or gpus, {"num_gpus": 1, "num_cpus": 1}, 0
    node_cpus = [int(node["Resources"].get("CPU", 0)) for node in nodes]
    per_worker = options.worker_cpus or max(1, min(DEFAULT_WORKER_CPUS, max(node_cpus, default=1)))
    fitting = sum(cpus // per_worker for cpus in node_cpus)
    if fitting < 1:
        raise InputError(f"no machine of the cluster has {per_worker} CPUs for a worker; lower --worker-cpus")
    return options.workers or fitting, {"num_cpus": per_worker}, per_worker


def _start_workers(ray: Any, settings: ChainSettings, options: ClusterOptions) -> list[Any]:
    count, resources, threads = worker_layout(ray, settings, options)
    actor = ray.remote(SegmentWorker).options(max_restarts=WORKER_RESTARTS, max_task_retries=WORKER_RESTARTS,
                                              **resources)
    workers = [actor.remote(settings, threads) for _ in range(count)]
    try:
        for where in _results(ray, [worker.ready.remote() for worker in workers]):
            log.info("worker ready on %s", where)
    except BaseException:
        _stop_workers(ray, workers)
        raise
    return workers


def _stop_workers(ray: Any, workers: list[Any]) -> None:
    """Kill the workers for good (no restart): the run is over, or could not start."""
    for worker in workers:
        ray.kill(worker, no_restart=True)


def _results(ray: Any, refs: list[Any]) -> list[Any]:
    """ray.get with the workers' own errors raised as they are (a VsrkitError keeps its message); a
    stream (a call of a generator method) gives its last value."""
    try:
        return [ray.get(list(ref))[-1] if isinstance(ref, ray.ObjectRefGenerator) else ray.get(ref) for ref in refs]
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, VsrkitError):
            raise cause from None
        raise VsrkitError(f"a worker failed: {cause or exc}") from exc
    except ray.exceptions.RayActorError as exc:
        raise VsrkitError(f"a worker died {WORKER_RESTARTS + 1} times in a row and is given up ({exc}); "
                          "the finished segments are kept: run the same command again to resume") from exc


def _next_value(ray: Any, waitable: Any) -> tuple[bool, Any]:
    """(finished, value) of a call that `ray.wait` found ready: a plain call's result, or a stream's next
    value (None once the stream has ended)."""
    if not isinstance(waitable, ray.ObjectRefGenerator):
        return True, _results(ray, [waitable])[0]
    try:
        ref = next(waitable)
    except StopIteration:
        return True, None
    return False, _results(ray, [ref])[0]


def _find_cuts(ray: Any, workers: list[Any], plan: RunPlan, info: Any, options: ClusterOptions,
               settings: ChainSettings, progress_factory: Callable[[int | None, str], Progress] | None) -> list[int]:
    """The clip's scene cuts, found in parallel on the workers: each scans a stretch with the frames
    before and after it that pre-processing and scdet need, so the union is what one pass finds."""
    reach = ChainReach.of(preprocess_reaches(settings))
    count = info.frame_count
    target = max(1, round(options.segment_seconds * float(info.fps)))
    stretches = [Segment(a, b, max(0, a - reach.before_in_shot - SCDET_FRAMES), min(count, b + reach.after))
                 for a, b in segment_ranges(count, target, [])]
    cuts: list[int] = []
    with _opened(progress_factory, count, "scenes") as bar:
        for stretch, found in _on_workers(ray, workers, stretches, lambda w, s: w.find_cuts.remote(plan, s), bar):
            cuts.extend(found)
            bar.advance(stretch.frames)
    return sorted(cuts)


def _render(ray: Any, workers: list[Any], plan: RunPlan, todo: list[SegmentJob],
            progress_factory: Callable[[int | None, str], Progress] | None) -> None:
    """Feed the segments to the workers, with one progress bar over their frames: each worker streams
    the frames it has written (`SegmentWorker.render` is a generator)."""
    written: dict[int, int] = {}
    with _opened(progress_factory, sum(job.segment.frames for job in todo), "upscale") as bar:

        def report(job: SegmentJob, frames: int) -> None:
            written[job.index] = frames
            bar.advance(max(0, sum(written.values()) - bar.done))

        for job, _ in _on_workers(ray, workers, todo, lambda w, j: w.render.remote(plan, j), bar, report):
            report(job, job.segment.frames)


def _on_workers(ray: Any, workers: list[Any], items: list[Any], submit: Callable[[Any, Any], Any],
                bar: Progress, report: Callable[[Any, Any], None] | None = None) -> Any:
    """(item, result) as the workers finish them, one item in flight per worker. A call that streams
    passes each value to `report(item, value)` as it comes; its last value is its result."""
    pending = deque(items)
    running: dict[Any, tuple[Any, Any]] = {}
    latest: dict[Any, Any] = {}
    idle = list(workers)
    while pending or running:
        while idle and pending:
            worker, item = idle.pop(), pending.popleft()
            running[submit(worker, item)] = (item, worker)
        ready, _ = ray.wait(list(running), num_returns=len(running), timeout=POLL_SECONDS)
        for waitable in ready:
            item, worker = running[waitable]
            finished, value = _next_value(ray, waitable)
            if not finished:
                latest[waitable] = value
                if report is not None:
                    report(item, value)
                continue
            del running[waitable]
            idle.append(worker)
            yield item, latest.pop(waitable, value)
        bar.check_cancel()


def _remove_partials(folder: Path, names: list[str]) -> None:
    """Remove the unfinished files of these segments (a killed worker cannot remove its own)."""
    wanted = set(names)
    for path in folder.glob(f"{TEMP_MARK}*"):
        if path.name.split("-", 3)[-1] in wanted:
            discard(path)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
