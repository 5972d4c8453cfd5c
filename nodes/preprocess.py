"""Nodes: deinterlace and denoise a clip (or an IMAGE batch) before upscaling."""

from __future__ import annotations

from ..engines.video.preprocess import (
    DEFAULT_DENOISE_METHOD,
    DEINTERLACE_METHODS,
    DEINTERLACE_MODES,
    DEINTERLACE_RATES,
    DENOISE_METHODS,
    DETECT_FRAMES,
    PARITIES,
    deinterlace_clip,
    denoise_clip,
    denoise_images,
    denoise_methods_available,
)
from ..engines.video.scenes import DEFAULT_SCENE_THRESHOLD
from . import host
from .common import scene_threshold_input
from .types import CATEGORY, CLIP

_PRESETS = ["medium", "light", "strong", "none"]


def _method_tooltip() -> str:
    kinds = "; ".join(f"{name}: {DENOISE_METHODS[name].kind}" for name in denoise_methods_available())
    missing = [name for name in DENOISE_METHODS if name not in denoise_methods_available()]
    note = f" Not in this FFmpeg build: {', '.join(missing)}." if missing else ""
    return f"Denoiser. {kinds}.{note}"


def _denoise_inputs() -> dict:
    methods = denoise_methods_available()
    default = DEFAULT_DENOISE_METHOD if DEFAULT_DENOISE_METHOD in methods else methods[0]
    return {
        "method": (methods, {"default": default, "tooltip": _method_tooltip()}),
        "preset": (_PRESETS, {"default": "medium",
                              "tooltip": "Strength preset. none: no denoiser (e.g. deblock only)."}),
        "strength": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.1,
                               "tooltip": "0: use the preset. Otherwise the method's main setting: fftdnoiz "
                                          "sigma (0-100), atadenoise threshold A (0-0.3), nlmeans s (1-30), "
                                          "hqdn3d spatial (0-255). Out-of-range values are refused."}),
        "deblock": ("BOOLEAN", {"default": False,
                                "tooltip": "Smooth the block edges of compressed sources first (FFmpeg deblock)."}),
        "deblock_strength": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "Deblock thresholds, 0-1; 0.5 is FFmpeg's default."}),
    }


def _strength(value: float) -> float | None:
    return None if float(value) == 0.0 else float(value)


class Deinterlace:
    """Turns interlaced video into progressive frames before upscaling."""

    DESCRIPTION = ("Deinterlace a clip with bwdif or yadif (FFmpeg). In auto mode, progressive clips pass "
                   "through untouched; the field order comes from the file, or idet when the file does not say.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": (CLIP, {"tooltip": "The clip to deinterlace (e.g. Load Video's output)."}),
                "method": (list(DEINTERLACE_METHODS), {"default": "bwdif",
                                                       "tooltip": "bwdif: sharper, fewer artefacts; yadif: the "
                                                                  "classic, a little faster."}),
                "mode": (list(DEINTERLACE_MODES), {"default": "auto",
                                                   "tooltip": "auto: only interlaced clips (by metadata, else "
                                                              "idet); on: always; off: pass through."}),
                "rate": (list(DEINTERLACE_RATES), {"default": "frame",
                                                   "tooltip": "frame: one frame per frame (29.97i -> 29.97p); "
                                                              "field: one per field (29.97i -> 59.94p), "
                                                              "smoother motion, twice the frames."}),
                "parity": (list(PARITIES), {"default": "auto",
                                            "tooltip": "Field order. auto: from the file, else idet; force "
                                                       "tff/bff when a file is mislabelled."}),
            },
            "optional": {
                "detect_frames": ("INT", {"default": DETECT_FRAMES, "min": 2, "max": 100000,
                                          "tooltip": "Frames idet examines when the file does not state "
                                                     "its field order."}),
                "scene_threshold": scene_threshold_input(
                    "the deinterlacer starts afresh (no field of one shot is woven into the next)"),
            },
        }

    RETURN_TYPES = (CLIP,)
    RETURN_NAMES = ("clip",)
    OUTPUT_TOOLTIPS = ("The progressive clip (the input itself when nothing needed doing).",)
    FUNCTION = "deinterlace"
    CATEGORY = f"{CATEGORY}/preprocess"

    def deinterlace(self, clip, method="bwdif", mode="auto", rate="frame", parity="auto",
                    detect_frames=DETECT_FRAMES, scene_threshold=DEFAULT_SCENE_THRESHOLD):
        return (deinterlace_clip(clip, mode=mode, method=method, rate=rate, parity=parity,
                                 detect_frames=int(detect_frames), scene_threshold=float(scene_threshold)),)


class Denoise:
    """Deblocks and denoises a clip, streaming, so grain is not upscaled as texture."""

    DESCRIPTION = ("Denoise a clip before upscaling (FFmpeg fftdnoiz, atadenoise, nlmeans; hqdn3d where the "
                   "build has it), optionally deblocking first. Temporal filters run across chunk boundaries.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip": (CLIP, {"tooltip": "The clip to clean (e.g. after Deinterlace)."}),
                             **_denoise_inputs()},
                "optional": {"scene_threshold": scene_threshold_input(
                    "temporal denoisers start afresh, so no shot is averaged into the next")}}

    RETURN_TYPES = (CLIP,)
    RETURN_NAMES = ("clip",)
    OUTPUT_TOOLTIPS = ("The cleaned clip, same frame count and rate.",)
    FUNCTION = "denoise"
    CATEGORY = f"{CATEGORY}/preprocess"

    def denoise(self, clip, method=DEFAULT_DENOISE_METHOD, preset="medium", strength=0.0, deblock=False,
                deblock_strength=0.5, scene_threshold=DEFAULT_SCENE_THRESHOLD):
        return (denoise_clip(clip, preset=preset, method=method, strength=_strength(strength),
                             deblock=bool(deblock), deblock_strength=float(deblock_strength),
                             scene_threshold=float(scene_threshold)),)


class DenoiseImages:
    """The Denoise node for an IMAGE batch already in memory."""

    DESCRIPTION = ("Denoise an IMAGE batch with the same filters as Denoise. Temporal methods treat the "
                   "batch as consecutive video frames; for unrelated stills use nlmeans.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE", {"tooltip": "Frames to clean, in order."}),
                             **_denoise_inputs()}}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The cleaned frames, same count and size.",)
    FUNCTION = "denoise"
    CATEGORY = f"{CATEGORY}/preprocess"

    def denoise(self, images, method=DEFAULT_DENOISE_METHOD, preset="medium", strength=0.0, deblock=False,
                deblock_strength=0.5):
        with host.progress(int(images.shape[0]), "denoise") as progress:
            out = denoise_images(images, preset=preset, method=method, strength=_strength(strength),
                                 deblock=bool(deblock), deblock_strength=float(deblock_strength),
                                 progress=progress)
        return (out,)


NODE_CLASS_MAPPINGS = {
    "vsrkitDeinterlace": Deinterlace,
    "vsrkitDenoise": Denoise,
    "vsrkitDenoiseImages": DenoiseImages,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "vsrkitDeinterlace": "Deinterlace (vsrkit)",
    "vsrkitDenoise": "Denoise / Deblock (vsrkit)",
    "vsrkitDenoiseImages": "Denoise / Deblock Images (vsrkit)",
}
