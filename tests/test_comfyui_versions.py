"""The shipped workflows fit every ComfyUI version we test, checked offline against an export of each.

`tests/data` keeps a real `GET /object_info` export per tested version (`export_object_info.py`):
`comfyui_object_info.json` is the oldest supported one, `comfyui_object_info_<version>.json` the
newer ones. A workflow fits a version when every input it sets exists on the node there with a
compatible type and value, every output it links exists at that index, and every required input
is given; a version that added an optional input or an output still fits. The checker is
`check_api_workflow` with the host named; it is tested here on prompts it must pass or fail.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import vsrkit
from vsrkit.cli.workflow import check_api_workflow, definitions_from_mappings, is_api_format

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
EXPORTS = sorted((ROOT / "tests" / "data").glob("comfyui_object_info*.json"))
OLDEST, CURRENT = "0.3.64", "0.28.0"


def load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def api_workflows() -> list[Path]:
    """Every API-format file under workflows/, wherever it sits."""
    return sorted(p for p in WORKFLOWS.rglob("*.json") if is_api_format(load(p)))


@pytest.fixture(scope="module")
def exports() -> dict[str, dict]:
    return {export["comfyui_version"]: export for export in map(load, EXPORTS)}


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> dict:
    """Our nodes' definitions, built with empty model folders (like a fresh host)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSRKIT_HOME", str(tmp_path_factory.mktemp("vsrkit-home")))
        return definitions_from_mappings(vsrkit.NODE_CLASS_MAPPINGS, vsrkit.NODE_DISPLAY_NAME_MAPPINGS)


def on(version: str) -> str:
    return f"ComfyUI {version}"


def test_exports_of_the_oldest_and_a_current_comfyui_are_kept(exports):
    assert {OLDEST, CURRENT} <= set(exports)
    for path in EXPORTS:
        version = load(path)["comfyui_version"]
        assert path.name in ("comfyui_object_info.json", f"comfyui_object_info_{version}.json"), path.name
    assert load(EXPORTS[0])["comfyui_version"] == OLDEST  # comfyui_object_info.json: the workflows' baseline


def test_api_workflows_are_found():
    assert len(api_workflows()) >= 8


@pytest.mark.parametrize("path", EXPORTS, ids=lambda p: p.name)
def test_export_holds_every_core_node_the_workflows_use(path):
    export = load(path)
    used = {node["class_type"] for workflow in api_workflows() for node in load(workflow).values()}
    missing = sorted(name for name in used if not name.startswith("vsrkit") and name not in export["nodes"])
    assert not missing, (f"{path.name} lacks the definitions of {missing}: refresh it from a ComfyUI "
                         f"{export['comfyui_version']} host with tests/data/export_object_info.py")


@pytest.mark.parametrize("path", EXPORTS, ids=lambda p: p.name)
@pytest.mark.parametrize("workflow", api_workflows(), ids=lambda p: p.name)
def test_shipped_workflow_fits_the_exported_comfyui(workflow, path, ours):
    export = load(path)
    problems = check_api_workflow(load(workflow), {**export["nodes"], **ours}, on(export["comfyui_version"]))
    assert problems == []


# ------------------------------------------------------------------ the checker on known differences

# Uses what ComfyUI 0.28.0 added: CreateVideo's optional bit_depth input and GetVideoComponents'
# fourth output (bit_depth, an INT, here fed to a width).
NEWER = {
    "1": {"class_type": "LoadVideo", "inputs": {"file": "clip.mp4"}},
    "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
    "3": {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": ["2", 2], "audio": ["2", 1],
                                                  "bit_depth": 10}},
    "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": "video/out",
                                                "format": "auto", "codec": "auto"}},
    "5": {"class_type": "EmptyImage", "inputs": {"width": ["2", 3], "height": 64, "batch_size": 1, "color": 0}},
    "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
}


def without_newer_features() -> dict:
    prompt = copy.deepcopy(NEWER)
    del prompt["3"]["inputs"]["bit_depth"]
    prompt["5"]["inputs"]["width"] = 64
    return prompt


def test_workflow_using_a_newer_input_and_output_fails_on_the_older_host(exports):
    assert check_api_workflow(NEWER, exports[CURRENT]["nodes"], on(CURRENT)) == []
    problems = check_api_workflow(NEWER, exports[OLDEST]["nodes"], on(OLDEST))
    assert problems == [
        "node 3 (CreateVideo): sets input 'bit_depth', which CreateVideo on ComfyUI 0.3.64 does not have",
        "node 5 (EmptyImage): input 'width' links output 3 of node 2 (GetVideoComponents), which has 3 "
        "output(s) on ComfyUI 0.3.64",
    ]


def test_optional_inputs_and_outputs_a_host_added_do_not_fail(exports):
    prompt = without_newer_features()
    for version in (OLDEST, CURRENT):
        assert check_api_workflow(prompt, exports[version]["nodes"], on(version)) == []
    # The same with an optional input and an output added by hand to the older definitions.
    definitions = copy.deepcopy(exports[OLDEST]["nodes"])
    save = definitions["SaveVideo"]
    save["input"].setdefault("optional", {})["crf"] = ["INT", {"default": 23, "min": 0, "max": 51}]
    save["input_order"].setdefault("optional", []).append("crf")
    save["output"] = ["VIDEO"]
    assert check_api_workflow(prompt, definitions, "ComfyUI next") == []
    # Added as a required input instead, it is a problem: the workflow does not set it.
    save["input"]["required"]["crf"] = save["input"]["optional"].pop("crf")
    save["input_order"]["required"].append(save["input_order"]["optional"].pop())
    assert check_api_workflow(prompt, definitions, "ComfyUI next") == [
        "node 4 (SaveVideo): required input 'crf' is missing on ComfyUI next"]


def test_a_changed_type_or_range_on_a_host_names_node_input_and_version(exports):
    definitions = copy.deepcopy(exports[CURRENT]["nodes"])
    definitions["GetVideoComponents"]["output"][2] = "INT"
    definitions["CreateVideo"]["input"]["optional"]["bit_depth"][1]["max"] = 8
    problems = check_api_workflow(NEWER, definitions, "ComfyUI next")
    assert problems == [
        "node 3 (CreateVideo): input 'fps' takes FLOAT on ComfyUI next, but output 2 of node 2 "
        "(GetVideoComponents) gives INT",
        "node 3 (CreateVideo): input 'bit_depth' on ComfyUI next: 10 is above the maximum 8",
    ]


def test_a_node_type_a_host_lacks_is_named_with_the_version(exports):
    prompt = without_newer_features()
    prompt["7"] = {"class_type": "Preview3DAnimation", "inputs": {}}
    problems = check_api_workflow(prompt, exports[CURRENT]["nodes"], on(CURRENT))
    assert problems == ["node 7 (Preview3DAnimation): no such node type on ComfyUI 0.28.0"]
