"""The Pose + Circle control image of the slots: one circle per slot's face box."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..config import InstantFamilyConfig
from ..control_image import draw_control_image
from ..masks import FaceMasks


def slot_boxes(face_masks: FaceMasks) -> np.ndarray:
    """(N, 4) normalised face boxes for the circles: the detector/pose boxes, or each mask's bounding box."""
    if face_masks.boxes is not None:
        return face_masks.boxes.detach().cpu().numpy().astype(np.float64)
    n, height, width = face_masks.masks.shape
    boxes = np.zeros((n, 4), np.float64)
    for slot in range(n):
        rows, cols = np.nonzero(face_masks.masks[slot].detach().cpu().numpy() >= 0.5)
        if rows.size:
            boxes[slot] = [cols.min() / width, rows.min() / height, (cols.max() + 1) / width, (rows.max() + 1) / height]
    return boxes


def control_image_for_slots(
    face_masks: FaceMasks,
    config: InstantFamilyConfig,
    size: tuple[int, int],
    bodies: Sequence[np.ndarray] = (),
    base: np.ndarray | None = None,
    colours: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """The Pose + Circle control image with one circle per slot of ``face_masks``.

    colours: the trainer's per-sample circle colours; default ``config.slot_colours(N)``."""
    return draw_control_image(
        size,
        config,
        bodies=bodies,
        face_boxes=slot_boxes(face_masks),
        face_centres=face_masks.centres.detach().cpu().numpy(),
        base=base,
        colours=colours,
    )
