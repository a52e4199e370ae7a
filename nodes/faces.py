"""Face nodes: load an insightface model pack, and turn photos into identity slots."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("InstantFamily")

CATEGORY = "InstantFamily/faces"

MODE_TOOLTIP = (
    "largest face per image: each image gives one person (its largest face). "
    "every face: all faces of each image (a group photo), one ID each"
)
COMBINE_TOOLTIP = (
    "separate: one ID per chosen face. average / normalized average: all chosen faces are one person "
    "(e.g. several photos of them) and become one ID"
)
INDICES_TOOLTIP = "optional: which faces to keep, counted from 0 as numbered in the preview, e.g. 0,2,3"


def insightface_roots() -> list[str]:
    """ComfyUI's models/insightface folder(s) (registered by this pack, extra_model_paths kept)."""
    import folder_paths

    try:
        return list(folder_paths.get_folder_paths("insightface"))
    except KeyError:
        return [os.path.join(folder_paths.models_dir, "insightface")]


def to_numpy_images(images) -> list:
    """ComfyUI IMAGE (B, H, W, C) float 0..1 -> list of (H, W, C) float32 arrays."""
    return [image.detach().cpu().float().numpy() for image in images]


def to_image_batch(arrays):
    """List of (H, W, 3) uint8 arrays of one size -> ComfyUI IMAGE (B, H, W, 3) float 0..1."""
    import numpy as np
    import torch

    return torch.from_numpy(np.stack(arrays).astype(np.float32) / 255.0)


class InstantFamilyLoadFaceAnalyzer:
    """insightface face detector + the recognizer's global and local features in one pass."""

    @classmethod
    def INPUT_TYPES(cls):
        from ..instantfamily_core.faces.model_pack import list_model_packs
        from ..instantfamily_core.faces.providers import CHOICES

        return {
            "required": {
                "pack": (list_model_packs(insightface_roots()), {"default": "antelopev2",
                         "tooltip": "folder under models/insightface/models/ (antelopev2, buffalo_l, ...)"}),
                "provider": (list(CHOICES), {"default": "auto"}),
                "det_size": ("INT", {"default": 640, "min": 128, "max": 1280, "step": 32,
                                     "tooltip": "detection size; smaller sizes are tried when no face is found"}),
                "det_thresh": ("FLOAT", {"default": 0.5, "min": 0.05, "max": 0.95, "step": 0.05}),
            }
        }

    RETURN_TYPES = ("INSTANTFAMILY_ANALYZER",)
    RETURN_NAMES = ("analyzer",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, pack, provider, det_size, det_thresh):
        from ..instantfamily_core.faces.loader import load_face_analyzer

        return (load_face_analyzer(insightface_roots(), pack, provider, int(det_size), float(det_thresh)),)


class InstantFamilyLoadFaces:
    """Detect faces in a batch of photos and make identity slots (global + local features)."""

    @classmethod
    def INPUT_TYPES(cls):
        from ..instantfamily_core.faces.grouping import COMBINE, MODES, ORDERS

        return {
            "required": {
                "analyzer": ("INSTANTFAMILY_ANALYZER",),
                "images": ("IMAGE",),
                "mode": (list(MODES), {"default": MODES[0], "tooltip": MODE_TOOLTIP}),
                "order": (list(ORDERS), {"default": ORDERS[0], "tooltip": "order of the faces of one image"}),
                "combine": (list(COMBINE), {"default": COMBINE[0], "tooltip": COMBINE_TOOLTIP}),
                "face_indices": ("STRING", {"default": "", "multiline": False, "tooltip": INDICES_TOOLTIP}),
            },
            "optional": {
                "faces": ("INSTANTFAMILY_FACES", {"tooltip": "identities to keep first; the new ones are appended"}),
            },
        }

    RETURN_TYPES = ("INSTANTFAMILY_FACES", "IMAGE", "IMAGE")
    RETURN_NAMES = ("faces", "preview", "crops")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, analyzer, images, mode, order, combine, face_indices, faces=None):
        import comfy.utils

        from ..instantfamily_core.faces.grouping import append_faces
        from ..instantfamily_core.faces.pipeline import load_faces

        progress = comfy.utils.ProgressBar(len(images))
        loaded = load_faces(
            analyzer,
            to_numpy_images(images),
            mode=mode,
            order=order,
            indices=face_indices,
            combine=combine,
            progress=lambda done, total: progress.update_absolute(done, total),
        )
        result = append_faces(faces, loaded.faces)
        log.info("InstantFamily Load Faces: %d identity slot(s) from %d image(s)", len(result), len(images))
        return (result, to_image_batch(loaded.previews), to_image_batch(list(loaded.crops)))


NODE_CLASS_MAPPINGS = {
    "InstantFamilyLoadFaceAnalyzer": InstantFamilyLoadFaceAnalyzer,
    "InstantFamilyLoadFaces": InstantFamilyLoadFaces,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InstantFamilyLoadFaceAnalyzer": "Load Face Analyzer",
    "InstantFamilyLoadFaces": "Load Faces",
}
