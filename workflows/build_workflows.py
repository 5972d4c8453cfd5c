"""Maintainer tool: regenerate the shipped workflows (UI format 0.4 and API format).

`TITLE.json` in this folder is the UI workflow (ComfyUI lists every `*.json` here in its
Templates browser, titled by file name, with `TITLE.jpg` as its thumbnail); `api/TITLE.json`
is its API-format twin, in a subfolder the browser does not list. This script keeps them
consistent (link ids, slot numbers, widget order, download hints, layout) when a node's
inputs change. Core node definitions come from the checked-in `/object_info` export (or a
live server with --server); ours from the pack's NODE_CLASS_MAPPINGS. The graph format and
the column layout are in `workflow_graph.py`. Thumbnails come from `docs/make_thumbnails.py`.

    python workflows/build_workflows.py [--server http://127.0.0.1:8188]
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from vsrkit.workflows.workflow_graph import GAP, MAIN_ROW, MODEL_LANE, WIDTH, Graph, below, column

HERE = Path(__file__).resolve().parent
API_DIR = HERE / "api"
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
    from vsrkit.tests.workflow_layout import layout_problems

    ui = graph.to_ui(name)
    problems = check_ui_workflow(ui, graph.definitions) + layout_problems(ui)
    if problems:
        raise SystemExit(f"{name}: " + "\n  ".join(problems))
    (HERE / f"{name}.json").write_text(json.dumps(ui, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    api = ui_to_api(ui, graph.definitions)
    API_DIR.mkdir(exist_ok=True)
    (API_DIR / f"{name}.json").write_text(json.dumps(api, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {name}.json and api/{name}.json ({len(api)} nodes)")


# ------------------------------------------------------------------ the workflows

LOAD_HELP = ("Upload or pick a video in **Load Video**; `frame_load_cap` limits the frames for a quick test. "
             "The result lands in ComfyUI's `output/vsrkit/` folder with the source audio.")
FLASHVSR_FILES = ("diffusion_pytorch_model_streaming_dmd.safetensors", "LQ_proj_in.ckpt", "TCDecoder.ckpt",
                  "posi_prompt.pth")
COLOR_LOAD, COLOR_MODEL, COLOR_SAVE = ("#223", "#335"), ("#323", "#535"), ("#232", "#353")
GROUP_INPUT, GROUP_MODEL, GROUP_WORK, GROUP_OUTPUT = "#3f5f9e", "#8a5fa6", "#3f789e", "#4f8a4f"
GROUP_GENERATE = "#a1743f"
NOTE_SIZE = (2 * WIDTH + GAP, 170)


def realesrgan_hint(model: str) -> list[dict]:
    from vsrkit.engines.realesrgan.official import official_model

    official = official_model(model)
    return [hint(official.file_name, official.url, "upscale_models")]


def flashvsr_hints() -> list[dict]:
    return [hint(name, f"{FLASHVSR}/{name}", "FlashVSR-v1.1") for name in FLASHVSR_FILES]


def load_video(g: Graph, x: float, **values) -> dict:
    return g.node("vsrkitLoadVideo", (x, MAIN_ROW), {"video": "input.mp4", **values}, color=COLOR_LOAD)


def save_video(g: Graph, x: float, prefix: str, **values) -> dict:
    return g.node("vsrkitSaveVideo", (x, MAIN_ROW), {"filename_prefix": prefix, **values}, color=COLOR_SAVE)


def realesrgan(g: Graph, loader_x: float, x: float, source: tuple[dict, int | str], model: str,
               scale: int | None = None, y: float = MAIN_ROW) -> tuple[dict, dict]:
    """Real-ESRGAN loader (model lane, at `loader_x`) and upscale (at `x`); returns both."""
    loader = g.node("vsrkitRealESRGANLoader", (loader_x, MODEL_LANE), {"model_name": model},
                    models=realesrgan_hint(model), color=COLOR_MODEL)
    values = {} if scale is None else {"scale": str(scale)}
    upscale = g.node("vsrkitRealESRGANUpscale", (x, y), values)
    g.connect(loader, 0, upscale, "model")
    g.connect(source[0], source[1], upscale, "clip")
    return loader, upscale


def flashvsr(g: Graph, loader_x: float, x: float, source: tuple[dict, int | str], scale: int) -> tuple[dict, dict]:
    """FlashVSR loader (model lane, at `loader_x`) and upscale (at `x`); returns both."""
    loader = g.node("vsrkitFlashVSRLoader", (loader_x, MODEL_LANE), models=flashvsr_hints(), color=COLOR_MODEL)
    upscale = g.node("vsrkitFlashVSRUpscale", (x, MAIN_ROW), {"scale": scale, "seed:control": "fixed"})
    g.connect(loader, 0, upscale, "flashvsr_model")
    g.connect(source[0], source[1], upscale, "clip")
    return loader, upscale


def upscale_note(g: Graph, text: str, nodes: list[dict]) -> None:
    g.note(text, (0, max(below(n, 80) for n in nodes)), NOTE_SIZE)


REALESRGAN_MODELS = "Put the Real-ESRGAN file into `models/upscale_models/` (the loader names it)."
FLASHVSR_MODELS = "Put the four FlashVSR-v1.1 files into `models/FlashVSR-v1.1/`."


def restore_old_video(g: Graph) -> None:
    load = load_video(g, column(0))
    deinterlace = g.node("vsrkitDeinterlace", (column(1), MAIN_ROW))
    denoise = g.node("vsrkitDenoise", (column(2), MAIN_ROW), {"preset": "light"})
    g.connect(load, "clip", deinterlace, "clip")
    g.connect(deinterlace, "clip", denoise, "clip")
    loader, upscale = realesrgan(g, column(2), column(3), (denoise, "clip"), "RealESRGAN_x4plus")
    save = save_video(g, column(4), "vsrkit/restored_x4")
    g.connect(upscale, "clip", save, "clip")
    upscale_note(g, "## Restore old video, x4\nDeinterlace (acts only on interlaced files: `mode` auto), a light "
                 "denoise so grain is not upscaled as texture, then Real-ESRGAN x4plus. " + REALESRGAN_MODELS
                 + " " + LOAD_HELP, [load, deinterlace, denoise, upscale, save])
    g.group("Load", [load], GROUP_INPUT)
    g.group("Clean up: deinterlace, denoise", [deinterlace, denoise], GROUP_WORK)
    g.group("Model", [loader], GROUP_MODEL)
    g.group("Upscale x4", [upscale], GROUP_WORK)
    g.group("Save with audio", [save], GROUP_OUTPUT)


def load_upscale_save(g: Graph, upscaler: Callable[[dict], tuple[dict, dict]], prefix: str, text: str,
                      label: str) -> None:
    """The one-pass graph: load, one upscaler (`upscaler(load)` gives its loader and node), save."""
    load = load_video(g, column(0))
    loader, upscale = upscaler(load)
    save = save_video(g, column(2), prefix)
    g.connect(upscale, "clip", save, "clip")
    upscale_note(g, text + " " + LOAD_HELP, [load, upscale, save])
    g.group("Model", [loader], GROUP_MODEL)
    g.group("Load", [load], GROUP_INPUT)
    g.group(label, [upscale], GROUP_WORK)
    g.group("Save with audio", [save], GROUP_OUTPUT)


def fast_x2(g: Graph) -> None:
    load_upscale_save(
        g, lambda load: realesrgan(g, column(0), column(1), (load, "clip"), "realesr-animevideov3-x2"),
        "vsrkit/fast_x2", "## Fast x2\nrealesr-animevideov3 (a small compact network made for video), x2: the "
        "quickest upscale, good on animation and clean footage. " + REALESRGAN_MODELS, "Upscale x2")


def flashvsr_tiny(g: Graph) -> None:
    load_upscale_save(
        g, lambda load: flashvsr(g, column(0), column(1), (load, "clip"), 4), "vsrkit/flashvsr",
        "## FlashVSR Tiny\nOne-step diffusion video super-resolution, steady across frames. `scale` 4 (trained "
        "for x4) or 2. " + FLASHVSR_MODELS + " A GPU is strongly advised.", "Upscale x4")


def flashvsr_then_realesrgan(g: Graph) -> None:
    load = load_video(g, column(0))
    first_loader, first = flashvsr(g, column(0), column(1), (load, "clip"), 2)
    second_loader, second = realesrgan(g, column(1), column(2), (first, "clip"), "realesr-animevideov3-x2")
    save = save_video(g, column(3), "vsrkit/two_pass_x4")
    g.connect(second, "clip", save, "clip")
    upscale_note(g, "## Two passes: FlashVSR x2, then Real-ESRGAN x2\nFlashVSR rebuilds detail consistently across "
                 "frames, Real-ESRGAN sharpens the result: x4 in all. " + FLASHVSR_MODELS + " "
                 + REALESRGAN_MODELS + " " + LOAD_HELP, [load, first, second, save])
    g.group("Models", [first_loader, second_loader], GROUP_MODEL)
    g.group("Load", [load], GROUP_INPUT)
    g.group("Upscale x2, then x2 again", [first, second], GROUP_WORK)
    g.group("Save with audio", [save], GROUP_OUTPUT)


T2V_NEGATIVE = "low quality, worst quality, blurry, distorted, deformed, static, watermark, text"
PROMPT_WIDTH, PROMPT_HEIGHT = 400, 180
T2V_WIDTHS = (WIDTH, PROMPT_WIDTH)  # column 1 holds the prompts


def prompts(g: Graph, text: str, x: float) -> tuple[dict, dict]:
    positive = g.node("CLIPTextEncode", (x, MAIN_ROW), {"text": text}, title="CLIP Text Encode (Positive Prompt)",
                      color=("#232", "#353"), width=PROMPT_WIDTH, height=PROMPT_HEIGHT)
    negative = g.node("CLIPTextEncode", (x, below(positive)), {"text": T2V_NEGATIVE},
                      title="CLIP Text Encode (Negative Prompt)", color=("#322", "#533"), width=PROMPT_WIDTH,
                      height=PROMPT_HEIGHT)
    return positive, negative


def ltxv_text_to_video(g: Graph) -> tuple[dict, float, list[dict]]:
    """LTX-Video 2B t2v with core nodes; returns the VAEDecode node, its frame rate and every node made."""
    c = [column(i, T2V_WIDTHS) for i in range(5)]
    checkpoint = g.node("CheckpointLoaderSimple", (c[2], MODEL_LANE),
                        {"ckpt_name": "ltx-video-2b-v0.9.5.safetensors"},
                        models=[hint("ltx-video-2b-v0.9.5.safetensors")], color=COLOR_MODEL)
    text_encoder = g.node("CLIPLoader", (c[0], MAIN_ROW), {"clip_name": "t5xxl_fp16.safetensors", "type": "ltxv"},
                          models=[hint("t5xxl_fp16.safetensors")], color=COLOR_MODEL)
    positive, negative = prompts(g, (
        "A red fox trots through fresh snow in a pine forest at sunrise, its breath visible in the cold "
        "air. The camera tracks alongside at fox height, low golden light catches the frost on the "
        "branches, snow crystals sparkle. Natural colours, real-life footage, sharp focus."), c[1])
    conditioning = g.node("LTXVConditioning", (c[2], MAIN_ROW), {"frame_rate": 24.0})
    latent = g.node("EmptyLTXVLatentVideo", (c[1], below(negative)), {"width": 768, "height": 512, "length": 97},
                    width=PROMPT_WIDTH)
    scheduler = g.node("LTXVScheduler", (c[2], below(conditioning)), {"steps": 30})
    sampler_select = g.node("KSamplerSelect", (c[2], below(scheduler)), {"sampler_name": "euler"})
    # The latent's wire runs to the sampler under column 2's stack: the sampler sits level with it.
    latent_input_y = latent["pos"][1] - 5 * 20
    sampler = g.node("SamplerCustom", (c[3], latent_input_y),
                     {"noise_seed": 42, "noise_seed:control": "fixed", "cfg": 3.0})
    decode = g.node("VAEDecode", (c[4], MAIN_ROW))
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
    made = [checkpoint, text_encoder, positive, negative, conditioning, latent, scheduler, sampler_select, sampler,
            decode]
    return decode, 24.0, made


def wan_text_to_video(g: Graph) -> tuple[dict, float, list[dict]]:
    """Wan 2.1 T2V 1.3B with core nodes; returns the VAEDecode node, its frame rate and every node made."""
    c = [column(i, T2V_WIDTHS) for i in range(4)]
    unet = g.node("UNETLoader", (c[0], MODEL_LANE), {"unet_name": "wan2.1_t2v_1.3B_fp16.safetensors"},
                  models=[hint("wan2.1_t2v_1.3B_fp16.safetensors")], color=COLOR_MODEL)
    text_encoder = g.node("CLIPLoader", (c[0], MAIN_ROW), {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                                                           "type": "wan"},
                          models=[hint("umt5_xxl_fp8_e4m3fn_scaled.safetensors")], color=COLOR_MODEL)
    vae = g.node("VAELoader", (c[2], MODEL_LANE), {"vae_name": "wan_2.1_vae.safetensors"},
                 models=[hint("wan_2.1_vae.safetensors")], color=COLOR_MODEL)
    shift = g.node("ModelSamplingSD3", (c[1], MODEL_LANE), {"shift": 8.0}, width=PROMPT_WIDTH)
    positive, negative = prompts(g, (
        "A paper boat drifts down a rain-filled street gutter, raindrops rippling the water, reflections of "
        "neon shop signs, close-up tracking shot, cinematic, detailed"), c[1])
    latent = g.node("EmptyHunyuanLatentVideo", (c[1], below(negative)), {"width": 832, "height": 480, "length": 33},
                    width=PROMPT_WIDTH)
    sampler = g.node("KSampler", (c[2], MAIN_ROW), {"seed": 42, "seed:control": "fixed", "steps": 30, "cfg": 6.0,
                                                    "sampler_name": "uni_pc", "scheduler": "simple"})
    decode = g.node("VAEDecode", (c[3], MAIN_ROW))
    g.connect(unet, 0, shift, "model")
    g.connect(text_encoder, 0, positive, "clip")
    g.connect(text_encoder, 0, negative, "clip")
    g.connect(shift, 0, sampler, "model")
    g.connect(positive, 0, sampler, "positive")
    g.connect(negative, 0, sampler, "negative")
    g.connect(latent, 0, sampler, "latent_image")
    g.connect(sampler, 0, decode, "samples")
    g.connect(vae, 0, decode, "vae")
    return decode, 16.0, [unet, text_encoder, vae, shift, positive, negative, latent, sampler, decode]


def upscale_generated(g: Graph, generated: tuple[dict, float, list[dict]], first_column: float, upscaler: str,
                      prefix: str) -> list[dict]:
    """Images to clip, the upscaler (`realesrgan:MODEL` or `flashvsr:SCALE`) and Save, after a t2v part."""
    decode, fps, made = generated
    x = [first_column + i * (WIDTH + GAP) for i in range(3)]
    to_clip = g.node("vsrkitImagesToClip", (x[0], MAIN_ROW), {"fps": fps})
    g.connect(decode, "IMAGE", to_clip, "images")
    kind, setting = upscaler.split(":")
    if kind == "realesrgan":
        loader, upscale = realesrgan(g, x[0], x[1], (to_clip, "clip"), setting)
    else:
        loader, upscale = flashvsr(g, x[0], x[1], (to_clip, "clip"), int(setting))
    save = save_video(g, x[2], prefix)
    g.connect(upscale, "clip", save, "clip")
    return [to_clip, loader, upscale, save]


def ltxv_then_realesrgan(g: Graph) -> None:
    generated = ltxv_text_to_video(g)
    start = column(5, T2V_WIDTHS)
    to_clip, loader, upscale, save = upscale_generated(g, generated, start, "realesrgan:realesr-general-x4v3",
                                                       "vsrkit/ltxv_x4")
    made = generated[2]
    g.note("## LTX-Video, then Real-ESRGAN x4\n768x512 text-to-video with ComfyUI's core LTX-Video nodes "
           "(LTX wants long, descriptive prompts), then realesr-general-x4v3 to 3072x2048, saved as H.264. "
           "Models: ltx-video-2b-v0.9.5 in `models/checkpoints/`, t5xxl_fp16 in `models/text_encoders/`, "
           "realesr-general-x4v3 in `models/upscale_models/`.", (0, max(below(n, 80) for n in made)), NOTE_SIZE)
    g.group("Text to video: LTX-Video 2B", made, GROUP_GENERATE)
    g.group("Upscale x4: Real-ESRGAN", [to_clip, loader, upscale], GROUP_WORK)
    g.group("Save", [save], GROUP_OUTPUT)


def wan_then_upscale(g: Graph, upscaler: str, prefix: str, title: str, text: str) -> None:
    generated = wan_text_to_video(g)
    to_clip, loader, upscale, save = upscale_generated(g, generated, column(4, T2V_WIDTHS), upscaler, prefix)
    made = generated[2]
    g.note(text, (0, max(below(n, 80) for n in made)), NOTE_SIZE)
    g.group("Text to video: Wan 2.1 T2V 1.3B", made, GROUP_GENERATE)
    g.group(title, [to_clip, loader, upscale], GROUP_WORK)
    g.group("Save", [save], GROUP_OUTPUT)


WAN_MODELS = ("Models: wan2.1_t2v_1.3B_fp16 in `models/diffusion_models/`, umt5_xxl_fp8_e4m3fn_scaled in "
              "`models/text_encoders/`, wan_2.1_vae in `models/vae/`")


def wan_then_realesrgan(g: Graph) -> None:
    wan_then_upscale(g, "realesrgan:realesr-animevideov3-x2", "vsrkit/wan_x2", "Upscale x2: Real-ESRGAN", (
        "## Wan 2.1, then Real-ESRGAN x2\n832x480 text-to-video with Wan 2.1 T2V 1.3B (core nodes), then "
        "realesr-animevideov3 x2 to 1664x960. For Wan 2.2, swap the diffusion model and VAE in the loaders. "
        + WAN_MODELS + ", realesr-animevideov3 in `models/upscale_models/`."))


def wan_then_flashvsr(g: Graph) -> None:
    wan_then_upscale(g, "flashvsr:2", "vsrkit/wan_flashvsr", "Upscale x2: FlashVSR Tiny", (
        "## Wan 2.1, then FlashVSR Tiny\n832x480 text-to-video with Wan 2.1 T2V 1.3B (core nodes), then "
        "FlashVSR Tiny x2 to 1664x960 (set `scale` 4 for 3328x1920 on a large GPU). " + WAN_MODELS + "; "
        "the four FlashVSR-v1.1 files in `models/FlashVSR-v1.1/`."))


def before_and_after(g: Graph) -> None:
    load = load_video(g, column(0))
    # The upscale sits lower than the main row so the "before" wire passes over it to Compare.
    loader, upscale = realesrgan(g, column(0), column(1), (load, "clip"), "realesr-animevideov3-x2",
                                 y=MAIN_ROW + 120)
    compare = g.node("vsrkitCompare", (column(2), MAIN_ROW), {"layout": "wipe", "crop_width": 0})
    g.connect(load, "clip", compare, "before")
    g.connect(upscale, "clip", compare, "after")
    save = save_video(g, column(3), "vsrkit/compare")
    g.connect(compare, "comparison", save, "clip")
    upscale_note(g, "## Before / after\nThe source resized with plain bicubic (before) against the upscale (after): "
                 "`layout` side_by_side, stacked, wipe or wipe_sweep; `crop_*` picks a region in upscaled pixels. "
                 "Swap the upscaler for any other to judge it. " + REALESRGAN_MODELS + " " + LOAD_HELP,
                 [load, upscale, compare, save])
    g.group("Model", [loader], GROUP_MODEL)
    g.group("Load", [load], GROUP_INPUT)
    g.group("Upscale x2", [upscale], GROUP_WORK)
    g.group("Compare", [compare], GROUP_WORK)
    g.group("Save", [save], GROUP_OUTPUT)


# File names are the titles ComfyUI's Templates browser shows; letters, digits, spaces, commas
# and hyphens only, so they are also usable as paths and URLs.
SPECS = {
    "Restore old video, Real-ESRGAN x4": restore_old_video,
    "Fast upscale x2, Real-ESRGAN": fast_x2,
    "Upscale with FlashVSR Tiny": flashvsr_tiny,
    "FlashVSR then Real-ESRGAN, x4": flashvsr_then_realesrgan,
    "LTX-Video text to video, x4": ltxv_then_realesrgan,
    "Wan 2.1 text to video, Real-ESRGAN": wan_then_realesrgan,
    "Wan 2.1 text to video, FlashVSR": wan_then_flashvsr,
    "Before and after comparison": before_and_after,
}


def stale_files() -> list[Path]:
    """Workflow files in this folder or api/ that no entry of SPECS writes."""
    made = {f"{name}.json" for name in SPECS}
    return sorted(p for p in [*HERE.glob("*.json"), *API_DIR.glob("*.json")] if p.name not in made)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the shipped workflows.")
    parser.add_argument("--server", default=None, help="read core node definitions from this live server")
    args = parser.parse_args(argv)
    definitions = load_definitions(args.server)
    for name, build in SPECS.items():
        graph = Graph(definitions)
        build(graph)
        write(name, graph)
    for path in stale_files():
        print(f"not written by this script (remove it if it is an old workflow): {path.relative_to(HERE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
