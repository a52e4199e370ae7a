"""Face regions per ID slot, from detected faces, pose people or user masks, plus the ID assignment.

The package's API is imported from here; one concept per module: ``slots`` (which position each
ID takes, count errors), ``sources`` (regions from a pose, detections, boxes or user masks),
``overlap`` (the overlap rule), ``control`` (the slots' control image), ``preview`` (the Face Mask
preview).

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

from .control import control_image_for_slots, slot_boxes
from .overlap import resolve_overlap
from .preview import preview_face_masks
from .slots import left_to_right
from .sources import (
    face_masks_from_boxes,
    face_masks_from_detections,
    face_masks_from_pose,
    face_masks_from_user_masks,
    match_faces_to_people,
    pose_positions,
)

__all__ = [
    "control_image_for_slots",
    "face_masks_from_boxes",
    "face_masks_from_detections",
    "face_masks_from_pose",
    "face_masks_from_user_masks",
    "left_to_right",
    "match_faces_to_people",
    "pose_positions",
    "preview_face_masks",
    "resolve_overlap",
    "slot_boxes",
]
