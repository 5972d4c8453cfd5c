"""YUV <-> RGB in float, with the stream's own matrix and range.

We convert the decoded planes ourselves rather than through swscale so that:
the matrix and range the stream is tagged with are always the ones applied,
10/12-bit samples go straight to float (no 8-bit step, no banding), and encode
uses the exact inverse, so a save-and-reload round trip does not shift colours.

Chroma siting for 4:2:x is MPEG-2/H.264's default ("left": co-sited with the
even luma column horizontally, centred between rows vertically); the same
filter pair is used to subsample on encode and upsample on decode.

Untagged sources: matrix bt709 when the picture is HD (height >= 720 or width
>= 1280), else bt601 (smpte170m), limited range unless the pixel format is a
full-range `yuvj*` one. This is what players (mpv, browsers) assume; FFmpeg's
swscale would use bt601 everywhere.
"""

from __future__ import annotations

import numpy as np
import torch

from ..clip import ColorInfo
from ..errors import InputError

# FFmpeg's enum values (AVColorSpace, AVColorRange, AVColorPrimaries, AVColorTransferCharacteristic)
MATRIX_NAMES = {0: "gbr", 1: "bt709", 2: "unknown", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m",
                8: "ycgco", 9: "bt2020nc", 10: "bt2020c", 11: "smpte2085", 12: "chroma-derived-nc",
                13: "chroma-derived-c", 14: "ictcp"}
RANGE_NAMES = {0: "unknown", 1: "tv", 2: "pc"}
PRIMARIES_NAMES = {1: "bt709", 2: "unknown", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m",
                   8: "film", 9: "bt2020", 10: "smpte428", 11: "smpte431", 12: "smpte432", 22: "ebu3213"}
TRANSFER_NAMES = {1: "bt709", 2: "unknown", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m",
                  8: "linear", 9: "log100", 10: "log316", 11: "iec61966-2-4", 12: "bt1361e",
                  13: "iec61966-2-1", 14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084", 17: "smpte428",
                  18: "arib-std-b67"}


def _codes(names: dict[int, str]) -> dict[str, int]:
    return {name: code for code, name in names.items()}


MATRIX_CODES = _codes(MATRIX_NAMES)
RANGE_CODES = _codes(RANGE_NAMES)
PRIMARIES_CODES = _codes(PRIMARIES_NAMES)
TRANSFER_CODES = _codes(TRANSFER_NAMES)

# (Kr, Kb) luma coefficients per matrix
LUMA_WEIGHTS = {
    "bt709": (0.2126, 0.0722),
    "bt470bg": (0.299, 0.114),
    "smpte170m": (0.299, 0.114),
    "fcc": (0.30, 0.11),
    "smpte240m": (0.212, 0.087),
    "bt2020nc": (0.2627, 0.0593),
    "bt2020c": (0.2627, 0.0593),
}
MATRIX_ALIASES = {"bt601": "smpte170m", "601": "smpte170m", "709": "bt709", "bt2020": "bt2020nc",
                  "2020": "bt2020nc", "limited": "tv", "full": "pc", "mpeg": "tv", "jpeg": "pc"}
SUPPORTED_MATRICES = (*LUMA_WEIGHTS, "ycgco")


def canonical(name: str) -> str:
    """FFmpeg's name for a matrix or range given in a common spelling (bt601 -> smpte170m)."""
    name = name.strip().lower()
    return MATRIX_ALIASES.get(name, name)


def parse_matrix(name: str) -> str:
    """FFmpeg's name of a matrix we can convert with (bt601 -> smpte170m, 709 -> bt709, ...); InputError if none."""
    matrix = canonical(name)
    if matrix not in SUPPORTED_MATRICES:
        raise InputError(f"colour matrix '{name}' is not known; use auto, bt601, bt709 or bt2020")
    return matrix


def parse_range(name: str) -> str:
    """'tv' or 'pc' from tv/limited/mpeg or pc/full/jpeg (any case); InputError otherwise."""
    color_range = canonical(name)
    if color_range not in ("tv", "pc"):
        raise InputError(f"colour range '{name}' is not known; use tv (limited) or pc (full)")
    return color_range


def is_hd(width: int, height: int) -> bool:
    return height >= 720 or width >= 1280


def default_color(width: int, height: int, full_range: bool = False) -> ColorInfo:
    """The colour we assume for an untagged stream (see the module docstring)."""
    if is_hd(width, height):
        return ColorInfo("bt709", "pc" if full_range else "tv", "bt709", "bt709", tagged=False)
    primaries = "bt470bg" if height in (576, 288) else "smpte170m"
    return ColorInfo("smpte170m", "pc" if full_range else "tv", primaries, "smpte170m", tagged=False)


def color_from_codes(matrix: int, color_range: int, primaries: int, transfer: int,
                     width: int, height: int, full_range_format: bool = False) -> ColorInfo:
    """ColorInfo from FFmpeg's integer tags, filling untagged parts with our documented defaults."""
    fallback = default_color(width, height, full_range_format)
    matrix_name = MATRIX_NAMES.get(int(matrix), "unknown")
    range_name = RANGE_NAMES.get(int(color_range), "unknown")
    primaries_name = PRIMARIES_NAMES.get(int(primaries), "unknown")
    transfer_name = TRANSFER_NAMES.get(int(transfer), "unknown")
    tagged = matrix_name not in ("unknown", "gbr")
    return ColorInfo(
        matrix=matrix_name if matrix_name in SUPPORTED_MATRICES else fallback.matrix,
        range=range_name if range_name != "unknown" else fallback.range,
        primaries=primaries_name if primaries_name != "unknown" else fallback.primaries,
        transfer=transfer_name if transfer_name != "unknown" else fallback.transfer,
        tagged=tagged,
    )


def _offsets(bits: int, full_range: bool) -> tuple[float, float, float, float]:
    """(luma black, luma span, chroma zero, chroma span) in code values for this depth and range."""
    if full_range:
        top = float(2 ** bits - 1)
        return 0.0, top, float(2 ** (bits - 1)), top
    scale = float(2 ** (bits - 8))
    return 16.0 * scale, 219.0 * scale, 128.0 * scale, 224.0 * scale


# Chroma siting for 4:2:x: vertically chroma sits between two luma rows (weights 3/4, 1/4 to
# upsample; the mean of the pair to subsample); horizontally it is co-sited with the even
# columns (copy, or the midpoint of two samples, to upsample; [1, 2, 1] / 4 to subsample).
# Work is done channels-last so the result is written once, in IMAGE layout.


def _coefficients(matrix: str) -> torch.Tensor:
    """3x3 RGB -> (Y, Cb, Cr) matrix, Y in 0..1 and chroma in -0.5..0.5."""
    if canonical(matrix) == "ycgco":
        return torch.tensor([[0.25, 0.5, 0.25], [-0.25, 0.5, -0.25], [0.5, 0.0, -0.5]])
    kr, kb = LUMA_WEIGHTS.get(canonical(matrix), LUMA_WEIGHTS["bt709"])
    kg = 1.0 - kr - kb
    return torch.tensor([
        [kr, kg, kb],
        [-0.5 * kr / (1.0 - kb), -0.5 * kg / (1.0 - kb), 0.5],
        [0.5, -0.5 * kg / (1.0 - kr), -0.5 * kb / (1.0 - kr)],
    ], dtype=torch.float64)


def _double_rows(terms: torch.Tensor, height: int) -> torch.Tensor:
    """[T, h, w, C] -> [T, min(2h, height), w, C] for chroma centred between luma rows."""
    frames, rows, cols, channels = terms.shape
    above = torch.cat([terms[:, :1], terms[:, :-1]], dim=1)
    below = torch.cat([terms[:, 1:], terms[:, -1:]], dim=1)
    grown = torch.empty((frames, rows * 2, cols, channels), dtype=terms.dtype)
    torch.lerp(terms, above, 0.25, out=grown[:, 0::2])
    torch.lerp(terms, below, 0.25, out=grown[:, 1::2])
    return grown[:, :height]


def _midpoints(terms: torch.Tensor) -> torch.Tensor:
    """Values halfway between each column and the next (the last column repeats)."""
    right = torch.cat([terms[:, :, 1:], terms[:, :, -1:]], dim=2)
    return torch.lerp(terms, right, 0.5)


def _double_cols(terms: torch.Tensor, width: int) -> torch.Tensor:
    frames, rows, cols, channels = terms.shape
    grown = torch.empty((frames, rows, cols * 2, channels), dtype=terms.dtype)
    grown[:, :, 0::2] = terms
    grown[:, :, 1::2] = _midpoints(terms)
    return grown[:, :, :width]


def yuv_to_rgb(y: np.ndarray | torch.Tensor, u: np.ndarray | torch.Tensor, v: np.ndarray | torch.Tensor,
               *, bits: int, matrix: str, full_range: bool,
               alpha: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """Planes [T, H, W] (chroma possibly subsampled) of integer codes -> float RGB(A) [T, H, W, C] in 0..1.

    The chroma part of the matrix is applied at chroma resolution and then upsampled (both
    steps are linear, so the order changes only the cost); luma is added in the final write.
    """
    black, luma_span, zero, chroma_span = _offsets(bits, full_range)
    luma = torch.as_tensor(y)
    frames, height, width = luma.shape
    to_rgb = torch.linalg.inv(_coefficients(matrix))
    chroma = torch.stack([torch.as_tensor(u), torch.as_tensor(v)], dim=-1).to(torch.float32)
    weights = (to_rgb[:, 1:].T / chroma_span).to(torch.float32)
    bias = (-(zero * to_rgb[:, 1:].sum(dim=1)) / chroma_span - black / luma_span).to(torch.float32)
    terms = torch.addmm(bias, chroma.reshape(-1, 2), weights).reshape(*chroma.shape[:-1], 3)
    while terms.shape[1] < height:
        terms = _double_rows(terms, height)
    while terms.shape[2] * 2 < width:
        terms = _double_cols(terms, width)
    channels = 3 if alpha is None else 4
    out = torch.empty((frames, height, width, channels), dtype=torch.float32)
    rgb = out[..., :3]
    scale = 1.0 / luma_span
    if terms.shape[2] == width:
        torch.add(terms, luma[..., None], alpha=scale, out=rgb)
    else:
        even, odd = rgb[:, :, 0::2], rgb[:, :, 1::2]
        torch.add(terms[:, :, :even.shape[2]], luma[:, :, 0::2, None], alpha=scale, out=even)
        torch.add(_midpoints(terms)[:, :, :odd.shape[2]], luma[:, :, 1::2, None], alpha=scale, out=odd)
    if alpha is not None:
        torch.mul(torch.as_tensor(alpha), 1.0 / float(2 ** bits - 1), out=out[..., 3])
    return out.clamp_(0.0, 1.0)


def _halve_rows(rgb: torch.Tensor) -> torch.Tensor:
    if rgb.shape[1] % 2:
        rgb = torch.cat([rgb, rgb[:, -1:]], dim=1)
    return torch.lerp(rgb[:, 0::2], rgb[:, 1::2], 0.5)


def _halve_cols(rgb: torch.Tensor) -> torch.Tensor:
    count = (rgb.shape[2] + 1) // 2
    padded = torch.cat([rgb[:, :, :1], rgb, rgb[:, :, -1:]], dim=2)
    left = padded[:, :, 0:2 * count:2]
    centre = padded[:, :, 1:2 * count + 1:2]
    right = padded[:, :, 2:2 * count + 2:2]
    return (left + right).mul_(0.25).add_(centre, alpha=0.5)


def rgb_to_yuv(rgb: torch.Tensor, *, bits: int, matrix: str, full_range: bool,
               chroma_shift_w: int, chroma_shift_h: int) -> list[torch.Tensor]:
    """Float RGB(A) [T, H, W, C] in 0..1 -> integer planes [Y, U, V(, A)] (uint8, or int32 above 8 bits).

    Chroma is subsampled by 2**shift on each axis with filters matching `yuv_to_rgb`
    (RGB is subsampled first, then the matrix applied: the same result for a quarter of the work).
    """
    black, luma_span, zero, chroma_span = _offsets(bits, full_range)
    top = float(2 ** bits - 1)
    sample = torch.uint8 if bits <= 8 else torch.int32
    to_yuv = _coefficients(matrix)
    colour = rgb[..., :3].to(torch.float32)
    luma = torch.matmul(colour, (to_yuv[0] * luma_span).to(torch.float32))
    luma = luma.add_(black).round_().clamp_(0, top).to(sample)
    small = colour
    for _ in range(chroma_shift_h):
        small = _halve_rows(small)
    for _ in range(chroma_shift_w):
        small = _halve_cols(small)
    chroma = torch.matmul(small, (to_yuv[1:].T * chroma_span).to(torch.float32))
    chroma = chroma.add_(zero).round_().clamp_(0, top).to(sample)
    planes = [luma, chroma[..., 0], chroma[..., 1]]
    if rgb.shape[-1] == 4:
        planes.append((rgb[..., 3] * top).round_().clamp_(0, top).to(sample))
    return planes
