"""Before/after comparison clips, so a user can judge an upscale at a glance.

The "before" clip (usually the source) is brought to the "after" clip's size with a
plain resize, which is what the upscale has to beat; the two are then shown side by
side, stacked, or split by a wipe line (fixed or sweeping across the frame). Both clips
are pulled in lockstep, chunk by chunk, so memory stays flat however long they are.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..clip import Clip, chunk_frames_for, rechunk
from ..errors import InputError

LAYOUTS = ("side_by_side", "stacked", "wipe", "wipe_sweep")
RESIZE_FILTERS = ("bicubic", "bilinear", "area", "nearest")

_DIVIDER_RGB = (1.0, 1.0, 1.0)
_LABEL_BACKGROUND = 0.0
_LABEL_FOREGROUND = 1.0

# 5x7 glyphs for the two labels; "#" is ink.
_GLYPHS = {
    "A": (" ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"),
    "B": ("#### ", "#   #", "#   #", "#### ", "#   #", "#   #", "#### "),
    "E": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####"),
    "F": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    "),
    "O": (" ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "R": ("#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #"),
    "T": ("#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "),
}


@dataclasses.dataclass(frozen=True)
class CompareOptions:
    """How to lay out a comparison.

    `crop` is (x, y, width, height) in the after clip's pixels, clamped to the frame;
    width or height 0 means "to the right/bottom edge". `wipe_position` is the fraction
    of the width shown from the before clip (wipe). `sweep_seconds` is one full
    left-right-left cycle of the moving wipe line (wipe_sweep).
    """

    layout: str = "side_by_side"
    resize: str = "bicubic"
    wipe_position: float = 0.5
    sweep_seconds: float = 4.0
    divider_px: int = 2
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    labels: bool = True

    def validate(self) -> None:
        if self.layout not in LAYOUTS:
            raise InputError(f"comparison layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.resize not in RESIZE_FILTERS:
            raise InputError(f"resize filter {self.resize!r} is not one of {', '.join(RESIZE_FILTERS)}")
        if not 0.0 <= self.wipe_position <= 1.0:
            raise InputError(f"wipe_position must be between 0 and 1, got {self.wipe_position}")
        if not self.sweep_seconds > 0:
            raise InputError(f"sweep_seconds must be positive, got {self.sweep_seconds}")
        if self.divider_px < 0:
            raise InputError(f"divider width must be 0 or more pixels, got {self.divider_px}")
        if any(v < 0 for v in self.crop):
            raise InputError(f"crop values must be 0 or more, got {self.crop}")


def crop_region(width: int, height: int, crop: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The crop (x, y, w, h) clamped to a width x height frame; 0 sizes reach the edge."""
    x, y, w, h = crop
    if x >= width or y >= height:
        raise InputError(f"crop origin ({x}, {y}) lies outside the {width}x{height} upscaled frame; "
                         "choose crop_x/crop_y inside it")
    w = width - x if w == 0 else min(w, width - x)
    h = height - y if h == 0 else min(h, height - y)
    return x, y, w, h


def output_size(width: int, height: int, options: CompareOptions) -> tuple[int, int]:
    """Width and height of the comparison for an after clip of width x height."""
    _, _, w, h = crop_region(width, height, options.crop)
    if options.layout == "side_by_side":
        return 2 * w, h
    if options.layout == "stacked":
        return w, 2 * h
    return w, h


def resize_frames(frames: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    """Plain resize of a [T, H, W, C] chunk to width x height (the "before" look)."""
    if frames.shape[1] == height and frames.shape[2] == width:
        return frames
    out = _interpolate(frames.permute(0, 3, 1, 2), width, height, method)
    return out.clamp_(0, 1).permute(0, 2, 3, 1).contiguous()


def _interpolate(nchw: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    """The F.interpolate call behind `resize_frames`, unclamped."""
    if method in ("bicubic", "bilinear"):
        return F.interpolate(nchw, size=(height, width), mode=method, align_corners=False, antialias=True)
    if method == "nearest":
        return F.interpolate(nchw, size=(height, width), mode="nearest-exact")
    return F.interpolate(nchw, size=(height, width), mode="area")


# The tap-by-tap sums below cost about this many times torch's own resize per output tap (CPU),
# so a crop covering most of the frame is cheaper resized whole and then cut.
_TAP_LOOP_COST = 3
_FILTER_REACH = {"bicubic": 2.0, "bilinear": 1.0, "area": 1.0, "nearest": 0.5}


def _axis_taps(in_size: int, out_size: int, start: int, length: int, method: str
               ) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """How a resize of one axis from in_size to out_size makes outputs start..start+length.

    Returns the source span [lo, hi) they read, and for each output the source pixels (relative
    to lo, [length, taps]) and their weights, padded with zero weights. The weights are torch's
    own: one-hot rows of the span pushed through the F.interpolate of `resize_frames`.
    """
    scale = in_size / out_size
    reach = _FILTER_REACH[method] * max(scale, 1.0) + 1.0
    lo = max(0, math.floor((start + 0.5) * scale - reach))
    hi = min(in_size, math.ceil((start + length - 0.5) * scale + reach) + 1)
    rows = []
    for first in range(lo, hi, 256):
        count = min(256, hi - first)
        probe = torch.zeros((1, count, 1, in_size))
        probe[0, torch.arange(count), 0, torch.arange(first, first + count)] = 1.0
        rows.append(_interpolate(probe, out_size, 1, method)[0, :, 0, start:start + length].T)
    weights = torch.cat(rows, dim=1)  # [length, hi - lo]
    used = weights != 0
    span = used.shape[1]
    first = used.int().argmax(dim=1)
    last = span - 1 - used.flip(1).int().argmax(dim=1)
    taps = int((last - first).max()) + 1
    offsets = torch.arange(taps)
    index = (first[:, None] + offsets).clamp_(max=span - 1)
    tap_weights = weights.gather(1, index) * (offsets <= (last - first)[:, None])
    return lo, hi, index, tap_weights


def _resample(frames: torch.Tensor, dim: int, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sums of pixels along `dim`, tap by tap in torch's order."""
    shape = [1] * frames.dim()
    shape[dim] = -1
    index, weights = index.to(frames.device), weights.to(frames.device, frames.dtype)
    out = frames.index_select(dim, index[:, 0]) * weights[:, 0].view(shape)
    for k in range(1, index.shape[1]):
        out.addcmul_(frames.index_select(dim, index[:, k]), weights[:, k].view(shape))
    return out


class CroppedResize:
    """`resize_frames` to out_w x out_h followed by the crop (x, y, w, h), worked out for the crop only.

    Without a crop (or with one so large that it would not pay) it is `resize_frames` and a cut.
    With one, each output pixel of the crop is the weighted sum of the source pixels that torch's
    resize would use, with torch's weights, in its order (width first), so the result equals the
    full resize then crop to float rounding at the cost of the crop.
    """

    def __init__(self, in_w: int, in_h: int, out_w: int, out_h: int, crop: tuple[int, int, int, int],
                 method: str):
        self.out_w, self.out_h, self.method = out_w, out_h, method
        self.crop = x, y, w, h = crop_region(out_w, out_h, crop)
        self.whole = (x, y, w, h) == (0, 0, out_w, out_h) or (in_w, in_h) == (out_w, out_h)
        if not self.whole:
            self.cols = _axis_taps(in_w, out_w, x, w, method)
            self.rows = _axis_taps(in_h, out_h, y, h, method)
            col_taps, row_taps = self.cols[2].shape[1], self.rows[2].shape[1]
            crop_work = (self.rows[1] - self.rows[0]) * w * col_taps + h * w * row_taps
            full_work = in_h * out_w * col_taps + out_h * out_w * row_taps
            self.whole = _TAP_LOOP_COST * crop_work >= full_work

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """The resized crop of a [T, H, W, C] chunk."""
        x, y, w, h = self.crop
        if self.whole:
            return resize_frames(frames, self.out_w, self.out_h, self.method)[:, y:y + h, x:x + w]
        col_lo, col_hi, col_index, col_weights = self.cols
        row_lo, row_hi, row_index, row_weights = self.rows
        source = frames[:, row_lo:row_hi, col_lo:col_hi]
        across = _resample(source, 2, col_index, col_weights)
        return _resample(across, 1, row_index, row_weights).clamp_(0, 1)


def wipe_split(frame_index: int, width: int, fps: float, options: CompareOptions) -> int:
    """Column where the before part ends for frame `frame_index`."""
    if options.layout == "wipe_sweep":
        phase = (frame_index / max(fps, 1e-9)) / options.sweep_seconds % 1.0
        fraction = 1.0 - abs(2.0 * phase - 1.0)
    else:
        fraction = options.wipe_position
    return int(round(fraction * width))


def _label_mask(text: str, scale: int) -> torch.Tensor:
    """A boolean [h, w] mask of `text` in the 5x7 font, each pixel `scale` wide."""
    rows = []
    for r in range(7):
        row = []
        for i, char in enumerate(text):
            glyph = _GLYPHS[char]
            row.extend(c == "#" for c in glyph[r])
            if i < len(text) - 1:
                row.append(False)
        rows.append(row)
    mask = torch.tensor(rows, dtype=torch.bool)
    return mask.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def _draw_label(frames: torch.Tensor, text: str, x0: int, y0: int, scale: int) -> None:
    """Draw `text` in place at (x0, y0) on a dark box, clipped to the frames."""
    mask = _label_mask(text, scale)
    pad = scale * 2
    box_h, box_w = mask.shape[0] + 2 * pad, mask.shape[1] + 2 * pad
    height, width = frames.shape[1], frames.shape[2]
    x1, y1 = min(width, x0 + box_w), min(height, y0 + box_h)
    if x1 <= x0 or y1 <= y0:
        return
    region = frames[:, y0:y1, x0:x1, :]
    region.fill_(_LABEL_BACKGROUND)
    text_mask = torch.zeros((box_h, box_w), dtype=torch.bool)
    text_mask[pad:pad + mask.shape[0], pad:pad + mask.shape[1]] = mask
    region[:, text_mask[: y1 - y0, : x1 - x0], :] = _LABEL_FOREGROUND


def compose(before: torch.Tensor, after: torch.Tensor, first_index: int, fps: float,
            options: CompareOptions) -> torch.Tensor:
    """One comparison chunk from equally long, equally sized before/after chunks."""
    height, width = after.shape[1], after.shape[2]
    if options.layout == "side_by_side":
        out = torch.cat([before, after], dim=2)
    elif options.layout == "stacked":
        out = torch.cat([before, after], dim=1)
    else:
        out = after.clone()
        if options.layout == "wipe":
            split = wipe_split(first_index, width, fps, options)
            out[:, :, :split] = before[:, :, :split]
        else:
            for t in range(out.shape[0]):
                split = wipe_split(first_index + t, width, fps, options)
                out[t, :, :split] = before[t, :, :split]
    _draw_dividers(out, width, height, first_index, fps, options)
    if options.labels:
        scale = max(1, round(min(height, width) / 144))
        margin = scale * 3
        _draw_label(out, "BEFORE", margin, margin, scale)
        after_x = width + margin if options.layout == "side_by_side" else margin
        after_y = height + margin if options.layout == "stacked" else margin
        if options.layout in ("wipe", "wipe_sweep"):
            after_x = width - margin - (_label_mask("AFTER", scale).shape[1] + 4 * scale)
        _draw_label(out, "AFTER", max(0, after_x), after_y, scale)
    return out


def _draw_dividers(out: torch.Tensor, width: int, height: int, first_index: int, fps: float,
                   options: CompareOptions) -> None:
    if options.divider_px == 0:
        return
    half = options.divider_px // 2
    color = torch.tensor(_DIVIDER_RGB, dtype=out.dtype)
    if options.layout == "side_by_side":
        out[:, :, max(0, width - half): width - half + options.divider_px] = color
    elif options.layout == "stacked":
        out[:, max(0, height - half): height - half + options.divider_px] = color
    else:
        fixed = options.layout == "wipe"
        for t in range(1 if fixed else out.shape[0]):
            split = wipe_split(first_index + t, width, fps, options)
            if 0 < split < width:
                frames = slice(None) if fixed else t
                out[frames, :, max(0, split - half): split - half + options.divider_px] = color


def compare_clips(before: Clip, after: Clip, options: CompareOptions | None = None) -> Clip:
    """A clip showing `before` (plainly resized to the after size) next to or wiped into `after`.

    Frame counts must match (the before clip is normally the source of the after clip).
    The result keeps the after clip's frame rate and audio.
    """
    options = options or CompareOptions()
    options.validate()
    b_info, a_info = before.info, after.info
    if b_info.frame_count != a_info.frame_count:
        raise InputError(
            f"the before clip has {b_info.frame_count} frames and the after clip {a_info.frame_count}; "
            "compare a clip with its own upscale (same frames, e.g. the same Load Video node's output)"
        )
    x, y, w, h = crop_region(a_info.width, a_info.height, options.crop)
    out_w, out_h = output_size(a_info.width, a_info.height, options)
    fps = float(a_info.fps)
    resize_crop = CroppedResize(b_info.width, b_info.height, a_info.width, a_info.height, options.crop,
                                options.resize)
    step = chunk_frames_for(max(out_w, a_info.width), max(out_h, a_info.height), 3)

    def source() -> Iterator[torch.Tensor]:
        before_chunks = rechunk(before.chunks(), step)
        done = 0
        for after_chunk in rechunk(after.chunks(), step):
            before_chunk = next(before_chunks, None)
            if before_chunk is None or before_chunk.shape[0] < after_chunk.shape[0]:
                ended = done + (0 if before_chunk is None else before_chunk.shape[0])
                raise InputError(f"the before clip ended at frame {ended} while the after clip went on; "
                                 "compare a clip with its own upscale")
            if before_chunk.shape[0] > after_chunk.shape[0]:
                raise InputError(f"the after clip ended at frame {done + after_chunk.shape[0]} while the "
                                 "before clip went on; compare a clip with its own upscale")
            composed = compose(resize_crop(before_chunk[..., :3].float()),
                               after_chunk[:, y:y + h, x:x + w, :3].float(), done, fps, options)
            done += composed.shape[0]
            yield composed
        if next(before_chunks, None) is not None:
            raise InputError(f"the after clip ended at frame {done} while the before clip went on; "
                             "compare a clip with its own upscale")

    info = a_info.replace(width=out_w, height=out_h, channels=3,
                          extra={**a_info.extra, "comparison": options.layout})
    return Clip(info, source)
