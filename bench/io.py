"""Benchmark video I/O: decode and re-encode a clip, vsrkit's streaming way against the ComfyUI-core way.

    python bench/io.py [--input FILE] [--frames N] [--preset medium] [--crf 23] [--threads 2] [--rounds 1]

Methods, each job run in a fresh subprocess so its peak RSS (VmHWM) is its own:
  vsrkit  `open_clip` -> `save_clip`: chunks of frames flow from the decoder to the encoder,
          YUV -> RGB float -> YUV with the stream's matrix, audio muxed as it goes
  core    what core Load Video -> Get Video Components -> Create Video -> Save Video does: every
          frame decoded to rgb24 and kept as a float32 [T, H, W, 3] batch, all audio decoded to one
          array, then each frame quantised back to uint8, converted to yuv420p by swscale and encoded,
          and the audio encoded in one piece (skipped when the machine has not the memory it needs)

Jobs: `transcode` (decode + encode to H.264/AAC in .mp4 with the same x264 crf and preset for
both methods) and `decode` (frames to float32 only). frames/s counts the clip's frames over the
job's wall time inside the child (interpreter start and imports excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOOTAGE = ROOT.parent / "shared" / "footage" / "bbb_0_30_720p24_vorbis.webm"


def _vsrkit(job: str, source: str, target: str, frames: int, preset: str, crf: int) -> int:
    from vsrkit.engines.video.decode import open_clip
    from vsrkit.engines.video.encode import EncodeOptions, save_clip

    clip = open_clip(source, max_frames=frames)
    if job == "decode":
        return sum(chunk.shape[0] for chunk in clip.chunks())
    save_clip(clip, target, EncodeOptions(codec="h264", crf=crf, preset=preset, audio_codec="aac"))
    return clip.info.frame_count


def _core(job: str, source: str, target: str, frames: int, preset: str, crf: int) -> int:
    import av
    import numpy as np
    import torch

    images = []
    with av.open(source) as container:
        for frame in container.decode(video=0):
            images.append(torch.from_numpy(frame.to_ndarray(format="rgb24")) / 255.0)
            if frames and len(images) == frames:
                break
        batch = torch.stack(images)
        del images
        if job == "decode":
            return batch.shape[0]
        rate = Fraction(container.streams.video[0].average_rate)
        audio = None
        if container.streams.audio:
            container.seek(0)
            stream = container.streams.audio[0]
            pieces = [f.to_ndarray() for packet in container.demux(stream) for f in packet.decode()]
            audio = (torch.from_numpy(np.concatenate(pieces, axis=1))[None], stream.sample_rate)
    with av.open(target, mode="w") as output:
        video = output.add_stream("libx264", rate=Fraction(round(rate * 1000), 1000),
                                  options={"crf": str(crf), "preset": preset})
        video.width, video.height, video.pix_fmt = batch.shape[2], batch.shape[1], "yuv420p"
        audio_stream = output.add_stream("aac", rate=audio[1]) if audio else None
        for image in batch:
            picture = av.VideoFrame.from_ndarray((image * 255).clamp(0, 255).byte().numpy(), format="rgb24")
            output.mux(video.encode(picture.reformat(format="yuv420p")))
        output.mux(video.encode(None))
        if audio_stream is not None:
            waveform, sample_rate = audio
            samples = int(np.ceil(sample_rate / float(rate) * batch.shape[0]))
            waveform = waveform[:, :, :samples]
            sound = av.AudioFrame.from_ndarray(waveform.movedim(2, 1).reshape(1, -1).float().numpy(), format="flt",
                                               layout="mono" if waveform.shape[1] == 1 else "stereo")
            sound.sample_rate = sample_rate
            sound.pts = 0
            output.mux(audio_stream.encode(sound))
            output.mux(audio_stream.encode(None))
    return batch.shape[0]


def peak_rss() -> int:
    """This process's peak resident set in bytes: VmHWM (ru_maxrss can include the parent's RSS
    inherited across fork + exec)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(method: str, job: str, source: str, frames: int, preset: str, crf: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        target = os.path.join(folder, "out.mp4")
        started = time.perf_counter()
        count = (_vsrkit if method == "vsrkit" else _core)(job, source, target, frames, preset, crf)
        seconds = time.perf_counter() - started
        size = os.path.getsize(target) if os.path.exists(target) else 0
    peak = peak_rss()
    print(json.dumps({"frames": count, "seconds": seconds, "peak_rss": peak, "bytes": size}))


def run(method: str, job: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", method, job, "--input", str(args.input),
               "--frames", str(args.frames), "--preset", args.preset, "--crf", str(args.crf),
               "--threads", str(args.threads)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def core_bytes(args: argparse.Namespace) -> int:
    """What the core way holds at its peak: the list of float32 frames and their stacked copy
    (measured: about three times the float32 batch, as each listed frame costs twice its size)."""
    from vsrkit.engines.video.probe import probe

    video = probe(args.input).video
    frames = min(video.frame_count, args.frames) if args.frames else video.frame_count
    return 3 * frames * video.width * video.height * 3 * 4 + 2**30


def available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable:")) * 1024
    except (OSError, StopIteration):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=FOOTAGE, help="video to transcode (default: 720p BBB)")
    parser.add_argument("--frames", type=int, default=0, help="at most this many frames (0: all)")
    parser.add_argument("--preset", default="medium", help="x264 preset for both methods (default medium)")
    parser.add_argument("--crf", type=int, default=23, help="x264 crf for both methods (default 23)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each child (default 2)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat each job; the best round is reported")
    parser.add_argument("--jobs", default="transcode,decode", help="comma-separated: transcode, decode")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, str(args.input), args.frames, args.preset, args.crf, args.threads)
        return
    if not args.input.is_file():
        sys.exit(f"input {args.input} not found; pass --input FILE")
    print(f"# {date.today()} {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; input {args.input.name}; x264 preset {args.preset} crf {args.crf}; "
          f"torch threads {args.threads}")
    print("| job | method | frames | seconds | frames/s | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|")
    for job in args.jobs.split(","):
        for method in ("vsrkit", "core"):
            if method == "core":
                need, available = core_bytes(args), available_bytes()
                if available is not None and need > 0.75 * available:
                    print(f"| {job} | core | skipped: needs ~{need / 2**30:.1f} GiB, "
                          f"{available / 2**30:.1f} GiB available | | | |", flush=True)
                    continue
            results = []
            for _ in range(args.rounds):
                results.append(run(method, job, args))
            best = min(results, key=lambda r: r["seconds"])
            peak = max(r["peak_rss"] for r in results)
            print(f"| {job} | {method} | {best['frames']} | {best['seconds']:.1f} | "
                  f"{best['frames'] / best['seconds']:.1f} | {peak / 2**20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
