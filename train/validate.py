"""Validation: a small DDIM loop with classifier-free guidance through ``InstantFamilyNet``, and the
identity score of its images.

The conditional row gets the caption and the faces; the unconditional row gets the empty caption
and no faces (text-only attention), both with the same control image -- as ComfyUI samples it.
The score is the pack's identity similarity (``instantfamily_core.evaluation.metrics.score_identities``, the
metric of the Identity Report node) of the faces the pack's analyzer finds in each image against
the global features the image was conditioned on.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from instantfamily_core.config import InstantFamilyConfig
from instantfamily_core.evaluation.metrics import IdentityScores, score_identities

from .models import encode_prompts
from .net import FaceInputs, InstantFamilyNet


@torch.no_grad()
def sample(
    net: InstantFamilyNet,
    vae,
    text_encoders,
    tokenizers,
    scheduler_config,
    example: dict,
    *,
    steps: int = 20,
    guidance_scale: float = 5.0,
    seed: int = 0,
    dtype=torch.float32,
) -> np.ndarray:
    """One image (H, W, 3) uint8 for a dataset example (its caption, faces, masks and control image)."""
    from diffusers import DDIMScheduler

    device = next(net.parameters()).device
    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps, device=device)
    control = example["control"][None].to(device, dtype)  # (1, 3, H, W)
    height, width = control.shape[-2:]
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    latents = torch.randn(1, vae.config.latent_channels, height // factor, width // factor, generator=generator)
    latents = (latents * scheduler.init_noise_sigma).to(device, dtype)
    text = encode_prompts(text_encoders, tokenizers, ["", example["caption"]], device)  # context (2, 77, d)
    pooled = None if text.pooled is None else text.pooled.to(dtype)  # SDXL (2, 1280)
    cond = FaceInputs([example["global_features"]], [example["local_features"]], [example["masks"]])
    uncond = FaceInputs.empty(1, net.config)
    faces = FaceInputs(
        uncond.global_features + cond.global_features,
        uncond.local_features + cond.local_features,
        uncond.masks + cond.masks,
    )
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        timesteps = torch.full((2,), int(t), device=device)
        noise = net(model_in, timesteps, text.context.to(dtype), faces, torch.cat([control, control]), pooled=pooled)
        noise = noise.float()
        noise = noise[0:1] + guidance_scale * (noise[1:2] - noise[0:1])
        latents = scheduler.step(noise.to(dtype), t, latents).prev_sample
    image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample  # (1, 3, H, W) in [-1, 1]
    return ((image[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def grid(rows: list[list[np.ndarray]]) -> Image.Image:
    """Rows of equally sized (H, W, 3) uint8 images -> one PIL image."""
    return Image.fromarray(np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0))


def to_uint8(tensor: torch.Tensor, low: float) -> np.ndarray:
    """(3, H, W) in [low, 1] -> (H, W, 3) uint8."""
    scaled = (tensor.float() - low) / (1 - low) * 255
    return scaled.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def load_identity_encoder(root: str, pack: str, config: InstantFamilyConfig):
    """The pack's face analyzer as an encoder; it must be the recognizer the training features came from."""
    from instantfamily_core.evaluation.encoders import InsightfaceEncoder
    from instantfamily_core.faces import load_face_analyzer

    pack = pack or config.recognizer.pack
    if not pack:
        raise ValueError(
            "validation_insightface_root is set but the data names no face pack: set validation_pack "
            "(e.g. antelopev2) to the pack the data was prepared with"
        )
    analyzer = load_face_analyzer([root], pack=pack, provider="auto")
    trained, found = config.recognizer.sha256, getattr(analyzer.info, "sha256", "")
    if trained and found and trained != found:
        raise ValueError(
            f"validation pack {pack!r} under {root} has another recognizer (sha256 {found[:12]}) than "
            f"the one the data was prepared with ({trained[:12]}): point to the same pack"
        )
    return InsightfaceEncoder(analyzer)


def identity_scores(encoder, image: np.ndarray, references: np.ndarray) -> IdentityScores:
    """Faces found in ``image`` (H, W, 3) uint8 scored against ``references`` (N, d) global features."""
    found = encoder.encode(image)
    generated = np.stack([f.embedding for f in found]) if found else np.zeros((0, references.shape[1]))
    return score_identities(references, generated)


def summarise_scores(scores: list[IdentityScores]) -> dict:
    """Means over the validation images: identity, MultiSim (images with >= 2 IDs), share of missing faces."""
    if not scores:
        return {"identity": None, "multi_sim": None, "missing_faces": None, "scored": 0}
    multi = [s.multi_sim for s in scores if s.multi_sim is not None]
    references = sum(s.num_references for s in scores)
    return {
        "identity": float(np.mean([s.identity for s in scores])),
        "multi_sim": float(np.mean(multi)) if multi else None,
        "missing_faces": sum(s.num_missing for s in scores) / references,
        "scored": len(scores),
    }
