"""Bring any image into the form the face detector wants, and map detections back.

Accepted: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) arrays of uint8, uint16 (16-bit) or float in
[0, 1] (ComfyUI's IMAGE). Output: contiguous (H, W, 3) uint8 RGB. Tiny images are upscaled and
padded, huge ones downscaled for detection; a ``Placement`` maps coordinates back.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TINY_SIDE = 64  # images with a shorter side are upscaled before detection
TINY_TARGET = 192  # ... to at least this shorter side
HUGE_SIDE = 4096  # images with a longer side are downscaled for detection
HUGE_TARGET = 2048  # ... to this longer side
ALPHA_BACKGROUND = 128  # transparent pixels are composited over mid grey


def to_rgb_uint8(image, name: str = "image") -> np.ndarray:
    """Any supported array -> (H, W, 3) uint8 RGB. Raises ValueError naming ``name`` otherwise."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        raise ValueError(f"{name}: expected channels last (H, W, C), got shape {array.shape}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise ValueError(
            f"{name}: expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got shape {array.shape}"
        )
    if array.dtype == np.uint8 and array.shape[-1] != 4:  # fast path, no float copy
        return np.ascontiguousarray(array if array.shape[-1] == 3 else np.repeat(array, 3, axis=2))
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        values = array.astype(np.float32) / 65535.0
    elif array.dtype == bool:
        values = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: integer images must be 8- or 16-bit, got {array.dtype}")
    else:
        values = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    values = np.clip(values, 0.0, 1.0)
    if values.shape[-1] == 4:
        alpha = values[:, :, 3:4]
        values = values[:, :, :3] * alpha + (ALPHA_BACKGROUND / 255.0) * (1.0 - alpha)
    elif values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=2)
    return np.ascontiguousarray(np.round(values * 255.0).astype(np.uint8))


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
