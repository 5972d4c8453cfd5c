"""Nodes: FlashVSR model loader and FlashVSR Upscale (Tiny / Tiny-Long)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..engines.clip import Clip
from ..engines.device import PRECISIONS, device_choices, resolve_precision
from ..engines.errors import InputError
from ..engines.flashvsr.colorfix import METHODS as COLOR_FIX_METHODS
from ..engines.flashvsr.loader import (
    PREFERRED_DTYPE,
    VERSION_FOLDERS,
    VERSIONS,
    FlashVSRModels,
    check_version,
    load_flashvsr,
)
from ..engines.flashvsr.settings import MODES
from ..engines.flashvsr.upscale import DEFAULT_OVERLAP, SCALES, auto_tile_size, upscale_clip
from ..engines.video.scenes import DEFAULT_SCENE_THRESHOLD
from . import host
from .common import on_device, scene_threshold_input, upscale_outputs
from .types import CATEGORY, CLIP, FLASHVSR_MODEL

OFFLOAD_CHOICES = ("model management", "after each run")


@dataclasses.dataclass
class FlashVSRModel:
    """What flows on a VSRKIT_FLASHVSR_MODEL link: the modules and who moves them between devices."""

    models: FlashVSRModels
    managed: host.ManagedModel
    offload_after_run: bool


def model_folders(version: str) -> list[Path]:
    """Where the loader looks for `version`: v1 in ComfyUI's FlashVSR folders; v1.1 in its
    FlashVSR-v1.1 folders, then in a FlashVSR-v1.1 subfolder of the FlashVSR folders. v1.1 never
    reads a FlashVSR folder itself: v1's files have the same names and shapes. A folder named
    FlashVSR goes to the loader as it is, which skips it for v1.1 and says so when nothing is
    found; a FlashVSR folder registered under another name gets the subfolder here."""
    if version == "v1":
        return host.model_dirs(VERSION_FOLDERS["v1"])
    v1_folders = host.model_dirs(VERSION_FOLDERS["v1"])
    return [*host.model_dirs(VERSION_FOLDERS[version]),
            *(folder if folder.name.casefold() == VERSION_FOLDERS["v1"].casefold() else folder / VERSION_FOLDERS[version]
              for folder in v1_folders)]


class FlashVSRLoader:
    """Loads FlashVSR Tiny (v1 or v1.1) from ComfyUI's models/FlashVSR or models/FlashVSR-v1.1 folder."""

    DESCRIPTION = ("Loads the FlashVSR Tiny checkpoints (DiT, LQ projector, TCDecoder, prompt embedding) "
                   "from models/FlashVSR-v1.1 or models/FlashVSR/FlashVSR-v1.1 (v1.1), or models/FlashVSR (v1). "
                   "Connect it to FlashVSR Upscale.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "version": (list(VERSIONS), {"default": "v1.1",
                                             "tooltip": "v1.1 (recommended, steadier across chunks) reads "
                                                        "models/FlashVSR-v1.1 (or models/FlashVSR/FlashVSR-v1.1); "
                                                        "v1 reads models/FlashVSR. "
                                                        "Both need diffusion_pytorch_model_streaming_dmd"
                                                        ".safetensors, LQ_proj_in.ckpt, TCDecoder.ckpt and "
                                                        "posi_prompt.pth."}),
                "precision": (list(PRECISIONS), {"default": "auto",
                                                 "tooltip": "Weight and compute precision. auto: bf16 on GPUs "
                                                            "that support it, fp16 on older GPUs, fp32 on CPU."}),
                "device": (device_choices(), {"default": "auto",
                                              "tooltip": "Where the model runs. auto: ComfyUI's device (the "
                                                         "GPU when there is one)."}),
                "offload": (list(OFFLOAD_CHOICES), {"default": "model management",
                                                    "tooltip": "model management: ComfyUI keeps the model on "
                                                               "the GPU between runs and unloads it when "
                                                               "another model needs the memory. after each "
                                                               "run: move it to the CPU as soon as an upscale "
                                                               "finishes."}),
            },
        }

    RETURN_TYPES = (FLASHVSR_MODEL,)
    RETURN_NAMES = ("flashvsr_model",)
    OUTPUT_TOOLTIPS = ("The loaded FlashVSR Tiny model; connect it to FlashVSR Upscale.",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/upscale"

    def load(self, version: str = "v1.1", precision: str = "auto", device: str = "auto",
             offload: str = "model management"):
        if offload not in OFFLOAD_CHOICES:
            raise InputError(f"offload must be one of {OFFLOAD_CHOICES}, got {offload!r}")
        check_version(version)
        target = host.node_device(device)
        dtype = resolve_precision(precision, target, PREFERRED_DTYPE)
        folders = model_folders(version)
        # Inside ComfyUI weights wait on the CPU and the model manager moves them when needed.
        initial = torch.device("cpu") if host.in_comfyui() else target
        models = load_flashvsr(folders, version=version, dtype=dtype, device=initial)
        managed = host.managed_model(models, target)
        return (FlashVSRModel(models, managed, offload == "after each run"),)


def working_memory(height: int, width: int, tile_size: int) -> int:
    """A rough estimate of the activation memory to keep free on the device, in bytes."""
    tile = tile_size or auto_tile_size(height, width)
    area = min(height * width, tile * tile) if tile else height * width
    return 4096 * area + 2**30


class FlashVSRUpscale:
    """One-step diffusion super-resolution of a clip or an IMAGE batch with FlashVSR Tiny."""

    DESCRIPTION = ("Upscales a clip (streaming, bounded memory) or an IMAGE batch with FlashVSR Tiny. Every "
                   "input frame gives one output frame at exactly scale x its size.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "flashvsr_model": (FLASHVSR_MODEL, {"tooltip": "From FlashVSR Model Loader."}),
                "scale": ("INT", {"default": 4, "min": min(SCALES), "max": max(SCALES), "step": 1,
                                  "tooltip": "Output size = scale x input size, exactly (FlashVSR is trained "
                                             "for 4x)."}),
                "mode": (list(MODES), {"default": "tiny-long",
                                       "tooltip": "tiny-long: decode each chunk as it is made, memory stays "
                                                  "flat for any length. tiny: decode at the end (same frames, "
                                                  "memory grows with the clip)."}),
                "sparse_ratio": ("FLOAT", {"default": 2.0, "min": 0.5, "max": 8.0, "step": 0.1,
                                           "tooltip": "Attention sparsity: 1.5 faster, 2.0 steadier."}),
                "kv_ratio": ("FLOAT", {"default": 3.0, "min": 1.0, "max": 16.0, "step": 1.0,
                                       "tooltip": "How many past time slices the attention cache keeps."}),
                "local_range": ("INT", {"default": 11, "min": 1, "max": 64, "step": 1,
                                        "tooltip": "Spatial attention window in blocks: 9 sharper details, "
                                                   "11 steadier."}),
                "tile_size": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 128,
                                      "tooltip": "Output tile size in pixels for large frames (multiple of "
                                                 "128); 0: automatic (tiles only above about 2.4 MP)."}),
                "tile_overlap": ("INT", {"default": DEFAULT_OVERLAP, "min": 0, "max": 1024, "step": 16,
                                         "tooltip": "Overlap between tiles in pixels, blended with feathered "
                                                    "weights; at most half the tile size (512 with "
                                                    "automatic tiles)."}),
                "color_fix": (list(COLOR_FIX_METHODS), {"default": "adain",
                                                        "tooltip": "Match each output frame's colours to the "
                                                                   "input: adain (default), wavelet, or none."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Seed of the diffusion noise."}),
            },
            "optional": {
                "clip": (CLIP, {"tooltip": "A streaming clip to upscale (connect this or images)."}),
                "images": ("IMAGE", {"tooltip": "An IMAGE batch to upscale, frames in order (connect this or "
                                                "clip)."}),
                "scene_threshold": scene_threshold_input("a new stream starts (fresh attention cache and "
                                                         "decoder), so each shot is upscaled as if alone"),
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

    def upscale(self, flashvsr_model: FlashVSRModel, scale: int = 4, mode: str = "tiny-long",
                sparse_ratio: float = 2.0, kv_ratio: float = 3.0, local_range: int = 11, tile_size: int = 0,
                tile_overlap: int = DEFAULT_OVERLAP, color_fix: str = "adain", seed: int = 0,
                clip: Clip | None = None, images: torch.Tensor | None = None,
                scene_threshold: float = DEFAULT_SCENE_THRESHOLD):
        if (clip is None) == (images is None):
            raise InputError("FlashVSR Upscale needs exactly one input: connect either clip or images")
        scale, local_range, tile_size, tile_overlap = int(scale), int(local_range), int(tile_size), int(tile_overlap)
        source = clip if clip is not None else Clip.from_tensor(images, fps=24)
        upscaled = upscale_clip(source, flashvsr_model.models, scale=scale, mode=mode,
                                sparse_ratio=float(sparse_ratio), kv_ratio=float(kv_ratio),
                                local_range=local_range, color_fix=color_fix, seed=int(seed),
                                tile_size=tile_size, tile_overlap=tile_overlap,
                                progress_factory=host.progress, scene_threshold=float(scene_threshold))
        memory = working_memory(upscaled.info.height, upscaled.info.width, tile_size)
        result = on_device(upscaled, flashvsr_model.managed, memory, flashvsr_model.offload_after_run)
        return upscale_outputs(result, images is not None, "FlashVSR Upscale")

NODE_CLASS_MAPPINGS = {
    "vsrkitFlashVSRLoader": FlashVSRLoader,
    "vsrkitFlashVSRUpscale": FlashVSRUpscale,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "vsrkitFlashVSRLoader": "FlashVSR Model Loader (vsrkit)",
    "vsrkitFlashVSRUpscale": "FlashVSR Upscale (vsrkit)",
}
