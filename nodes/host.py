"""The one place where vsrkit reaches ComfyUI's services.

When ComfyUI is importable (the pack runs inside a ComfyUI process) this uses its
progress bar, interrupt flag, model folders, input/output folders and model
management. Otherwise (tests, the CLI) it falls back to standalone behaviour: a
console progress bar, no interrupt, and folders under a user cache directory.
Nothing else in the pack imports ComfyUI.
"""

from __future__ import annotations

import importlib
import os
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any

from ..engines.device import default_device, resolve_device
from ..engines.paths import user_data_dir
from ..engines.progress import ConsoleProgress, Progress


def _comfy(module: str) -> ModuleType | None:
    """ComfyUI's module `module`, or None when not running inside ComfyUI."""
    try:
        return importlib.import_module(module)
    except Exception:
        return None


def in_comfyui() -> bool:
    return _comfy("folder_paths") is not None and _comfy("comfy.utils") is not None


class _ComfyProgress(Progress):
    """ComfyUI's progress bar and interrupt flag behind the engines' Progress interface."""

    def __init__(self, total: int | None, desc: str):
        super().__init__(total, desc)
        utils = _comfy("comfy.utils")
        self._bar = utils.ProgressBar(total or 1) if utils is not None else None
        self._mm = _comfy("comfy.model_management")

    def _report(self) -> None:
        if self._bar is not None:
            self._bar.update_absolute(min(self.done, self.total or self.done), self.total or None)

    def set_total(self, total: int | None) -> None:
        self.total = total
        if self._bar is not None and total:
            self._bar.total = total
        self._report()

    def check_cancel(self) -> None:
        if self._mm is None:
            return
        self._mm.throw_exception_if_processing_interrupted()


def progress(total: int | None, desc: str = "") -> Progress:
    """A progress sink for the current host: ComfyUI's bar inside ComfyUI, a console bar outside."""
    if in_comfyui():
        return _ComfyProgress(total, desc)
    return ConsoleProgress(total, desc, quiet=os.environ.get("VSRKIT_QUIET") == "1")


def model_dirs(kind: str) -> list[Path]:
    """Folders ComfyUI registers for model type `kind` (e.g. "upscale_models", "FlashVSR").

    Standalone: the user cache folder `<VSRKIT_HOME>/models/<kind>`.
    """
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        try:
            paths = folder_paths.get_folder_paths(kind)
        except Exception:
            paths = []
        if not paths:
            paths = [os.path.join(folder_paths.models_dir, kind)]
        return [Path(p) for p in paths]
    return [user_data_dir() / "models" / kind]


def model_files(kind: str) -> list[str]:
    """File names ComfyUI lists for model type `kind`, for a loader's dropdown."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        try:
            return sorted(folder_paths.get_filename_list(kind))
        except Exception:
            pass
    names: set[str] = set()
    for folder in model_dirs(kind):
        if folder.is_dir():
            names.update(p.name for p in folder.iterdir() if p.is_file())
    return sorted(names)


def input_dir() -> Path:
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return Path(folder_paths.get_input_directory())
    return Path.cwd()


def output_dir() -> Path:
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    return Path.cwd()


def temp_dir() -> Path:
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return Path(folder_paths.get_temp_directory())
    return user_data_dir() / "temp"


def allowed_roots() -> list[Path]:
    """Folders a node may read from or write to: ComfyUI's input, output and temp folders."""
    return [input_dir(), output_dir(), temp_dir()]


def input_path(name: str) -> Path:
    """The file behind a loader's list entry (ComfyUI's annotated names, e.g. 'clip.mp4 [output]', too)."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return Path(folder_paths.get_annotated_filepath(name))
    return input_dir() / name


def input_video_files() -> list[str]:
    """Video files in the input folder, for a Load Video list."""
    from ..engines.paths import video_files

    return video_files(input_dir())


def save_path(filename_prefix: str, extension: str, width: int = 0, height: int = 0) -> tuple[Path, str]:
    """The next `<prefix>_<counter>_.<ext>` in the output folder (ComfyUI's naming) and its sub-folder."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        root = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, root, width, height)
        Path(folder).mkdir(parents=True, exist_ok=True)
        suffix = f".{extension}" if extension else ""
        path = Path(folder) / f"{name}_{counter:05}_{suffix}"
        while path.exists():
            counter += 1
            path = Path(folder) / f"{name}_{counter:05}_{suffix}"
        return path, subfolder
    from ..engines.paths import numbered_output

    return numbered_output(output_dir(), filename_prefix, extension)


def torch_device() -> Any:
    """ComfyUI's chosen device inside ComfyUI; otherwise `engines.device.default_device()`."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        return mm.get_torch_device()
    return default_device()


def node_device(device: str) -> Any:
    """A node's `device` input as a torch device: "auto" is the host's device (`torch_device`)."""
    return resolve_device(device, torch_device() if device == "auto" else None)


def soft_empty_cache() -> None:
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.soft_empty_cache()
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ManagedModel:
    """A torch module whose place on the compute device the host decides: the one way both
    engines' nodes load, keep and offload a model on the GPU.

    Inside ComfyUI the module is wrapped in a `ModelPatcher`: `load()` goes through
    `comfy.model_management.load_models_gpu`, which first unloads other models to make
    room for the module and `memory_required` of working memory (as core's upscale nodes
    ask `free_memory` for), and ComfyUI may offload this one later when another model
    needs the memory. `offload()` hands it back to the offload device at once. Standalone,
    `load()` moves the module to `device` and `offload()` moves it to the CPU.
    """

    def __init__(self, module: Any, device: Any, offload_device: Any = None):
        import torch

        self.module = module
        self.device = torch.device(device)
        mm = _comfy("comfy.model_management")
        patcher_module = _comfy("comfy.model_patcher")
        self.patcher = None
        if mm is not None and patcher_module is not None:
            self.offload_device = torch.device(offload_device) if offload_device is not None \
                else mm.unet_offload_device()
            self.patcher = patcher_module.ModelPatcher(module, load_device=self.device,
                                                       offload_device=self.offload_device)
        else:
            self.offload_device = torch.device(offload_device or "cpu")

    def load(self, memory_required: int = 0) -> None:
        """Make the weights resident on the compute device; `memory_required`: working memory to keep free."""
        mm = _comfy("comfy.model_management")
        if self.patcher is not None and mm is not None:
            mm.load_models_gpu([self.patcher], memory_required=memory_required, force_full_load=True)
            return
        self.module.to(self.device)

    def offload(self) -> None:
        """Move the weights to the offload device now and release cached GPU memory."""
        mm = _comfy("comfy.model_management")
        if self.patcher is not None and mm is not None:
            loaded = getattr(mm, "current_loaded_models", [])
            for index in range(len(loaded) - 1, -1, -1):
                if loaded[index].model is self.patcher:
                    loaded[index].model_unload()
                    loaded.pop(index)
        self.module.to(self.offload_device)
        soft_empty_cache()


_MANAGED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def managed_model(module: Any, device: Any) -> ManagedModel:
    """The `ManagedModel` of `module` on `device`, made on first use and kept with the module, so a
    module used by many runs is one model to ComfyUI's model management."""
    import torch

    managed = _MANAGED.get(module)
    if managed is None or managed.device != torch.device(device):
        managed = ManagedModel(module, device)
        _MANAGED[module] = managed
    return managed


def core_video_from_file() -> Any | None:
    """ComfyUI's core VideoFromFile class (a VIDEO backed by a file), or None outside ComfyUI."""
    for module_name in ("comfy_api.latest._input_impl.video_types", "comfy_api.input_impl.video_types",
                        "comfy_api.input_impl"):
        module = _comfy(module_name)
        if module is not None and hasattr(module, "VideoFromFile"):
            return module.VideoFromFile
    return None


__all__ = [
    "ManagedModel",
    "allowed_roots",
    "core_video_from_file",
    "in_comfyui",
    "input_dir",
    "input_path",
    "input_video_files",
    "model_dirs",
    "managed_model",
    "model_files",
    "node_device",
    "output_dir",
    "progress",
    "save_path",
    "soft_empty_cache",
    "temp_dir",
    "torch_device",
    "user_data_dir",
]
