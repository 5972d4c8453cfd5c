"""The shipped workflows load and queue as published: checked offline, no ComfyUI host needed.

Core node definitions come from `tests/data/comfyui_object_info.json`, an export of a real
ComfyUI's `/object_info`; ours from the pack's NODE_CLASS_MAPPINGS. The checker itself is
tested on small workflows that it must pass or fail.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import vsrkit
from vsrkit.cli.workflow import (
    check_api_workflow,
    check_ui_workflow,
    definitions_from_mappings,
    ui_to_api,
    widget_slots,
)

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
EXPORT = ROOT / "tests" / "data" / "comfyui_object_info.json"
MODEL_FOLDERS = {"checkpoints", "text_encoders", "diffusion_models", "vae", "upscale_models", "FlashVSR",
                 "FlashVSR-v1.1"}

EXPECTED = {
    "upscale_realesrgan_x4_deinterlace_denoise": "load, deinterlace/denoise, Real-ESRGAN x4, save with audio",
    "upscale_fast_animevideov3_x2": "load, Real-ESRGAN x2 (realesr-animevideov3), save",
    "upscale_flashvsr_tiny": "load, FlashVSR Tiny, save",
    "upscale_two_pass_flashvsr_realesrgan": "FlashVSR Tiny then Real-ESRGAN x2",
    "t2v_ltxv_realesrgan_x4": "LTX-Video text-to-video, Real-ESRGAN x4, save",
    "t2v_wan_realesrgan_x2": "Wan 2.1 text-to-video, Real-ESRGAN x2, save",
    "t2v_wan_flashvsr": "Wan 2.1 text-to-video, FlashVSR Tiny, save",
    "compare_before_after": "before/after comparison",
}


def ui_files() -> list[Path]:
    return sorted(p for p in WORKFLOWS.glob("*.json") if not p.name.endswith(".api.json"))


def api_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.api.json"))


def load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def export() -> dict:
    return load(EXPORT)


@pytest.fixture(scope="module")
def definitions(export, tmp_path_factory) -> dict:
    """Core definitions from the export plus ours, built with empty model folders (like a fresh host)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSRKIT_HOME", str(tmp_path_factory.mktemp("vsrkit-home")))
        ours = definitions_from_mappings(vsrkit.NODE_CLASS_MAPPINGS, vsrkit.NODE_DISPLAY_NAME_MAPPINGS)
    return {**export["nodes"], **ours}


# ------------------------------------------------------------------ the shipped files


def test_every_expected_workflow_ships_in_both_formats():
    names = {p.name.removesuffix(".json") for p in ui_files()}
    api_names = {p.name.removesuffix(".api.json") for p in api_files()}
    assert set(EXPECTED) <= names, f"missing UI workflows: {sorted(set(EXPECTED) - names)}"
    assert names == api_names, "every UI workflow needs its API twin and vice versa"


@pytest.mark.parametrize("path", ui_files() + api_files(), ids=lambda p: p.name)
def test_file_parses(path):
    data = load(path)
    assert isinstance(data, dict) and data


@pytest.mark.parametrize("path", ui_files(), ids=lambda p: p.name)
def test_every_node_type_exists(path, export):
    known = set(export["node_names"]) | set(vsrkit.NODE_CLASS_MAPPINGS) | {"Note", "MarkdownNote"}
    unknown = sorted({node["type"] for node in load(path)["nodes"]} - known)
    assert not unknown, f"node types that neither ComfyUI {export['comfyui_version']} nor vsrkit has: {unknown}"


@pytest.mark.parametrize("path", ui_files(), ids=lambda p: p.name)
def test_ui_workflow_passes_the_checks(path, definitions):
    assert check_ui_workflow(load(path), definitions) == []


@pytest.mark.parametrize("path", ui_files(), ids=lambda p: p.name)
def test_api_file_is_the_conversion_of_its_ui_file(path, definitions):
    twin = path.with_name(path.name.removesuffix(".json") + ".api.json")
    assert load(twin) == ui_to_api(load(path), definitions)


@pytest.mark.parametrize("path", api_files(), ids=lambda p: p.name)
def test_api_workflow_passes_the_checks(path, definitions):
    assert check_api_workflow(load(path), definitions) == []


@pytest.mark.parametrize("path", ui_files(), ids=lambda p: p.name)
def test_download_hints_point_at_model_folders(path):
    for node in load(path)["nodes"]:
        for model in node.get("properties", {}).get("models", []):
            assert model["directory"] in MODEL_FOLDERS, (node["type"], model)
            assert model["url"].startswith("https://") and model["name"] in model["url"], model


def hinted_names(name: str) -> set[str]:
    return {m["name"] for n in load(WORKFLOWS / f"{name}.json")["nodes"]
            for m in n.get("properties", {}).get("models", [])}


def test_text_to_video_workflows_use_the_official_template_model_names():
    assert {"ltx-video-2b-v0.9.5.safetensors", "t5xxl_fp16.safetensors"} <= hinted_names("t2v_ltxv_realesrgan_x4")
    wan = {"wan2.1_t2v_1.3B_fp16.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan_2.1_vae.safetensors"}
    assert wan <= hinted_names("t2v_wan_realesrgan_x2")
    assert wan <= hinted_names("t2v_wan_flashvsr")


def test_export_is_a_small_real_object_info(export):
    assert export["comfyui_version"]
    assert EXPORT.stat().st_size < 1_000_000
    assert "KSampler" in export["node_names"] and not any(n.startswith("vsrkit") for n in export["node_names"])
    for name, definition in export["nodes"].items():
        assert {"input", "output", "output_name", "name", "category"} <= set(definition), name


# ------------------------------------------------------------------ the checker itself

SMALL = {
    "version": 0.4, "last_node_id": 3, "last_link_id": 1,
    "nodes": [
        {"id": 1, "type": "EmptyImage", "pos": [0, 0], "size": [300, 130], "mode": 0, "inputs": [],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], "widgets_values": [64, 48, 1, 0]},
        {"id": 2, "type": "SaveImage", "pos": [400, 0], "size": [300, 300], "mode": 0,
         "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "outputs": [], "widgets_values": ["small"],
         "title": "Keep it"},
        {"id": 3, "type": "MarkdownNote", "pos": [0, 200], "size": [200, 100], "mode": 0, "inputs": [],
         "outputs": [], "widgets_values": ["a note"]},
    ],
    "links": [[1, 1, 0, 2, 0, "IMAGE"]],
}


def test_checker_passes_a_good_workflow_and_converts_it(definitions):
    assert check_ui_workflow(SMALL, definitions) == []
    api = ui_to_api(SMALL, definitions)
    assert api == {
        "1": {"inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0}, "class_type": "EmptyImage",
              "_meta": {"title": definitions["EmptyImage"]["display_name"]}},
        "2": {"inputs": {"images": ["1", 0], "filename_prefix": "small"}, "class_type": "SaveImage",
              "_meta": {"title": "Keep it"}},
    }
    assert check_api_workflow(api, definitions) == []


def mutated(change) -> dict:
    workflow = copy.deepcopy(SMALL)
    change(workflow)
    return workflow


@pytest.mark.parametrize(("change", "expected"), [
    (lambda w: w["nodes"][0].update(type="EmptyImageX"), "no such node type"),
    (lambda w: w["nodes"][0]["widgets_values"].__setitem__(0, 0), "below the minimum"),
    (lambda w: w["nodes"][0]["widgets_values"].__setitem__(0, 6.5), "not an integer"),
    (lambda w: w["nodes"][0]["widgets_values"].pop(), "widget values for 4 widgets"),
    (lambda w: w["nodes"][1]["widgets_values"].__setitem__(0, 3), "not a string"),
    (lambda w: w["links"][0].__setitem__(5, "LATENT"), "link says LATENT"),
    (lambda w: w["links"][0].__setitem__(4, 3), "does not hold it"),
    (lambda w: w["nodes"][1]["inputs"][0].update(link=None), "is not connected"),
    (lambda w: w.update(version=0.3), "expected 0.4"),
    (lambda w: w.update(last_link_id=0), "last_link_id"),
    (lambda w: w["nodes"].pop(1), "no output node"),
    (lambda w: w["nodes"][0].update(mode=4), "muted or bypassed"),
])
def test_checker_catches_a_broken_workflow(definitions, change, expected):
    problems = check_ui_workflow(mutated(change), definitions)
    assert any(expected in p for p in problems), problems


def test_link_between_incompatible_types_is_caught(definitions):
    workflow = {
        "version": 0.4, "last_node_id": 2, "last_link_id": 1,
        "nodes": [
            {"id": 1, "type": "UpscaleModelLoader", "pos": [0, 0], "size": [300, 60], "mode": 0, "inputs": [],
             "outputs": [{"name": "UPSCALE_MODEL", "type": "UPSCALE_MODEL", "links": [1]}],
             "widgets_values": ["4x.pth"],
             "properties": {"models": [{"name": "4x.pth", "url": "https://example.org/4x.pth",
                                        "directory": "upscale_models"}]}},
            {"id": 2, "type": "PreviewImage", "pos": [400, 0], "size": [300, 300], "mode": 0,
             "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "outputs": [], "widgets_values": []},
        ],
        "links": [[1, 1, 0, 2, 0, "UPSCALE_MODEL"]],
    }
    problems = check_ui_workflow(workflow, definitions)
    assert any("UPSCALE_MODEL cannot feed PreviewImage.images (IMAGE)" in p for p in problems), problems


def test_model_files_need_a_download_hint(definitions):
    workflow = {
        "version": 0.4, "last_node_id": 3, "last_link_id": 2,
        "nodes": [
            {"id": 1, "type": "UpscaleModelLoader", "pos": [0, 0], "size": [300, 60], "mode": 0, "inputs": [],
             "outputs": [{"name": "UPSCALE_MODEL", "type": "UPSCALE_MODEL", "links": [1]}],
             "widgets_values": ["4x.pth"]},
            {"id": 2, "type": "EmptyImage", "pos": [0, 100], "size": [300, 130], "mode": 0, "inputs": [],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2]}], "widgets_values": [8, 8, 1, 0]},
            {"id": 3, "type": "ImageUpscaleWithModel", "pos": [400, 0], "size": [300, 60], "mode": 0,
             "inputs": [{"name": "upscale_model", "type": "UPSCALE_MODEL", "link": 1},
                        {"name": "image", "type": "IMAGE", "link": 2}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": None}], "widgets_values": []},
        ],
        "links": [[1, 1, 0, 3, 0, "UPSCALE_MODEL"], [2, 2, 0, 3, 1, "IMAGE"]],
    }
    problems = check_ui_workflow(workflow, definitions)
    assert any("'4x.pth' has no download hint" in p for p in problems), problems
    workflow["nodes"][0]["properties"] = {"models": [{"name": "4x.pth", "url": "https://example.org/4x.pth",
                                                      "directory": "upscale_models"}]}
    problems = check_ui_workflow(workflow, definitions)
    assert not any("download hint" in p for p in problems), problems
    assert any("no output node" in p for p in problems)


def test_widget_slots_follow_the_frontend():
    seeded = {"input": {"required": {"model": ["MODEL"], "seed": ["INT", {"default": 0}],
                                     "steps": ["INT", {"default": 20}],
                                     "pick": [["a", "b"], {"control_after_generate": True}]},
                        "optional": {"noise_seed": ["INT", {"control_after_generate": False}],
                                     "text": ["STRING", {"forceInput": True}]}}}
    slots = [(s.name, s.role) for s in widget_slots(seeded)]
    assert slots == [("seed", "value"), ("seed", "control"), ("steps", "value"), ("pick", "value"),
                     ("pick", "control"), ("noise_seed", "value")]
    upload = {"input": {"required": {"file": ["COMBO", {"options": [], "video_upload": True}],
                                     "frames": ["INT", {}]}, "optional": {"x": ["FLOAT", {}]}}}
    assert [(s.name, s.role) for s in widget_slots(upload)] == [
        ("file", "value"), ("frames", "value"), ("x", "value"), ("upload", "upload")]


def test_api_check_catches_bad_prompts(definitions):
    api = ui_to_api(SMALL, definitions)
    api["1"]["inputs"]["width"] = -1
    api["2"]["inputs"]["images"] = ["9", 0]
    del api["2"]["inputs"]["filename_prefix"]
    problems = check_api_workflow(api, definitions)
    assert any("width" in p and "minimum" in p for p in problems)
    assert any("missing node 9" in p for p in problems)
    assert any("'filename_prefix' is missing" in p for p in problems)
