"""Bring an (H, W, 3) uint8 RGB image (``instantfamily_core.images.to_rgb_uint8``) to the size the
face detector wants, and map detections back: tiny images are upscaled and padded, huge ones
downscaled; a ``Placement`` maps coordinates back.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TINY_SIDE = 64  # images with a shorter side are upscaled before detection
TINY_TARGET = 192  # ... to at least this shorter side
HUGE_SIDE = 4096  # images with a longer side are downscaled for detection
HUGE_TARGET = 2048  # ... to this longer side


@dataclass(frozen=True)
class Placement:
    """detection-image coordinates = source coordinates * scale + offset."""

    scale: float = 1.0
    offset: tuple[float, float] = (0.0, 0.0)

    def to_source(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) xy points in the detection image -> source image pixels."""
        return (np.asarray(points, np.float32) - np.asarray(self.offset, np.float32)) / np.float32(self.scale)

    def then(self, scale: float, offset: tuple[float, float]) -> Placement:
        """This placement followed by another scale/offset."""
        return Placement(self.scale * scale, (self.offset[0] * scale + offset[0], self.offset[1] * scale + offset[1]))


def for_detection(image: np.ndarray) -> tuple[np.ndarray, Placement]:
    """Upscale tiny / downscale huge (H, W, 3) uint8 images; returns the image and its placement."""
    height, width = image.shape[:2]
    if min(height, width) < TINY_SIDE:
        scale = float(np.ceil(TINY_TARGET / min(height, width)))
        if max(height, width) * scale > HUGE_TARGET:
            scale = max(1.0, np.floor(HUGE_TARGET / max(height, width)))
        size = (int(round(width * scale)), int(round(height * scale)))
        return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC), Placement(scale)
    if max(height, width) > HUGE_SIDE:
        scale = HUGE_TARGET / max(height, width)
        size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA), Placement(scale)
    return image, Placement()


def pad_border(image: np.ndarray, fraction: float = 0.25) -> tuple[np.ndarray, tuple[float, float]]:
    """Pad each side by ``fraction`` of the longer side (for faces that fill or leave the frame)."""
    pad = int(round(max(image.shape[:2]) * fraction))
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return padded, (float(pad), float(pad))
