"""Text on preview images: the one slot label (faces preview, Face Mask preview, verdicts) and the note band."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
PLATE = (0, 0, 0)  # a label's background


def draw_slot_label(
    canvas: np.ndarray,
    text: str,
    anchor: tuple[float, float],
    colour: Sequence[int],
    scale: float,
    thickness: int,
    centred: bool = False,
) -> None:
    """``text`` in the slot's ``colour`` on a black plate, drawn into ``canvas`` (H, W, 3) uint8 in place.

    anchor: (x, y) pixels of the plate's bottom-left corner (a label above a box), or of its centre
    with ``centred`` (a label on a face centre). The plate is kept inside the image.
    """
    height, width = canvas.shape[:2]
    (text_w, text_h), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    plate_w, plate_h = text_w + 4, text_h + baseline + 2
    left, top = (anchor[0] - plate_w / 2, anchor[1] - plate_h / 2) if centred else (anchor[0], anchor[1] - plate_h)
    left = int(min(max(0, round(left)), max(0, width - plate_w)))
    top = int(min(max(0, round(top)), max(0, height - plate_h)))
    cv2.rectangle(canvas, (left, top), (left + plate_w, top + plate_h), PLATE, -1)
    colour = tuple(int(c) for c in colour)
    cv2.putText(canvas, text, (left + 2, top + text_h + 1), FONT, scale, colour, thickness, cv2.LINE_AA)


def draw_note(canvas: np.ndarray, note: str) -> np.ndarray:
    """``note`` in white on a black band along the bottom of ``canvas`` (in place), wrapped to its width."""
    height, width = canvas.shape[:2]
    scale = max(0.3, min(height, width) / 700)
    (char_w, line_h), _ = cv2.getTextSize("n", FONT, scale, 1)
    per_line = max(8, int(width / (char_w * 1.1)) - 1)
    words, lines = note.split(), [""]
    for word in words:
        if lines[-1] and len(lines[-1]) + 1 + len(word) > per_line:
            lines.append(word)
        else:
            lines[-1] = f"{lines[-1]} {word}".strip()
    step = int(line_h * 1.8)
    top = max(0, height - step * len(lines) - 4)
    canvas[top:] = 0
    for k, line in enumerate(lines):
        cv2.putText(canvas, line, (3, top + step * (k + 1) - 2), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas
