"""`vsrkit probe FILE` and `vsrkit transcode IN -o OUT`: the nodes' engine path from a shell."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    """Add `probe` and `transcode`."""
    probe_parser = subparsers.add_parser("probe", help="show a video's true properties",
                                         description="Exact frame count, frame rate, colour, audio streams.")
    probe_parser.add_argument("file", type=Path, help="video file")
    probe_parser.add_argument("--json", action="store_true", help="print JSON instead of a summary")
    probe_parser.add_argument("--interlacing", action="store_true",
                              help="also run FFmpeg's idet on the first frames and report its verdict")
    probe_parser.add_argument("--scenes", action="store_true",
                              help="also decode the video and list the frames where scdet finds a scene cut")
    probe_parser.add_argument("--scene-threshold", type=float, default=None, metavar="SCORE",
                              help="scdet score (0-100) that marks a cut (default 10)")
    probe_parser.set_defaults(func=run_probe)

    transcode = subparsers.add_parser("transcode", help="decode and re-encode a video with its audio",
                                      description="Re-encode a video (optionally a part of it, or at a forced "
                                      "constant frame rate), keeping its audio in sync.")
    transcode.add_argument("input", type=Path, help="input video file")
    transcode.add_argument("-o", "--output", type=Path, required=True,
                           help="output file (never overwritten); a folder for --codec png")
    transcode.add_argument("--codec", default="auto", help="auto (default: the source's codec family, bit depth, "
                           "chroma and alpha where possible), h264, h265, vp9, prores, ffv1, av1 or png")
    transcode.add_argument("--crf", type=int, default=None, help="quality for h264/h265/vp9/av1 (lower is better)")
    transcode.add_argument("--preset", default=None, help="encoder preset (x264/x265 names; VP9 0-8; AV1 0-13; "
                           "ProRes proxy/lt/standard/hq/4444/4444xq)")
    transcode.add_argument("--pix-fmt", default=None, help="pixel format, e.g. yuv420p, yuv444p, yuv420p10le "
                           "(default: the nearest to the source's)")
    transcode.add_argument("--start", type=int, default=0, help="skip this many frames first")
    transcode.add_argument("--frames", type=int, default=0, help="at most this many frames (0: all)")
    transcode.add_argument("--every-nth", type=int, default=1, help="keep every n-th frame")
    transcode.add_argument("--fps", default=None, help="force a constant frame rate (e.g. 25, 30000/1001)")
    transcode.add_argument("--odd-size", choices=("pad", "crop"), default="pad",
                           help="what to do with odd sizes that the pixel format cannot hold")
    transcode.add_argument("--audio", default="auto",
                           help="auto (copy when possible), copy, none, aac, opus, flac, pcm, mp3, ac3")
    transcode.add_argument("--quiet", action="store_true", help="no progress output")
    transcode.set_defaults(func=run_transcode)


def run_probe(args: argparse.Namespace) -> int:
    from ..engines.video.probe import probe

    info = probe(args.file, interlacing=args.interlacing)
    cuts = scene_report(args) if args.scenes else None
    if args.json:
        report = info.to_dict()
        if cuts is not None:
            report["scenes"] = cuts
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(describe(info))
    if cuts is not None:
        listed = ", ".join(str(i) for i in cuts["cuts"]) or "none"
        print(f"  scene cuts (scdet, threshold {cuts['threshold']:g}) at frames: {listed}")
    return 0


def scene_report(args: argparse.Namespace) -> dict:
    """The frame indices where a new shot starts, found as the upscale stages find them."""
    from ..engines.video.decode import open_clip
    from ..engines.video.scenes import DEFAULT_SCENE_THRESHOLD, scene_cuts

    threshold = DEFAULT_SCENE_THRESHOLD if args.scene_threshold is None else args.scene_threshold
    return {"threshold": threshold, "cuts": scene_cuts(open_clip(args.file), threshold)}


def describe(info) -> str:
    """A short human summary of a MediaInfo."""
    lines = [f"{info.path}: {info.format_name}, {info.duration:.3f} s, {info.size_bytes} bytes"]
    for video in info.video_streams:
        rate = f"{video.fps.numerator}/{video.fps.denominator}" if video.fps.denominator != 1 else str(video.fps.numerator)
        lines.append(
            f"  video #{video.index}: {video.codec} {video.width}x{video.height} {video.pix_fmt} "
            f"({video.bit_depth}-bit{', alpha' if video.has_alpha else ''}), {video.frame_count} frames ({video.frame_count_source}) at {rate} fps"
            f"{' VFR' if video.vfr else ''}, {video.duration:.3f} s"
        )
        color = video.color
        lines.append(
            f"    colour {color.matrix}/{color.range}/{color.primaries}/{color.transfer}"
            f"{'' if color.tagged else ' (untagged: assumed)'}, field order {video.field_order}, SAR {video.sar}"
            f"{f', rotation {video.rotation}' if video.rotation else ''}"
        )
        if video.interlacing:
            idet = video.interlacing["idet"]
            lines.append(f"    interlacing: metadata {video.interlacing['field_order']}, idet {idet['verdict']} "
                         f"over {idet['frames']} frames (tff {idet['tff']}, bff {idet['bff']}, "
                         f"progressive {idet['progressive']}, undetermined {idet['undetermined']})")
    for audio in info.audio_streams:
        lines.append(f"  audio #{audio.index}: {audio.codec} {audio.sample_rate} Hz {audio.channels} ch "
                     f"({audio.layout}), {audio.duration:.3f} s{f' [{audio.language}]' if audio.language else ''}")
    if not info.video_streams and not info.audio_streams:
        lines.append("  no video or audio streams")
    return "\n".join(lines)


def run_transcode(args: argparse.Namespace) -> int:
    from ..engines.progress import ConsoleProgress
    from ..engines.video.decode import open_clip
    from ..engines.video.encode import planned_output, save_clip
    from ..engines.video.formats import EncodeOptions, choose_format

    started = time.monotonic()
    planned_output(args.output, args.codec)
    clip = open_clip(args.input, skip_first=args.start, max_frames=args.frames, every_nth=args.every_nth,
                     force_fps=args.fps)
    audio = args.audio.lower()
    options = EncodeOptions(codec=args.codec, crf=args.crf, preset=args.preset, pix_fmt=args.pix_fmt,
                            odd_size=args.odd_size, audio=audio != "none",
                            audio_codec=None if audio in ("auto", "none") else audio)
    choice = choose_format(clip.info, options, args.output)
    with ConsoleProgress(clip.info.frame_count, "transcode", quiet=args.quiet) as progress:
        out = save_clip(clip, args.output, choice.encode_options(options), progress=progress)
    info = clip.info
    elapsed = time.monotonic() - started
    print(f"{info.frame_count} frames, {info.width}x{info.height}, {float(info.fps):.3f} fps, "
          f"{elapsed:.1f} s -> {out}\n{choice.describe()}")
    return 0
