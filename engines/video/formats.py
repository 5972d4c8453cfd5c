"""The codec table, and what an encode keeps from its source when codec or pixel format is "auto".

Codec "auto" keeps the source's codec family (HEVC stays HEVC, ProRes stays ProRes, VP9, AV1
and FFV1 likewise) when this FFmpeg build can encode it, the container takes it and the other
options (crf, preset, pixel format, frame size) fit it. Otherwise H.264 for an 8-bit source and
H.265 for a deeper one, then the other of the two, then VP9, AV1, FFV1 (what .webm or .avi
takes); the first that keeps everything wins, else the one that gives up least.

Pixel format "auto" (no pix_fmt) keeps the source's bit depth, chroma subsampling and alpha
where the codec (and for VP9 alpha, the container) allows, else takes the nearest format that
loses least: alpha first, then bits, then chroma resolution. The choice lists what was given up.

A clip with no source (an IMAGE batch) keeps the fixed defaults: H.264, 8-bit 4:2:0.
Colour: the output is converted with, and tagged as, the source's matrix, primaries and transfer
(PQ and HLG BT.2020 stay HDR; nothing is tone mapped).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

import av

from ..clip import ClipInfo, ColorInfo
from ..errors import InputError
from .colors import default_color, parse_matrix, parse_range
from .probe import pix_fmt_traits


@dataclasses.dataclass(frozen=True)
class CodecSpec:
    encoder: str
    containers: tuple[str, ...]
    pix_fmt: str
    deep_pix_fmt: str
    alpha_pix_fmt: str | None
    """None: the codec carries no alpha through vsrkit (alpha formats are never chosen)."""
    crf: tuple[int, int, int] | None
    """(lowest, highest, default) quality value, or None when the codec has no crf."""
    presets: tuple[str, ...]
    default_preset: str | None
    min_size: tuple[int, int] = (1, 1)
    """Smaller frames are refused: libx265 corrupts memory on frames 33-48 pixels wide and
    libsvtav1 hangs on some frames under 64 pixels high."""


_X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
CODECS: dict[str, CodecSpec] = {
    "h264": CodecSpec("libx264", ("mp4", "mkv", "mov"), "yuv420p", "yuv420p", None, (0, 51, 18),
                      _X26X_PRESETS, "medium"),
    "h265": CodecSpec("libx265", ("mp4", "mkv", "mov"), "yuv420p", "yuv420p10le", None, (0, 51, 22),
                      _X26X_PRESETS, "medium", min_size=(64, 16)),
    "vp9": CodecSpec("libvpx-vp9", ("webm", "mkv", "mp4"), "yuv420p", "yuv420p", "yuva420p", (0, 63, 32),
                     tuple(str(n) for n in range(9)), "4"),
    "prores": CodecSpec("prores_ks", ("mov", "mkv"), "yuv422p10le", "yuv422p10le", "yuva444p10le", None,
                        ("proxy", "lt", "standard", "hq", "4444", "4444xq"), "hq"),
    "ffv1": CodecSpec("ffv1", ("mkv", "avi"), "gbrp10le", "gbrp16le", "gbrap10le", None, (), None),
    "av1": CodecSpec("libsvtav1", ("mp4", "mkv", "webm"), "yuv420p", "yuv420p10le", None, (0, 63, 35),
                     tuple(str(n) for n in range(14)), "8", min_size=(64, 64)),
    "png": CodecSpec("png", ("png",), "rgb24", "rgb48be", "rgba", None, (), None),
}
CODEC_ALIASES = {"x264": "h264", "avc": "h264", "libx264": "h264", "x265": "h265", "hevc": "h265",
                 "libx265": "h265", "webm": "vp9", "libvpx-vp9": "vp9", "prores_ks": "prores",
                 "svtav1": "av1", "libsvtav1": "av1", "lossless": "ffv1"}
CODEC_TITLES = {"h264": "H.264", "h265": "H.265", "vp9": "VP9", "prores": "ProRes", "ffv1": "FFV1", "av1": "AV1",
                "png": "PNG"}
CONTAINER_KINDS = {"mp4": "mp4", "m4v": "mp4", "mkv": "mkv", "mov": "mov", "webm": "webm", "avi": "avi"}
PRORES_PROFILES = {"proxy": 0, "lt": 1, "standard": 2, "hq": 3, "4444": 4, "4444xq": 5}

SOURCE_FAMILIES = {"h264": "h264", "hevc": "h265", "vp9": "vp9", "libvpx-vp9": "vp9", "av1": "av1",
                   "libdav1d": "av1", "libaom-av1": "av1", "prores": "prores", "ffv1": "ffv1"}
"""Decoder names (as probed) -> the CODECS entry that encodes the same family."""
_PRORES_PROFILE_PRESETS = {"proxy": "proxy", "lt": "lt", "standard": "standard", "hq": "hq", "4444": "4444",
                           "xq": "4444xq", "4444 xq": "4444xq"}
ALPHA_CONTAINERS = {"vp9": ("webm", "mkv")}
"""Codecs whose alpha only some containers keep (VP9's travels as Matroska side data)."""
_FALLBACKS_8BIT = ("h264", "h265", "vp9", "av1", "ffv1")
_FALLBACKS_DEEP = ("h265", "h264", "vp9", "av1", "ffv1")
_WRITABLE = re.compile(r"^(yuva?(444|422|420|440|411|410)p|gbra?p)(9le|10le|12le|14le|16le)?$")
_PACKED_RGB = ("rgb24", "rgba", "rgb48be", "rgba64be")
_CHROMA_NAMES = {(0, 0): "4:4:4", (1, 0): "4:2:2", (1, 1): "4:2:0", (0, 1): "4:4:0", (2, 0): "4:1:1",
                 (2, 2): "4:1:0"}


@dataclasses.dataclass(frozen=True)
class EncodeOptions:
    """How to encode. None means the codec's default (see `CODECS`)."""

    codec: str = "h264"
    """A CODECS name or alias, or "auto": follow the source (see the module docstring)."""
    crf: int | None = None
    preset: str | None = None
    pix_fmt: str | None = None
    """None: today's default for a clip without a source; the source's depth, chroma and alpha for one with."""
    odd_size: str = "pad"
    """"pad" (repeat the last row/column) or "crop" (drop it) when a subsampled format needs even sizes."""
    audio: bool = True
    audio_codec: str | None = None
    """None/"auto": copy when the container allows, else re-encode; "copy"; or aac/opus/flac/pcm/mp3/ac3."""
    audio_bitrate: int | None = None
    color_matrix: str = "auto"
    """"auto" keeps the clip's matrix; or bt601, bt709, bt2020."""
    color_range: str = "tv"
    """"tv" (limited, what players expect) or "pc" (full); limited/mpeg and full/jpeg work too."""
    threads: int = 0
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    """Container tags, e.g. ComfyUI's prompt and workflow as JSON (so the file can be dropped back in)."""


def codec_spec(codec: str) -> tuple[str, CodecSpec]:
    name = CODEC_ALIASES.get(codec.lower(), codec.lower())
    if name not in CODECS:
        raise InputError(f"video codec '{codec}' is not supported; use one of {', '.join(available_codecs())}")
    spec = CODECS[name]
    if not has_encoder(spec.encoder):
        raise InputError(f"this FFmpeg build has no {spec.encoder} encoder for '{codec}'; "
                         f"use one of {', '.join(available_codecs())}")
    return name, spec


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (av.error.FFmpegError, ValueError):
        return False
    return True


def available_codecs() -> list[str]:
    """Codec names usable with this FFmpeg build."""
    return [name for name, spec in CODECS.items() if has_encoder(spec.encoder)]


def output_path_for(path: str | os.PathLike, codec: str) -> Path:
    """`path` with the codec's default extension when it has none; checks the container fits."""
    name, spec = codec_spec(codec)
    target = Path(os.fspath(path)).expanduser()
    if name == "png":
        return target.with_suffix("") if target.suffix.lower() == ".png" else target
    ext = target.suffix.lower().lstrip(".")
    if not ext:
        return target.with_name(target.name + "." + spec.containers[0])
    kind = CONTAINER_KINDS.get(ext)
    if kind not in spec.containers:
        raise InputError(f"a .{ext} file cannot hold {name} video; use one of "
                         f"{', '.join('.' + c for c in spec.containers)} for '{target.name}'")
    return target


def check_rate_options(name: str, spec: CodecSpec, crf: int | None, preset: str | None) -> None:
    """InputError when `crf` or `preset` does not apply to the codec."""
    if crf is not None:
        if spec.crf is None:
            raise InputError(f"crf does not apply to {name}; leave it empty")
        low, high, _ = spec.crf
        if not low <= crf <= high:
            raise InputError(f"crf for {name} must be between {low} and {high}, got {crf}")
    if preset and preset not in spec.presets:
        choices = ", ".join(spec.presets) if spec.presets else "none (leave it empty)"
        raise InputError(f"preset '{preset}' is not known for {name}; use one of {choices}")


def even_size(width: int, height: int, pix_fmt: str, odd_size: str) -> tuple[int, int]:
    """The size a pixel format can hold: odd sizes padded or cropped for subsampled chroma."""
    fmt = av.VideoFormat(pix_fmt)
    need_w = 1 if fmt.is_rgb else 64 // fmt.chroma_width(64)
    need_h = 1 if fmt.is_rgb else 64 // fmt.chroma_height(64)
    if odd_size not in ("pad", "crop"):
        raise InputError(f"odd_size must be 'pad' or 'crop', got '{odd_size}'")
    if odd_size == "pad":
        return width + (-width % need_w), height + (-height % need_h)
    if width < need_w or height < need_h:
        raise InputError(f"a {width}x{height} picture is too small to crop to an even size; use odd_size='pad'")
    return width - width % need_w, height - height % need_h


HDR_TRANSFERS = ("smpte2084", "arib-std-b67")


def output_color(info: ClipInfo, options: EncodeOptions, width: int, height: int) -> ColorInfo:
    """The matrix/range/primaries/transfer the output is converted with and tagged as.

    A tagged source keeps its tags; an HDR source (BT.2020 primaries, PQ or HLG transfer, which
    are never assumed for untagged files) keeps them even when its matrix is untagged.
    """
    color_range = parse_range(options.color_range)
    fallback = default_color(width, height)
    source = info.color
    hdr = source.primaries == "bt2020" or source.transfer in HDR_TRANSFERS
    if options.color_matrix and options.color_matrix != "auto":
        matrix = parse_matrix(options.color_matrix)
    elif source.tagged:
        matrix = source.matrix
    else:
        matrix = "bt2020nc" if hdr else fallback.matrix
    primaries = source.primaries if source.tagged or hdr else fallback.primaries
    transfer = source.transfer if source.tagged or hdr else fallback.transfer
    if matrix.startswith("bt2020") and not (source.tagged or hdr):
        primaries, transfer = "bt2020", "bt709"
    return ColorInfo(matrix=matrix, range=color_range, primaries=primaries, transfer=transfer, tagged=True)


@dataclasses.dataclass(frozen=True)
class PixelTraits:
    bits: int
    shift: tuple[int, int]
    """Chroma subsampling as log2 (horizontal, vertical): (1, 1) is 4:2:0; (0, 0) for 4:4:4 and RGB."""
    rgb: bool
    alpha: bool

    def chroma(self) -> str:
        return "RGB" if self.rgb else _CHROMA_NAMES.get(self.shift, f"{self.shift}")

    def describe(self) -> str:
        return f"{self.bits}-bit {self.chroma()}{' with alpha' if self.alpha else ''}"


def pixel_traits(pix_fmt: str) -> PixelTraits:
    """Depth, subsampling, RGB-ness and alpha of an FFmpeg pixel format (gray counts as 4:2:0: no chroma to lose)."""
    bits, alpha = pix_fmt_traits(pix_fmt)
    try:
        fmt = av.VideoFormat(pix_fmt)
    except (ValueError, av.error.FFmpegError):
        return PixelTraits(bits, (1, 1), False, alpha)
    if fmt.is_rgb or fmt.has_palette:
        return PixelTraits(bits, (0, 0), True, alpha)
    if len(fmt.components) - int(alpha) < 3:
        return PixelTraits(bits, (1, 1), False, alpha)
    shift = (round(math.log2(64 / fmt.chroma_width(64))), round(math.log2(64 / fmt.chroma_height(64))))
    return PixelTraits(bits, shift, False, alpha)


@dataclasses.dataclass(frozen=True)
class SourceFormat:
    """What the clip's source file held, as far as an encode can keep it."""

    family: str | None
    """The CODECS entry of the source's codec family; None when vsrkit encodes no such family."""
    decoder: str
    traits: PixelTraits
    profile: str | None


def source_format(info: ClipInfo) -> SourceFormat | None:
    """The format of the file the clip was opened from; None for a clip without one (an IMAGE batch)."""
    decoder, pix_fmt = info.extra.get("codec"), info.extra.get("pix_fmt")
    if not decoder or not pix_fmt:
        return None
    traits = pixel_traits(pix_fmt)
    traits = dataclasses.replace(traits, bits=max(traits.bits, info.bit_depth), alpha=info.channels == 4)
    return SourceFormat(SOURCE_FAMILIES.get(decoder), decoder, traits, info.extra.get("profile"))


@dataclasses.dataclass(frozen=True)
class FormatChoice:
    """The codec, pixel format, size and colour an encode uses, and why."""

    codec: str
    pix_fmt: str
    preset: str | None
    width: int
    height: int
    color: ColorInfo
    reason: str
    given_up: tuple[str, ...] = ()

    def encode_options(self, options: EncodeOptions) -> EncodeOptions:
        """`options` with this choice made explicit (so encoding it again chooses the same)."""
        return dataclasses.replace(options, codec=self.codec, pix_fmt=self.pix_fmt, preset=self.preset)

    def describe(self) -> str:
        """One line for the CLI's summary and the Save Video node, plus one per thing given up."""
        color = self.color
        lines = [f"video: {self.codec} {self.pix_fmt} ({pixel_traits(self.pix_fmt).describe()}), colour "
                 f"{color.matrix}/{color.range}/{color.primaries}/{color.transfer}: {self.reason}"]
        lines.extend(f"  gave up: {item}" for item in self.given_up)
        return "\n".join(lines)


def choose_format(info: ClipInfo, options: EncodeOptions, path: str | os.PathLike | None = None) -> FormatChoice:
    """The format `save_clip` writes `info`'s clip in; `path` (if given) decides the container.

    An explicit codec and pixel format are used as asked (with today's errors when impossible).
    """
    source = source_format(info)
    kind = _container_kind(path)
    if options.codec.strip().lower() != "auto":
        name, spec = codec_spec(options.codec)
        if path is not None:
            output_path_for(path, name)
        return _finish(info, options, source, name, _pick_pix_fmt(name, spec, options, info, source, kind),
                       "codec as asked")
    if source is None:
        names = [n for n in _FALLBACKS_8BIT if _fits(n, kind) and has_encoder(CODECS[n].encoder)] or ["h264"]
        if path is not None:
            output_path_for(path, names[0])
        picked = _pick_pix_fmt(names[0], CODECS[names[0]], options, info, None, kind)
        return _finish(info, options, None, names[0], picked, "auto: no source to follow (a clip from IMAGE "
                       f"batches), so {CODEC_TITLES[names[0]]}")
    return _auto_choice(info, options, source, kind, path)


def _auto_choice(info: ClipInfo, options: EncodeOptions, source: SourceFormat, kind: str | None,
                 path: str | os.PathLike | None) -> FormatChoice:
    """The source's family if it keeps everything, else the first fallback that does, else the least lossy."""
    order = [source.family] if source.family else []
    order += [n for n in (_FALLBACKS_DEEP if source.traits.bits > 8 else _FALLBACKS_8BIT) if n not in order]
    best: tuple[tuple[int, int, int], str, tuple[str, list[str]]] | None = None
    first_error: InputError | None = None
    family_problem = f"{source.decoder} is not a codec vsrkit encodes"
    for name in order:
        spec = CODECS[name]
        try:
            problem = _unusable(name, spec, options, info, kind)
            picked = None if problem else _pick_pix_fmt(name, spec, options, info, source, kind)
        except InputError as exc:
            problem, first_error = str(exc), first_error or exc
        if problem is not None:
            if name == source.family:
                family_problem = problem
            continue
        loss = _loss(source.traits, pixel_traits(picked[0]), info.channels == 4)
        if best is None or loss < best[0]:
            best = (loss, name, picked)
        if loss == (0, 0, 0):
            break
    if best is None:
        if path is not None:
            output_path_for(path, order[0])
        raise first_error or InputError(f"no codec of this FFmpeg build can encode this clip ({family_problem}); "
                                        "choose a codec")
    _, name, picked = best
    if name == source.family:
        reason = f"auto: kept the source's {CODEC_TITLES[name]}"
    else:
        was = CODEC_TITLES.get(source.family or "", source.decoder)
        reason = f"auto: not {was} ({family_problem}), so {CODEC_TITLES[name]} for a {source.traits.bits}-bit source"
    return _finish(info, options, source, name, picked, reason)


def _finish(info: ClipInfo, options: EncodeOptions, source: SourceFormat | None, name: str,
            picked: tuple[str, list[str]], reason: str) -> FormatChoice:
    pix_fmt, given_up = picked
    width, height = even_size(info.width, info.height, pix_fmt, options.odd_size)
    preset = options.preset
    if name == "prores" and not preset and source is not None and source.family == "prores":
        preset = _PRORES_PROFILE_PRESETS.get((source.profile or "").lower())
    if options.pix_fmt:
        reason += "; pixel format as asked"
    elif source is None:
        reason += "; the default pixel format for a clip without a source"
    else:
        reason += f"; {'nearest to' if given_up else 'keeps'} the source's {source.traits.describe()}"
    return FormatChoice(codec=name, pix_fmt=pix_fmt, preset=preset, width=width, height=height,
                        color=output_color(info, options, width, height), reason=reason, given_up=tuple(given_up))


def _container_kind(path: str | os.PathLike | None) -> str | None:
    """The container a path's extension asks for; None for no extension (the codec's own); "?" if unknown."""
    if path is None:
        return None
    ext = Path(os.fspath(path)).suffix.lower().lstrip(".")
    return CONTAINER_KINDS.get(ext, "?") if ext else None


def _fits(name: str, kind: str | None) -> bool:
    return kind is None or kind in CODECS[name].containers


def _unusable(name: str, spec: CodecSpec, options: EncodeOptions, info: ClipInfo, kind: str | None) -> str | None:
    """Why the auto choice cannot use this codec (None: it can); InputError for a bad crf/preset/pix_fmt."""
    if name == "png":
        return "png writes frame folders"
    if not has_encoder(spec.encoder):
        return f"this FFmpeg build has no {spec.encoder} encoder"
    if not _fits(name, kind):
        return f"{CODEC_TITLES[name]} does not fit a .{kind} file"
    if info.width < spec.min_size[0] or info.height < spec.min_size[1]:
        return f"{CODEC_TITLES[name]} needs frames of at least {spec.min_size[0]}x{spec.min_size[1]}"
    check_rate_options(name, spec, options.crf, options.preset)
    return None


def _writable_formats(name: str, spec: CodecSpec, kind: str | None) -> list[str]:
    """The encoder's pixel formats vsrkit writes, minus alpha ones where the codec or container drops alpha."""
    supported = [f.name for f in (av.codec.Codec(spec.encoder, "w").video_formats or [])]
    if name == "png":
        formats = [f for f in supported if f in _PACKED_RGB]
    else:
        formats = [f for f in supported if _WRITABLE.match(f) and (name == "ffv1" or not f.startswith("gbr"))]
    alpha_kept = spec.alpha_pix_fmt is not None and (kind is None or kind in ALPHA_CONTAINERS.get(name, (kind,)))
    return [f for f in formats if alpha_kept or not pix_fmt_traits(f)[1]]


def _default_pix_fmt(name: str, spec: CodecSpec, options: EncodeOptions, info: ClipInfo) -> str:
    """Today's fixed default, for clips without a source."""
    if name == "prores" and (options.preset or "").startswith("4444"):
        return "yuva444p10le" if info.channels == 4 else "yuv444p10le"
    if info.channels == 4 and spec.alpha_pix_fmt:
        if info.bit_depth > 8 and name in ("png", "ffv1"):
            return "rgba64be" if name == "png" else "gbrap16le"
        return spec.alpha_pix_fmt
    return spec.deep_pix_fmt if info.bit_depth > 8 else spec.pix_fmt


def _pick_pix_fmt(name: str, spec: CodecSpec, options: EncodeOptions, info: ClipInfo,
                  source: SourceFormat | None, kind: str | None) -> tuple[str, list[str]]:
    """(pixel format, what it gives up of the source, or of the clip's alpha without a source) for this codec."""
    has_alpha = info.channels == 4
    if options.pix_fmt or source is None:
        if options.pix_fmt:
            supported = [f.name for f in (av.codec.Codec(spec.encoder, "w").video_formats or [])]
            if options.pix_fmt not in supported:
                raise InputError(f"pixel format '{options.pix_fmt}' is not available for {name}; "
                                 f"use one of {', '.join(supported)}")
        pix_fmt = options.pix_fmt or _default_pix_fmt(name, spec, options, info)
        have = pixel_traits(pix_fmt)
        wanted = source.traits if source else dataclasses.replace(have, alpha=has_alpha)
        return pix_fmt, _given_up(name, wanted, have, has_alpha, kind)
    wanted = source.traits
    formats = _writable_formats(name, spec, kind)
    if name == "prores" and (options.preset or "").startswith("4444"):
        formats = [f for f in formats if "444" in f] or formats

    def rank(pix_fmt: str) -> tuple[int, ...]:
        have = pixel_traits(pix_fmt)
        extra = (int(have.alpha and not has_alpha), int(have.rgb != wanted.rgb), max(0, have.bits - wanted.bits),
                 sum(max(0, s - h) for s, h in zip(wanted.shift, have.shift, strict=True)))
        return (*_loss(wanted, have, has_alpha), *extra)

    pix_fmt = min(formats, key=rank)
    return pix_fmt, _given_up(name, wanted, pixel_traits(pix_fmt), has_alpha, kind)


def _loss(wanted: PixelTraits, have: PixelTraits, has_alpha: bool) -> tuple[int, int, int]:
    """(alpha dropped, bits dropped, chroma halvings) of writing `wanted` as `have`."""
    return (int(has_alpha and not have.alpha), max(0, wanted.bits - have.bits),
            sum(max(0, h - s) for s, h in zip(wanted.shift, have.shift, strict=True)))


def _given_up(name: str, wanted: PixelTraits, have: PixelTraits, has_alpha: bool, kind: str | None) -> list[str]:
    title = CODEC_TITLES[name]
    lost = []
    if has_alpha and not have.alpha:
        where = f" in a .{kind} file" if name in ALPHA_CONTAINERS and kind else ""
        lost.append(f"alpha ({title}{where} cannot carry it; ProRes in .mov, VP9 in .webm or FFV1 in .mkv keep it)")
    if wanted.bits > have.bits:
        lost.append(f"bit depth ({wanted.bits}-bit written as {have.bits}-bit: {CODECS[name].encoder} in this "
                    f"FFmpeg build goes no deeper)")
    if any(h > s for s, h in zip(wanted.shift, have.shift, strict=True)):
        lost.append(f"chroma ({wanted.chroma()} written as {have.chroma()}: {title} has nothing closer here)")
    return lost
