"""Toy-world demo nodes: a tiny base model, toy identities and a latent decoder for the built-in demo.

They stand in for what a user brings (an SD1.5 checkpoint + CLIP + VAE, photos of people, an
insightface pack) so that the pack's real nodes -- Load InstantFamily Model, Build Embedding Stack,
Face Mask, Pose + Circle Image, Pose+Circle ControlNet, Apply InstantFamily -- and the stock
KSampler run end to end without downloaded weights. The toy world is described in
``toyworld``; its demo files live in ``toyworld/assets`` (registered below as extra
``instantfamily`` and ``insightface`` model folders, so the toy checkpoint and the ``toyface``
recognizer pack show up in the regular loaders).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("InstantFamily")

CATEGORY = "InstantFamily/demo"
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "toyworld", "assets")
TOY_PACK = "toyface"


def register_asset_folders() -> None:
    """Add the bundled toy checkpoint and recognizer folders to ComfyUI's model search paths."""
    import folder_paths

    for name, sub in (("instantfamily", "instantfamily"), ("insightface", "insightface")):
        folder = os.path.join(ASSETS, sub)
        if os.path.isdir(folder) and name in folder_paths.folder_names_and_paths:
            paths = folder_paths.folder_names_and_paths[name][0]
            if folder not in paths:
                paths.append(folder)


def toy_base_files() -> list[str]:
    try:
        return sorted(n for n in os.listdir(ASSETS) if n.endswith(".safetensors") and "toy_base" in n)
    except OSError:
        return []


def build_comfy_model(path: str):
    """A ComfyUI MODEL (SD1.5 family) from a toy base file: ldm config and weight names from the trainer's converter."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    from ..instantfamily_core.ldm_convert import ldm_unet_config, unet_to_ldm
    from ..toyworld.base_model import read_toy_base

    meta, tensors = read_toy_base(path)
    unet_config = ldm_unet_config(meta["unet_config"])
    unet_config["dtype"] = torch.float32
    model_config = comfy.supported_models.SD15(unet_config)
    model_config.unet_config["num_heads"] = unet_config["num_heads"]  # SD15 forces 8; keep the file's
    model_config.unet_config["num_head_channels"] = unet_config["num_head_channels"]
    model = model_config.get_model({})
    state = {k[len("unet.") :]: v.float() for k, v in tensors.items() if k.startswith("unet.")}
    missing, unexpected = model.diffusion_model.load_state_dict(unet_to_ldm(state, meta["unet_config"]), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: toy UNet weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


class InstantFamilyToyBaseModel:
    """The toy base model (tiny SD1.5-family UNet) and the caption's conditioning: MODEL + CONDITIONING."""

    DESCRIPTION = (
        "Demo only: the built-in toy base model (32x32 synthetic scenes, not Stable Diffusion) and its caption."
    )

    @classmethod
    def INPUT_TYPES(cls):
        from ..toyworld import world

        colours = ", ".join(world.BACKGROUND_COLOURS)
        styles = ", ".join(world.BACKGROUND_STYLES)
        return {
            "required": {
                "base_file": (
                    toy_base_files() or ["toy_base.safetensors"],
                    {"tooltip": "the demo's toy base model (not Stable Diffusion), from the pack's demo assets"},
                ),
                "caption": (
                    "STRING",
                    {
                        "default": "three people on a teal gradient background",
                        "tooltip": f"'<count> people on a <colour> <style> background'; colours: {colours}; "
                        f"styles: {styles}",
                    },
                ),
            }
        }

    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("model", "positive", "negative")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, base_file, caption):
        from ..toyworld.base_model import ToyTextEncoder, read_toy_base

        path = os.path.join(ASSETS, base_file)
        if not os.path.isfile(path):
            raise ValueError(
                f"toy base model {path} not found: run `bash scripts/run_demo.sh` (it builds the toy "
                "model) or `python -m toyworld.build --demo`"
            )
        _, tensors = read_toy_base(path)
        text = ToyTextEncoder(tensors["text.tokens"], tensors["text.positions"])
        positive = text.encode([caption])  # (1, T, d)
        negative = text.encode([""])
        log.info("InstantFamily demo: TOY base model %s (not SD1.5), caption %r", base_file, caption)
        return (build_comfy_model(path), [[positive, {"pooled_output": None}]], [[negative, {"pooled_output": None}]])


def _parse_identities(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(
            f"identities {text!r}: give toy identity numbers separated by commas, e.g. '3000, 3001'"
        ) from None
    if not 1 <= len(ids) <= 16 or any(i < 0 for i in ids):
        raise ValueError(f"identities {text!r}: give 1 to 16 non-negative identity numbers")
    return ids


class InstantFamilyToyFaces:
    """Toy identities -> INSTANTFAMILY_FACES through the pack's recognizer code (ground-truth face keypoints,
    no detector), their reference portraits, and a POSE_KEYPOINT template with one person per identity."""

    DESCRIPTION = "Demo only: toy identities of the built-in toy world as faces, portraits and a pose template."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "identities": (
                    "STRING",
                    {
                        "default": "3000, 3001, 3002",
                        "tooltip": "toy identity numbers; 3000-3499 were never seen in training",
                    },
                ),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "portrait and layout variation"}),
                "recognizer_pack": (
                    "STRING",
                    {"default": TOY_PACK, "tooltip": "folder under models/insightface/models"},
                ),
            }
        }

    RETURN_TYPES = ("INSTANTFAMILY_FACES", "IMAGE", "POSE_KEYPOINT")
    RETURN_NAMES = ("faces", "references", "pose_keypoint")
    FUNCTION = "make"
    CATEGORY = CATEGORY

    def make(self, identities, seed, recognizer_pack):
        import numpy as np

        from ..instantfamily_core.faces.from_keypoints import faces_from_keypoints
        from ..instantfamily_core.faces.model_pack import find_model_pack
        from ..instantfamily_core.faces.recognizer import OnePassRecognizer
        from ..instantfamily_core.identity import Faces, Identity
        from ..instantfamily_core.images import uint8_to_images
        from ..toyworld import world
        from .faces import insightface_roots

        ids = _parse_identities(identities)
        pack = find_model_pack(insightface_roots(), recognizer_pack)
        recognizer = OnePassRecognizer(pack.onnx_files[0], providers=["CPUExecutionProvider"], pack=recognizer_pack)
        rng = np.random.default_rng(seed)
        slots, portraits = [], []
        for identity in ids:
            portrait = world.render_portrait(world.identity_params(identity), 64, rng)
            geometry = portrait.geometry
            (face,) = faces_from_keypoints(recognizer, portrait.image, geometry.keypoints[None], geometry.box[None])
            slots.append(Identity(face.global_feature, face.local_feature, label=f"toy ID {identity}", sources=[face]))
            portraits.append(portrait.image)
        pose = toy_pose_keypoint(ids, rng) if len(ids) <= 6 else None
        if pose is None:
            raise ValueError("the toy layouts hold 1 to 6 people: give at most 6 identities")
        references = uint8_to_images(portraits)  # (N, 64, 64, 3)
        return (Faces(slots, recognizer.info), references, pose)


def toy_pose_keypoint(ids, rng, size: int = 32, canvas: int = 256):
    """POSE_KEYPOINT of a toy scene layout for ``ids`` (one person each, left to right)."""
    from ..instantfamily_core.pose import encode_pose_keypoint
    from ..toyworld import world

    scene = world.make_scene(list(ids), rng, size=size)
    return encode_pose_keypoint(scene.bodies(), canvas, canvas, world.face_landmarks(scene))


class InstantFamilyToyDecode:
    """Toy LATENT -> IMAGE: the latent is the scene itself (one pixel per latent cell), shown enlarged."""

    DESCRIPTION = "Demo only: shows a toy latent as an image (the toy world's latent is the picture itself)."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT",),
                "scale": ("INT", {"default": 8, "min": 1, "max": 16, "tooltip": "pixel enlargement"}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = CATEGORY

    def decode(self, samples, scale):
        from ..toyworld.base_model import latent_to_image

        image = latent_to_image(samples["samples"])  # (B, h, w, 3)
        if scale > 1:
            image = image.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
        return (image,)


try:  # inside ComfyUI: make the bundled toy files visible to the regular loaders
    register_asset_folders()
except ImportError:  # imported outside ComfyUI
    pass

NODE_CLASS_MAPPINGS = {
    "InstantFamilyToyBaseModel": InstantFamilyToyBaseModel,
    "InstantFamilyToyFaces": InstantFamilyToyFaces,
    "InstantFamilyToyDecode": InstantFamilyToyDecode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InstantFamilyToyBaseModel": "Toy Base Model (demo)",
    "InstantFamilyToyFaces": "Toy Faces (demo)",
    "InstantFamilyToyDecode": "Toy Decode (demo)",
}
