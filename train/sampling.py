"""DDIM with classifier-free guidance through ``InstantFamilyNet``: the one sampler of the trainer's
validation (``train.validate.sample``) and the toy world's evaluation (``toyworld.evaluation.sample``).

The conditional rows get the caption and the faces; the unconditional rows get the empty caption and
no faces (text-only attention), both with the same control image -- as ComfyUI samples it.
"""

from __future__ import annotations

import torch

from .net import FaceInputs


def with_unconditional_rows(faces: FaceInputs, config) -> FaceInputs:
    """B rows of faces -> 2B rows: B without faces (the unconditional branch), then the given B."""
    uncond = FaceInputs.empty(len(faces.global_features), config)
    return FaceInputs(
        uncond.global_features + faces.global_features,
        uncond.local_features + faces.local_features,
        uncond.masks + faces.masks,
    )


@torch.no_grad()
def guided_ddim(
    net,
    scheduler,
    latents: torch.Tensor,
    text: torch.Tensor,
    faces: FaceInputs,
    control: torch.Tensor,
    guidance_scale: float,
    pooled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoise ``latents`` over ``scheduler.timesteps`` (set by the caller) -> the final latents.

    latents: (B, C, h, w), already scaled by the scheduler's initial sigma, in the dtype the net runs;
    text: (2B, T, d), the B unconditional rows first; faces: the B conditional rows; control: (B, 3, H, W);
    pooled: SDXL's pooled text (2B, P) in the order of ``text``, None for SD1.5.
    """
    batch = latents.shape[0]
    both = with_unconditional_rows(faces, net.config)
    control = torch.cat([control, control])  # (2B, 3, H, W)
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)  # (2B, C, h, w)
        timesteps = torch.full((2 * batch,), int(t), device=latents.device)
        noise = net(model_in, timesteps, text, both, control, pooled=pooled).float()
        noise = noise[:batch] + guidance_scale * (noise[batch:] - noise[:batch])  # (B, C, h, w)
        latents = scheduler.step(noise.to(latents.dtype), t, latents).prev_sample
    return latents
