"""Node: Temporal Stabilize, for any per-frame upscale (a clip or an IMAGE batch) with its source."""

from __future__ import annotations

import torch

from ..engines.clip import Clip
from ..engines.device import device_choices
from ..engines.errors import InputError
from ..engines.video.scenes import DEFAULT_SCENE_THRESHOLD
from ..engines.video.stabilize import DEFAULT_STRENGTH, StabilizeSettings, stabilize_clip
from . import host
from .common import scene_threshold_input, upscale_outputs
from .types import CATEGORY, CLIP

STRENGTH_TOOLTIP = ("How much of the previous frame, moved along the optical flow of the source, is blended into "
                    "each frame where the flow holds: 0 is off (the per-frame frames untouched), higher is "
                    "steadier. Moving objects, occlusions and scene cuts fall back to the per-frame frame.")
STABILIZER_RESTART = "the stabiliser starts afresh"


def stabilize_inputs() -> dict:
    """The strength and scene-threshold widgets, shared with Real-ESRGAN Upscale."""
    return {
        "strength": ("FLOAT", {"default": DEFAULT_STRENGTH, "min": 0.0, "max": 0.95, "step": 0.05,
                               "tooltip": STRENGTH_TOOLTIP}),
        "scene_threshold": scene_threshold_input(STABILIZER_RESTART),
    }


class TemporalStabilize:
    """Removes the shimmer of frame-by-frame upscaling (any image upscaler) using the source's motion."""

    DESCRIPTION = ("Stabilises a frame-by-frame upscale against flicker: optical flow (OpenCV DIS) of the "
                   "low-resolution source carries each stabilised frame to the next, blended in where the flow "
                   "holds. Connect the upscale and its source, as clips or as IMAGE batches, frame for frame.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **stabilize_inputs(),
                "device": (device_choices(), {"default": "auto",
                                              "tooltip": "Where warping and blending run. auto: ComfyUI's "
                                                         "device (the GPU when there is one)."}),
            },
            "optional": {
                "clip": (CLIP, {"tooltip": "The upscaled clip to stabilise (connect this and source_clip, or "
                                           "images and source_images)."}),
                "source_clip": (CLIP, {"tooltip": "The clip that was upscaled, at its own size."}),
                "images": ("IMAGE", {"tooltip": "The upscaled frames, in order (e.g. from core Upscale Image "
                                                "(using Model))."}),
                "source_images": ("IMAGE", {"tooltip": "The frames that were upscaled, at their own size."}),
            },
        }

    RETURN_TYPES = (CLIP, "IMAGE")
    RETURN_NAMES = ("clip", "images")
    OUTPUT_TOOLTIPS = (
        "The stabilised clip, computed chunk by chunk when pulled (e.g. by Save Video).",
        "The stabilised frames as an IMAGE batch when the input is an IMAGE batch; empty for a clip input.",
    )
    FUNCTION = "stabilize"
    CATEGORY = f"{CATEGORY}/upscale"

    def stabilize(self, strength: float = DEFAULT_STRENGTH, scene_threshold: float = DEFAULT_SCENE_THRESHOLD,
                  device: str = "auto", clip: Clip | None = None, source_clip: Clip | None = None,
                  images: torch.Tensor | None = None, source_images: torch.Tensor | None = None):
        upscaled = clip if clip is not None else images
        source = source_clip if source_clip is not None else source_images
        if upscaled is None or source is None or (clip is not None and images is not None) or (
                source_clip is not None and source_images is not None):
            raise InputError("Temporal Stabilize needs one upscaled input (clip or images) and one source "
                             "(source_clip or source_images)")
        if not isinstance(upscaled, Clip):
            upscaled = Clip.from_tensor(upscaled, fps=24)
        if not isinstance(source, Clip):
            source = Clip.from_tensor(source, fps=upscaled.info.fps)
        settings = StabilizeSettings(strength=float(strength), scene_threshold=float(scene_threshold))
        result = stabilize_clip(upscaled, source, settings, host.node_device(device), progress_factory=host.progress)
        return upscale_outputs(result, images is not None, "Temporal Stabilize")


NODE_CLASS_MAPPINGS = {"vsrkitTemporalStabilize": TemporalStabilize}
NODE_DISPLAY_NAME_MAPPINGS = {"vsrkitTemporalStabilize": "Temporal Stabilize (vsrkit)"}
