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

    from ..instantfamily_core.face_encoders import FACENET_WEIGHTS

    return os.path.join(folder_paths.models_dir, "facenet", FACENET_WEIGHTS)


_ENCODERS: dict = {}


def get_encoder(choice: str, analyzer=None):
    """Build (and keep, except the analyzer-backed one) the chosen face encoder."""
    from ..instantfamily_core.face_encoders import make_encoder

    if choice not in ENCODER_CHOICES:
        raise ValueError(f"encoder must be one of {ENCODER_CHOICES}, got {choice!r}")
    if choice.startswith("insightface"):
        if analyzer is None:
            raise ValueError("encoder 'insightface (analyzer)' needs the analyzer input: connect a Load Face Analyzer node")
        return make_encoder("insightface", analyzer=analyzer)
    key = (choice, facenet_weights_path() if choice == "facenet" else None)
    if key not in _ENCODERS:
        import comfy.model_management

        device = str(comfy.model_management.get_torch_device()) if choice == "facenet" else "cpu"
        _ENCODERS[key] = make_encoder(choice, facenet_weights=key[1], device=device)
    return _ENCODERS[key]


class InstantFamilyIdentityReport:
    """Identity preservation (SingleSim), mixing and MultiSim of generated images vs the FACES they were
    made from, as text, and the references x generated-faces confusion matrix as a heatmap IMAGE."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "faces": ("INSTANTFAMILY_FACES",),
                "encoder": (list(ENCODER_CHOICES), {
                    "default": "dlib",
                    "tooltip": "dlib: weights from PyPI, works everywhere; insightface: the pack's own recognizer "
                               "(needs the analyzer input); facenet: the paper's metric (pip install facenet-pytorch "
                               "--no-deps, weights in models/facenet/facenet_vggface2.safetensors)",
                }),
                "clamp": ("BOOLEAN", {"default": True,
                                      "tooltip": "clamp identity similarities at 0 as FastComposer's evaluation does"}),
            },
            "optional": {"analyzer": ("INSTANTFAMILY_ANALYZER",)},
        }

    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("report", "confusion_matrix")
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = f"{CATEGORY}/evaluation"

    def report(self, images, faces, encoder="dlib", clamp=True, analyzer=None):
        import numpy as np
        import torch

        from ..instantfamily_core.evaluation import identity_report
        from ..instantfamily_core.face_encoders import as_rgb_uint8

        enc = get_encoder(encoder, analyzer)
        frames = [as_rgb_uint8(images[b].cpu().numpy()) for b in range(images.shape[0])]
        text, heatmaps, _ = identity_report(enc, faces, frames, clamp=bool(clamp))
        log.info("%s", text)
        heatmap = torch.from_numpy(np.stack(heatmaps)).float() / 255.0  # (B, H, W, 3)
        return {"ui": {"text": [text]}, "result": (text, heatmap)}


NODE_CLASS_MAPPINGS = {"InstantFamilyIdentityReport": InstantFamilyIdentityReport}
NODE_DISPLAY_NAME_MAPPINGS = {"InstantFamilyIdentityReport": "InstantFamily Identity Report"}
