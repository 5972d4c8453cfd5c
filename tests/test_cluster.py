"""`vsrkit upscale --cluster` on a local Ray runtime (127.0.0.1 only, one per module): frame for frame
the single-process output, the audio copied once, a killed worker, an interrupted and resumed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.testsrc import audio_packets, decoded_frames
from vsrkit.engines.clip import AudioTrack, Clip
from vsrkit.engines.errors import InputError
from vsrkit.engines.paths import TEMP_MARK
from vsrkit.engines.video.encode import save_clip
from vsrkit.engines.video.formats import EncodeOptions
from vsrkit.engines.video.probe import probe
from vsrkit.engines.video.sample import sample_clip

ray = pytest.importorskip("ray", reason="Ray is in the test extra (pip install -e '.[test]')")

from vsrkit.engines.cluster.chain import ChainSettings  # noqa: E402
from vsrkit.engines.cluster.run import ClusterOptions, upscale_file  # noqa: E402
from vsrkit.engines.cluster.runtime import parse_address, ray_session  # noqa: E402
from vsrkit.engines.cluster.worker import RunPlan, SegmentJob, SegmentWorker  # noqa: E402
from vsrkit.engines.video.segments import Segment, file_identity  # noqa: E402

SEGMENT_SECONDS = "0.5"  # 12 frames at 24 fps: three segments of the 36-frame clips


@pytest.fixture(scope="module")
def runtime():
    """One local Ray runtime for the module, on the loopback interface only, with 2 CPUs."""
    with ray_session("ray", num_cpus=2) as session:
        yield session


@pytest.fixture(scope="module")
def address(runtime) -> str:
    """The module runtime's address, for CLI runs that join it as `--cluster ray:HOST:PORT`."""
    return "ray:" + runtime.get_runtime_context().gcs_address


def small_model(path: Path, feat: int, convs: int) -> Path:
    """A random SRVGGNetCompact x2 with official keys, as a user's model file."""
    from safetensors.torch import save_file

    from tests.conftest import randomised
    from vsrkit.engines.realesrgan.srvgg import SRVGGNetCompact

    net = randomised(SRVGGNetCompact(num_feat=feat, num_conv=convs, upscale=2), seed=feat + convs)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def model(folder) -> Path:
    return small_model(folder / "small_x2.safetensors", 16, 2)


@pytest.fixture(scope="module")
def slow_model(folder) -> Path:
    """Slow enough that a test can act between one segment's end and the next one's."""
    return small_model(folder / "slow_x2.safetensors", 64, 16)


def two_shots(count: int = 36, cut: int = 17, height: int = 48, width: int = 64) -> torch.Tensor:
    """The cartoon sample, then a different shot (a drifting random texture) from frame `cut` on."""
    first = sample_clip(width, height, count, 24).to_tensor()[:cut]
    generator = torch.Generator().manual_seed(5)
    texture = torch.rand(height, width + count, 3, generator=generator)
    second = torch.stack([texture[:, i:i + width] * 0.8 for i in range(count - cut)])
    return torch.cat([first, second])


@pytest.fixture(scope="module")
def clips(folder) -> dict[str, Path]:
    """Two 36-frame clips with AAC audio: the sample (no cut) and one with a scene cut at frame 17."""
    plain = save_clip(sample_clip(64, 48, 36, 24), folder / "plain.mp4", EncodeOptions(crf=18))
    tone = sample_clip(64, 48, 36, 24).info.audio
    cut = Clip.from_tensor(two_shots(), fps=24, audio=AudioTrack(waveform=tone.waveform, sample_rate=48000))
    return {"plain": plain, "cuts": save_clip(cut, folder / "cuts.mp4", EncodeOptions(crf=18))}


def vsrkit(capsys, *args: str) -> tuple[int, str, str]:
    """The command line, run in this process (it then uses the module's Ray runtime): (code, stdout, stderr)."""
    from vsrkit.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def frames_of(path: Path) -> np.ndarray:
    """Every frame as 10-bit planar RGB, so no rounding to 8 bits hides a difference."""
    return decoded_frames(path, "gbrp10le")


_references: dict[tuple, Path] = {}


def single_process(capsys, clip: Path, model: Path, out: Path, *extra: str) -> Path:
    """`vsrkit upscale` without --cluster (FFV1), once per clip, model and options."""
    key = (clip, model, extra)
    if key not in _references:
        chosen = ("--model", str(model)) if model.is_file() else ()
        code, _, err = vsrkit(capsys, "upscale", str(clip), "-o", str(out), *chosen, "--codec", "ffv1", "--quiet",
                              *extra)
        assert code == 0, err
        _references[key] = out
    return _references[key]


def test_local_runtime_listens_on_the_loopback_only(runtime):
    assert runtime.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert {node["NodeManagerAddress"] for node in runtime.nodes()} == {"127.0.0.1"}


def test_workers_of_a_local_runtime_keep_the_commands_priority(runtime):
    """Ray lowers its workers to niceness 15 unless told otherwise; in a runtime vsrkit starts they must not
    run below Ray's own background processes and the driver."""
    def niceness() -> int:
        return os.nice(0)

    if os.nice(0) > 19 - 15:
        pytest.skip(f"this test runs at niceness {os.nice(0)}, where Ray's 15 more would be capped at 19 too")
    assert runtime.get(runtime.remote(niceness).remote()) == os.nice(0)


FRAME_LOCAL = ("--stabilize", "0")


def test_render_streams_the_frames_written_while_it_writes(slow_model, tmp_path, monkeypatch):
    """`SegmentWorker.render` yields the frames written so far while its encode runs (Ray streams these
    to the driver's bar; here the generator runs in this process, reporting every millisecond instead
    of every second), then the segment's frame count, and the file is complete. 160 frames: three
    chunks, so there is progress to see between them."""
    from vsrkit.engines.clip import MAX_CHUNK_FRAMES
    from vsrkit.engines.cluster import worker as worker_module

    monkeypatch.setattr(worker_module, "REPORT_SECONDS", 0.001)
    clip = save_clip(sample_clip(32, 24, 160, 24), tmp_path / "long.mp4", EncodeOptions(crf=18))
    assert 160 > 2 * MAX_CHUNK_FRAMES
    settings = ChainSettings(model=str(slow_model), stabilize=0)
    plan = RunPlan(str(clip), file_identity(clip), settings, EncodeOptions(codec="ffv1"), str(tmp_path))
    job = SegmentJob(0, Segment(0, 160, 0, 160), str(tmp_path / "segment.mkv"))
    counts = list(SegmentWorker(settings).render(plan, job))
    assert counts[-1] == 160 and counts == sorted(counts)
    assert any(0 < count < 160 for count in counts), counts
    assert probe(tmp_path / "segment.mkv").video.frame_count == 160


@pytest.mark.parametrize("name,options", [("plain", FRAME_LOCAL),
                                          ("cuts", (*FRAME_LOCAL, "--deinterlace", "on", "--denoise", "light"))])
def test_cluster_output_is_the_single_process_output_frame_for_frame(runtime, clips, model, folder, tmp_path,
                                                                    capsys, name, options):
    """Segments shorter than the clip on two workers, joined: the same frames (FFV1), every frame,
    the exact rate, and the source's audio as one stream of copied packets. On the clip with a cut the
    chain also deinterlaces and denoises (windowed stages, restarting at the cut), still frame-local
    in the sense that any split is exact given the context frames."""
    clip = clips[name]
    reference = single_process(capsys, clip, model, folder / f"single-{name}-{len(options)}.mkv", *options)
    out = tmp_path / "cluster.mkv"
    code, stdout, stderr = vsrkit(capsys, "upscale", str(clip), "-o", str(out), "--model", str(model), "--codec",
                                  "ffv1", "--quiet", "--cluster", "ray", "--segment-seconds", SEGMENT_SECONDS,
                                  "--workers", "2", "--worker-cpus", "1", *options)
    assert code == 0, stderr
    assert "segments: 3 (3 rendered, 0 reused) on 2 workers" in stdout
    assert np.array_equal(frames_of(out), frames_of(reference))
    source, joined = probe(clip), probe(out)
    assert joined.video.frame_count == source.video.frame_count == 36
    assert joined.video.fps == source.video.fps == 24
    assert [a.codec for a in joined.audio_streams] == ["aac"]
    copied, original = audio_packets(out), dict(audio_packets(clip))
    assert copied == audio_packets(reference) and all(original[ms] == data for ms, data in copied)
    assert abs(copied[0][0] - 0) < 1000 / 24 and abs(joined.audio.duration - joined.video.duration) < 1 / 24 + 0.03
    assert not (tmp_path / "cluster.mkv.segments").exists()  # removed after the join


def test_temporal_chain_joins_within_one_level_of_the_single_process_run(runtime, folder, model, tmp_path, capsys):
    """Temporal denoise and the stabiliser (its default strength), split at a cut and inside shots with
    the declared lead-in: every frame, and so every join, within 1/255 mean absolute difference."""
    from vsrkit.engines.cluster.chain import chain_reaches, resolved
    from vsrkit.engines.video.decode import open_clip
    from vsrkit.engines.video.segments import ChainReach, plan_segments

    tone = sample_clip(64, 48, 100, 24).info.audio
    frames = two_shots(count=100, cut=30)
    clip = save_clip(Clip.from_tensor(frames, fps=24, audio=AudioTrack(waveform=tone.waveform, sample_rate=48000)),
                     folder / "long_cuts.mp4", EncodeOptions(crf=18))
    options = ("--denoise", "light")
    reference = single_process(capsys, clip, model, folder / "single-temporal.mkv", *options)
    out = tmp_path / "cluster.mkv"
    code, stdout, stderr = vsrkit(capsys, "upscale", str(clip), "-o", str(out), "--model", str(model), "--codec",
                                  "ffv1", "--quiet", "--cluster", "ray", "--segment-seconds", SEGMENT_SECONDS,
                                  "--workers", "2", "--worker-cpus", "1", *options)
    assert code == 0, stderr
    # the plan: a join at the cut, and joins inside the second shot whose lead-in does not reach back to it
    settings = resolved(ChainSettings(model=str(model), denoise="light"), open_clip(clip))
    segments = plan_segments(100, Fraction(24), float(SEGMENT_SECONDS), [30], ChainReach.of(chain_reaches(settings)))
    assert f"segments: {len(segments)} ({len(segments)} rendered" in stdout
    assert 30 in {s.start for s in segments} and any(s.decode_start > 30 for s in segments)
    got, want = frames_of(out).astype(np.float64), frames_of(reference).astype(np.float64)
    assert got.shape == want.shape == (100, 96, 128, 3)
    difference = np.abs(got - want).mean(axis=(1, 2, 3)) / 1023
    joins = [s.start for s in segments[1:]]
    assert difference.max() <= 1 / 255, {i: round(float(difference[i]) * 255, 3) for i in joins}


FLASHVSR_FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "flashvsr" / "fixture"


@pytest.mark.slow
def test_flashvsr_is_split_only_at_the_cut_and_matches_one_process(runtime, folder, tmp_path, capsys):
    """FlashVSR (the golden fixture's tiny random model) carries its state through a shot: the 0.25 s
    segments become one per shot, and the output is one process's, frame for frame."""
    import shutil

    if not (FLASHVSR_FIXTURE / "dit.safetensors").is_file():
        pytest.skip(f"FlashVSR golden fixture absent in {FLASHVSR_FIXTURE}")
    models = folder / "FlashVSR-v1.1"
    models.mkdir(exist_ok=True)
    for name in ("dit", "lq_proj", "tcdecoder", "prompt"):
        shutil.copy(FLASHVSR_FIXTURE / f"{name}.safetensors", models / f"{name}.safetensors")
    clip = save_clip(Clip.from_tensor(two_shots(count=20, cut=9, height=32, width=32), fps=24),
                     folder / "flashvsr_cuts.mp4", EncodeOptions(crf=18))
    options = ("--engine", "flashvsr", "--model-dir", str(models), "--precision", "fp32")
    reference = single_process(capsys, clip, models, folder / "single-flashvsr.mkv", *options)
    out = tmp_path / "cluster.mkv"
    code, stdout, stderr = vsrkit(capsys, "upscale", str(clip), "-o", str(out), "--codec", "ffv1", "--quiet",
                                  "--cluster", "ray", "--segment-seconds", "0.25", "--workers", "2",
                                  "--worker-cpus", "1", *options)
    assert code == 0, stderr
    assert "segments: 2 (2 rendered, 0 reused)" in stdout
    assert np.array_equal(frames_of(out), frames_of(reference))


def worker_processes() -> list[int]:
    """Pids of this test's Ray workers that are rendering a segment right now."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(b"ray::SegmentWorker.render"):
                continue
            pid = int(entry.name)
            while pid > 1:
                pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if pid == os.getpid():
                    found.append(int(entry.name))
                    break
        except (OSError, ValueError):
            continue
    return found


def test_a_worker_killed_mid_segment_is_replaced_and_the_output_is_the_same(runtime, clips, model, folder,
                                                                            tmp_path, capsys):
    clip = clips["plain"]
    reference = single_process(capsys, clip, model, folder / "single-plain-2.mkv", *FRAME_LOCAL)
    segments = tmp_path / "segments"
    killed: list[int] = []

    def kill_one_mid_segment() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if segments.is_dir() and list(segments.glob(f"{TEMP_MARK}*")):
                for pid in worker_processes():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_one_mid_segment)
    killer.start()
    try:
        result = upscale_file(clip, tmp_path / "out.mkv", ChainSettings(model=str(model), stabilize=0),
                              EncodeOptions(codec="ffv1"),
                              ClusterOptions(segment_seconds=float(SEGMENT_SECONDS), workers=1, worker_cpus=2,
                                             segments_dir=str(segments)))
    finally:
        killer.join()
    assert len(killed) == 1
    assert (result.segments, result.rendered, result.frames) == (3, 3, 36)
    assert np.array_equal(frames_of(result.output), frames_of(reference))
    assert not segments.exists()  # finished segments removed, the dead worker's partial file too


def test_an_interrupted_run_leaves_no_output_and_the_rerun_makes_only_the_missing_segments(
        runtime, address, clips, slow_model, folder, tmp_path, capsys, python_sigint_handler):
    """Ctrl-C (SIGINT) on the command line, joined to the module's runtime as a second driver."""
    clip = clips["plain"]
    reference = single_process(capsys, clip, slow_model, folder / "single-slow.mkv", *FRAME_LOCAL)
    out = tmp_path / "out.mkv"
    segments = tmp_path / "out.mkv.segments"
    command = [sys.executable, "-m", "vsrkit.cli", "upscale", str(clip), "-o", str(out), "--model", str(slow_model),
               "--codec", "ffv1", "--quiet", "--cluster", address, "--segment-seconds", "0.25", "--workers", "1",
               "--worker-cpus", "2", *FRAME_LOCAL]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if segments.is_dir() and list(segments.glob("0*.mkv")):
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "cancelled" in stderr and "run the same command again to resume" in stderr
    assert not out.exists()
    assert not list(tmp_path.glob(f"{TEMP_MARK}*")) and not list(segments.glob(f"{TEMP_MARK}*"))
    finished = sorted(segments.glob("0*.mkv"))
    assert 1 <= len(finished) < 6
    stamps = {path.name: path.stat().st_mtime_ns for path in finished}

    again = subprocess.run([*command, "--keep-segments"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"segments: 6 ({6 - len(finished)} rendered, {len(finished)} reused)" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in finished} == stamps  # reused, not rewritten
    assert len(list(segments.glob("0*.mkv"))) == 6
    assert np.array_equal(frames_of(out), frames_of(reference))


def test_a_worker_that_cannot_see_the_input_or_the_folder_says_so(runtime, clips, model, tmp_path):
    from vsrkit.engines.cluster.run import _results

    clip = clips["plain"]
    settings = ChainSettings(model=str(model), stabilize=0)
    worker = ray.remote(SegmentWorker).remote(settings)
    job = SegmentJob(0, Segment(0, 4, 0, 4), str(tmp_path / "segment.mkv"))
    plan = RunPlan(str(clip), file_identity(clip), settings, EncodeOptions(codec="ffv1"), str(tmp_path / "not-shared"))
    with pytest.raises(InputError, match="cannot write to the segment folder .*not-shared.*same path"):
        _results(ray, [worker.render.remote(plan, job)])
    missing = RunPlan(str(tmp_path / "elsewhere.mp4"), plan.identity, plan.settings, plan.encode, str(tmp_path))
    with pytest.raises(InputError, match="cannot read the input .*elsewhere.mp4.*same path"):
        _results(ray, [worker.render.remote(missing, job)])
    changed = RunPlan(str(clips["cuts"]), plan.identity, plan.settings, plan.encode, str(tmp_path))
    with pytest.raises(InputError, match="not the file this run was planned with"):
        _results(ray, [worker.render.remote(changed, job)])
    assert _results(ray, [worker.render.remote(RunPlan(plan.input, plan.identity, plan.settings, plan.encode,
                                                           str(tmp_path)), job)]) == [4]
    assert probe(tmp_path / "segment.mkv").video.frame_count == 4
    ray.kill(worker)


def test_a_model_a_worker_cannot_load_is_reported_as_such(runtime, clips, tmp_path):
    with pytest.raises(Exception, match="no-such-model"):
        upscale_file(clips["plain"], tmp_path / "out.mkv", ChainSettings(model="no-such-model"),
                     EncodeOptions(codec="ffv1"), ClusterOptions(workers=1))
    assert not (tmp_path / "out.mkv").exists()


def test_addresses():
    assert parse_address("ray") == "local"
    assert parse_address("ray:auto") == "auto"
    assert parse_address("ray://head:10001") == "ray://head:10001"
    assert parse_address("ray:10.0.0.5:6379") == "10.0.0.5:6379"
    with pytest.raises(InputError, match="ray:auto"):
        parse_address("spark://x")


def test_cluster_refuses_an_image_sequence_and_a_taken_output(clips, model, tmp_path, capsys):
    taken = tmp_path / "taken.mkv"
    taken.write_bytes(b"mine")
    code, _, err = vsrkit(capsys, "upscale", str(clips["plain"]), "-o", str(taken), "--codec", "ffv1", "--cluster", "ray")
    assert code == 1 and "already exists" in err and taken.read_bytes() == b"mine"
    code, _, err = vsrkit(capsys, "upscale", str(clips["plain"]), "-o", str(tmp_path / "frames"), "--codec", "png",
                          "--cluster", "ray")
    assert code == 1 and "cannot be written in segments" in err
