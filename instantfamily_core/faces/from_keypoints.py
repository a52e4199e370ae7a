"""Faces whose five keypoints are known -> aligned crops -> both features -> ``DetectedFace``.

The one path from keypoints to identity features: the analyzer (keypoints from its detector), the
toy demo's portraits and the toy world's training data (keypoints drawn with the scene) all call it,
so a face gets the same crop and features whichever way its keypoints were found.
"""

from __future__ import annotations

import numpy as np

from ..identity import DetectedFace
from ..images import to_rgb_uint8
from .align import align_crop


def aligned_features(recognizer, image, keypoints) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crops (N, S, S, 3) uint8, global (N, D), local (N, C, L, L)) of the faces at ``keypoints`` (N, 5, 2).

    ``image`` is any array ``to_rgb_uint8`` accepts; keypoints are used as float32 (as stored).
    """
    rgb = to_rgb_uint8(image)
    points = np.asarray(keypoints, np.float32).reshape(-1, 5, 2)
    size = recognizer.input_size
    if not len(points):
        crops = np.zeros((0, size, size, 3), np.uint8)
    else:
        crops = np.stack([align_crop(rgb, kps, size) for kps in points])  # (N, S, S, 3)
    global_features, local_features = recognizer.features(crops)
    return crops, global_features, local_features


def faces_from_keypoints(recognizer, image, keypoints, boxes, scores=None, image_index: int = 0) -> list[DetectedFace]:
    """One ``DetectedFace`` per face: boxes (N, 4) xyxy and keypoints (N, 5, 2) in pixels of ``image``;
    scores (N,) default to 1 (keypoints that are known, not detected)."""
    rgb = to_rgb_uint8(image, f"image {image_index}")
    points = np.asarray(keypoints, np.float32).reshape(-1, 5, 2)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(boxes) != len(points):
        raise ValueError(f"faces_from_keypoints: {len(boxes)} boxes but {len(points)} keypoint sets")
    scores = np.ones(len(boxes), np.float32) if scores is None else np.asarray(scores, np.float32).reshape(-1)
    crops, global_features, local_features = aligned_features(recognizer, rgb, points)
    return [
        DetectedFace(
            box=boxes[i],
            keypoints=points[i],
            score=float(scores[i]),
            global_feature=global_features[i],
            local_feature=local_features[i],
            image_index=image_index,
            image_size=rgb.shape[:2],
            crop=crops[i],
        )
        for i in range(len(boxes))
    ]
