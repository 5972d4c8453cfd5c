"""The upscale chain, built in one place for the single-process run and for every cluster worker.

`ChainSettings` holds, as plain values, everything that decides the frames of an upscale:
pre-processing (deinterlace, denoise), the engine and its model, scale, tiling, precision.
`load_engine` loads the model once (a worker keeps it for all its segments), `build_chain`
wraps a decoded clip in the stages, and `chain_reaches` says how far each temporal stage looks
around a frame, which is what the segment planner needs to split the clip without a seam.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..clip import Clip, Reach
from ..errors import InputError
from ..progress import Progress
from ..video.preprocess import (
    DEFAULT_DENOISE_METHOD,
    deinterlace_clip,
    deinterlace_reaches,
    denoise_clip,
    denoise_reaches,
)

ENGINES = ("realesrgan", "flashvsr")
FLASHVSR_REACH = Reach(splits_in_shot=False, name="flashvsr")
"""FlashVSR carries its attention cache and decoder state through a whole stream and looks ahead
within its chunks: never split inside a shot."""

ProgressFactory = Callable[..., Progress]


@dataclasses.dataclass(frozen=True)
class ChainSettings:
    """What decides the frames of an upscale. None means the engine's default.

    deinterlace: auto | on | off; with `parity` auto the field order comes from the stream or idet
    (`resolved` fixes both once, for the whole clip, before the clip is split).
    model: a Real-ESRGAN model name or file (default realesr-animevideov3 at `scale`).
    model_dir: FlashVSR checkpoint folder (default: the standalone search path).
    """

    engine: str = "realesrgan"
    model: str | None = None
    model_dir: str | None = None
    flashvsr_version: str = "v1.1"
    scale: int = 2
    tile: int = 0
    precision: str = "auto"
    device: str | None = None
    cpu_backend: str = "auto"
    deinterlace: str = "auto"
    parity: str = "auto"
    denoise: str = "none"
    denoise_method: str = DEFAULT_DENOISE_METHOD

    def checked(self) -> ChainSettings:
        if self.engine not in ENGINES:
            raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise InputError(f"scale must be a whole number of 1 or more, got {self.scale!r}")
        return self

    def key(self) -> dict[str, Any]:
        """The settings as plain values, for a hash that names what they produce."""
        return dataclasses.asdict(self)


class Engine:
    """A loaded model (Real-ESRGAN) or model set (FlashVSR) for one `ChainSettings`."""

    def __init__(self, settings: ChainSettings, models: Any, description: str, origin: str = ""):
        self.settings = settings
        self.models = models
        self.description = description
        self.origin = origin


def load_engine(settings: ChainSettings, progress_factory: ProgressFactory | None = None) -> Engine:
    """Resolve and load the model the settings name; `progress_factory(total, desc, unit)` shows downloads."""
    settings = settings.checked()
    if settings.engine == "realesrgan":
        from ..realesrgan.models import DEFAULT_MODEL_FOR_SCALE, load_model, standalone_model_dir

        name = settings.model
        if not name:
            if settings.scale not in DEFAULT_MODEL_FOR_SCALE:
                raise InputError(f"--scale {settings.scale}: the default model realesr-animevideov3 comes in x2, x3 "
                                 "and x4; choose one of those or pass --model")
            name = DEFAULT_MODEL_FOR_SCALE[settings.scale]
        model = load_model(name, [standalone_model_dir()], progress=progress_factory)
        return Engine(settings, model, model.describe(), model.origin)
    from ..flashvsr.loader import default_model_dirs, load_flashvsr

    folders = [settings.model_dir] if settings.model_dir else default_model_dirs()
    models = load_flashvsr(folders, version=settings.flashvsr_version, dtype=settings.precision or "auto",
                           device=settings.device)
    return Engine(settings, models, f"FlashVSR Tiny {settings.flashvsr_version}", str(folders[0]))


def _preprocessed(clip: Clip, settings: ChainSettings) -> Clip:
    clip = deinterlace_clip(clip, mode=settings.deinterlace, parity=settings.parity)
    if settings.denoise != "none":
        clip = denoise_clip(clip, preset=settings.denoise, method=settings.denoise_method)
    return clip


def build_chain(clip: Clip, settings: ChainSettings, engine: Engine) -> Clip:
    """`clip` deinterlaced, denoised and upscaled as `settings` say, lazily (nothing runs until pulled)."""
    if engine.settings.engine != settings.engine:
        raise InputError(f"a {engine.settings.engine} engine cannot run a {settings.engine} chain")
    clip = _preprocessed(clip, settings.checked())
    if settings.engine == "realesrgan":
        import torch

        from ..realesrgan.inference import default_device
        from ..realesrgan.upscale import upscale_clip

        if str(settings.device or default_device().type).startswith("cuda"):
            torch.backends.cudnn.benchmark = True
        return upscale_clip(clip, engine.models, scale=settings.scale, tile=settings.tile,
                            precision=settings.precision, device=settings.device, cpu_backend=settings.cpu_backend)
    from ..flashvsr.pipeline import SIZE_MULTIPLE
    from ..flashvsr.upscale import DEFAULT_OVERLAP, upscale_clip

    tile = int(settings.tile or 0)
    tile = -(-tile // SIZE_MULTIPLE) * SIZE_MULTIPLE if tile > 0 else 0
    return upscale_clip(clip, engine.models, scale=int(settings.scale), tile_size=tile,
                        tile_overlap=min(DEFAULT_OVERLAP, tile // 2) if tile else DEFAULT_OVERLAP)


def resolved(settings: ChainSettings, clip: Clip) -> ChainSettings:
    """The settings with every automatic choice that looks at the frames made once, for the whole
    clip: whether to deinterlace and the field order (idet reads the clip's first frames, which a
    later segment does not have). Workers then build exactly the chain one process would."""
    settings = settings.checked()
    done = deinterlace_clip(clip, mode=settings.deinterlace, parity=settings.parity)
    report = done.info.extra.get("deinterlace") if done is not clip else None
    if report is None:
        return dataclasses.replace(settings, deinterlace="off", parity="auto")
    return dataclasses.replace(settings, deinterlace="on", parity=report["field_order"])


def chain_reaches(settings: ChainSettings) -> list[Reach]:
    """How far each temporal stage of the chain looks, in order (for `resolved` settings)."""
    reaches = []
    if settings.deinterlace == "on":
        reaches.extend(deinterlace_reaches())
    elif settings.deinterlace != "off":
        raise InputError("resolve the settings (chain.resolved) before asking for the chain's reach")
    if settings.denoise != "none":
        reaches.extend(denoise_reaches(settings.denoise, settings.denoise_method))
    if settings.engine == "flashvsr":
        reaches.append(FLASHVSR_REACH)
    return reaches


def absolute_paths(settings: ChainSettings) -> ChainSettings:
    """Model paths made absolute from this process's working folder, so a worker elsewhere finds
    the same files (a worker's working folder is its own)."""
    changes: dict[str, Any] = {}
    if settings.model and Path(settings.model).expanduser().exists():
        changes["model"] = str(Path(settings.model).expanduser().resolve())
    if settings.model_dir:
        changes["model_dir"] = str(Path(settings.model_dir).expanduser().resolve())
    elif settings.engine == "flashvsr":
        from ..flashvsr.loader import default_model_dirs

        found = [folder for folder in default_model_dirs() if folder.is_dir()]
        if found:
            changes["model_dir"] = str(found[0].resolve())
    return dataclasses.replace(settings, **changes)
