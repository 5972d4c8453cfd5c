"""Maintainer tool: regenerate the shipped workflows (UI format 0.4 and API format).

The JSON files in this folder are what users load; this script only keeps them consistent
(link ids, slot numbers, widget order, download hints) when a node's inputs change.
Core node definitions come from the checked-in `/object_info` export (or a live server
with --server); ours from the pack's NODE_CLASS_MAPPINGS.

    python workflows/build_workflows.py [--server http://127.0.0.1:8188]
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXPORT = HERE.parent / "tests" / "data" / "comfyui_object_info.json"

HF = "https://huggingface.co"
REALESRGAN = "https://github.com/xinntao/Real-ESRGAN/releases/download"
FLASHVSR = f"{HF}/JunhaoZhuang/FlashVSR-v1.1/resolve/main"

MODELS = {
    "ltx-video-2b-v0.9.5.safetensors": (f"{HF}/Lightricks/LTX-Video/resolve/main/ltx-video-2b-v0.9.5.safetensors",
                                        "checkpoints"),
    "t5xxl_fp16.safetensors": (f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
                               "text_encoders"),
    "wan2.1_t2v_1.3B_fp16.safetensors": (
        f"{HF}/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/diffusion_models/"
        "wan2.1_t2v_1.3B_fp16.safetensors", "diffusion_models"),
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": (
        f"{HF}/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/text_encoders/"
        "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders"),
    "wan_2.1_vae.safetensors": (
        f"{HF}/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/vae/wan_2.1_vae.safetensors", "vae"),
}


def hint(name: str, url: str | None = None, directory: str | None = None) -> dict:
    known_url, known_dir = MODELS.get(name, (None, None))
    return {"name": name, "url": url or known_url, "directory": directory or known_dir}


class Graph:
    """A UI-format (0.4) workflow under construction."""

    def __init__(self, definitions: dict[str, dict]):
        self.definitions = definitions
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.groups: list[dict] = []

    def node(self, node_type: str, pos: tuple[float, float], values: dict[str, Any] | None = None,
             title: str | None = None, models: list[dict] | None = None, width: float = 320,
             color: str | None = None) -> dict:
        from vsrkit.cli.workflow import input_kind, input_options, is_widget, ordered_inputs, widget_slots

        definition = self.definitions[node_type]
        values = dict(values or {})
        widgets = []
        for slot in widget_slots(definition):
            if slot.role == "control":
                widgets.append(values.pop(f"{slot.name}:control", "fixed"))
            elif slot.role == "upload":
                widgets.append("image")
            elif slot.name in values:
                widgets.append(values.pop(slot.name))
            else:
                default = input_options(slot.spec).get("default")
                if default is None and input_kind(slot.spec) == "COMBO":
                    from vsrkit.cli.workflow import combo_choices

                    default = (combo_choices(slot.spec) or [""])[0]
                widgets.append(default)
        if values:
            raise KeyError(f"{node_type} has no widget inputs {sorted(values)}")
        inputs = []
        for name, spec, required in ordered_inputs(definition):
            if is_widget(spec):
                continue
            socket = {"name": name, "type": input_kind(spec), "link": None}
            if not required:
                socket["shape"] = 7
            inputs.append(socket)
        outputs = [{"name": name, "type": input_kind([kind]), "links": None, "slot_index": index}
                   for index, (kind, name) in enumerate(zip(definition["output"], definition["output_name"],
                                                            strict=True))]
        sockets = len(inputs) + len(outputs)
        height = 26 + 22 * max(len(inputs), len(outputs)) + 24 * len(widgets) + (4 if sockets else 0)
        node = {"id": len(self.nodes) + 1, "type": node_type, "pos": [float(pos[0]), float(pos[1])],
                "size": [float(width), float(height)], "flags": {}, "order": 0, "mode": 0,
                "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": node_type}, "widgets_values": widgets}
        if title:
            node["title"] = title
        if models:
            node["properties"]["models"] = models
        if color:
            node["color"], node["bgcolor"] = color
        self.nodes.append(node)
        return node

    def note(self, text: str, pos: tuple[float, float], size: tuple[float, float] = (420, 220)) -> dict:
        node = {"id": len(self.nodes) + 1, "type": "MarkdownNote", "pos": [float(pos[0]), float(pos[1])],
                "size": [float(size[0]), float(size[1])], "flags": {}, "order": 0, "mode": 0, "inputs": [],
                "outputs": [], "properties": {}, "widgets_values": [text], "color": "#432", "bgcolor": "#653"}
        self.nodes.append(node)
        return node

    def connect(self, source: dict, output: int | str, target: dict, input_name: str) -> None:
        if isinstance(output, str):
            output = [o["name"] for o in source["outputs"]].index(output)
        slot = [i["name"] for i in target["inputs"]].index(input_name)
        link_id = len(self.links) + 1
        link_type = source["outputs"][output]["type"]
        self.links.append([link_id, source["id"], output, target["id"], slot, link_type])
        source["outputs"][output]["links"] = (source["outputs"][output]["links"] or []) + [link_id]
        target["inputs"][slot]["link"] = link_id

    def group(self, title: str, nodes: list[dict], color: str = "#3f789e") -> None:
        left = min(n["pos"][0] for n in nodes) - 10
        top = min(n["pos"][1] for n in nodes) - 40
        right = max(n["pos"][0] + n["size"][0] for n in nodes) + 10
        bottom = max(n["pos"][1] + n["size"][1] for n in nodes) + 10
        self.groups.append({"id": len(self.groups) + 1, "title": title,
                            "bounding": [left, top, right - left, bottom - top], "color": color,
                            "font_size": 24, "flags": {}})

    def to_ui(self) -> dict:
        self._order()
        return {"id": None, "revision": 0, "last_node_id": len(self.nodes), "last_link_id": len(self.links),
                "nodes": self.nodes, "links": self.links, "groups": self.groups, "config": {},
                "extra": {"ds": {"scale": 0.8, "offset": [40, 60]}}, "version": 0.4}

    def _order(self) -> None:
        """`order`: a topological execution order, as the frontend stores it."""
        incoming = {n["id"]: {link[1] for link in self.links if link[3] == n["id"]} for n in self.nodes}
        done: list[int] = []
        while len(done) < len(self.nodes):
            ready = sorted(i for i, deps in incoming.items() if i not in done and deps <= set(done))
            done.append(ready[0])
        for node in self.nodes:
            node["order"] = done.index(node["id"])


def load_definitions(server: str | None) -> dict[str, dict]:
    import vsrkit
    from vsrkit.cli.workflow import definitions_from_mappings

    if server:
        with urllib.request.urlopen(f"{server}/object_info", timeout=60) as response:
            core = json.load(response)
    else:
        core = json.loads(EXPORT.read_text(encoding="utf-8"))["nodes"]
    core = {k: v for k, v in core.items() if not k.startswith("vsrkit")}
    return {**core, **definitions_from_mappings(vsrkit.NODE_CLASS_MAPPINGS, vsrkit.NODE_DISPLAY_NAME_MAPPINGS)}


def write(name: str, graph: Graph) -> None:
    from vsrkit.cli.workflow import check_ui_workflow, ui_to_api

    ui = graph.to_ui()
    problems = check_ui_workflow(ui, graph.definitions)
    if problems:
        raise SystemExit(f"{name}: " + "\n  ".join(problems))
    (HERE / f"{name}.json").write_text(json.dumps(ui, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    api = ui_to_api(ui, graph.definitions)
    (HERE / f"{name}.api.json").write_text(json.dumps(api, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
    print(f"wrote {name}.json and {name}.api.json ({len(api)} nodes)")


# ------------------------------------------------------------------ the workflows

LOAD_HELP = ("Upload or pick a video in **Load Video**; `frame_load_cap` limits the frames for a quick test. "
             "The output lands in ComfyUI's `output/vsrkit/` folder with the source audio.")
FLASHVSR_FILES = ("diffusion_pytorch_model_streaming_dmd.safetensors", "LQ_proj_in.ckpt", "TCDecoder.ckpt",
                  "posi_prompt.pth")
COLOR_LOAD, COLOR_MODEL, COLOR_SAVE = ("#223", "#335"), ("#323", "#535"), ("#232", "#353")


def realesrgan_hint(model: str) -> list[dict]:
    from vsrkit.engines.realesrgan.official import official_model

    official = official_model(model)
    return [hint(official.file_name, official.url, "upscale_models")]


def flashvsr_hints() -> list[dict]:
    return [hint(name, f"{FLASHVSR}/{name}", "FlashVSR-v1.1") for name in FLASHVSR_FILES]


def load_video(g: Graph, x: float, y: float, **values) -> dict:
    return g.node("vsrkitLoadVideo", (x, y), {"video": "input.mp4", **values}, color=COLOR_LOAD)


def save_video(g: Graph, x: float, y: float, prefix: str, **values) -> dict:
    return g.node("vsrkitSaveVideo", (x, y), {"filename_prefix": prefix, **values}, color=COLOR_SAVE)


def realesrgan(g: Graph, x: float, y: float, source: dict, output: int | str, model: str,
               scale: int | None = None) -> dict:
    loader = g.node("vsrkitRealESRGANLoader", (x, y), {"model_name": model}, models=realesrgan_hint(model),
                    color=COLOR_MODEL)
    values = {} if scale is None else {"scale": str(scale)}
    upscale = g.node("vsrkitRealESRGANUpscale", (x, y + 160), values)
    g.connect(loader, 0, upscale, "model")
    g.connect(source, output, upscale, "clip")
    return upscale


def flashvsr(g: Graph, x: float, y: float, source: dict, output: int | str, scale: int) -> dict:
    loader = g.node("vsrkitFlashVSRLoader", (x, y), models=flashvsr_hints(), color=COLOR_MODEL)
    upscale = g.node("vsrkitFlashVSRUpscale", (x, y + 190), {"scale": scale, "seed:control": "fixed"})
    g.connect(loader, 0, upscale, "flashvsr_model")
    g.connect(source, output, upscale, "clip")
    return upscale


def upscale_realesrgan_x4_deinterlace_denoise(g: Graph) -> None:
    load = load_video(g, 0, 0)
    deinterlace = g.node("vsrkitDeinterlace", (380, 0))
    denoise = g.node("vsrkitDenoise", (380, 240), {"preset": "light"})
    g.connect(load, "clip", deinterlace, "clip")
    g.connect(deinterlace, "clip", denoise, "clip")
    upscale = realesrgan(g, 760, 0, denoise, "clip", "RealESRGAN_x4plus")
    save = save_video(g, 1140, 0, "vsrkit/restored_x4")
    g.connect(upscale, "clip", save, "clip")
    g.note("## Restore old video, x4\nDeinterlace (only when the file is interlaced: `mode` auto), a light "
           "denoise so grain is not upscaled as texture, then Real-ESRGAN x4plus. " + LOAD_HELP, (0, 420))


def upscale_fast_animevideov3_x2(g: Graph) -> None:
    load = load_video(g, 0, 0)
    upscale = realesrgan(g, 380, 0, load, "clip", "realesr-animevideov3-x2")
    save = save_video(g, 760, 0, "vsrkit/fast_x2")
    g.connect(upscale, "clip", save, "clip")
    g.note("## Fast x2\nrealesr-animevideov3 (a small compact network made for video), x2: the quickest "
           "upscale, good on animation and clean footage. " + LOAD_HELP, (0, 420))


def upscale_flashvsr_tiny(g: Graph) -> None:
    load = load_video(g, 0, 0)
    upscale = flashvsr(g, 380, 0, load, "clip", 4)
    save = save_video(g, 760, 0, "vsrkit/flashvsr")
    g.connect(upscale, "clip", save, "clip")
    g.note("## FlashVSR Tiny\nOne-step diffusion video super-resolution, steady across frames. `scale` 4 "
           "(trained for x4) or 2. Put the four FlashVSR-v1.1 files into `models/FlashVSR-v1.1/`. A GPU is "
           "strongly advised. " + LOAD_HELP, (0, 420))


def upscale_two_pass_flashvsr_realesrgan(g: Graph) -> None:
    load = load_video(g, 0, 0)
    first = flashvsr(g, 380, 0, load, "clip", 2)
    second = realesrgan(g, 760, 0, first, "clip", "realesr-animevideov3-x2")
    save = save_video(g, 1140, 0, "vsrkit/two_pass_x4")
    g.connect(second, "clip", save, "clip")
    g.note("## Two passes: FlashVSR x2, then Real-ESRGAN x2\nFlashVSR rebuilds detail consistently across "
           "frames, Real-ESRGAN sharpens the result: x4 in all. " + LOAD_HELP, (0, 420))


T2V_NEGATIVE = "low quality, worst quality, blurry, distorted, deformed, static, watermark, text"


def ltxv_text_to_video(g: Graph) -> tuple[dict, float]:
    """LTX-Video 2B t2v with core nodes; returns the VAEDecode node and its frame rate."""
    checkpoint = g.node("CheckpointLoaderSimple", (0, 0), {"ckpt_name": "ltx-video-2b-v0.9.5.safetensors"},
                        models=[hint("ltx-video-2b-v0.9.5.safetensors")])
    text_encoder = g.node("CLIPLoader", (0, 140), {"clip_name": "t5xxl_fp16.safetensors", "type": "ltxv"},
                          models=[hint("t5xxl_fp16.safetensors")])
    positive = g.node("CLIPTextEncode", (360, 0), {"text": (
        "A red fox trots through fresh snow in a pine forest at sunrise, its breath visible in the cold "
        "air. The camera tracks alongside at fox height, low golden light catches the frost on the "
        "branches, snow crystals sparkle. Natural colours, real-life footage, sharp focus.")},
        title="CLIP Text Encode (Positive Prompt)", color=("#232", "#353"), width=400)
    negative = g.node("CLIPTextEncode", (360, 230), {"text": T2V_NEGATIVE},
                      title="CLIP Text Encode (Negative Prompt)", color=("#322", "#533"), width=400)
    conditioning = g.node("LTXVConditioning", (800, 0), {"frame_rate": 24.0})
    latent = g.node("EmptyLTXVLatentVideo", (0, 290), {"width": 768, "height": 512, "length": 97})
    scheduler = g.node("LTXVScheduler", (800, 130), {"steps": 30})
    sampler_select = g.node("KSamplerSelect", (800, 320), {"sampler_name": "euler"})
    sampler = g.node("SamplerCustom", (1160, 0), {"noise_seed": 42, "noise_seed:control": "fixed", "cfg": 3.0})
    decode = g.node("VAEDecode", (1160, 330), width=220)
    g.connect(text_encoder, 0, positive, "clip")
    g.connect(text_encoder, 0, negative, "clip")
    g.connect(positive, 0, conditioning, "positive")
    g.connect(negative, 0, conditioning, "negative")
    g.connect(latent, 0, scheduler, "latent")
    g.connect(checkpoint, "MODEL", sampler, "model")
    g.connect(conditioning, 0, sampler, "positive")
    g.connect(conditioning, 1, sampler, "negative")
    g.connect(sampler_select, 0, sampler, "sampler")
    g.connect(scheduler, 0, sampler, "sigmas")
    g.connect(latent, 0, sampler, "latent_image")
    g.connect(sampler, 0, decode, "samples")
    g.connect(checkpoint, "VAE", decode, "vae")
    return decode, 24.0


def wan_text_to_video(g: Graph) -> tuple[dict, float]:
    """Wan 2.1 T2V 1.3B with core nodes; returns the VAEDecode node and its frame rate."""
    unet = g.node("UNETLoader", (0, 0), {"unet_name": "wan2.1_t2v_1.3B_fp16.safetensors"},
                  models=[hint("wan2.1_t2v_1.3B_fp16.safetensors")])
    text_encoder = g.node("CLIPLoader", (0, 130), {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                                                   "type": "wan"},
                          models=[hint("umt5_xxl_fp8_e4m3fn_scaled.safetensors")])
    vae = g.node("VAELoader", (0, 280), {"vae_name": "wan_2.1_vae.safetensors"},
                 models=[hint("wan_2.1_vae.safetensors")])
    shift = g.node("ModelSamplingSD3", (360, 0), {"shift": 8.0})
    positive = g.node("CLIPTextEncode", (360, 110), {"text": (
        "A paper boat drifts down a rain-filled street gutter, raindrops rippling the water, reflections of "
        "neon shop signs, close-up tracking shot, cinematic, detailed")},
        title="CLIP Text Encode (Positive Prompt)", color=("#232", "#353"), width=400)
    negative = g.node("CLIPTextEncode", (360, 320), {"text": T2V_NEGATIVE},
                      title="CLIP Text Encode (Negative Prompt)", color=("#322", "#533"), width=400)
    latent = g.node("EmptyHunyuanLatentVideo", (0, 400), {"width": 832, "height": 480, "length": 33})
    sampler = g.node("KSampler", (800, 0), {"seed": 42, "seed:control": "fixed", "steps": 30, "cfg": 6.0,
                                            "sampler_name": "uni_pc", "scheduler": "simple"})
    decode = g.node("VAEDecode", (800, 330), width=220)
    g.connect(unet, 0, shift, "model")
    g.connect(text_encoder, 0, positive, "clip")
    g.connect(text_encoder, 0, negative, "clip")
    g.connect(shift, 0, sampler, "model")
    g.connect(positive, 0, sampler, "positive")
    g.connect(negative, 0, sampler, "negative")
    g.connect(latent, 0, sampler, "latent_image")
    g.connect(sampler, 0, decode, "samples")
    g.connect(vae, 0, decode, "vae")
    return decode, 16.0


def images_to_clip(g: Graph, x: float, y: float, decode: dict, fps: float) -> dict:
    to_clip = g.node("vsrkitImagesToClip", (x, y), {"fps": fps})
    g.connect(decode, "IMAGE", to_clip, "images")
    return to_clip


def t2v_ltxv_realesrgan_x4(g: Graph) -> None:
    decode, fps = ltxv_text_to_video(g)
    clip = images_to_clip(g, 1520, 0, decode, fps)
    upscale = realesrgan(g, 1520, 140, clip, "clip", "realesr-general-x4v3")
    save = save_video(g, 1900, 0, "vsrkit/ltxv_x4")
    g.connect(upscale, "clip", save, "clip")
    g.note("## LTX-Video, then Real-ESRGAN x4\n768x512 text-to-video with ComfyUI's core LTX-Video nodes "
           "(LTX wants long, descriptive prompts), then realesr-general-x4v3 to 3072x2048, saved as H.264. "
           "Models: ltx-video-2b-v0.9.5 in `checkpoints/`, t5xxl_fp16 in `text_encoders/`.", (0, 560))


def t2v_wan_realesrgan_x2(g: Graph) -> None:
    decode, fps = wan_text_to_video(g)
    clip = images_to_clip(g, 1160, 0, decode, fps)
    upscale = realesrgan(g, 1160, 140, clip, "clip", "realesr-animevideov3-x2")
    save = save_video(g, 1540, 0, "vsrkit/wan_x2")
    g.connect(upscale, "clip", save, "clip")
    g.note("## Wan 2.1, then Real-ESRGAN x2\n832x480 text-to-video with Wan 2.1 T2V 1.3B (core nodes), then "
           "realesr-animevideov3 x2 to 1664x960. For Wan 2.2, swap the diffusion model and VAE in the "
           "loaders.", (0, 560))


def t2v_wan_flashvsr(g: Graph) -> None:
    decode, fps = wan_text_to_video(g)
    clip = images_to_clip(g, 1160, 0, decode, fps)
    upscale = flashvsr(g, 1160, 140, clip, "clip", 2)
    save = save_video(g, 1540, 0, "vsrkit/wan_flashvsr")
    g.connect(upscale, "clip", save, "clip")
    g.note("## Wan 2.1, then FlashVSR Tiny\n832x480 text-to-video with Wan 2.1 T2V 1.3B (core nodes), then "
           "FlashVSR Tiny x2 to 1664x960 (set `scale` 4 for 3328x1920 on a large GPU).", (0, 560))


def compare_before_after(g: Graph) -> None:
    load = load_video(g, 0, 0)
    upscale = realesrgan(g, 380, 0, load, "clip", "realesr-animevideov3-x2")
    compare = g.node("vsrkitCompare", (760, 0), {"layout": "wipe", "crop_width": 0})
    g.connect(load, "clip", compare, "before")
    g.connect(upscale, "clip", compare, "after")
    save = save_video(g, 1140, 0, "vsrkit/compare")
    g.connect(compare, "comparison", save, "clip")
    g.note("## Before / after\nThe source resized with plain bicubic (before) against the upscale (after): "
           "`layout` side_by_side, stacked, wipe or wipe_sweep; `crop_*` picks a region in upscaled pixels. "
           "Swap the upscaler for any other to judge it. " + LOAD_HELP, (0, 420))


SPECS = {
    "upscale_realesrgan_x4_deinterlace_denoise": upscale_realesrgan_x4_deinterlace_denoise,
    "upscale_fast_animevideov3_x2": upscale_fast_animevideov3_x2,
    "upscale_flashvsr_tiny": upscale_flashvsr_tiny,
    "upscale_two_pass_flashvsr_realesrgan": upscale_two_pass_flashvsr_realesrgan,
    "t2v_ltxv_realesrgan_x4": t2v_ltxv_realesrgan_x4,
    "t2v_wan_realesrgan_x2": t2v_wan_realesrgan_x2,
    "t2v_wan_flashvsr": t2v_wan_flashvsr,
    "compare_before_after": compare_before_after,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the shipped workflows.")
    parser.add_argument("--server", default=None, help="read core node definitions from this live server")
    args = parser.parse_args(argv)
    definitions = load_definitions(args.server)
    for name, build in SPECS.items():
        graph = Graph(definitions)
        build(graph)
        write(name, graph)
    return 0


if __name__ == "__main__":
    sys.exit(main())
