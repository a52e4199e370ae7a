"""Tiny ONNX stand-ins for DWPose's two files, with the real files' input/output names and shapes.

- ``export_standin_detector``: ``images`` (1, 3, 640, 640) -> ``output`` (1, 8400, 85). Each given
  box sits on its stride-32 anchor; its objectness is ``sigmoid(20 * max(image) / 255 - 10)``, so
  images with bright pixels have those people and dark images have none.
- ``export_standin_pose``: ``input`` (1, 3, 384, 288) -> ``simcc_x`` (1, 133, 576), ``simcc_y``
  (1, 133, 768) peaking at fixed model-input pixels, whatever the crop shows.
Built with onnx.helper (no torch export): milliseconds, nothing committed.
"""

from __future__ import annotations

import numpy as np

DET_SIZE = (640, 640)  # (h, w)
POSE_SIZE = (384, 288)
ANCHORS = sum((DET_SIZE[0] // s) * (DET_SIZE[1] // s) for s in (8, 16, 32))  # 8400


def _save(graph, path: str) -> str:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def export_standin_detector(path: str, boxes=((240, 120, 400, 600),), score: float = 0.9) -> str:
    """boxes: people x1, y1, x2, y2 in detector pixels (source pixels for a 640x640 image)."""
    from onnx import TensorProto, helper, numpy_helper

    base = np.zeros((1, ANCHORS, 85), np.float32)
    mask = np.zeros_like(base)
    first32 = ANCHORS - (DET_SIZE[0] // 32) * (DET_SIZE[1] // 32)
    for x1, y1, x2, y2 in boxes:
        cx, cy = (x1 + x2) / 64, (y1 + y2) / 64  # centre in stride-32 cells
        gx, gy = int(cx), int(cy)
        anchor = first32 + gy * (DET_SIZE[1] // 32) + gx
        base[0, anchor, :4] = (cx - gx, cy - gy, np.log((x2 - x1) / 32), np.log((y2 - y1) / 32))
        base[0, anchor, 5] = score
        mask[0, anchor, 4] = 1.0
    nodes = [
        helper.make_node("ReduceMax", ["images"], ["peak"], keepdims=0),
        helper.make_node("Mul", ["peak", "gain"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["objectness"]),
        helper.make_node("Mul", ["mask", "objectness"], ["placed"]),
        helper.make_node("Add", ["base", "placed"], ["output"]),
    ]
    inits = [
        numpy_helper.from_array(base, "base"),
        numpy_helper.from_array(mask, "mask"),
        numpy_helper.from_array(np.array(20 / 255, np.float32), "gain"),
        numpy_helper.from_array(np.array(-10.0, np.float32), "offset"),
    ]
    graph = helper.make_graph(
        nodes,
        "yolox_standin",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *DET_SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, ANCHORS, 85])],
        inits,
    )
    return _save(graph, path)


def standin_layout() -> np.ndarray:
    """(133, 2) model-input pixels (x, y) of every whole-body point: a standing figure in the crop."""
    w, h = POSE_SIZE[1], POSE_SIZE[0]
    body = {
        0: (0.5, 0.2),
        1: (0.46, 0.18),
        2: (0.54, 0.18),
        3: (0.42, 0.2),
        4: (0.58, 0.2),
        5: (0.38, 0.32),
        6: (0.62, 0.32),
        7: (0.32, 0.45),
        8: (0.68, 0.45),
        9: (0.3, 0.57),
        10: (0.7, 0.57),
        11: (0.42, 0.58),
        12: (0.58, 0.58),
        13: (0.42, 0.72),
        14: (0.58, 0.72),
        15: (0.42, 0.86),
        16: (0.58, 0.86),
    }
    points = np.tile([0.5 * w, 0.5 * h], (133, 1)).astype(np.float32)
    for index, (x, y) in body.items():
        points[index] = (x * w, y * h)
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    points[23:91] = np.stack([0.5 * w + 0.05 * w * np.cos(angles), 0.2 * h + 0.04 * h * np.sin(angles)], 1)
    return points


def export_standin_pose(path: str, layout: np.ndarray | None = None, peak: float = 0.9, half: bool = False) -> str:
    """SimCC outputs peaking at ``layout`` (133, 2) model-input pixels (two bins per pixel).

    half: float16 input and outputs, as in fp16 exports of the pose model.
    """
    from onnx import TensorProto, helper, numpy_helper

    layout = standin_layout() if layout is None else np.asarray(layout, np.float32)
    h, w = POSE_SIZE
    simcc = {"x": np.zeros((1, 133, 2 * w), np.float32), "y": np.zeros((1, 133, 2 * h), np.float32)}
    for k, (x, y) in enumerate(layout):
        simcc["x"][0, k, int(round(2 * x))] = peak
        simcc["y"][0, k, int(round(2 * y))] = peak
    kind = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    nodes = [
        helper.make_node("Cast", ["input"], ["input32"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["input32"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
    ]
    for axis in ("x", "y"):
        nodes.append(helper.make_node("Add", [f"base_{axis}", "nothing"], [f"sum_{axis}"]))
        nodes.append(helper.make_node("Cast", [f"sum_{axis}"], [f"simcc_{axis}"], to=kind))
    inits = [
        numpy_helper.from_array(simcc["x"], "base_x"),
        numpy_helper.from_array(simcc["y"], "base_y"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "rtmpose_standin",
        [helper.make_tensor_value_info("input", kind, [1, 3, h, w])],
        [
            helper.make_tensor_value_info("simcc_x", kind, [1, 133, 2 * w]),
            helper.make_tensor_value_info("simcc_y", kind, [1, 133, 2 * h]),
        ],
        inits,
    )
    return _save(graph, path)


def build_dwpose_folder(folder: str, boxes=((240, 120, 400, 600),)) -> str:
    """A folder with yolox_l.onnx and dw-ll_ucoco_384.onnx stand-ins."""
    import os

    os.makedirs(folder, exist_ok=True)
    export_standin_detector(os.path.join(folder, "yolox_l.onnx"), boxes)
    export_standin_pose(os.path.join(folder, "dw-ll_ucoco_384.onnx"))
    return folder
