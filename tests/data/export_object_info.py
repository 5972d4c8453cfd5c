"""Export a running ComfyUI's core node definitions (`GET /object_info`) for the offline checks.

The workflow checks run on CI without a host; they read the node definitions of ComfyUI's
core nodes from exports of real servers kept here. An export keeps the names of all core
nodes and the full definitions of those our workflows use, so it stays small.
`comfyui_object_info.json` is the oldest supported ComfyUI (the one the workflows are built
against); `comfyui_object_info_<version>.json` are newer hosts the workflows must also fit.

    python tests/data/export_object_info.py --server http://127.0.0.1:8188
    python tests/data/export_object_info.py --server http://127.0.0.1:8189 \
        --output tests/data/comfyui_object_info_0.28.0.json

Boot the host without model files (as `../shared/comfy-host/` describes): file lists are
then empty, and the checks require a download hint for every model a workflow names.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPORT = HERE / "comfyui_object_info.json"
WORKFLOWS = HERE.parents[1] / "workflows"
# Core nodes the pack works with (VIDEO, IMAGE, UPSCALE_MODEL) and the checks' own tests use.
ALWAYS_KEEP = {"CreateVideo", "EmptyImage", "GetVideoComponents", "ImageUpscaleWithModel", "LoadVideo",
               "PreviewImage", "SaveImage", "SaveVideo", "UpscaleModelLoader"}


def core_types_used(workflows: Path) -> set[str]:
    """Node types in the shipped workflows that are not ours (UI and API files, in any subfolder)."""
    used: set[str] = set()
    for path in workflows.rglob("*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("nodes"), list):
            used.update(node["type"] for node in data["nodes"])
        elif isinstance(data, dict):
            used.update(node["class_type"] for node in data.values() if isinstance(node, dict) and "class_type" in node)
    frontend_only = {"Note", "MarkdownNote"}
    return {name for name in used if not name.startswith("vsrkit") and name not in frontend_only}


def trim(object_info: dict, keep: set[str], version: str) -> dict:
    core = {name: spec for name, spec in object_info.items()
            if not str(spec.get("python_module", "")).startswith("custom_nodes")}
    return {
        "comfyui_version": version,
        "source": "GET /object_info of a real ComfyUI host (--cpu --disable-api-nodes, no model files)",
        "node_names": sorted(core),
        "nodes": {name: core[name] for name in sorted(keep) if name in core},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8188")
    parser.add_argument("--output", type=Path, default=EXPORT)
    args = parser.parse_args(argv)
    with urllib.request.urlopen(f"{args.server}/object_info", timeout=60) as response:
        object_info = json.load(response)
    with urllib.request.urlopen(f"{args.server}/system_stats", timeout=60) as response:
        version = json.load(response)["system"].get("comfyui_version", "unknown")
    keep = core_types_used(WORKFLOWS) | ALWAYS_KEEP
    missing = sorted(name for name in keep if name not in object_info)
    if missing:
        print(f"the server has no node types {missing}", file=sys.stderr)
        return 1
    args.output.write_text(json.dumps(trim(object_info, keep, version), indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.output}: {len(keep)} core node definitions, ComfyUI {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
