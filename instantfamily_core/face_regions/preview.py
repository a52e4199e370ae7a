"""The Face Mask preview: each slot's region tinted in its colour, with its slot label."""

from __future__ import annotations

import cv2
import numpy as np

from ..config import InstantFamilyConfig
from ..masks import FaceMasks
from ..preview_text import draw_note, draw_slot_label


def preview_face_masks(
    face_masks: FaceMasks,
    config: InstantFamilyConfig,
    background: np.ndarray | None = None,
    alpha: float = 0.45,
    note: str = "",
) -> np.ndarray:
    """Each slot's region tinted in its palette colour, its slot label (``draw_slot_label``) at its face centre.

    background: (H, W, 3) uint8 RGB (resized to the masks' size) or None for black.
    note: a line written along the bottom edge (e.g. ``config.untrained_note(N)``). Returns uint8 RGB.
    """
    height, width = face_masks.image_size
    if background is None:
        canvas = np.zeros((height, width, 3), np.float32)
    else:
        background = np.asarray(background, dtype=np.uint8)
        if background.shape[:2] != (height, width):
            background = cv2.resize(background, (width, height), interpolation=cv2.INTER_AREA)
        canvas = background.astype(np.float32)
    masks = face_masks.masks.detach().cpu().numpy() >= 0.5
    for slot in range(len(face_masks)):
        colour = np.array(config.palette_colour(slot), np.float32)
        canvas[masks[slot]] = (1 - alpha) * canvas[masks[slot]] + alpha * colour
    canvas = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    scale = max(0.4, min(height, width) / 300)
    thickness = max(1, int(round(scale * 2)))
    for slot in range(len(face_masks)):
        centre = (float(face_masks.centres[slot, 0]) * width, float(face_masks.centres[slot, 1]) * height)
        draw_slot_label(canvas, str(slot), centre, config.palette_colour(slot), scale, thickness, centred=True)
    if note:
        draw_note(canvas, note)
    return canvas
