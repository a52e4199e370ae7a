"""Preview drawing: each chosen face's box with its identity slot number, in the slot's colour."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from ..config import InstantFamilyConfig
from ..identity import DetectedFace
from ..preview_text import draw_slot_label

UNCHOSEN = (128, 128, 128)


def draw_preview(
    image_rgb: np.ndarray,
    faces: Sequence[DetectedFace] | Sequence[Any],  # anything with a ``box``
    slots: dict[int, int],
    config: InstantFamilyConfig | None = None,
    labels: dict[int, str] | None = None,
) -> np.ndarray:
    """A copy of an (H, W, 3) uint8 image with numbered boxes.

    ``slots`` maps ``id(face)`` to its identity slot; faces without a slot get a thin grey box.
    ``labels`` (optional) maps ``id(face)`` to a text written instead of the slot number.
    Only ``face.box`` is read, so anything with a box can be drawn.
    """
    config = config or InstantFamilyConfig()
    canvas = np.ascontiguousarray(image_rgb.copy())
    thickness = max(1, int(round(max(canvas.shape[:2]) / 400)))
    for face in faces:
        x1, y1, x2, y2 = (int(round(float(v))) for v in face.box)
        slot = slots.get(id(face))
        if slot is None:
            cv2.rectangle(canvas, (x1, y1), (x2, y2), UNCHOSEN, thickness)
            continue
        colour = tuple(int(c) for c in config.palette_colour(slot))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 0, 0), thickness + 2)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        text = str(slot) if labels is None or id(face) not in labels else labels[id(face)]
        scale = max(0.4, (x2 - x1) / 120.0) if text == str(slot) else max(0.35, min(0.8, max(canvas.shape[:2]) / 900))
        draw_slot_label(canvas, text, (x1, y1), colour, scale, thickness + 1)
    return canvas
