"""Evaluation node: how well do generated images keep the identities of a FACES value?"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("InstantFamily")

CATEGORY = "InstantFamily"
ENCODER_CHOICES = ("dlib", "insightface (analyzer)", "facenet")


def facenet_weights_path() -> str:
    """models/facenet/<FACENET_WEIGHTS> of this ComfyUI."""
    import folder_paths

    from ..instantfamily_core.evaluation.encoders import FACENET_WEIGHTS

    return os.path.join(folder_paths.models_dir, "facenet", FACENET_WEIGHTS)


_ENCODERS: dict = {}


def get_encoder(choice: str, analyzer=None):
    """Build (and keep, except the analyzer-backed one) the chosen face encoder."""
    from ..instantfamily_core.evaluation.encoders import make_encoder

    if choice not in ENCODER_CHOICES:
        raise ValueError(f"encoder must be one of {ENCODER_CHOICES}, got {choice!r}")
    if choice.startswith("insightface"):
        if analyzer is None:
            raise ValueError(
                "encoder 'insightface (analyzer)' needs the analyzer input: connect a Load Face Analyzer node"
            )
        return make_encoder("insightface", analyzer=analyzer)
    key = (choice, facenet_weights_path() if choice == "facenet" else None)
    if key not in _ENCODERS:
        import comfy.model_management

        device = str(comfy.model_management.get_torch_device()) if choice == "facenet" else "cpu"
        _ENCODERS[key] = make_encoder(choice, facenet_weights=key[1], device=device)
    return _ENCODERS[key]


class InstantFamilyIdentityReport:
    """Is the right person in the right place? Per ID slot of the generated images: similarity and a
    verdict (OK / swapped / duplicate / wrong / missing) drawn on the image, slot accuracy, swaps,
    identity (SingleSim), mixing and MultiSim as text, and the references x slots confusion matrix."""

    DESCRIPTION = (
        "Checks the generated images: is the right person in the right place? Draws a verdict on every "
        "face (OK / swapped / duplicate / wrong / missing) and reports the scores and confusion matrix."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "faces": ("INSTANTFAMILY_FACES",),
                "encoder": (
                    list(ENCODER_CHOICES),
                    {
                        "default": "dlib",
                        "tooltip": "dlib: weights from PyPI, works everywhere; insightface: the pack's own recognizer "
                        "(needs the analyzer input); facenet: the paper's metric (pip install facenet-pytorch "
                        "--no-deps, weights in models/facenet/facenet_vggface2.safetensors)",
                    },
                ),
                "clamp": (
                    "BOOLEAN",
                    {"default": True, "tooltip": "clamp identity similarities at 0 as FastComposer's evaluation does"},
                ),
            },
            "optional": {
                "analyzer": ("INSTANTFAMILY_ANALYZER",),
                "face_masks": (
                    "INSTANTFAMILY_FACE_MASKS",
                    {
                        "tooltip": "the ID regions the images were generated with (Face Mask): each face is judged "
                        "in the slot whose region holds it, so a swap shows; without it faces are "
                        "matched to IDs by similarity"
                    },
                ),
            },
        }

    RETURN_TYPES = ("STRING", "IMAGE", "IMAGE")
    RETURN_NAMES = ("report", "confusion_matrix", "verdicts")
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = f"{CATEGORY}/evaluation"

    def report(self, images, faces, encoder="dlib", clamp=True, analyzer=None, face_masks=None):
        from ..instantfamily_core.evaluation.report import identity_report
        from ..instantfamily_core.images import images_to_uint8, uint8_to_images

        enc = get_encoder(encoder, analyzer)
        frames = images_to_uint8(images)
        text, heatmaps, drawn, _ = identity_report(enc, faces, frames, clamp=bool(clamp), face_masks=face_masks)
        log.info("%s", text)
        heatmap = uint8_to_images(heatmaps)  # (B, H, W, 3)
        verdicts = uint8_to_images(drawn)  # (B, H, W, 3)
        return {"ui": {"text": [text]}, "result": (text, heatmap, verdicts)}


NODE_CLASS_MAPPINGS = {"InstantFamilyIdentityReport": InstantFamilyIdentityReport}
NODE_DISPLAY_NAME_MAPPINGS = {"InstantFamilyIdentityReport": "InstantFamily Identity Report"}
