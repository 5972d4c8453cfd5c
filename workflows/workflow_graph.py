"""The UI-format (0.4) graph the workflow builder writes, and the grid it lays nodes out on.

Kept apart from `build_workflows.py`, which describes the shipped workflows themselves: this
module knows how the frontend stores a node, a link, a group and the canvas view, and how
stages are placed in columns so that wires cross only the gaps between them.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

# Layout: stages run left to right in columns; each model loader sits in the lane above the
# main row, one column left of the node it feeds, so its wire crosses only the gap between.
WIDTH, GAP = 320, 100
MODEL_LANE, MAIN_ROW = 0.0, 280.0
NODE_TITLE, GROUP_TITLE, GROUP_PAD = 30, 34, 12
VIEW_ORIGIN, VIEW_SIZE = (80, 110), (1440, 740)  # screen pixels, in a 1600x900 window


class Graph:
    """A UI-format (0.4) workflow under construction."""

    def __init__(self, definitions: dict[str, dict]):
        self.definitions = definitions
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.groups: list[dict] = []

    def node(self, node_type: str, pos: tuple[float, float], values: dict[str, Any] | None = None,
             title: str | None = None, models: list[dict] | None = None, width: float = WIDTH,
             color: str | None = None, height: float | None = None) -> dict:
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
        height = height or 26 + 22 * max(len(inputs), len(outputs)) + 24 * len(widgets) + (4 if sockets else 0)
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

    def group(self, title: str, nodes: list[dict], color: str) -> None:
        """A titled frame around `nodes` (their title bars included), as the frontend draws groups."""
        left = min(n["pos"][0] for n in nodes) - GROUP_PAD
        top = min(n["pos"][1] for n in nodes) - NODE_TITLE - GROUP_TITLE - GROUP_PAD
        right = max(n["pos"][0] + n["size"][0] for n in nodes) + GROUP_PAD
        bottom = max(n["pos"][1] + n["size"][1] for n in nodes) + GROUP_PAD
        self.groups.append({"id": len(self.groups) + 1, "title": title,
                            "bounding": [left, top, right - left, bottom - top], "color": color,
                            "font_size": 24, "flags": {}})

    def to_ui(self, name: str) -> dict:
        """The workflow as the current frontend saves one: a real id, then its schema's fields in order."""
        self._order()
        return {"id": workflow_id(name), "revision": 0, "last_node_id": len(self.nodes),
                "last_link_id": len(self.links), "nodes": self.nodes, "links": self.links, "groups": self.groups,
                "config": {}, "extra": {"ds": self._view()}, "version": 0.4}

    def _view(self) -> dict:
        """The canvas view (`ds`) that shows the whole graph in a 1600x900 window below the toolbars."""
        boxes = [(n["pos"][0], n["pos"][1] - NODE_TITLE, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
                 for n in self.nodes]
        boxes += [(b[0], b[1], b[0] + b[2], b[1] + b[3]) for b in (g["bounding"] for g in self.groups)]
        left, top = min(b[0] for b in boxes), min(b[1] for b in boxes)
        right, bottom = max(b[2] for b in boxes), max(b[3] for b in boxes)
        (view_left, view_top), (view_width, view_height) = VIEW_ORIGIN, VIEW_SIZE
        scale = min(1.0, view_width / (right - left), view_height / (bottom - top))
        offset = [view_left / scale - left + (view_width / scale - (right - left)) / 2,
                  view_top / scale - top + (view_height / scale - (bottom - top)) / 2]
        return {"scale": round(scale, 4), "offset": [round(offset[0], 1), round(offset[1], 1)]}

    def _order(self) -> None:
        """`order`: a topological execution order, as the frontend stores it."""
        incoming = {n["id"]: {link[1] for link in self.links if link[3] == n["id"]} for n in self.nodes}
        done: list[int] = []
        while len(done) < len(self.nodes):
            ready = sorted(i for i, deps in incoming.items() if i not in done and deps <= set(done))
            done.append(ready[0])
        for node in self.nodes:
            node["order"] = done.index(node["id"])


def workflow_id(name: str) -> str:
    """A UUID (version 4 layout, as the frontend makes them) that stays the same for the same title."""
    return str(uuid.UUID(bytes=hashlib.sha256(name.encode("utf-8")).digest()[:16], version=4))


def column(index: int, widths: tuple[float, ...] = ()) -> float:
    """x of column `index`; `widths` gives the widths of the columns before it when they differ."""
    return sum(widths[i] if i < len(widths) else WIDTH for i in range(index)) + GAP * index


def below(node: dict, gap: float = 60) -> float:
    """y just below `node`, leaving room for the next node's title bar."""
    return node["pos"][1] + node["size"][1] + NODE_TITLE + gap
