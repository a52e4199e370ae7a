"""Nodes: Face Mask (ID regions from a template, a pose or masks) and the Pose + Circle control image."""

from __future__ import annotations

import logging

log = logging.getLogger("InstantFamily")

ORDER_TOOLTIP = (
    "Position of each ID, e.g. '2,0,1' gives ID 0 position 2, ID 1 position 0, ID 2 position 1. "
    "Positions are numbered left to right (masks: batch order). Empty: left to right."
)
MARGIN_TOOLTIP = "face box growth about its centre (0.25 = the paper's 25%); drawn masks are used as they are"
OVERLAP_TOOLTIP = "where two regions overlap: both faces visible, or only the nearest face"
SLOTS_TOOLTIP = "the ID slots (from Face Mask); without it every person with a head gets one, left to right"


def first_frame(pose_keypoint):
    """Frame 0 of a POSE_KEYPOINT value, parsed (a batch of frames is a video: its first frame is used)."""
    from ..instantfamily_core.pose import parse_pose_keypoint

    if isinstance(pose_keypoint, (list, tuple)) and len(pose_keypoint) > 1:
        log.info("InstantFamily: POSE_KEYPOINT has %d frames; using the first", len(pose_keypoint))
    return parse_pose_keypoint(pose_keypoint, frame=0)


def config_of(instantfamily):
    """The checkpoint's config (palette, circle radius rule), or the defaults when none is connected."""
    from ..instantfamily_core.config import InstantFamilyConfig

    return instantfamily.config if instantfamily is not None else InstantFamilyConfig()


def untrained_note(config, n_slots: int) -> str:
    """Refuse more slots than the palette has colours; log (and return) what this checkpoint was not trained for."""
    config.check_slot_count(n_slots)
    note = config.untrained_note(n_slots)
    if note:
        log.warning("InstantFamily: %s", note)
    return note


def detect_template_faces(analyzer, image_rgb):
    """Every face of the template image, in the analyzer's detector order."""
    return analyzer.analyze(image_rgb)


class InstantFamilyFaceMask:
    """Where each ID goes: one region per ID slot, from a template image, a pose or drawn masks."""

    DESCRIPTION = (
        "Where each ID stands: one region per ID (its face box enlarged by the margin), from a template "
        "photo, a POSE_KEYPOINT or drawn masks; the preview shows the regions in the slot colours."
    )

    @classmethod
    def INPUT_TYPES(cls):
        from ..instantfamily_core.config import DEFAULT_OVERLAP, MASK_MARGIN, OVERLAP_RULES

        return {
            "required": {
                "margin": (
                    "FLOAT",
                    {"default": MASK_MARGIN, "min": 0.0, "max": 2.0, "step": 0.01, "tooltip": MARGIN_TOOLTIP},
                ),
                "order": ("STRING", {"default": "", "multiline": False, "tooltip": ORDER_TOOLTIP}),
                "overlap": (list(OVERLAP_RULES), {"default": DEFAULT_OVERLAP, "tooltip": OVERLAP_TOOLTIP}),
            },
            "optional": {
                "faces": ("INSTANTFAMILY_FACES", {"tooltip": "the stack's IDs: one region per ID"}),
                "template": ("IMAGE", {"tooltip": "an image whose faces give the positions (needs the analyzer)"}),
                "analyzer": ("INSTANTFAMILY_ANALYZER",),
                "pose_keypoint": ("POSE_KEYPOINT", {"tooltip": "from an OpenPose / DWPose preprocessor node"}),
                "masks": ("MASK", {"tooltip": "one drawn mask per ID, in ID order"}),
                "instantfamily": ("INSTANTFAMILY_MODEL", {"tooltip": "for the preview's palette"}),
            },
        }

    RETURN_TYPES = ("INSTANTFAMILY_FACE_MASKS", "IMAGE")
    RETURN_NAMES = ("face_masks", "preview")
    FUNCTION = "build"
    CATEGORY = "InstantFamily/masks"

    def build(
        self,
        margin,
        order,
        overlap,
        faces=None,
        template=None,
        analyzer=None,
        pose_keypoint=None,
        masks=None,
        instantfamily=None,
    ):
        from ..instantfamily_core import face_regions
        from ..instantfamily_core.control_image import draw_skeletons
        from ..instantfamily_core.images import image_to_uint8, uint8_to_images

        given = [
            name
            for name, value in (("template", template), ("pose_keypoint", pose_keypoint), ("masks", masks))
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "Face Mask: connect exactly one of 'template' (+ 'analyzer'), 'pose_keypoint' or 'masks'"
                + (f"; got {', '.join(given)}" if given else "")
            )
        n_ids = None if faces is None else len(faces)
        background = None
        if pose_keypoint is not None:
            frame = first_frame(pose_keypoint)
            face_masks, _ = face_regions.face_masks_from_pose(frame, n_ids, order, margin, overlap)
            background = draw_skeletons(frame.bodies(), frame.size)
        elif template is not None:
            if analyzer is None:
                raise ValueError("Face Mask: a 'template' image needs an 'analyzer': connect a Load Face Analyzer node")
            background = image_to_uint8(template, name="template")
            detected = detect_template_faces(analyzer, background)
            face_masks = face_regions.face_masks_from_detections(
                detected, background.shape[:2], n_ids, order, margin, overlap
            )
        else:
            face_masks = face_regions.face_masks_from_user_masks(masks, n_ids, order, overlap)
        config = config_of(instantfamily)
        note = untrained_note(config, len(face_masks))
        preview = face_regions.preview_face_masks(face_masks, config, background, note=note)
        return (face_masks, uint8_to_images(preview))


class InstantFamilyPoseCircleImage:
    """The ControlNet image: OpenPose skeletons of everyone plus a palette circle on each ID's face."""

    DESCRIPTION = (
        "The Pose+Circle ControlNet's image: everybody's OpenPose skeleton plus a circle in the slot's "
        "colour on each ID's face, drawn exactly as the trainer drew them."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {},
            "optional": {
                "pose_keypoint": ("POSE_KEYPOINT", {"tooltip": "skeletons drawn from keypoints (all people)"}),
                "pose_image": ("IMAGE", {"tooltip": "a pose image you already have: only the circles are added"}),
                "face_masks": ("INSTANTFAMILY_FACE_MASKS", {"tooltip": SLOTS_TOOLTIP}),
                "instantfamily": ("INSTANTFAMILY_MODEL", {"tooltip": "the checkpoint's palette and circle size"}),
            },
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("control_image",)
    FUNCTION = "draw"
    CATEGORY = "InstantFamily/control"

    def draw(self, pose_keypoint=None, pose_image=None, face_masks=None, instantfamily=None):
        from ..instantfamily_core.face_regions import control_image_for_slots, face_masks_from_pose
        from ..instantfamily_core.images import images_to_uint8, uint8_to_images

        config = config_of(instantfamily)
        if face_masks is not None:
            untrained_note(config, len(face_masks))
        if (pose_keypoint is None) == (pose_image is None):
            raise ValueError("Pose Circle Image: connect either 'pose_keypoint' or 'pose_image' (not both)")
        if pose_keypoint is not None:
            frame = first_frame(pose_keypoint)
            if face_masks is None:
                face_masks, _ = face_masks_from_pose(frame)
            warn_aspect(face_masks.image_size, frame.size)
            drawn = control_image_for_slots(face_masks, config, frame.size, bodies=frame.bodies())
            return (uint8_to_images(drawn),)
        if face_masks is None:
            raise ValueError(
                "Pose Circle Image: with a 'pose_image', connect 'face_masks' to know where the circles go"
            )
        drawn_on_bases = []
        for base in images_to_uint8(pose_image, "pose_image"):
            warn_aspect(face_masks.image_size, base.shape[:2])
            drawn_on_bases.append(control_image_for_slots(face_masks, config, base.shape[:2], base=base))
        return (uint8_to_images(drawn_on_bases),)


def warn_aspect(mask_size, image_size) -> None:
    """Circles are placed in normalised coordinates: warn when the two images' shapes differ."""
    (mh, mw), (ih, iw) = mask_size, image_size
    if abs(mw / mh - iw / ih) > 0.02 * (iw / ih):
        log.warning(
            "InstantFamily: face masks are %dx%d but the pose is %dx%d; circles are placed proportionally",
            mw,
            mh,
            iw,
            ih,
        )


NODE_CLASS_MAPPINGS = {
    "InstantFamilyFaceMask": InstantFamilyFaceMask,
    "InstantFamilyPoseCircleImage": InstantFamilyPoseCircleImage,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InstantFamilyFaceMask": "Face Mask",
    "InstantFamilyPoseCircleImage": "Pose + Circle Image",
}
