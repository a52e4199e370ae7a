"""Face regions per ID slot, from detected faces, pose people or user masks, plus the ID assignment.

The trainer builds its regions and control images with these same functions (``train/data.py``:
from the sample's stored POSE_KEYPOINT through :func:`face_masks_from_pose`, as the Face Mask node
does), so a checkpoint sees at inference the regions and circles it was trained on. Whatever the
source, a region is ``masks.masks_from_boxes`` of a face box grown by the margin (a drawn mask is
used as it is); the face box of a pose person is ``pose.parse_pose_keypoint``'s (68 landmarks, or
the head points).

Positions are numbered left to right (by face centre x, then y) for detected faces and pose people,
and in batch order for user masks. By default slot n takes position n; an explicit ``order`` such
as ``"2,0,1"`` gives slot 0 position 2, slot 1 position 0, slot 2 position 1. With more positions
than IDs the extra people keep no slot (their skeleton is still drawn); with fewer it is an error
that says what to change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from .config import OVERLAP_RULES, InstantFamilyConfig
from .control_image import draw_control_image
from .identity import DetectedFace
from .masks import FaceMasks, masks_from_boxes, masks_from_images
from .pose import PoseFrame
from .preview_text import draw_note, draw_slot_label

logger = logging.getLogger(__name__)

# What a position is called for each source: (singular, plural, "the pose has" phrase, fix).
_SOURCES = {
    "pose": ("person", "people", "the pose has", "use a pose with {n} people"),
    "template": ("face", "faces", "the template image has", "use a template image with {n} faces"),
    "masks": ("mask", "masks", "the mask batch has", "give one mask per ID"),
}


def _count(n: int, singular: str, plural: str) -> str:
    return f"{n} {singular if n == 1 else plural}"


def _source(source: str) -> tuple[str, str, str, str]:
    if source not in _SOURCES:
        raise ValueError(f"unknown face region source {source!r}; expected one of {sorted(_SOURCES)}")
    return _SOURCES[source]


def check_id_count(n_ids: int, n_positions: int, source: str) -> None:
    """Raise ValueError when the stack has more IDs than the source has positions."""
    singular, plural, has, fix = _source(source)
    if n_ids > n_positions:
        raise ValueError(
            f"{_count(n_ids, 'ID', 'IDs')} in the stack but {has} {_count(n_positions, singular, plural)}: "
            f"remove an ID or {fix.format(n=n_ids)}"
        )


def check_masks_match_ids(n_ids: int, face_masks: FaceMasks) -> None:
    """Raise ValueError unless the face masks have exactly one slot per ID of the stack."""
    if n_ids != len(face_masks):
        raise ValueError(
            f"{_count(n_ids, 'ID', 'IDs')} in the stack but the face masks have "
            f"{_count(len(face_masks), 'slot', 'slots')}: connect the same faces to the Face Mask node "
            "(its 'faces' input) or change the number of IDs"
        )


def parse_order(order: str | Sequence[int] | None) -> list[int] | None:
    """``"2,0,1"`` -> [2, 0, 1]; empty / None -> None (default order)."""
    if order is None:
        return None
    if isinstance(order, str):
        text = order.replace(";", ",").replace(" ", ",")
        parts = [p for p in text.split(",") if p.strip()]
        if not parts:
            return None
        try:
            return [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"order {order!r}: write position numbers separated by commas, e.g. '2,0,1'") from None
    return [int(v) for v in order]


def assign_slots(ranked: Sequence[int], n_ids: int | None, order: str | Sequence[int] | None, source: str) -> list[int]:
    """Which position each ID slot takes.

    ranked: the positions' item indices in user-visible order (left to right, or batch order).
    n_ids: IDs in the stack (None: one slot per position, or per ``order`` entry).
    Returns for each slot the item index (an entry of ``ranked``).
    """
    singular, plural, has, _ = _source(source)
    n_positions = len(ranked)
    picks = parse_order(order)
    if picks is not None:
        if n_ids is not None and len(picks) != n_ids:
            raise ValueError(
                f"order {order!r} lists {_count(len(picks), 'position', 'positions')} but the stack has "
                f"{_count(n_ids, 'ID', 'IDs')}: list one position per ID"
            )
        numbering = "from left to right" if source != "masks" else "in batch order"
        for value in picks:
            if not 0 <= value < n_positions:
                raise ValueError(
                    f"order {order!r}: position {value} does not exist; {has} "
                    f"{_count(n_positions, singular, plural)}, numbered 0..{n_positions - 1} {numbering}"
                )
        duplicates = sorted({v for v in picks if picks.count(v) > 1})
        if duplicates:
            raise ValueError(f"order {order!r}: position {duplicates[0]} is given to more than one ID")
        return [ranked[v] for v in picks]
    n = n_positions if n_ids is None else n_ids
    check_id_count(n, n_positions, source)
    if n < n_positions:
        logger.info(
            "%s: %s, %s get an ID; the others get no face region", has, _count(n_positions, singular, plural), n
        )
    return list(ranked[:n])


def left_to_right(centres: np.ndarray) -> list[int]:
    """Item indices sorted by centre x, then y. centres: (P, 2)."""
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    return sorted(range(len(centres)), key=lambda i: (centres[i, 0], centres[i, 1], i))


def resolve_overlap(face_masks: FaceMasks, overlap: str = "both") -> FaceMasks:
    """Apply the overlap rule in image space.

    "both": unchanged (an overlapped pixel sees both faces). "nearest": a pixel covered by several
    slots stays only in the slot whose face centre is nearest (in pixels).
    """
    if overlap not in OVERLAP_RULES:
        raise ValueError(f"overlap must be one of {OVERLAP_RULES}, got {overlap!r}")
    if overlap == "both" or len(face_masks) < 2:
        return face_masks
    n, height, width = face_masks.masks.shape
    on = face_masks.masks >= 0.5  # (N, H, W)
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    cx = face_masks.centres[:, 0].float() * width
    cy = face_masks.centres[:, 1].float() * height
    dx = xs[None, None, :] - cx[:, None, None]  # (N, 1, W)
    dy = ys[None, :, None] - cy[:, None, None]  # (N, H, 1)
    distance = (dx**2 + dy**2).masked_fill(~on, float("inf"))  # (N, H, W)
    nearest = distance.argmin(dim=0)  # (H, W)
    keep = on & (nearest[None] == torch.arange(n)[:, None, None])
    return FaceMasks(masks=keep.float(), centres=face_masks.centres, boxes=face_masks.boxes)


def _empty(size: tuple[int, int]) -> FaceMasks:
    height, width = size
    return FaceMasks(masks=torch.zeros(0, height, width), centres=torch.zeros(0, 2), boxes=torch.zeros(0, 4))


def face_masks_from_pose(
    frame: PoseFrame,
    n_ids: int | None = None,
    order: str | Sequence[int] | None = None,
    margin: float = 0.25,
    overlap: str = "both",
) -> tuple[FaceMasks, list[int]]:
    """Face masks of the ID slots from a parsed pose frame, in the canvas' size.

    Returns the masks and, per slot, the index of the person in ``frame.people``.
    """
    if n_ids == 0:
        return _empty(frame.size), []
    with_face = [i for i, person in enumerate(frame.people) if person.face_box is not None]
    if not with_face:
        if frame.people:
            raise ValueError(
                f"the pose has {_count(len(frame.people), 'person', 'people')} but none shows a nose, eye or ear "
                "keypoint, so no face position is known: use a pose where each ID's head is visible, or draw masks"
            )
        raise ValueError("the pose has no people: use a pose with one person per ID, or draw masks")
    if len(with_face) < len(frame.people) and (n_ids is None or n_ids > len(with_face)):
        logger.warning(
            "%d of %d people in the pose show no head keypoint and cannot take an ID",
            len(frame.people) - len(with_face),
            len(frame.people),
        )
    people = assign_slots(pose_positions(frame), n_ids, order, "pose")
    scale = np.array([frame.width, frame.height, frame.width, frame.height], np.float64)
    boxes_px = np.stack([_known(frame.people[i].face_box) * scale for i in people])  # (N, 4)
    face_masks = masks_from_boxes(torch.from_numpy(boxes_px).float(), frame.size, margin)
    return resolve_overlap(face_masks, overlap), people


def _known(value: np.ndarray | None) -> np.ndarray:
    """A face box or centre the caller has checked exists."""
    if value is None:
        raise ValueError("a person without a face box was given a face slot")
    return value


def pose_positions(frame: PoseFrame) -> list[int]:
    """Indices in ``frame.people`` of the people with a face box, left to right: what ``order`` numbers."""
    with_face = [i for i, person in enumerate(frame.people) if person.face_box is not None]
    if not with_face:
        return []
    centres = np.stack([_known(frame.people[i].face_centre) for i in with_face])
    return [with_face[k] for k in left_to_right(centres)]


def match_faces_to_people(face_boxes: np.ndarray, frame: PoseFrame) -> list[int | None]:
    """For each detected face box, the pose person it belongs to (index in ``frame.people``), or None.

    face_boxes: (F, 4) normalised x1, y1, x2, y2. A person matches a face when the centre of the
    person's pose face box lies inside the detected box; pairs are taken nearest centres first, one to one.
    """
    face_boxes = np.asarray(face_boxes, np.float64).reshape(-1, 4)
    scale = np.array([frame.width, frame.height], np.float64)  # distances in pixels (isotropic)
    pairs = []
    for f, box in enumerate(face_boxes):
        centre = (box[:2] + box[2:]) / 2 * scale
        for p, person in enumerate(frame.people):
            if person.face_box is None:
                continue
            person_centre = _known(person.face_centre)
            x, y = person_centre
            if box[0] <= x <= box[2] and box[1] <= y <= box[3]:
                pairs.append((float(np.linalg.norm(person_centre * scale - centre)), f, p))
    matched: list[int | None] = [None] * len(face_boxes)
    taken = set()
    for _, f, p in sorted(pairs):
        if matched[f] is None and p not in taken:
            matched[f] = p
            taken.add(p)
    return matched


def face_masks_from_detections(
    faces: Sequence[DetectedFace],
    image_size: tuple[int, int],
    n_ids: int | None = None,
    order: str | Sequence[int] | None = None,
    margin: float = 0.25,
    overlap: str = "both",
) -> FaceMasks:
    """Face masks of the ID slots from faces detected on a template image of ``image_size`` (H, W)."""
    if n_ids == 0:
        return _empty(image_size)
    if not faces:
        raise ValueError(
            "no face was found on the template image: use a template where each ID's face is visible, "
            "or give a pose or masks instead"
        )
    boxes = np.stack([np.asarray(face.box, dtype=np.float64).reshape(4) for face in faces])  # (P, 4) px
    return face_masks_from_boxes(boxes, image_size, n_ids, order, margin, overlap)


def face_masks_from_boxes(
    boxes_px: np.ndarray,
    image_size: tuple[int, int],
    n_ids: int | None = None,
    order: str | Sequence[int] | None = None,
    margin: float = 0.25,
    overlap: str = "both",
) -> FaceMasks:
    """Face masks of the ID slots from detector face boxes (P, 4) in pixels of an image of ``image_size``."""
    boxes_px = np.asarray(boxes_px, np.float64).reshape(-1, 4)
    if n_ids == 0 or (n_ids is None and len(boxes_px) == 0):
        return _empty(image_size)
    ranked = left_to_right((boxes_px[:, :2] + boxes_px[:, 2:]) / 2)
    chosen = assign_slots(ranked, n_ids, order, "template")
    face_masks = masks_from_boxes(torch.from_numpy(boxes_px[chosen]).float(), image_size, margin)
    return resolve_overlap(face_masks, overlap)


def face_masks_from_user_masks(
    masks, n_ids: int | None = None, order: str | Sequence[int] | None = None, overlap: str = "both"
) -> FaceMasks:
    """Face masks from user-drawn masks (M, H, W), one per ID in batch order (or picked by ``order``).

    No margin is added: a drawn mask already is the region.
    """
    masks = torch.as_tensor(masks, dtype=torch.float32)
    if masks.dim() == 2:
        masks = masks[None]
    if masks.dim() != 3:
        raise ValueError(f"masks must be a MASK batch (B, H, W), got shape {tuple(masks.shape)}")
    n_masks = masks.shape[0]
    if n_ids == 0:
        return _empty((masks.shape[1], masks.shape[2]))
    if n_ids is not None and parse_order(order) is None and n_ids < n_masks:
        raise ValueError(
            f"{_count(n_ids, 'ID', 'IDs')} in the stack but the mask batch has {_count(n_masks, 'mask', 'masks')}: "
            "give one mask per ID, or pick masks with 'order'"
        )
    chosen = assign_slots(list(range(n_masks)), n_ids, order, "masks")
    return resolve_overlap(masks_from_images(masks[chosen]), overlap)


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
