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
from ..video.scenes import DEFAULT_SCENE_THRESHOLD, SCENE_THRESHOLD
from ..video.stabilize import DEFAULT_STRENGTH, StabilizeSettings, stabilized_upscale

ENGINES = ("realesrgan", "flashvsr")
SCDET_FRAMES = 2
"""scdet scores a frame against the two before it: a stage that restarts at the cuts it finds needs
them before a segment to find exactly the cuts one pass finds."""
STABILIZE_LEAD_IN = 24
"""Frames the stabiliser runs before a segment that starts inside a shot: at the default settings the
frames after such a join came within 0.11 of an 8-bit level (mean absolute difference) of one pass on
every measured split of real footage, 9 times inside the 1/255 asked for (bench/cluster.py lead-in,
BENCHMARKS.md)."""

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
    stabilize: float | None = None
    """Stabiliser strength (0: off); None: the measured default for Real-ESRGAN, off for FlashVSR."""
    scene_threshold: float = DEFAULT_SCENE_THRESHOLD

    def checked(self) -> ChainSettings:
        if self.engine not in ENGINES:
            raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise InputError(f"scale must be a whole number of 1 or more, got {self.scale!r}")
        return dataclasses.replace(self, scene_threshold=SCENE_THRESHOLD.check(self.scene_threshold, "upscale"))

    def stabilizer(self) -> StabilizeSettings:
        """The stabiliser's settings: strength as given, or the default for the engine."""
        strength = self.stabilize
        if strength is None:
            strength = DEFAULT_STRENGTH if self.engine == "realesrgan" else 0.0
        return StabilizeSettings(strength=strength, scene_threshold=self.scene_threshold).validate()

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
        from ..device import resolve_device
        from ..realesrgan.backend import choose_backend, describe_backend
        from ..realesrgan.inference import network_precision
        from ..realesrgan.loading import load_model
        from ..realesrgan.official import DEFAULT_MODEL_FOR_SCALE
        from ..realesrgan.resolve import standalone_model_dir

        name = settings.model
        if not name:
            if settings.scale not in DEFAULT_MODEL_FOR_SCALE:
                raise InputError(f"--scale {settings.scale}: the default model realesr-animevideov3 comes in x2, x3 "
                                 "and x4; choose one of those or pass --model")
            name = DEFAULT_MODEL_FOR_SCALE[settings.scale]
        model = load_model(name, [standalone_model_dir()], progress=progress_factory)
        device = resolve_device(settings.device)
        dtype = network_precision(settings.precision, device)
        backend = choose_backend(model.net, device, dtype, settings.cpu_backend)
        return Engine(settings, model, f"{model.describe()}, {describe_backend(backend, device, dtype)}", model.origin)
    from ..flashvsr.loader import default_model_dirs, load_flashvsr

    folders = [settings.model_dir] if settings.model_dir else default_model_dirs()
    models = load_flashvsr(folders, version=settings.flashvsr_version, dtype=settings.precision or "auto",
                           device=settings.device)
    return Engine(settings, models, f"FlashVSR Tiny {settings.flashvsr_version}", str(folders[0]))


def preprocessed(clip: Clip, settings: ChainSettings) -> Clip:
    """The chain up to the engine: deinterlaced and denoised (what the engine and the stabiliser read)."""
    clip = deinterlace_clip(clip, mode=settings.deinterlace, parity=settings.parity,
                            scene_threshold=settings.scene_threshold)
    if settings.denoise != "none":
        clip = denoise_clip(clip, preset=settings.denoise, method=settings.denoise_method,
                            scene_threshold=settings.scene_threshold)
    return clip


def build_chain(clip: Clip, settings: ChainSettings, engine: Engine) -> Clip:
    """`clip` deinterlaced, denoised, upscaled and stabilised as `settings` say, lazily (nothing runs
    until pulled)."""
    if engine.settings.engine != settings.engine:
        raise InputError(f"a {engine.settings.engine} engine cannot run a {settings.engine} chain")
    from ..device import resolve_device

    settings = settings.checked()
    source = preprocessed(clip, settings)
    return stabilized_upscale(source, lambda frames: _upscaled(frames, settings, engine), settings.stabilizer(),
                              resolve_device(settings.device))


def _upscaled(clip: Clip, settings: ChainSettings, engine: Engine) -> Clip:
    if settings.engine == "realesrgan":
        import torch

        from ..device import resolve_device
        from ..realesrgan.upscale import upscale_clip

        device = resolve_device(settings.device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        return upscale_clip(clip, engine.models, scale=settings.scale, tile=settings.tile,
                            precision=settings.precision, device=device, cpu_backend=settings.cpu_backend)
    from ..flashvsr.settings import SIZE_MULTIPLE
    from ..flashvsr.upscale import DEFAULT_OVERLAP, upscale_clip
    from ..tiling import round_up

    tile = int(settings.tile or 0)
    tile = round_up(tile, SIZE_MULTIPLE) if tile > 0 else 0
    return upscale_clip(clip, engine.models, scale=int(settings.scale), tile_size=tile,
                        tile_overlap=min(DEFAULT_OVERLAP, tile // 2) if tile else DEFAULT_OVERLAP,
                        scene_threshold=settings.scene_threshold)


def resolved(settings: ChainSettings, clip: Clip) -> ChainSettings:
    """The settings with every automatic choice that looks at the frames made once, for the whole
    clip: whether to deinterlace and the field order (idet reads the clip's first frames, which a
    later segment does not have). Workers then build exactly the chain one process would."""
    settings = settings.checked()
    settings = dataclasses.replace(settings, stabilize=settings.stabilizer().strength)
    done = deinterlace_clip(clip, mode=settings.deinterlace, parity=settings.parity)
    report = done.info.extra.get("deinterlace") if done is not clip else None
    if report is None:
        return dataclasses.replace(settings, deinterlace="off", parity="auto")
    return dataclasses.replace(settings, deinterlace="on", parity=report["field_order"])


def preprocess_reaches(settings: ChainSettings) -> list[Reach]:
    """How far the stages before the engine look, in order (for `resolved` settings)."""
    reaches = []
    if settings.deinterlace == "on":
        reaches.extend(deinterlace_reaches(scene_threshold=settings.scene_threshold))
    elif settings.deinterlace != "off":
        raise InputError("resolve the settings (chain.resolved) before asking for the chain's reach")
    if settings.denoise != "none":
        reaches.extend(denoise_reaches(settings.denoise, settings.denoise_method, settings.scene_threshold))
    return reaches


def chain_reaches(settings: ChainSettings) -> list[Reach]:
    """How far each temporal stage of the chain looks, in order (for `resolved` settings)."""
    reaches = preprocess_reaches(settings)
    cuts = settings.scene_threshold > 0
    if settings.engine == "flashvsr":
        # One stream per shot, its attention cache and decoder state carried through the whole shot:
        # never split inside a shot; with cut detection on, it restarts at every cut.
        reaches.append(Reach(before=SCDET_FRAMES if cuts else 0, splits_in_shot=False, restarts_at_cuts=cuts,
                             name="flashvsr"))
    if settings.stabilizer().strength > 0:
        # Recursive: the previous result, warped, is blended into each frame; it forgets its start
        # geometrically, so a split inside a shot needs a lead-in; at a cut it starts afresh.
        reaches.append(Reach(before=SCDET_FRAMES if cuts else 0, lead_in=STABILIZE_LEAD_IN, restarts_at_cuts=cuts,
                             name="stabilize"))
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
