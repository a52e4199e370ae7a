"""The slots' face regions from each source: a pose, detected faces, face boxes, or user-drawn masks.

Whatever the source, a region is ``masks.masks_from_boxes`` of a face box grown by the margin (a drawn
mask is used as it is); the face box of a pose person is ``pose.parse_pose_keypoint``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from ..config import DEFAULT_OVERLAP, MASK_MARGIN
from ..identity import DetectedFace
from ..masks import FaceMasks, masks_from_boxes, masks_from_images
from ..pose import PoseFrame
from .overlap import resolve_overlap
from .slots import assign_slots, count_words, left_to_right, parse_order

logger = logging.getLogger(__name__)


def _empty(size: tuple[int, int]) -> FaceMasks:
    height, width = size
    return FaceMasks(masks=torch.zeros(0, height, width), centres=torch.zeros(0, 2), boxes=torch.zeros(0, 4))


def face_masks_from_pose(
    frame: PoseFrame,
    n_ids: int | None = None,
    order: str | Sequence[int] | None = None,
    margin: float = MASK_MARGIN,
    overlap: str = DEFAULT_OVERLAP,
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
                f"the pose has {count_words(len(frame.people), 'person', 'people')} but none shows a nose, eye or ear "
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
    margin: float = MASK_MARGIN,
    overlap: str = DEFAULT_OVERLAP,
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
    margin: float = MASK_MARGIN,
    overlap: str = DEFAULT_OVERLAP,
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
    masks, n_ids: int | None = None, order: str | Sequence[int] | None = None, overlap: str = DEFAULT_OVERLAP
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
            f"{count_words(n_ids, 'ID', 'IDs')} in the stack but the mask batch has {count_words(n_masks, 'mask', 'masks')}: "
            "give one mask per ID, or pick masks with 'order'"
        )
    chosen = assign_slots(list(range(n_masks)), n_ids, order, "masks")
    return resolve_overlap(masks_from_images(masks[chosen]), overlap)
