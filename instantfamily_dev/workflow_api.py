"""ComfyUI UI-format (litegraph) workflows -> API-format prompts, as the frontend's graphToPrompt does.

Node definitions come either from a host in this process (``definitions_from_classes``) or from a
server's ``/object_info`` (``definitions_from_object_info``); both give ``type -> {"required": ...,
"optional": ...}`` input dicts. The UI conventions handled (both the 2024 frontend and 1.x):

- ``widgets_values`` holds widget inputs by position, in INPUT_TYPES order (required, then optional);
- an INT named ``seed`` / ``noise_seed``, or with ``control_after_generate`` set, is followed by its
  "control after generate" value (fixed / increment / decrement / randomize), never sent to the server;
- a COMBO with ``image_upload`` gets an "upload" widget (value ``"image"``) after the required inputs;
- a widget converted to an input and linked: the link wins over the stored value;
- frontend-only nodes (Note, MarkdownNote, Reroute, PrimitiveNode) and muted nodes are not sent;
  links through a Reroute are followed to their source.
"""

from __future__ import annotations

from dataclasses import dataclass

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
SEED_NAMES = ("seed", "noise_seed")
UI_ONLY_TYPES = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")
MUTED, BYPASSED = 2, 4


@dataclass(frozen=True)
class Widget:
    """One entry of ``widgets_values``: an input widget, or a UI-only companion (kind CONTROL / UPLOAD)."""

    name: str
    kind: str  # INT FLOAT STRING BOOLEAN COMBO | CONTROL UPLOAD (UI only)
    options: tuple = ()  # COMBO choices
    config: tuple = ()  # the input's option dict as sorted items

    @property
    def sent(self) -> bool:
        return self.kind not in ("CONTROL", "UPLOAD")

    def option(self, key, default=None):
        return dict(self.config).get(key, default)


def input_kind(spec) -> str:
    """'COMBO', a widget type, or 'SOCKET' for an input that is a link."""
    type_ = spec[0]
    config = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(type_, (list, tuple)) or type_ == "COMBO":
        return "COMBO"
    if type_ in WIDGET_TYPES and not config.get("forceInput"):
        return type_
    return "SOCKET"


def _combo_options(spec) -> tuple:
    if isinstance(spec[0], (list, tuple)):
        return tuple(spec[0])
    return tuple((spec[1] if len(spec) > 1 else {}).get("options", ()))


def widgets_of(input_types: dict) -> list[Widget]:
    """The node's ``widgets_values`` layout, in order."""
    out = []
    upload = False
    for section in ("required", "optional"):
        for name, spec in (input_types.get(section) or {}).items():
            kind = input_kind(spec)
            if kind == "SOCKET":
                continue
            config = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            items = tuple(sorted((k, v) for k, v in config.items() if isinstance(v, (int, float, str, bool))))
            out.append(Widget(name, kind, _combo_options(spec) if kind == "COMBO" else (), items))
            if (kind == "INT" and name in SEED_NAMES) or config.get("control_after_generate"):
                out.append(Widget(f"{name}:control_after_generate", "CONTROL", CONTROL_VALUES))
            if section == "required" and config.get("image_upload"):
                upload = True
        if section == "required" and upload:
            out.append(Widget("upload", "UPLOAD", ("image",)))
    return out


def sockets_of(input_types: dict) -> list[tuple[str, str]]:
    """(name, type) of the link inputs, in the order the frontend creates them."""
    return [
        (name, spec[0])
        for section in ("required", "optional")
        for name, spec in (input_types.get(section) or {}).items()
        if input_kind(spec) == "SOCKET"
    ]


def definitions_from_classes(node_class_mappings: dict, types) -> dict:
    """type -> INPUT_TYPES() for the given node types, from classes loaded in this process."""
    return {t: node_class_mappings[t].INPUT_TYPES() for t in types if t in node_class_mappings}


def definitions_from_object_info(object_info: dict) -> dict:
    """type -> {"required": ..., "optional": ...} from a server's ``/object_info``."""
    return {t: info.get("input", {}) for t, info in object_info.items()}


def widget_value_errors(widget: Widget, value, free_combos=()) -> list[str]:
    """Why ``value`` cannot be this widget's value (empty when it can)."""
    where = f"widget {widget.name!r} ({widget.kind})"
    if widget.kind in ("CONTROL", "UPLOAD"):
        return [] if value in widget.options else [f"{where}: {value!r} is not one of {list(widget.options)}"]
    if widget.kind == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"{where}: {value!r} is not an int"]
    elif widget.kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return [f"{where}: {value!r} is not a number"]
    elif widget.kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: {value!r} is not a string"]
    elif widget.kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: {value!r} is not a boolean"]
    elif widget.kind == "COMBO":
        if not isinstance(value, str):
            return [f"{where}: {value!r} is not a string"]
        if widget.name not in free_combos and value not in widget.options:
            return [f"{where}: {value!r} is not one of {list(widget.options)[:8]}"]
        return []
    low, high = widget.option("min"), widget.option("max")
    if low is not None and value < low or high is not None and value > high:
        return [f"{where}: {value!r} is outside [{low}, {high}]"]
    return []


class WorkflowError(ValueError):
    pass


def _is_vector(value, n=2) -> bool:
    return isinstance(value, list) and len(value) == n and all(isinstance(v, (int, float)) for v in value)


def schema_errors(workflow: dict) -> list[str]:
    """Where ``workflow`` departs from the frontend's schema of a version-0.4 UI workflow (zComfyWorkflow)."""
    errors = []
    for key, kind in (
        ("last_node_id", int),
        ("last_link_id", int),
        ("nodes", list),
        ("links", list),
        ("version", (int, float)),
    ):
        if not isinstance(workflow.get(key), kind):
            errors.append(f"workflow: {key!r} missing or not {kind}")
    for node in workflow.get("nodes", []):
        where = f"node {node.get('id')}"
        for key, kind in (
            ("id", int),
            ("type", str),
            ("flags", dict),
            ("order", int),
            ("mode", int),
            ("properties", dict),
        ):
            if not isinstance(node.get(key), kind):
                errors.append(f"{where}: {key!r} missing or not {kind}")
        if not (_is_vector(node.get("pos")) and _is_vector(node.get("size"))):
            errors.append(f"{where}: pos and size must be [x, y]")
        for slot in node.get("inputs", []):
            if not isinstance(slot.get("name"), str) or not isinstance(slot.get("link"), (int, type(None))):
                errors.append(f"{where}: bad input slot {slot}")
        for slot in node.get("outputs", []):
            if not isinstance(slot.get("name"), str) or not isinstance(slot.get("links"), (list, type(None))):
                errors.append(f"{where}: bad output slot {slot}")
    for link in workflow.get("links", []):
        if not (
            isinstance(link, list)
            and len(link) == 6
            and all(isinstance(v, int) for v in link[:5])
            and isinstance(link[5], str)
        ):
            errors.append(f"link {link}: expected [id, origin id, origin slot, target id, target slot, type]")
    for group in workflow.get("groups", []):
        if not isinstance(group.get("title"), str) or not _is_vector(group.get("bounding"), 4):
            errors.append(f"group {group.get('title')!r}: needs a title and a 4-number bounding box")
    return errors


def _links(workflow: dict) -> dict:
    """link id -> (origin id, origin slot, target id, target slot, type); both storage forms."""
    out = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            out[link["id"]] = (
                link["origin_id"],
                link["origin_slot"],
                link["target_id"],
                link["target_slot"],
                link["type"],
            )
        else:
            out[link[0]] = tuple(link[1:6])
    return out


def _source(nodes: dict, links: dict, link_id: int) -> tuple[int, int]:
    """(node id, output slot) feeding ``link_id``, following Reroute nodes."""
    origin, slot = links[link_id][:2]
    seen = set()
    while nodes[origin]["type"] == "Reroute":
        if origin in seen:
            raise WorkflowError(f"Reroute loop at node {origin}")
        seen.add(origin)
        link_in = nodes[origin]["inputs"][0].get("link")
        if link_in is None:
            raise WorkflowError(f"Reroute node {origin} has no input")
        origin, slot = links[link_in][:2]
    return origin, slot


def ui_to_api(workflow: dict, definitions: dict) -> dict:
    """The API prompt (``{"<id>": {"class_type", "inputs"}}``) the frontend would queue for ``workflow``."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = _links(workflow)
    prompt = {}
    for node_id, node in nodes.items():
        type_ = node["type"]
        if type_ in UI_ONLY_TYPES or node.get("mode", 0) == MUTED:
            continue
        if node.get("mode", 0) == BYPASSED:
            raise WorkflowError(f"node {node_id} ({type_}) is bypassed; this converter does not reroute bypasses")
        if type_ not in definitions:
            raise WorkflowError(f"node {node_id}: unknown node type {type_!r}")
        layout = widgets_of(definitions[type_])
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):
            raise WorkflowError(f"node {node_id} ({type_}): widgets_values as a dict is not supported")
        if len(values) != len(layout):
            raise WorkflowError(
                f"node {node_id} ({type_}): {len(values)} widget values for "
                f"{len(layout)} widgets {[w.name for w in layout]}"
            )
        inputs = {w.name: v for w, v in zip(layout, values) if w.sent}
        for slot in node.get("inputs", []):
            if slot.get("link") is None:
                continue
            origin, out_slot = _source(nodes, links, slot["link"])
            if nodes[origin]["type"] == "PrimitiveNode" and slot.get("widget"):
                continue  # the frontend mirrors a primitive's value into the widget: already in widgets_values
            if nodes[origin]["type"] in UI_ONLY_TYPES:
                raise WorkflowError(f"node {node_id} input {slot['name']!r} comes from a {nodes[origin]['type']} node")
            inputs[slot["name"]] = [str(origin), out_slot]
        prompt[str(node_id)] = {"class_type": type_, "inputs": inputs}
    return prompt


# Nodes a workflow may use although neither the host nor this pack has them, as recorded from their own pack.
DW_PREPROCESSOR = {  # comfyui_controlnet_aux node_wrappers/dwpose.py, DWPose_Preprocessor.INPUT_TYPES
    "required": {"image": ("IMAGE",)},
    "optional": {
        "detect_hand": (["enable", "disable"], {"default": "enable"}),
        "detect_body": (["enable", "disable"], {"default": "enable"}),
        "detect_face": (["enable", "disable"], {"default": "enable"}),
        "resolution": ("INT", {"default": 512, "min": 64, "max": 16384, "step": 64}),
        "bbox_detector": (
            [
                "None",
                "yolox_l.torchscript.pt",
                "yolox_l.onnx",
                "yolo_nas_l_fp16.onnx",
                "yolo_nas_m_fp16.onnx",
                "yolo_nas_s_fp16.onnx",
            ],
            {"default": "yolox_l.onnx"},
        ),
        "pose_estimator": (
            ["dw-ll_ucoco_384_bs5.torchscript.pt", "dw-ll_ucoco_384.onnx", "dw-ll_ucoco.onnx"],
            {"default": "dw-ll_ucoco_384_bs5.torchscript.pt"},
        ),
        "scale_stick_for_xinsr_cn": (["disable", "enable"], {"default": "disable"}),
    },
}
# type -> (INPUT_TYPES, RETURN_TYPES, RETURN_NAMES) of those recorded nodes
RECORDED_NODES = {"DWPreprocessor": (DW_PREPROCESSOR, ("IMAGE", "POSE_KEYPOINT"), ("IMAGE", "POSE_KEYPOINT"))}


def node_sockets(node_class_mappings: dict, node_type: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(link inputs, outputs) as (name, type) lists of a node type, from its own INPUT_TYPES and
    RETURN_TYPES / RETURN_NAMES (a host's class, or a recorded node); frontend-only nodes have none."""
    if node_type in UI_ONLY_TYPES:
        return [], []
    if node_type in node_class_mappings:
        cls = node_class_mappings[node_type]
        input_types, types = cls.INPUT_TYPES(), tuple(cls.RETURN_TYPES)
        names = tuple(getattr(cls, "RETURN_NAMES", None) or types)
    elif node_type in RECORDED_NODES:
        input_types, types, names = RECORDED_NODES[node_type]
    else:
        raise KeyError(f"{node_type!r} is neither a node of this host nor recorded in RECORDED_NODES")
    return sockets_of(input_types), list(zip(names, types))
