"""The shipped workflows load and queue as published: checked offline, no ComfyUI host needed.

`workflows/TITLE.json` is a UI workflow (ComfyUI's Templates browser lists each, titled by its
file name, with `TITLE.jpg` as thumbnail); `workflows/api/TITLE.json` is its API twin. Core
node definitions come from `tests/data/comfyui_object_info.json`, an export of a real
ComfyUI's `/object_info`; ours from the pack's NODE_CLASS_MAPPINGS. The checkers themselves
are tested on small workflows that they must pass or fail.
"""

from __future__ import annotations

import copy
import json
import re
import struct
from pathlib import Path

import pytest

import vsrkit
from tests.workflow_layout import layout_problems
from vsrkit.cli.workflow import (
    check_api_workflow,
    check_ui_workflow,
    definitions_from_mappings,
    is_api_format,
    ui_to_api,
    widget_slots,
)

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
EXPORT = ROOT / "tests" / "data" / "comfyui_object_info.json"
MODEL_FOLDERS = {"checkpoints", "text_encoders", "diffusion_models", "vae", "upscale_models", "FlashVSR",
                 "FlashVSR-v1.1"}

API = WORKFLOWS / "api"
THUMBNAIL_SIZE = (400, 400)
THUMBNAIL_MAX_BYTES = 80_000
TITLE_CHARACTERS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ,.-]*[A-Za-z0-9]$")

EXPECTED = {
    "Restore old video, Real-ESRGAN x4": "load, deinterlace/denoise, Real-ESRGAN x4, save with audio",
    "Fast upscale x2, Real-ESRGAN": "load, Real-ESRGAN x2 (realesr-animevideov3), save",
    "Upscale with FlashVSR Tiny": "load, FlashVSR Tiny, save",
    "FlashVSR then Real-ESRGAN, x4": "FlashVSR Tiny then Real-ESRGAN x2",
    "LTX-Video text to video, x4": "LTX-Video text-to-video, Real-ESRGAN x4, save",
    "Wan 2.1 text to video, Real-ESRGAN": "Wan 2.1 text-to-video, Real-ESRGAN x2, save",
    "Wan 2.1 text to video, FlashVSR": "Wan 2.1 text-to-video, FlashVSR Tiny, save",
    "Before and after comparison": "before/after comparison",
}


def ui_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def api_files() -> list[Path]:
    return sorted(API.glob("*.json"))


def twin(path: Path) -> Path:
    return API / path.name


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
    names = {p.stem for p in ui_files()}
    assert set(EXPECTED) <= names, f"missing UI workflows: {sorted(set(EXPECTED) - names)}"
    assert names == {p.stem for p in api_files()}, "every UI workflow needs its API twin in api/ and vice versa"


def test_no_api_format_file_directly_in_workflows():
    """ComfyUI lists every *.json directly in workflows/ as a template; an API prompt there opens nothing."""
    listed = [p.name for p in ui_files() if is_api_format(load(p))]
    assert not listed, f"API-format files in workflows/ (they belong in workflows/api/): {listed}"


@pytest.mark.parametrize("path", ui_files(), ids=lambda p: p.name)
def test_file_name_reads_as_a_title(path):
    assert TITLE_CHARACTERS.match(path.stem), f"{path.name}: letters, digits, spaces, commas, dots, hyphens only"
    assert "_" not in path.stem and len(path.stem) <= 40, path.name


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's start-of-frame segment."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    at = 2
    while at < len(data):
        marker, length = data[at + 1], struct.unpack(">H", data[at + 2:at + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return width, height
        at += 2 + length
    raise AssertionError("no start-of-frame segment")


@pytest.mark.parametrize("path", ui_files(), ids=lambda p: p.name)
def test_every_ui_workflow_has_its_thumbnail(path):
    """The Templates browser shows workflows/TITLE.jpg for an extension's template TITLE.json."""
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), f"{thumbnail.name} is missing (python docs/make_thumbnails.py)"
    data = thumbnail.read_bytes()
    assert jpeg_size(data) == THUMBNAIL_SIZE
    assert len(data) <= THUMBNAIL_MAX_BYTES, f"{thumbnail.name} is {len(data)} bytes"


def test_no_thumbnail_without_its_workflow():
    assert {p.stem for p in WORKFLOWS.glob("*.jpg")} == {p.stem for p in ui_files()}


@pytest.mark.parametrize("path", ui_files(), ids=lambda p: p.name)
def test_ui_workflow_has_a_real_id_and_the_fields_the_frontend_writes(path):
    workflow = load(path)
    assert isinstance(workflow["id"], str) and workflow["id"], "the frontend refuses a file whose id is null"
    assert list(workflow)[:10] == ["id", "revision", "last_node_id", "last_link_id", "nodes", "links", "groups",
                                   "config", "extra", "version"]
    assert len({load(p)["id"] for p in ui_files()}) == len(ui_files()), "two workflows share an id"


@pytest.mark.parametrize("path", ui_files(), ids=lambda p: p.name)
def test_graph_is_readable(path):
    """Wires run left to right and under no node; nodes and groups do not overlap."""
    assert layout_problems(load(path)) == []


@pytest.mark.parametrize("path", ui_files(), ids=lambda p: p.name)
def test_every_loader_is_in_a_group_or_explained_by_a_note(path):
    workflow = load(path)
    notes = " ".join(str(v) for n in workflow["nodes"] if n["type"] == "MarkdownNote" for v in n["widgets_values"])
    for node in workflow["nodes"]:
        for model in node.get("properties", {}).get("models", []):
            assert f"models/{model['directory']}/" in notes, f"the note does not say where {model['name']} goes"
    assert workflow["groups"], "no groups name the stages"


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
    assert load(twin(path)) == ui_to_api(load(path), definitions)


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
    ltxv = {"ltx-video-2b-v0.9.5.safetensors", "t5xxl_fp16.safetensors"}
    assert ltxv <= hinted_names("LTX-Video text to video, x4")
    wan = {"wan2.1_t2v_1.3B_fp16.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan_2.1_vae.safetensors"}
    assert wan <= hinted_names("Wan 2.1 text to video, Real-ESRGAN")
    assert wan <= hinted_names("Wan 2.1 text to video, FlashVSR")


def test_export_is_a_small_real_object_info(export):
    assert export["comfyui_version"]
    assert EXPORT.stat().st_size < 1_000_000
    assert "KSampler" in export["node_names"] and not any(n.startswith("vsrkit") for n in export["node_names"])
    for name, definition in export["nodes"].items():
        assert {"input", "output", "output_name", "name", "category"} <= set(definition), name


# ------------------------------------------------------------------ the checker itself

SMALL = {
    "id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "revision": 0, "last_node_id": 3, "last_link_id": 1,
    "nodes": [
        {"id": 1, "type": "EmptyImage", "pos": [0, 0], "size": [300, 130], "flags": {}, "order": 0, "mode": 0,
         "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], "properties": {},
         "widgets_values": [64, 48, 1, 0]},
        {"id": 2, "type": "SaveImage", "pos": [400, 0], "size": [300, 300], "flags": {}, "order": 1, "mode": 0,
         "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "outputs": [], "properties": {},
         "widgets_values": ["small"], "title": "Keep it"},
        {"id": 3, "type": "MarkdownNote", "pos": [0, 200], "size": [200, 100], "flags": {}, "order": 2, "mode": 0,
         "inputs": [], "outputs": [], "properties": {}, "widgets_values": ["a note"]},
    ],
    "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4,
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
    (lambda w: w.update(id=None), "'id' is null: the frontend then refuses the file"),
    (lambda w: w.pop("id"), "'id' is missing"),
    (lambda w: w.update(id="vsrkit-small"), "not a lower-case UUID"),
    (lambda w: w.update(extra=None), "'extra' is null"),
    (lambda w: w.update(groups={}), "'groups' is dict, the frontend wants list"),
    (lambda w: w["nodes"][0].pop("properties"), "'properties' must be dict"),
    (lambda w: w["nodes"][1].update(flags=None), "'flags' must be dict"),
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


# ------------------------------------------------------------------ the layout check itself


def test_layout_check_passes_a_tidy_graph():
    assert layout_problems(SMALL) == []


@pytest.mark.parametrize(("change", "expected"), [
    (lambda w: w["nodes"][1].update(pos=[100, 400]), "does not run left to right"),
    (lambda w: w["nodes"][1].update(pos=[1000, 0]) or w["nodes"][2].update(pos=[500, 20]), "passes under node 3"),
    (lambda w: w["nodes"][2].update(pos=[100, 100]), "node 1 (EmptyImage) overlaps node 3"),
    (lambda w: w.update(groups=[{"title": "a", "bounding": [0, 0, 100, 100]},
                                {"title": "b", "bounding": [50, 50, 100, 100]}]), "group 'a' overlaps group 'b'"),
])
def test_layout_check_catches_an_untidy_graph(change, expected):
    problems = layout_problems(mutated(change))
    assert any(expected in p for p in problems), problems
