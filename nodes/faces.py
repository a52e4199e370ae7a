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
EXTRA_IMAGE_INPUTS = 3  # images_2 .. images_4
MORE_IMAGES_TOOLTIP = (
    "more photos, of any size, analysed after 'images' as if in the same batch (e.g. several "
    "photos of one person with combine = average); no Image Batch node, no resizing needed"
)


def insightface_roots() -> list[str]:
    """ComfyUI's models/insightface folder(s) (registered by this pack, extra_model_paths kept)."""
    import folder_paths

    try:
        return list(folder_paths.get_folder_paths("insightface"))
    except KeyError:
        return [os.path.join(folder_paths.models_dir, "insightface")]


class InstantFamilyLoadFaceAnalyzer:
    """insightface face detector + the recognizer's global and local features in one pass."""

    DESCRIPTION = (
        "Loads an insightface model pack (detector + ArcFace recognizer) from models/insightface/models; "
        "each face gives the global embedding and the last feature map InstantFamily uses."
    )

    @classmethod
    def INPUT_TYPES(cls):
        from ..instantfamily_core.faces.model_pack import list_model_packs
        from ..instantfamily_core.faces.providers import CHOICES

        return {
            "required": {
                "pack": (
                    list_model_packs(insightface_roots()),
                    {
                        "default": "antelopev2",
                        "tooltip": "folder under models/insightface/models/ (antelopev2, buffalo_l, ...)",
                    },
                ),
                "provider": (
                    list(CHOICES),
                    {
                        "default": "auto",
                        "tooltip": "where ONNX Runtime runs face analysis; auto = the GPU when it offers one",
                    },
                ),
                "det_size": (
                    "INT",
                    {
                        "default": 640,
                        "min": 128,
                        "max": 1280,
                        "step": 32,
                        "tooltip": "detection size; smaller sizes are tried when no face is found",
                    },
                ),
                "det_thresh": (
                    "FLOAT",
                    {
                        "default": 0.5,
                        "min": 0.05,
                        "max": 0.95,
                        "step": 0.05,
                        "tooltip": "detector confidence a face needs; lower it when faces are missed",
                    },
                ),
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

    DESCRIPTION = (
        "Finds the faces in the photos and makes one identity (ID) per face or per photo; IDs keep the "
        "order shown in the preview. Chain nodes through 'faces' to add more people."
    )

    @classmethod
    def INPUT_TYPES(cls):
        from ..instantfamily_core.faces.grouping import COMBINE_RULES, FACE_ORDERS, FACE_SELECTION_MODES

        return {
            "required": {
                "analyzer": ("INSTANTFAMILY_ANALYZER",),
                "images": ("IMAGE",),
                "mode": (list(FACE_SELECTION_MODES), {"default": FACE_SELECTION_MODES[0], "tooltip": MODE_TOOLTIP}),
                "order": (list(FACE_ORDERS), {"default": FACE_ORDERS[0], "tooltip": "order of the faces of one image"}),
                "combine": (list(COMBINE_RULES), {"default": COMBINE_RULES[0], "tooltip": COMBINE_TOOLTIP}),
                "face_indices": ("STRING", {"default": "", "multiline": False, "tooltip": INDICES_TOOLTIP}),
            },
            "optional": {
                "faces": ("INSTANTFAMILY_FACES", {"tooltip": "identities to keep first; the new ones are appended"}),
                **{
                    f"images_{n}": ("IMAGE", {"tooltip": MORE_IMAGES_TOOLTIP}) for n in range(2, 2 + EXTRA_IMAGE_INPUTS)
                },
            },
        }

    RETURN_TYPES = ("INSTANTFAMILY_FACES", "IMAGE", "IMAGE")
    RETURN_NAMES = ("faces", "preview", "crops")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, analyzer, images, mode, order, combine, face_indices, faces=None, **more_images):
        import comfy.utils

        from ..instantfamily_core.faces.grouping import append_faces
        from ..instantfamily_core.faces.pipeline import load_faces
        from ..instantfamily_core.images import images_to_uint8, uint8_to_images

        photos = images_to_uint8(images)
        for n in range(2, 2 + EXTRA_IMAGE_INPUTS):  # photos of any size, no batching (and resizing) needed
            if more_images.get(f"images_{n}") is not None:
                photos += images_to_uint8(more_images[f"images_{n}"], f"images_{n}")
        progress = comfy.utils.ProgressBar(len(photos))
        loaded = load_faces(
            analyzer,
            photos,
            mode=mode,
            order=order,
            indices=face_indices,
            combine=combine,
            progress=lambda done, total: progress.update_absolute(done, total),
        )
        result = append_faces(faces, loaded.faces)
        log.info("InstantFamily Load Faces: %d identity slot(s) from %d image(s)", len(result), len(photos))
        return (result, uint8_to_images(loaded.previews), uint8_to_images(list(loaded.crops)))


NODE_CLASS_MAPPINGS = {
    "InstantFamilyLoadFaceAnalyzer": InstantFamilyLoadFaceAnalyzer,
    "InstantFamilyLoadFaces": InstantFamilyLoadFaces,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InstantFamilyLoadFaceAnalyzer": "Load Face Analyzer",
    "InstantFamilyLoadFaces": "Load Faces",
}
