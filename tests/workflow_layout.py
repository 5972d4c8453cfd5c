"""Is a UI-format workflow readable on the canvas? Geometry as ComfyUI's frontend draws it.

A node covers its body (`pos`, `size`) plus the title bar above `pos`. A wire is the
spline the frontend draws (links render mode "spline"): from the output slot on the
source's right edge to the input slot on the target's left edge, with both control
points pulled a quarter of the distance horizontally. A readable graph has every wire
running left to right and passing under no other node, no two nodes overlapping, and
no two groups overlapping.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT
SLOT_HEIGHT = 20  # LiteGraph.NODE_SLOT_HEIGHT
FIRST_SLOT_Y = 14  # centre of slot 0 below `pos`, as getConnectionPos reports it
OUTPUT_INSET = 9  # an output slot's centre sits this far inside the right edge
INPUT_INSET = 10
SAMPLES = 64


def node_box(node: Mapping) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the node with its title bar."""
    x, y = node["pos"]
    width, height = node["size"]
    return x, y - TITLE_HEIGHT, x + width, y + height


def _wire_points(source: Mapping, out_slot: int, target: Mapping, in_slot: int) -> list[tuple[float, float]]:
    sx = source["pos"][0] + source["size"][0] - OUTPUT_INSET
    sy = source["pos"][1] + FIRST_SLOT_Y + SLOT_HEIGHT * out_slot
    tx = target["pos"][0] + INPUT_INSET
    ty = target["pos"][1] + FIRST_SLOT_Y + SLOT_HEIGHT * in_slot
    pull = math.hypot(tx - sx, ty - sy) * 0.25
    controls = ((sx, sy), (sx + pull, sy), (tx - pull, ty), (tx, ty))
    points = []
    for step in range(SAMPLES + 1):
        t = step / SAMPLES
        weights = ((1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3)
        points.append((sum(w * c[0] for w, c in zip(weights, controls, strict=True)),
                       sum(w * c[1] for w, c in zip(weights, controls, strict=True))))
    return points


def _inside(point: tuple[float, float], box: tuple[float, float, float, float]) -> bool:
    return box[0] < point[0] < box[2] and box[1] < point[1] < box[3]


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _name(node: Mapping) -> str:
    return f"node {node['id']} ({node.get('title') or node['type']})"


def layout_problems(workflow: Mapping) -> list[str]:
    """Every wire that runs backwards or under a node, and every overlap of nodes or groups."""
    nodes = {int(n["id"]): n for n in workflow["nodes"]}
    boxes = {node_id: node_box(node) for node_id, node in nodes.items()}
    problems = []
    for _, src, src_slot, dst, dst_slot, _type in workflow["links"]:
        source, target = nodes[int(src)], nodes[int(dst)]
        if boxes[int(src)][2] >= boxes[int(dst)][0]:
            problems.append(f"wire {_name(source)} -> {_name(target)} does not run left to right")
            continue
        points = _wire_points(source, int(src_slot), target, int(dst_slot))
        for node_id, box in boxes.items():
            if node_id not in (int(src), int(dst)) and any(_inside(p, box) for p in points):
                problems.append(f"wire {_name(source)} -> {_name(target)} passes under {_name(nodes[node_id])}")
    ids = sorted(boxes)
    for i, first in enumerate(ids):
        for second in ids[i + 1:]:
            if _overlap(boxes[first], boxes[second]):
                problems.append(f"{_name(nodes[first])} overlaps {_name(nodes[second])}")
    groups = workflow.get("groups") or []
    for i, first in enumerate(groups):
        for second in groups[i + 1:]:
            a, b = first["bounding"], second["bounding"]
            if _overlap((a[0], a[1], a[0] + a[2], a[1] + a[3]), (b[0], b[1], b[0] + b[2], b[1] + b[3])):
                problems.append(f"group {first['title']!r} overlaps group {second['title']!r}")
    return problems
