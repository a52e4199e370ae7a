"""ArcFace alignment: the similarity transform that maps 5 keypoints onto the standard template.

Gives the same crop as insightface's ``face_align.norm_crop`` (the recognizers were trained on
it) without its scikit-image dependency and deprecation notices.
"""

from __future__ import annotations

import cv2
import numpy as np

# Keypoint positions of the ArcFace 112x112 training crops: eyes, nose tip, mouth corners.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    np.float64,
)


def template(size: int = 112) -> np.ndarray:
    """The (5, 2) template for a size x size crop (multiples of 112 scale it; 128-based sizes shift it)."""
    if size % 112 == 0:
        return ARCFACE_TEMPLATE_112 * (size / 112.0)
    ratio = size / 128.0
    return ARCFACE_TEMPLATE_112 * ratio + np.array([8.0 * ratio, 0.0])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares rotation + uniform scale + translation taking src points to dst (Umeyama)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)  # (2, 2)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(covariance) < 0:
        sign[-1] = -1.0  # no reflections
    rotation = u @ np.diag(sign) @ vt
    scale = (singular * sign).sum() / src_c.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def align_crop(image: np.ndarray, keypoints: np.ndarray, size: int = 112) -> np.ndarray:
    """The aligned (size, size, C) crop of ``image`` for (5, 2) keypoints; outside the image is black."""
    matrix = similarity_transform(keypoints, template(size))
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)
