"""Whole-body pose (DWPose / RTMPose) on ONNX Runtime, written as ComfyUI ``POSE_KEYPOINT``.

Reads the ONNX files comfyui_controlnet_aux users already have (no pickles, no downloads):

- detector ``yolox_l.onnx``: input ``images`` (1, 3, 640, 640), an RGB image letterboxed at the
  top-left onto grey 114, values 0-255 (no normalisation); output (1, 8400, 85) per anchor of
  strides 8/16/32: x/y offsets in cells, log w/h in cells, objectness and 80 class scores
  (sigmoids already applied). People are class 0.
- pose model ``dw-ll_ucoco_384.onnx``: input (1, 3, 384, 288), the person box enlarged 1.25x, fixed
  to the model's aspect and warped in, normalised with the ImageNet mean/std (RGB); outputs SimCC
  ``simcc_x`` (1, 133, 576) and ``simcc_y`` (1, 133, 768), two bins per input pixel.

The 133 COCO-WholeBody points become OpenPose's layout as comfyui_controlnet_aux writes it: a neck
(mean of the shoulders) is inserted, the 17 body points are reordered to COCO-18, then the 6 feet,
68 face, 21 left-hand and 21 right-hand points follow. Input names and sizes are read from the
files, so other DWPose/RTMPose exports of the same family also work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
STRIDES = (8, 16, 32)
LETTERBOX_FILL = 114
BOX_PADDING = 1.25
SIMCC_SPLIT = 2.0
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
PERSON_SCORE = 0.3  # detections kept (comfyui_controlnet_aux's threshold)
NMS_IOU = 0.45
KEYPOINT_SCORE = 0.3  # points below are written as missing (as comfyui_controlnet_aux draws them)

# COCO-WholeBody 17 body points (+ the inserted neck at 17) -> OpenPose COCO-18 positions.
# Nose (0), left shoulder (5) and left hip (11) keep their index.
MMPOSE_TO_OPENPOSE = (
    (17, 1),
    (6, 2),
    (8, 3),
    (10, 4),
    (7, 6),
    (9, 7),
    (12, 8),
    (14, 9),
    (16, 10),
    (13, 12),
    (15, 13),
    (2, 14),
    (1, 15),
    (4, 16),
    (3, 17),
)
BODY, FEET, FACE, LEFT_HAND, RIGHT_HAND = slice(0, 18), slice(18, 24), slice(24, 92), slice(92, 113), slice(113, 134)


@dataclass
class WholeBody:
    """People of one image in OpenPose order: (P, 134, 3) x, y in pixels and a score."""

    points: np.ndarray
    width: int
    height: int

    def pose_keypoint(self) -> list[dict]:
        """ComfyUI ``POSE_KEYPOINT`` (one frame, normalised; missing points 0, 0, 0)."""
        from .pose import encode_pose_keypoint

        scale = np.array([self.width, self.height, 1.0])
        parts = []
        for person in self.points:
            normalised = person / scale
            normalised[person[:, 2] < KEYPOINT_SCORE] = 0
            parts.append(normalised)
        frame = encode_pose_keypoint([p[BODY] for p in parts], self.width, self.height, [p[FACE] for p in parts])
        for entry, points in zip(frame[0]["people"], parts):
            entry["hand_left_keypoints_2d"] = [float(v) for v in points[LEFT_HAND].reshape(-1)]
            entry["hand_right_keypoints_2d"] = [float(v) for v in points[RIGHT_HAND].reshape(-1)]
        return frame


def to_openpose(keypoints: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(P, 133, 2) points + (P, 133) scores in COCO-WholeBody order -> (P, 134, 3) in OpenPose order."""
    info = np.concatenate([keypoints, scores[..., None]], axis=-1)  # (P, 133, 3)
    neck = info[:, [5, 6]].mean(axis=1)  # (P, 3)
    neck[:, 2] = np.minimum(info[:, 5, 2], info[:, 6, 2])  # present only when both shoulders are
    out = np.insert(info, 17, neck, axis=1)  # (P, 134, 3)
    reordered = out.copy()
    for source, target in MMPOSE_TO_OPENPOSE:
        reordered[:, target] = out[:, source]
    return reordered


def letterbox(rgb: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect into the top-left of a grey (h, w) canvas; returns (canvas, ratio)."""
    import cv2

    height, width = size
    ratio = min(height / rgb.shape[0], width / rgb.shape[1])
    new_w, new_h = max(1, int(rgb.shape[1] * ratio)), max(1, int(rgb.shape[0] * ratio))
    canvas = np.full((height, width, 3), LETTERBOX_FILL, np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return canvas, ratio


def decode_yolox(
    raw: np.ndarray, size: tuple[int, int], ratio: float, score: float = PERSON_SCORE, iou: float = NMS_IOU
) -> np.ndarray:
    """(1, A, 5 + C) YOLOX predictions -> (N, 5) person boxes x1, y1, x2, y2 (source px), score."""
    height, width = size
    grids, strides = [], []
    for stride in STRIDES:
        ys, xs = np.meshgrid(np.arange(height // stride), np.arange(width // stride), indexing="ij")
        grids.append(np.stack([xs, ys], -1).reshape(-1, 2))
        strides.append(np.full((grids[-1].shape[0], 1), stride))
    grid, stride_of = np.concatenate(grids), np.concatenate(strides)  # (A, 2), (A, 1)
    pred = np.asarray(raw, np.float32).reshape(-1, raw.shape[-1])
    if pred.shape[0] != grid.shape[0]:
        raise ValueError(
            f"DWPose detector: {pred.shape[0]} anchors, expected {grid.shape[0]} for a {width}x{height} "
            f"input; use yolox_l.onnx from comfyui_controlnet_aux (yzd-v/DWPose)"
        )
    centre = (pred[:, :2] + grid) * stride_of
    half = np.exp(pred[:, 2:4]) * stride_of / 2
    people = pred[:, 4] * pred[:, 5]
    keep = people > score
    boxes = np.concatenate([centre - half, centre + half], 1)[keep] / ratio
    return nms(boxes, people[keep], iou)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression: (N, 5) kept boxes with their scores, best first."""
    order = np.argsort(-scores)
    kept = []
    while order.size:
        best, rest = order[0], order[1:]
        kept.append(best)
        x1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
        order = rest[inter / (area(boxes[best]) + area(boxes[rest]) - inter + 1e-9) <= iou]
    return np.concatenate([boxes[kept], scores[kept, None]], 1).reshape(-1, 5).astype(np.float32)


BODY_WIDTH_FACES = 3.5  # a person box from a face box: 3.5 face widths wide,
BODY_HEIGHT_FACES = 7.8  # from 0.3 face heights above the face to 7.5 below its top (an adult's proportions)


def person_boxes_from_faces(face_boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) face boxes (px) -> (N, 4) standing-person boxes clipped to the image: DWPose without its detector.

    The person detector is most of DWPose's cost; when every person of interest has a detected face,
    these boxes feed the pose model directly (people without a visible face then get no skeleton).
    """
    boxes = np.asarray(face_boxes, np.float32).reshape(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    top = boxes[:, 1] - 0.3 * h
    out = np.stack([cx - BODY_WIDTH_FACES / 2 * w, top, cx + BODY_WIDTH_FACES / 2 * w, top + BODY_HEIGHT_FACES * h], 1)
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
    return out


def box_to_centre_scale(box: np.ndarray, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """Person box -> (centre (2,), scale (2,) w, h): enlarged by BOX_PADDING, widened to ``aspect`` (w / h)."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2], np.float32)
    w, h = (x2 - x1) * BOX_PADDING, (y2 - y1) * BOX_PADDING
    w, h = (w, w / aspect) if w > h * aspect else (h * aspect, h)
    return centre, np.array([w, h], np.float32)


def crop_person(rgb: np.ndarray, centre: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The (h, w) model input of one person: the centre/scale rectangle warped in (no rotation)."""
    import cv2

    height, width = size
    sx, sy = width / scale[0], height / scale[1]
    matrix = np.array([[sx, 0, width / 2 - centre[0] * sx], [0, sy, height / 2 - centre[1] * sy]], np.float32)
    return cv2.warpAffine(rgb, matrix, (width, height), flags=cv2.INTER_LINEAR)


def decode_simcc(
    simcc_x: np.ndarray, simcc_y: np.ndarray, centre: np.ndarray, scale: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(K, Wx), (K, Wy) SimCC of one person -> ((K, 2) source px, (K,) scores: the lower axis maximum)."""
    height, width = size
    locs = np.stack([simcc_x.argmax(-1), simcc_y.argmax(-1)], -1).astype(np.float32) / SIMCC_SPLIT  # (K, 2) input px
    scores = np.minimum(simcc_x.max(-1), simcc_y.max(-1))
    points = locs / np.array([width, height], np.float32) * scale + centre - scale / 2
    return points, scores


class DWPoseEstimator:
    """Detector + whole-body pose model on ONNX Runtime; call it with an RGB uint8 (H, W, 3) array."""

    def __init__(self, detector: str | Path, pose: str | Path, provider: str = "auto", device_id: int = 0):
        for path, name in ((detector, DETECTOR_FILE), (pose, POSE_FILE)):
            if not Path(path).is_file():
                raise ValueError(
                    f"DWPose: {path} is not a file; it needs {name} (comfyui_controlnet_aux's "
                    "ckpts/yzd-v/DWPose folder has both ONNX files)"
                )
        self.providers = onnx_providers(provider, device_id)
        self.detector = _session(detector, self.providers)
        self.pose = _session(pose, self.providers)
        self.det_input = self.detector.get_inputs()[0]
        self.pose_input = self.pose.get_inputs()[0]
        self.det_size = _static_hw(self.det_input, "detector")
        self.pose_size = _static_hw(self.pose_input, "pose model")
        self.det_dtype, self.pose_dtype = _input_dtype(self.det_input), _input_dtype(self.pose_input)  # fp16 exports
        batch = self.pose_input.shape[0]
        self.pose_batch = batch if isinstance(batch, int) and batch > 0 else None  # None: any batch size
        logger.info(
            "DWPose on %s: detector %s (%dx%d), pose %s (%dx%d)",
            self.providers[0],
            Path(detector).name,
            *self.det_size[::-1],
            Path(pose).name,
            *self.pose_size[::-1],
        )

    @classmethod
    def from_folder(cls, folder: str | Path, provider: str = "auto", device_id: int = 0) -> DWPoseEstimator:
        """A folder holding yolox_l.onnx and dw-ll_ucoco_384.onnx (as comfyui_controlnet_aux stores them)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(
                f"DWPose: {folder} is not a folder; point it to the folder with {DETECTOR_FILE} "
                f"and {POSE_FILE} (comfyui_controlnet_aux: ckpts/yzd-v/DWPose)"
            )
        return cls(folder / DETECTOR_FILE, folder / POSE_FILE, provider, device_id)

    def people(self, rgb: np.ndarray) -> np.ndarray:
        """(N, 5) person boxes (source px) and scores."""
        canvas, ratio = letterbox(rgb, self.det_size)
        batch: np.ndarray = canvas.transpose(2, 0, 1)[None].astype(self.det_dtype)  # (1, 3, H, W) 0-255
        raw = self.detector.run(None, {self.det_input.name: batch})[0]
        return decode_yolox(raw, self.det_size, ratio)

    def __call__(self, rgb: np.ndarray, boxes: np.ndarray | None = None) -> WholeBody:
        """Every person's 134 OpenPose-order points; ``boxes`` (N, >=4) skips the detector."""
        height, width = rgb.shape[:2]
        boxes = self.people(rgb) if boxes is None else np.asarray(boxes, np.float32).reshape(-1, np.shape(boxes)[-1])
        if not len(boxes):
            return WholeBody(np.zeros((0, 134, 3), np.float32), width, height)
        aspect = self.pose_size[1] / self.pose_size[0]
        geometry = [box_to_centre_scale(box, aspect) for box in boxes]
        crops = np.stack([(crop_person(rgb, c, s, self.pose_size) - MEAN) / STD for c, s in geometry])
        crops = crops.transpose(0, 3, 1, 2).astype(self.pose_dtype)  # (N, 3, h, w)
        step = self.pose_batch or len(crops)
        outputs = [self.pose.run(None, {self.pose_input.name: crops[i : i + step]}) for i in range(0, len(crops), step)]
        simcc_x = np.concatenate([o[0] for o in outputs]).astype(np.float32)  # (N, 133, Wx)
        simcc_y = np.concatenate([o[1] for o in outputs]).astype(np.float32)  # (N, 133, Wy)
        decoded = [decode_simcc(simcc_x[i], simcc_y[i], *geometry[i], self.pose_size) for i in range(len(boxes))]
        points = np.stack([d[0] for d in decoded])
        scores = np.stack([d[1] for d in decoded])
        return WholeBody(to_openpose(points, scores).astype(np.float32), width, height)


def onnx_providers(provider: str = "auto", device_id: int = 0) -> list:
    """onnxruntime providers of the pack's choice, the CUDA/ROCm one pinned to ``device_id``."""
    from .faces.providers import choose_providers

    chosen = choose_providers(provider)
    return [
        (name, {"device_id": int(device_id)}) if name in ("CUDAExecutionProvider", "ROCMExecutionProvider") else name
        for name in chosen
    ]


def _session(path, providers):
    import onnxruntime

    from .faces.providers import session_options

    return onnxruntime.InferenceSession(str(path), sess_options=session_options(), providers=providers)


def _input_dtype(node) -> type:
    return np.float16 if node.type == "tensor(float16)" else np.float32


def _static_hw(node, what: str) -> tuple[int, int]:
    shape = list(node.shape)
    if len(shape) != 4 or not all(isinstance(v, int) and v > 0 for v in shape[2:]):
        raise ValueError(f"DWPose {what}: input {node.name!r} has shape {shape}; expected a fixed (N, 3, H, W)")
    return int(shape[2]), int(shape[3])
