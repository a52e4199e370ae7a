"""The Pose + Circle control image: OpenPose skeletons of all people, a filled circle per ID slot.

This is the one drawing used by both the ComfyUI nodes and the trainer, so that a checkpoint's
ControlNet sees at inference exactly what it was trained on. Pure numpy on (H, W, 3) uint8
RGB arrays, deterministic (no anti-aliasing: every circle pixel is exactly its palette colour).
No ComfyUI: the trainer's data loader uses this module too.

Skeletons are drawn with controlnet_aux's OpenPose drawing (``open_pose.draw_poses``: body only,
COCO-18 order, normalised x, y). Circles are drawn on top, slot 0 first (a later slot covers an
earlier one where they overlap), and then the head keypoints (nose, eyes, ears) once more on top
of the circles (:func:`draw_head_marks`), so that each ID's head orientation stays readable
inside its circle. Only the keypoint discs are redrawn, not the limbs between them: OpenPose's
discs and limbs have a fixed size in pixels, and under a whole redrawn skeleton the circle of a
small face (a 36 px head at 256 px) was three-quarters hidden; the five discs leave most of it.
Circles on an existing pose image (``base``, no keypoints known) are drawn on top of it.

- centre: the slot's face centre (normalised x, y; pixel (x * W, y * H) in continuous coordinates,
  where pixel i spans [i, i + 1));
- radius: ``config.circle_radius_fraction * max(face box width, height)`` in pixels of the canvas,
  at least ``MIN_RADIUS_PX``;
- colour: ``config.slot_colours(N)`` (palette[n]), or the colours the trainer drew for the sample.

People without an ID slot keep their skeleton and get no circle.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from .config import InstantFamilyConfig
from .pose import HEAD_POINTS

MIN_RADIUS_PX = 2.0


def openpose_drawing():
    """controlnet_aux's OpenPose types and ``draw_poses`` (importing controlnet_aux takes seconds)."""
    try:
        with warnings.catch_warnings():  # controlnet_aux imports all its detectors, which warn loudly
            warnings.simplefilter("ignore")
            from controlnet_aux.open_pose import BodyResult, Keypoint, PoseResult, draw_poses
    except ImportError as error:
        raise RuntimeError(
            f"drawing OpenPose skeletons needs controlnet_aux ({error}); install it with "
            "'pip install controlnet_aux==0.0.10' in ComfyUI's Python environment"
        ) from error
    return BodyResult, Keypoint, PoseResult, draw_poses


def draw_skeletons(bodies: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """OpenPose body skeletons on a black canvas.

    bodies: per person an (18, 3) array of normalised x, y and confidence (confidence <= 0: missing).
    size: (height, width). Returns (H, W, 3) uint8 RGB.
    """
    height, width = int(size[0]), int(size[1])
    if len(bodies) == 0:
        return np.zeros((height, width, 3), np.uint8)
    BodyResult, Keypoint, PoseResult, draw_poses = openpose_drawing()
    poses = []
    for index, body in enumerate(bodies):
        body = np.asarray(body, dtype=np.float64)
        if body.shape != (18, 3):
            raise ValueError(f"body {index} must be (18, 3) COCO-18 keypoints (x, y, confidence), got {body.shape}")
        keypoints = [Keypoint(x=float(x), y=float(y)) if c > 0 else None for x, y, c in body]
        poses.append(PoseResult(BodyResult(keypoints=keypoints, total_score=0.0, total_parts=0), None, None, None))
    canvas = draw_poses(poses, height, width, draw_body=True, draw_hand=False, draw_face=False)
    return np.ascontiguousarray(canvas, dtype=np.uint8)


def circle_geometry(
    centres: np.ndarray, boxes: np.ndarray, size: tuple[int, int], radius_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Circle centres and radii in pixels of a canvas of ``size`` (height, width).

    centres: (N, 2) normalised x, y. boxes: (N, 4) normalised x1, y1, x2, y2 of the face boxes.
    Returns centres_px (N, 2) in continuous pixel coordinates and radii_px (N,).
    """
    height, width = size
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if centres.shape[0] != boxes.shape[0]:
        raise ValueError(f"{centres.shape[0]} face centres but {boxes.shape[0]} face boxes")
    scale = np.array([width, height], np.float64)
    centres_px = centres * scale
    extent_px = np.abs(boxes[:, 2:] - boxes[:, :2]) * scale  # (N, 2) width, height
    radii_px = np.maximum(radius_fraction * extent_px.max(axis=1), MIN_RADIUS_PX)
    return centres_px, radii_px


def draw_circles(
    canvas: np.ndarray, centres_px: np.ndarray, radii_px: np.ndarray, colours: Sequence[Sequence[int]]
) -> np.ndarray:
    """Filled circles in place, in order: pixel (i, j) is painted when its centre (j + 0.5, i + 0.5)
    lies within ``radius`` of the circle centre (exact, no anti-aliasing). Returns the canvas."""
    height, width = canvas.shape[:2]
    for (cx, cy), radius, colour in zip(centres_px, radii_px, colours):
        x0, x1 = max(int(np.floor(cx - radius)), 0), min(int(np.ceil(cx + radius)) + 1, width)
        y0, y1 = max(int(np.floor(cy - radius)), 0), min(int(np.ceil(cy + radius)) + 1, height)
        if x0 >= x1 or y0 >= y1:
            continue  # entirely off the canvas
        xs = np.arange(x0, x1, dtype=np.float64) + 0.5 - cx
        ys = np.arange(y0, y1, dtype=np.float64) + 0.5 - cy
        inside = ys[:, None] ** 2 + xs[None, :] ** 2 <= radius**2  # (y1 - y0, x1 - x0)
        canvas[y0:y1, x0:x1][inside] = np.asarray(colour, dtype=np.uint8)
    return canvas


def draw_head_marks(canvas: np.ndarray, bodies: Sequence[np.ndarray]) -> np.ndarray:
    """OpenPose's discs of every present nose, eye and ear keypoint, in their OpenPose colours, painted
    over ``canvas`` in place (each point drawn alone, so no limb is redrawn). Returns the canvas."""
    singles = []
    for body in bodies:
        body = np.asarray(body, np.float64)
        for point in HEAD_POINTS:
            if body[point, 2] > 0:
                single = np.zeros((18, 3))
                single[point] = body[point]
                singles.append(single)
    if singles:
        marks = draw_skeletons(singles, canvas.shape[:2])
        drawn = marks.any(axis=2)  # (H, W)
        canvas[drawn] = marks[drawn]
    return canvas


def draw_control_image(
    size: tuple[int, int],
    config: InstantFamilyConfig,
    bodies: Sequence[np.ndarray] = (),
    face_boxes: np.ndarray | None = None,
    face_centres: np.ndarray | None = None,
    base: np.ndarray | None = None,
    colours: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """The control image: skeletons of ``bodies`` (or the given ``base`` pose image) plus ID circles.

    size: (height, width) of the canvas; with ``base`` it must equal base's size.
    face_boxes: (N, 4) normalised x1, y1, x2, y2 of the ID slots' face boxes, row n = slot n.
    face_centres: (N, 2) normalised circle centres; default: the boxes' centres.
    base: (H, W, 3) uint8 RGB pose image to draw circles on instead of drawing ``bodies``.
    colours: one RGB per slot (the trainer's per-sample draw); default ``config.slot_colours(N)``.
    Returns a new (H, W, 3) uint8 RGB array.
    """
    height, width = int(size[0]), int(size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"control image size must be positive, got {size}")
    if base is not None:
        base = np.asarray(base)
        if base.dtype != np.uint8 or base.ndim != 3 or base.shape[2] != 3:
            raise ValueError(f"pose image must be (H, W, 3) uint8 RGB, got {base.shape} {base.dtype}")
        if base.shape[:2] != (height, width):
            raise ValueError(f"pose image is {base.shape[:2]} but the control image size is {(height, width)}")
        if len(bodies):
            raise ValueError("give either a pose image or body keypoints, not both")
        canvas = np.ascontiguousarray(base).copy()
    else:
        canvas = draw_skeletons(bodies, (height, width))
    if face_boxes is None or len(face_boxes) == 0:
        return canvas
    face_boxes = np.asarray(face_boxes, dtype=np.float64).reshape(-1, 4)
    if face_centres is None:
        face_centres = (face_boxes[:, :2] + face_boxes[:, 2:]) / 2
    centres_px, radii_px = circle_geometry(face_centres, face_boxes, (height, width), config.circle_radius_fraction)
    if colours is None:
        colours = config.slot_colours(len(face_boxes))
    elif len(colours) != len(face_boxes):
        raise ValueError(f"{len(face_boxes)} face boxes but {len(colours)} circle colours")
    draw_circles(canvas, centres_px, radii_px, colours)
    return draw_head_marks(canvas, bodies)
