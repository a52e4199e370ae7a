"""The API-format ComfyUI graph that generates one benchmark image with this pack's real nodes.

Load Faces per reference (chained: slot k = reference k) -> Build Embedding Stack; the ID regions
as drawn masks -> Face Mask; a pose image (or a black canvas: circles only) -> Pose+Circle Image ->
Pose+Circle ControlNet; Apply InstantFamily -> KSampler -> decode -> SaveImage. The base model is an
SD1.5 checkpoint (``checkpoint``) or the built-in demo's toy base (``toy_base``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import DEFAULT_OVERLAP, MASK_MARGIN
from ..faces.grouping import COMBINE_RULES, FACE_ORDERS, FACE_SELECTION_MODES
from .comfy_client import SUBFOLDER

# A standing person in COCO-18 order, in head heights relative to the nose (x right, y down).
_STANDING = np.array(
    [
        (0.0, 0.0),
        (0.0, 0.9),
        (-0.9, 1.0),
        (-1.2, 2.2),
        (-1.3, 3.3),
        (0.9, 1.0),
        (1.2, 2.2),
        (1.3, 3.3),
        (-0.5, 3.4),
        (-0.5, 4.9),
        (-0.5, 6.4),
        (0.5, 3.4),
        (0.5, 4.9),
        (0.5, 6.4),
        (-0.2, -0.15),
        (0.2, -0.15),
        (-0.4, -0.05),
        (0.4, -0.05),
    ]
)


@dataclass
class GenerationSettings:
    """Models and sampling of the generation graph (attribute names shared with the CLIs' options)."""

    instantfamily: str  # file in models/instantfamily
    checkpoint: str | None = None  # SD1.5 file in models/checkpoints
    toy_base: str | None = None  # or the demo's toy base model (its caption is the prompt)
    insightface_pack: str = "antelopev2"
    negative: str = ""
    steps: int = 50
    cfg: float = 5.0
    sampler: str = "ddim"
    scheduler: str = "ddim_uniform"
    width: int = 512
    height: int = 512
    weight: float = 1.0
    controlnet_strength: float = 1.0

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.toy_base is None):
            raise ValueError(
                "give exactly one base model: an SD1.5 checkpoint (--checkpoint) or the demo's toy base (--toy-base)"
            )


def add_generation_options(parser) -> None:
    """The generation graph's command-line options (one definition for every CLI that generates)."""
    p = parser
    p.add_argument("--checkpoint", help="SD1.5 checkpoint in ComfyUI's models/checkpoints")
    p.add_argument("--toy-base", help="the built-in demo's toy base model instead of --checkpoint")
    p.add_argument("--instantfamily", help="InstantFamily file in ComfyUI's models/instantfamily")
    p.add_argument("--insightface-pack", default="antelopev2", help="the pack Load Faces uses in ComfyUI")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--scheduler", default="ddim_uniform")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--negative", default="")
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--controlnet-strength", type=float, default=1.0)


def settings_from_args(args) -> GenerationSettings:
    """``GenerationSettings`` from ``add_generation_options``' parsed options; SystemExit naming what is missing."""
    if not args.instantfamily:
        raise SystemExit("generation needs --instantfamily (a file in ComfyUI's models/instantfamily)")
    try:
        return GenerationSettings(
            args.instantfamily,
            args.checkpoint,
            args.toy_base,
            args.insightface_pack,
            args.negative,
            args.steps,
            args.cfg,
            args.sampler,
            args.scheduler,
            args.width,
            args.height,
            args.weight,
            args.controlnet_strength,
        )
    except ValueError as e:
        raise SystemExit(str(e)) from None


def side_by_side_layout(n: int, width: int = 512, height: int = 512, margin: float = MASK_MARGIN):
    """N standing people: (bodies (N, 18, 3) normalised, face masks (N, H, W) uint8 0/255)."""
    head = min(0.55 / n, 0.12)  # head height as a fraction of the image width
    bodies, masks = [], []
    for k in range(n):
        cx, cy = (k + 0.5) / n, 0.2
        pts = np.array([(cx + dx * head, cy + dy * head * width / height) for dx, dy in _STANDING])
        bodies.append(np.concatenate([np.clip(pts, 0, 1), (pts[:, 1:2] <= 1.0).astype(float)], 1))
        half_w = 0.5 * head * (1 + margin) * width  # the head box, enlarged by the margin, in pixels
        half_h = 0.6 * head * (1 + margin) * width
        x0, y0 = cx * width, (cy - 0.05 * head * width / height) * height
        mask = np.zeros((height, width), np.uint8)
        top, bottom = int(max(0, y0 - half_h)), int(min(height, y0 + half_h))
        mask[top:bottom, int(max(0, x0 - half_w)) : int(min(width, x0 + half_w))] = 255
        masks.append(mask)
    return np.stack(bodies), np.stack(masks)


def _base_nodes(settings, text: str) -> tuple[dict, list, list, list]:
    """(nodes, model, positive, negative) of the base model."""
    if getattr(settings, "toy_base", None):
        nodes = {
            "base": {
                "class_type": "InstantFamilyToyBaseModel",
                "inputs": {"base_file": settings.toy_base, "caption": text},
            }
        }
        return nodes, ["base", 0], ["base", 1], ["base", 2]
    nodes = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": settings.checkpoint}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": settings.negative, "clip": ["ckpt", 1]}},
    }
    return nodes, ["ckpt", 0], ["pos", 0], ["neg", 0]


def build_prompt(settings, refs: list[str], masks: str, pose: str | None, text: str, seed: int, prefix: str) -> dict:
    """The graph of one image (node ids are strings, links [node id, output index]).

    refs: uploaded reference images, one per ID; masks: the uploaded multi-frame mask TIFF (frame k
    = slot k's region); pose: an uploaded skeleton image, or None for a black canvas (circles only).
    """
    g, model, positive, negative = _base_nodes(settings, text)
    g["if"] = {"class_type": "InstantFamilyModelLoader", "inputs": {"instantfamily_file": settings.instantfamily}}
    g["analyzer"] = {
        "class_type": "InstantFamilyLoadFaceAnalyzer",
        "inputs": {"pack": settings.insightface_pack, "provider": "auto", "det_size": 640, "det_thresh": 0.5},
    }
    faces = None
    for k, ref in enumerate(refs):  # one Load Faces per identity, chained: slot k = identity k
        g[f"ref{k}"] = {"class_type": "LoadImage", "inputs": {"image": ref}}
        inputs = {
            "analyzer": ["analyzer", 0],
            "images": [f"ref{k}", 0],
            "mode": FACE_SELECTION_MODES[0],
            "order": FACE_ORDERS[0],
            "combine": COMBINE_RULES[0],
            "face_indices": "",
        }
        if faces is not None:
            inputs["faces"] = faces
        g[f"faces{k}"] = {"class_type": "InstantFamilyLoadFaces", "inputs": inputs}
        faces = [f"faces{k}", 0]
    g["masks"] = {"class_type": "LoadImage", "inputs": {"image": masks}}
    g["regions"] = {
        "class_type": "InstantFamilyFaceMask",
        "inputs": {
            "margin": MASK_MARGIN,
            "order": "",
            "overlap": DEFAULT_OVERLAP,
            "faces": faces,
            "masks": ["masks", 1],
            "instantfamily": ["if", 0],
        },
    }
    if pose is None:
        g["pose"] = {
            "class_type": "EmptyImage",
            "inputs": {"width": settings.width, "height": settings.height, "batch_size": 1, "color": 0},
        }
    else:
        g["pose"] = {"class_type": "LoadImage", "inputs": {"image": pose}}
    g["control"] = {
        "class_type": "InstantFamilyPoseCircleImage",
        "inputs": {"pose_image": ["pose", 0], "face_masks": ["regions", 0], "instantfamily": ["if", 0]},
    }
    g["stack"] = {
        "class_type": "InstantFamilyBuildEmbeddingStack",
        "inputs": {"instantfamily": ["if", 0], "faces": faces},
    }
    g["cn"] = {
        "class_type": "InstantFamilyPoseCircleControlNet",
        "inputs": {
            "positive": positive,
            "negative": negative,
            "model": model,
            "instantfamily": ["if", 0],
            "stack": ["stack", 0],
            "face_masks": ["regions", 0],
            "control_image": ["control", 0],
            "strength": settings.controlnet_strength,
            "start_percent": 0.0,
            "end_percent": 1.0,
        },
    }
    g["apply"] = {
        "class_type": "InstantFamilyApply",
        "inputs": {
            "model": model,
            "instantfamily": ["if", 0],
            "stack": ["stack", 0],
            "face_masks": ["regions", 0],
            "weight": settings.weight,
            "start_at": 0.0,
            "end_at": 1.0,
            "mask_mode": "as trained",
            "overlap": DEFAULT_OVERLAP,
        },
    }
    g["latent"] = {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": settings.width, "height": settings.height, "batch_size": 1},
    }
    g["sample"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": ["apply", 0],
            "positive": ["cn", 0],
            "negative": ["cn", 1],
            "latent_image": ["latent", 0],
            "seed": seed,
            "steps": settings.steps,
            "cfg": settings.cfg,
            "sampler_name": settings.sampler,
            "scheduler": settings.scheduler,
            "denoise": 1.0,
        },
    }
    if getattr(settings, "toy_base", None):
        g["decode"] = {"class_type": "InstantFamilyToyDecode", "inputs": {"samples": ["sample", 0], "scale": 8}}
    else:
        g["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    g["save"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["decode", 0], "filename_prefix": f"{SUBFOLDER}/{prefix}"},
    }
    return g
