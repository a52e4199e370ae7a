"""A small writer of ComfyUI UI-format (litegraph) workflows and their thumbnails.

Used by ``scripts/make_workflows.py``. Node ids, link ids, slot indices and execution order are
derived here, so the generated JSON stays self-consistent. Each node's sockets come from the node's
own ``INPUT_TYPES`` and ``RETURN_TYPES`` (``instantfamily_dev.workflow_api.node_sockets``), read from
the classes of a started ComfyUI host; ``tests/nodes/test_workflows.py`` checks every node of the
committed workflows against each host's definitions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from instantfamily_dev.workflow_api import node_sockets

NODE_WIDTH = 320
NOTE_COLOUR, NOTE_BGCOLOUR = "#432", "#653"


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[float, float]
    widgets: list
    title: str | None = None
    width: float = NODE_WIDTH
    height: float | None = None
    inputs: list = field(default_factory=list)  # socket inputs [(name, type)], as INPUT_TYPES declares them
    outputs: list = field(default_factory=list)  # [(name, type)], as RETURN_NAMES / RETURN_TYPES declare them
    in_links: dict = field(default_factory=dict)  # input name -> link id
    out_links: dict = field(default_factory=dict)  # output slot -> [link ids]

    def __getitem__(self, output):
        """``node["faces"]`` or ``node[0]``: an output of this node, to pass to ``Graph.link``."""
        slot = output if isinstance(output, int) else [n for n, _ in self.outputs].index(output)
        return self, slot

    @property
    def size(self) -> tuple[float, float]:
        if self.height is not None:
            return self.width, self.height
        rows = max(len(self.inputs), len(self.outputs))
        return self.width, 30 + 22 * rows + 26 * len(self.widgets)


class Graph:
    """Nodes, links and groups of one workflow; ``node_classes``: a host's NODE_CLASS_MAPPINGS (the sockets' source)."""

    def __init__(self, node_classes: dict):
        self.node_classes = node_classes
        self.nodes: list[Node] = []
        self.links: list[list] = []  # [id, origin id, origin slot, target id, target slot, type]
        self.groups: list[dict] = []

    def add(self, type_: str, pos, widgets=(), title=None, **size) -> Node:
        inputs, outputs = node_sockets(self.node_classes, type_)
        node = Node(
            len(self.nodes) + 1, type_, tuple(pos), list(widgets), title, **size, inputs=inputs, outputs=outputs
        )
        self.nodes.append(node)
        return node

    def note(self, pos, text: str, width=340, height=160) -> Node:
        return self.add("Note", pos, [text], width=width, height=height)

    def link(self, source, target: Node, input_name: str) -> None:
        origin, slot = source
        inputs = target.inputs
        names = [n for n, _ in inputs]
        if input_name not in names:
            raise KeyError(f"{target.type} has no socket input {input_name!r} (has {names})")
        if input_name in target.in_links:
            raise ValueError(f"{target.type}.{input_name} is linked twice")
        out_type = origin.outputs[slot][1]
        in_type = inputs[names.index(input_name)][1]
        if out_type != in_type:
            raise TypeError(f"{origin.type} output {slot} ({out_type}) -> {target.type}.{input_name} ({in_type})")
        link_id = len(self.links) + 1
        self.links.append([link_id, origin.id, slot, target.id, names.index(input_name), out_type])
        target.in_links[input_name] = link_id
        origin.out_links.setdefault(slot, []).append(link_id)

    def group(self, title: str, nodes: list[Node], colour: str) -> None:
        pad, head = 20, 46
        x0 = min(n.pos[0] for n in nodes) - pad
        y0 = min(n.pos[1] for n in nodes) - head
        x1 = max(n.pos[0] + n.size[0] for n in nodes) + pad
        y1 = max(n.pos[1] + n.size[1] for n in nodes) + pad
        self.groups.append(
            {"title": title, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": colour, "font_size": 24, "flags": {}}
        )

    def execution_order(self) -> dict[int, int]:
        """Node id -> position in a topological order (what the frontend stores as ``order``)."""
        parents = {n.id: {self.links[link - 1][1] for link in n.in_links.values()} for n in self.nodes}
        order, done = {}, set()
        while len(done) < len(self.nodes):
            ready = [n.id for n in self.nodes if n.id not in done and parents[n.id] <= done]
            if not ready:
                raise ValueError("the graph has a cycle")
            for node_id in ready:
                order[node_id] = len(order)
                done.add(node_id)
        return order

    def to_json(self) -> dict:
        order = self.execution_order()
        nodes = []
        for n in self.nodes:
            inputs, outputs = n.inputs, n.outputs
            entry = {
                "id": n.id,
                "type": n.type,
                "pos": list(n.pos),
                "size": list(n.size),
                "flags": {},
                "order": order[n.id],
                "mode": 0,
                "inputs": [{"name": name, "type": t, "link": n.in_links.get(name)} for name, t in inputs],
                "outputs": [
                    {"name": name, "type": t, "links": n.out_links.get(i, []), "slot_index": i}
                    for i, (name, t) in enumerate(outputs)
                ],
                "properties": {"Node name for S&R": n.type} if n.type != "Note" else {"text": ""},
                "widgets_values": n.widgets,
            }
            if n.title:
                entry["title"] = n.title
            if n.type == "Note":
                entry["color"], entry["bgcolor"] = NOTE_COLOUR, NOTE_BGCOLOUR
            nodes.append(entry)
        return {
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": nodes,
            "links": self.links,
            "groups": self.groups,
            "config": {},
            "extra": {"ds": {"scale": 0.7, "offset": [40, 60]}},
            "version": 0.4,
        }


def dumps(workflow: dict) -> str:
    return json.dumps(workflow, indent=1, ensure_ascii=False) + "\n"


# -- thumbnails: an honest picture of the graph (no weights here to render a result) ---------------
KIND_COLOURS = {
    "pack": (46, 139, 122),
    "image": (70, 110, 170),
    "stock": (95, 95, 105),
    "note": (120, 100, 60),
    "optional": (170, 110, 40),
}


def node_kind(type_: str) -> str:
    if type_.startswith("InstantFamily"):
        return "pack"
    if type_ in ("LoadImage", "PreviewImage", "SaveImage"):
        return "image"
    if type_ == "Note":
        return "note"
    if type_ == "DWPreprocessor":
        return "optional"
    return "stock"


def render_thumbnail(workflow: dict, title: str, subtitle: str, size: int = 256):
    """A PIL image: the graph's nodes (coloured by kind) and links, with a title strip."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (size, size), (28, 30, 36))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.rectangle([0, 0, size, 40], fill=(18, 20, 24))
    draw.text((8, 6), title, fill=(235, 235, 235), font=font)
    draw.text((8, 22), subtitle, fill=(160, 200, 190), font=font)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    x0 = min(n["pos"][0] for n in nodes.values())
    y0 = min(n["pos"][1] for n in nodes.values())
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes.values())
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes.values())
    margin, top, legend = 8, 48, 16
    scale = min((size - 2 * margin) / (x1 - x0), (size - top - legend - margin) / (y1 - y0))
    x = margin
    present = {node_kind(n["type"]) for n in nodes.values()}
    for kind, label in (
        ("pack", "InstantFamily"),
        ("image", "image"),
        ("stock", "stock"),
        ("note", "note"),
        ("optional", "aux"),
    ):
        if kind not in present:
            continue
        draw.rectangle([x, size - 13, x + 9, size - 4], fill=KIND_COLOURS[kind])
        draw.text((x + 13, size - 15), label, fill=(200, 200, 200), font=font)
        x += 18 + int(draw.textlength(label, font=font))

    def xy(x, y):
        return margin + (x - x0) * scale, top + (y - y0) * scale

    for _, origin, slot, target, tslot, _ in workflow["links"]:
        a, b = nodes[origin], nodes[target]
        start = xy(a["pos"][0] + a["size"][0], a["pos"][1] + 30 + 22 * slot)
        end = xy(b["pos"][0], b["pos"][1] + 30 + 22 * tslot)
        draw.line([start, end], fill=(150, 150, 160), width=1)
    for n in nodes.values():
        left, upper = xy(*n["pos"])
        right, lower = xy(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        colour = KIND_COLOURS[node_kind(n["type"])]
        draw.rounded_rectangle([left, upper, right, lower], radius=3, fill=colour, outline=(220, 220, 220))
    return image
