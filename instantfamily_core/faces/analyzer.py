"""Face analysis: detector (with retries at smaller sizes) + one-pass recognizer -> DetectedFace.

``FaceAnalyzer`` is the value of ComfyUI's ``INSTANTFAMILY_ANALYZER`` socket. Its detector is
anything with insightface's SCRFD interface, ``detect(bgr, input_size=(w, h), max_num=0) ->
(boxes (N, 5) [x1, y1, x2, y2, score], keypoints (N, 5, 2))``: insightface's own detector, or
``DlibFaceBackend``.
"""

from __future__ import annotations

import logging

import numpy as np

from ..identity import DetectedFace
from ..images import to_rgb_uint8
from .from_keypoints import faces_from_keypoints
from .images import Placement, for_detection, pad_border
from .recognizer import OnePassRecognizer

logger = logging.getLogger(__name__)

RETRY_SIZES = (640, 512, 384, 256)


def retry_sizes(det_size: int) -> list[int]:
    """det_size, then the smaller standard sizes below it."""
    return [int(det_size)] + [s for s in RETRY_SIZES if s < int(det_size)]


class FaceAnalyzer:
    """Detector + one-pass recognizer, with the settings they run under."""

    def __init__(self, detector, recognizer: OnePassRecognizer, det_size: int = 640, pack: str = "", providers=()):
        self.detector = detector
        self.recognizer = recognizer
        self.det_size = int(det_size)
        self.pack = pack
        self.providers = tuple(providers)

    @property
    def info(self):
        return self.recognizer.info

    def __repr__(self) -> str:
        return f"FaceAnalyzer(pack={self.pack!r}, det_size={self.det_size}, providers={list(self.providers)})"

    def _detect_once(self, image_rgb: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        boxes, keypoints = self.detector.detect(
            np.ascontiguousarray(image_rgb[:, :, ::-1]), input_size=(size, size), max_num=0
        )
        boxes = np.asarray(boxes, np.float32).reshape(-1, 5)
        if keypoints is None:
            if len(boxes):
                raise RuntimeError(
                    "the face detector returns no keypoints, which the aligned crop needs: use a pack whose "
                    "detector predicts 5 keypoints (antelopev2 / buffalo_l)"
                )
            keypoints = np.zeros((0, 5, 2), np.float32)
        return boxes, np.asarray(keypoints, np.float32).reshape(-1, 5, 2)

    def detect(self, image, image_index: int = 0, retry: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes (N, 4), keypoints (N, 5, 2), scores (N,)) in source pixels; empty when no face is found.

        Tries det_size, then smaller sizes, then the same with a padded border (faces that fill
        or leave the frame); ``retry=False`` runs det_size only (bulk data preparation, where most
        face-less images stay face-less). Boxes are clipped to the image; faces left without area
        are dropped.
        """
        rgb = to_rgb_uint8(image, f"image {image_index}")
        height, width = rgb.shape[:2]
        prepared, placement = for_detection(rgb)
        attempts = [(False, s) for s in retry_sizes(self.det_size)] + [(True, s) for s in retry_sizes(self.det_size)]
        attempts = attempts if retry else attempts[:1]
        for padded, size in attempts:
            candidate, where = prepared, placement
            if padded:
                candidate, offset = pad_border(prepared)
                where = placement.then(1.0, offset)
            boxes, keypoints = self._detect_once(candidate, size)
            if len(boxes):
                if (padded, size) != attempts[0]:
                    logger.info(
                        "image %d: faces found at detection size %d%s",
                        image_index,
                        size,
                        " with padding" if padded else "",
                    )
                return _to_source(boxes, keypoints, where, (height, width))
        return np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros((0,), np.float32)

    def analyze(self, image, image_index: int = 0) -> list[DetectedFace]:
        """Every face of one image with both features, in detector order (may be empty)."""
        rgb = to_rgb_uint8(image, f"image {image_index}")
        return self.recognize(rgb, *self.detect(rgb, image_index), image_index=image_index)

    def recognize(
        self, image, boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, image_index: int = 0
    ) -> list[DetectedFace]:
        """Both features of already detected faces (``detect``'s outputs, possibly filtered)."""
        return faces_from_keypoints(self.recognizer, image, keypoints, boxes, scores, image_index=image_index)


def _to_source(boxes: np.ndarray, keypoints: np.ndarray, placement: Placement, shape: tuple[int, int]):
    height, width = shape
    corners = placement.to_source(boxes[:, :4].reshape(-1, 2, 2)).reshape(-1, 4)
    corners[:, 0::2] = np.clip(corners[:, 0::2], 0, width)
    corners[:, 1::2] = np.clip(corners[:, 1::2], 0, height)
    points = placement.to_source(keypoints)
    keep = (corners[:, 2] - corners[:, 0] > 1) & (corners[:, 3] - corners[:, 1] > 1)
    return corners[keep], points[keep], boxes[keep, 4].astype(np.float32)
