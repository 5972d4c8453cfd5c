"""ComfyUI workflow files: UI format (0.4) to API format, and checks that a file will load.

Node definitions come in the shape of ComfyUI's `GET /object_info` (one dict per node
class: "input" with "required"/"optional", "output", "output_name", ...). For a running
host the client fetches them; offline, `definitions_from_mappings` builds them from a
pack's NODE_CLASS_MAPPINGS and a checked-in export supplies the core nodes. Nothing here
imports ComfyUI.

Widget values in a UI file follow ComfyUI's frontend: one value per widget input, in
the order of the node definition (required, then optional); an INT named seed or
noise_seed (or any INT/COMBO with `control_after_generate`) is followed by its
"control after generate" value; a combo with `image_upload`/`video_upload` adds an
upload button whose value is stored last.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
VIRTUAL_NODE_TYPES = frozenset({"Note", "MarkdownNote"})
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")
MODEL_FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx", ".param")


class WorkflowError(ValueError):
    """A workflow file cannot be converted; the message names the node and input."""


@dataclasses.dataclass(frozen=True)
class WidgetSlot:
    """One entry of a node's `widgets_values`: an input's value, or a frontend-only control."""

    name: str
    role: str  # "value", "control" (control_after_generate) or "upload" (upload button)
    spec: tuple | list | None = None


def input_kind(spec: list | tuple) -> str:
    """"COMBO" for a list of choices (old or new style), otherwise the declared type name."""
    declared = spec[0]
    if isinstance(declared, (list, tuple)):
        return "COMBO"
    return str(declared)


def input_options(spec: list | tuple) -> dict:
    return dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], Mapping) else {}


def combo_choices(spec: list | tuple) -> list:
    declared = spec[0]
    if isinstance(declared, (list, tuple)):
        return list(declared)
    return list(input_options(spec).get("options", []))


def is_widget(spec: list | tuple) -> bool:
    return input_kind(spec) in WIDGET_TYPES and not input_options(spec).get("forceInput", False)


def ordered_inputs(definition: Mapping) -> list[tuple[str, list | tuple, bool]]:
    """(name, spec, required) for every visible input, required first, in definition order."""
    inputs = definition.get("input", {})
    order = definition.get("input_order", {})
    result = []
    for section in ("required", "optional"):
        specs = inputs.get(section, {}) or {}
        names = order.get(section) or list(specs)
        for name in names:
            if name in specs:
                result.append((name, specs[name], section == "required"))
    return result


def widget_slots(definition: Mapping) -> list[WidgetSlot]:
    """The entries of `widgets_values` for a node of this definition, in order.

    The upload button of an upload combo comes last, after the optional inputs (as ComfyUI's
    frontend 1.27 serialises it: it is not in the server's input_order).
    """
    slots: list[WidgetSlot] = []
    has_upload = False
    for name, spec, required in ordered_inputs(definition):
        if not is_widget(spec):
            continue
        options = input_options(spec)
        kind = input_kind(spec)
        slots.append(WidgetSlot(name, "value", spec))
        if kind == "INT":
            control = options.get("control_after_generate", name in ("seed", "noise_seed"))
        else:
            control = kind == "COMBO" and options.get("control_after_generate", False)
        if control:
            slots.append(WidgetSlot(name, "control", spec))
        has_upload = has_upload or (required and kind == "COMBO" and any(options.get(k) for k in UPLOAD_OPTIONS))
    if has_upload:
        slots.append(WidgetSlot("upload", "upload"))
    return slots


def definitions_from_mappings(mappings: Mapping[str, type],
                              display_names: Mapping[str, str] | None = None) -> dict[str, dict]:
    """`/object_info`-shaped definitions for a pack's node classes (as ComfyUI builds them)."""
    display_names = display_names or {}
    result = {}
    for name, cls in mappings.items():
        spec = cls.INPUT_TYPES()
        inputs = {section: {k: _jsonable(v) for k, v in spec.get(section, {}).items()}
                  for section in ("required", "optional", "hidden") if section in spec}
        outputs = [_jsonable(t) for t in cls.RETURN_TYPES]
        result[name] = {
            "input": inputs,
            "input_order": {section: list(values) for section, values in inputs.items()},
            "output": outputs,
            "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(outputs))),
            "output_name": list(getattr(cls, "RETURN_NAMES", None) or [str(t) for t in cls.RETURN_TYPES]),
            "name": name,
            "display_name": display_names.get(name, name),
            "description": getattr(cls, "DESCRIPTION", ""),
            "category": getattr(cls, "CATEGORY", "sd"),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        }
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def is_api_format(workflow: Any) -> bool:
    return (isinstance(workflow, dict) and bool(workflow)
            and all(isinstance(v, dict) and "class_type" in v for v in workflow.values()))


def is_ui_format(workflow: Any) -> bool:
    return isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list) and "links" in workflow


def _links_by_id(workflow: Mapping) -> dict[int, list]:
    return {int(link[0]): link for link in workflow.get("links", [])}


def ui_to_api(workflow: Mapping, definitions: Mapping[str, Mapping]) -> dict[str, dict]:
    """The API-format prompt that ComfyUI's frontend queues for this UI-format workflow.

    Widget values become inputs (frontend-only controls are dropped), connected inputs
    become [source node id, output slot], notes are left out, and each node keeps its
    title under `_meta`.
    """
    links = _links_by_id(workflow)
    prompt: dict[str, dict] = {}
    nodes = sorted(workflow.get("nodes", []), key=lambda n: int(n["id"]))
    for node in nodes:
        node_type = node["type"]
        if node_type in VIRTUAL_NODE_TYPES:
            continue
        if node.get("mode", 0) != 0:
            raise WorkflowError(f"node {node['id']} ({node_type}) is muted or bypassed; "
                                "shipped workflows keep every node active")
        definition = definitions.get(node_type)
        if definition is None:
            raise WorkflowError(f"node {node['id']} has unknown type {node_type!r}")
        slots = widget_slots(definition)
        values = list(node.get("widgets_values") or [])
        if len(values) != len(slots):
            raise WorkflowError(f"node {node['id']} ({node_type}) has {len(values)} widget values, "
                                f"its inputs need {len(slots)} ({', '.join(s.name for s in slots)})")
        widget_values = {slot.name: value for slot, value in zip(slots, values, strict=True)
                         if slot.role == "value"}
        connected = {}
        for socket in node.get("inputs") or []:
            link_id = socket.get("link")
            if link_id is None:
                continue
            link = links.get(int(link_id))
            if link is None:
                raise WorkflowError(f"node {node['id']} input {socket.get('name')!r} uses missing link {link_id}")
            connected[socket["name"]] = [str(link[1]), int(link[2])]
        inputs: dict[str, Any] = {}
        for name, _spec, _required in ordered_inputs(definition):
            if name in connected:
                inputs[name] = connected[name]
            elif name in widget_values:
                inputs[name] = widget_values[name]
        title = node.get("title") or definition.get("display_name") or node_type
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node_type, "_meta": {"title": title}}
    return prompt


def types_compatible(output_type: str, input_type: str) -> bool:
    """ComfyUI's rule: equal names, a wildcard, or a shared member of comma-separated lists."""
    if output_type == "*" or input_type == "*":
        return True
    outputs = {t.strip() for t in str(output_type).split(",")}
    inputs = {t.strip() for t in str(input_type).split(",")}
    return bool(outputs & inputs)


def check_value(spec: list | tuple, value: Any, model_names: set[str]) -> str | None:
    """Why `value` does not fit the widget input `spec`, or None when it does."""
    kind = input_kind(spec)
    options = input_options(spec)
    if kind == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{value!r} is not an integer"
        return _range_problem(value, options)
    if kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{value!r} is not a number"
        return _range_problem(value, options)
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not true/false"
    if kind == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a string"
    if kind == "COMBO":
        if isinstance(value, str) and value.lower().endswith(MODEL_FILE_SUFFIXES):
            # A model file: the host lists only what it has downloaded, so the file
            # must come with a download hint instead of being in the host's list.
            if value not in model_names:
                return f"model file {value!r} has no download hint in properties.models"
            return None
        choices = [c for c in combo_choices(spec) if c != ""]
        if choices and not any(options.get(key) for key in UPLOAD_OPTIONS):
            return None if value in choices else f"{value!r} is not one of {choices}"
        # An input-file list (upload combo) or a host file list: any file name will do.
        if not isinstance(value, str) or not value:
            return f"{value!r} is not a file name"
        return None
    return None


def _range_problem(value: float, options: Mapping) -> str | None:
    low, high = options.get("min"), options.get("max")
    if low is not None and value < low:
        return f"{value} is below the minimum {low}"
    if high is not None and value > high:
        return f"{value} is above the maximum {high}"
    return None


# What ComfyUI's frontend writes at the top of a saved workflow, and the types its schema wants.
FRONTEND_FIELDS = {"id": str, "revision": int, "last_node_id": int, "last_link_id": int, "nodes": list,
                   "links": list, "groups": list, "config": dict, "extra": dict, "version": float}
FRONTEND_NODE_FIELDS = {"flags": dict, "order": int, "mode": int, "properties": dict}
UUID_FORM = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def check_frontend_fields(workflow: Mapping) -> list[str]:
    """The fields the current frontend (1.45) writes and its workflow schema checks, top level and per node.

    A top-level null (an `"id": null`) is the worst: the frontend's test for API-format
    files reads every top-level value and fails on it, so a dropped or opened file shows
    "Unable to find workflow" and nothing loads.
    """
    problems = [f"top-level {key!r} is null: the frontend then refuses the file (\"Unable to find workflow\")"
                for key, value in workflow.items() if value is None]
    for key, kind in FRONTEND_FIELDS.items():
        value = workflow.get(key)
        if key not in workflow:
            problems.append(f"{key!r} is missing; the frontend writes it ({kind.__name__})")
        elif value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            problems.append(f"{key!r} is {type(value).__name__}, the frontend wants {kind.__name__}")
    if isinstance(workflow.get("id"), str) and not UUID_FORM.match(workflow["id"]):
        problems.append(f"id {workflow['id']!r} is not a lower-case UUID, which the frontend's schema requires")
    ds = (workflow.get("extra") or {}).get("ds") if isinstance(workflow.get("extra"), dict) else None
    if ds is not None and not (isinstance(ds.get("scale"), (int, float)) and isinstance(ds.get("offset"), list)):
        problems.append("extra.ds needs a scale and an [x, y] offset")
    for node in workflow.get("nodes") or []:
        for key, kind in FRONTEND_NODE_FIELDS.items():
            if not isinstance(node.get(key), kind) or isinstance(node.get(key), bool):
                problems.append(f"node {node.get('id')} ({node.get('type')}): {key!r} must be {kind.__name__}")
    for group in workflow.get("groups") or []:
        bounding = group.get("bounding")
        if not isinstance(group.get("title"), str) or not (isinstance(bounding, list) and len(bounding) == 4):
            problems.append(f"group {group.get('id')}: needs a title and a 4-number bounding")
    return problems


def check_ui_workflow(workflow: Any, definitions: Mapping[str, Mapping]) -> list[str]:
    """Every problem that would stop this UI-format workflow from loading and queueing as published."""
    if not is_ui_format(workflow):
        return ["not a UI-format workflow (needs 'nodes' and 'links')"]
    problems = check_frontend_fields(workflow)
    if workflow.get("version") != 0.4:
        problems.append(f"version is {workflow.get('version')!r}, expected 0.4")
    nodes = {}
    for node in workflow["nodes"]:
        node_id = int(node["id"])
        if node_id in nodes:
            problems.append(f"node id {node_id} is used twice")
        nodes[node_id] = node
    links = {}
    for link in workflow["links"]:
        if not isinstance(link, list) or len(link) != 6:
            problems.append(f"link {link!r} is not [id, from_node, from_slot, to_node, to_slot, type]")
            continue
        if int(link[0]) in links:
            problems.append(f"link id {link[0]} is used twice")
        links[int(link[0])] = link
    if nodes and int(workflow.get("last_node_id", -1)) < max(nodes):
        problems.append(f"last_node_id {workflow.get('last_node_id')} is below the highest node id {max(nodes)}")
    if links and int(workflow.get("last_link_id", -1)) < max(links):
        problems.append(f"last_link_id {workflow.get('last_link_id')} is below the highest link id {max(links)}")

    has_output = False
    for node_id, node in nodes.items():
        where = f"node {node_id} ({node.get('type')})"
        node_type = node.get("type")
        for key in ("pos", "size"):
            if not (isinstance(node.get(key), list) and len(node[key]) == 2):
                problems.append(f"{where}: {key} must be [x, y]")
        if node_type in VIRTUAL_NODE_TYPES:
            continue
        definition = definitions.get(node_type)
        if definition is None:
            problems.append(f"{where}: no such node type (neither core nor vsrkit)")
            continue
        if node.get("mode", 0) != 0:
            problems.append(f"{where}: muted or bypassed")
        has_output = has_output or bool(definition.get("output_node"))
        problems.extend(_check_sockets(where, node, definition, links))
        problems.extend(_check_widgets(where, node, definition))

    for link_id, (_, src, src_slot, dst, dst_slot, link_type) in links.items():
        where = f"link {link_id}"
        if src not in nodes or dst not in nodes:
            problems.append(f"{where}: joins a missing node ({src} -> {dst})")
            continue
        src_def, dst_def = definitions.get(nodes[src]["type"]), definitions.get(nodes[dst]["type"])
        if src_def is None or dst_def is None:
            continue
        outputs = src_def.get("output", [])
        if not 0 <= src_slot < len(outputs):
            problems.append(f"{where}: node {src} has no output slot {src_slot}")
            continue
        out_type = input_kind([outputs[src_slot]])
        node_outputs = nodes[src].get("outputs") or []
        if src_slot >= len(node_outputs) or link_id not in (node_outputs[src_slot].get("links") or []):
            problems.append(f"{where}: not listed on node {src}'s output {src_slot}")
        dst_inputs = nodes[dst].get("inputs") or []
        if not 0 <= dst_slot < len(dst_inputs) or dst_inputs[dst_slot].get("link") != link_id:
            problems.append(f"{where}: node {dst} input slot {dst_slot} does not hold it")
            continue
        name = dst_inputs[dst_slot].get("name")
        spec = dict((n, s) for n, s, _ in ordered_inputs(dst_def)).get(name)
        if spec is None:
            continue
        in_type = input_kind(spec)
        if not types_compatible(out_type, in_type) or not types_compatible(out_type, str(link_type)):
            problems.append(f"{where}: {nodes[src]['type']} output {out_type} cannot feed "
                            f"{nodes[dst]['type']}.{name} ({in_type}); link says {link_type}")
    if not has_output:
        problems.append("no output node: queueing it would do nothing")
    return problems


def _check_sockets(where: str, node: Mapping, definition: Mapping, links: Mapping[int, list]) -> list[str]:
    problems = []
    specs = {name: (spec, required) for name, spec, required in ordered_inputs(definition)}
    present = {}
    for socket in node.get("inputs") or []:
        name = socket.get("name")
        if name not in specs:
            problems.append(f"{where}: input {name!r} is not an input of {node['type']}")
            continue
        spec, _ = specs[name]
        if socket.get("type") != input_kind(spec) and not (input_kind(spec) == "COMBO"):
            problems.append(f"{where}: input {name!r} is typed {socket.get('type')}, the node says {input_kind(spec)}")
        if socket.get("link") is not None and int(socket["link"]) not in links:
            problems.append(f"{where}: input {name!r} uses missing link {socket['link']}")
        present[name] = socket
    for name, (spec, required) in specs.items():
        if required and not is_widget(spec) and (name not in present or present[name].get("link") is None):
            problems.append(f"{where}: required input {name!r} ({input_kind(spec)}) is not connected")
    expected_outputs = definition.get("output", [])
    for slot, output in enumerate(node.get("outputs") or []):
        if slot >= len(expected_outputs):
            problems.append(f"{where}: output slot {slot} does not exist")
        elif output.get("type") != input_kind([expected_outputs[slot]]):
            problems.append(f"{where}: output {slot} is typed {output.get('type')}, the node says "
                            f"{input_kind([expected_outputs[slot]])}")
    return problems


def _check_widgets(where: str, node: Mapping, definition: Mapping) -> list[str]:
    problems = []
    slots = widget_slots(definition)
    values = node.get("widgets_values")
    if values is None:
        values = []
    if not isinstance(values, list):
        return [f"{where}: widgets_values must be a list"]
    if len(values) != len(slots):
        return [f"{where}: {len(values)} widget values for {len(slots)} widgets "
                f"({', '.join(s.name if s.role == 'value' else s.name + ':' + s.role for s in slots)})"]
    models = (node.get("properties") or {}).get("models") or []
    model_names = set()
    for model in models:
        missing = [key for key in ("name", "url", "directory") if not model.get(key)]
        if missing:
            problems.append(f"{where}: download hint {model} lacks {', '.join(missing)}")
            continue
        if not str(model["url"]).startswith("https://"):
            problems.append(f"{where}: download hint for {model['name']} is not an https URL")
        model_names.add(model["name"])
    for slot, value in zip(slots, values, strict=True):
        if slot.role == "control":
            if value not in CONTROL_VALUES:
                problems.append(f"{where}: {slot.name} control {value!r} is not one of {CONTROL_VALUES}")
        elif slot.role == "upload":
            if not isinstance(value, str):
                problems.append(f"{where}: upload widget value {value!r} is not a string")
        else:
            problem = check_value(slot.spec, value, model_names)
            if problem:
                problems.append(f"{where}: {slot.name}: {problem}")
    return problems


def check_api_workflow(prompt: Any, definitions: Mapping[str, Mapping], host: str = "") -> list[str]:
    """Problems ComfyUI's prompt validation would report for an API-format prompt (offline).

    It checks only what the prompt relies on (the inputs it sets, the outputs it links, the
    inputs a node requires), so it also tells whether a workflow fits another ComfyUI version: a
    host that added an optional input or an output passes. `host` ("ComfyUI 0.3.64") names whose
    definitions these are in every message.
    """
    if not is_api_format(prompt):
        return ["not an API-format prompt ({node_id: {class_type, inputs}})"]
    on = f" on {host}" if host else ""
    problems = []
    for node_id, node in prompt.items():
        class_type = node["class_type"]
        where = f"node {node_id} ({class_type})"
        definition = definitions.get(class_type)
        if definition is None:
            problems.append(f"{where}: no such node type{on}")
            continue
        specs = {name: (spec, required) for name, spec, required in ordered_inputs(definition)}
        for name, value in node.get("inputs", {}).items():
            if name not in specs:
                problems.append(f"{where}: sets input {name!r}, which {class_type}{on} does not have")
                continue
            spec, _ = specs[name]
            kind = input_kind(spec)
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                source = prompt.get(value[0])
                if source is None:
                    problems.append(f"{where}: input {name!r} comes from missing node {value[0]}")
                    continue
                source_def = definitions.get(source["class_type"])
                if source_def is None:
                    continue
                outputs = source_def.get("output", [])
                link = f"output {value[1]} of node {value[0]} ({source['class_type']})"
                if not isinstance(value[1], int) or not 0 <= value[1] < len(outputs):
                    problems.append(f"{where}: input {name!r} links {link}, which has {len(outputs)} "
                                    f"output(s){on}")
                elif not types_compatible(input_kind([outputs[value[1]]]), kind):
                    problems.append(f"{where}: input {name!r} takes {kind}{on}, but {link} gives "
                                    f"{input_kind([outputs[value[1]]])}")
            elif is_widget(spec):
                problem = check_value(spec, value, model_names={value} if isinstance(value, str) else set())
                if problem:
                    problems.append(f"{where}: input {name!r}{on}: {problem}")
            else:
                problems.append(f"{where}: input {name!r} ({kind}{on}) must be connected")
        for name, (_spec, required) in specs.items():
            if required and name not in node.get("inputs", {}):
                problems.append(f"{where}: required input {name!r} is missing{on}")
    return problems
