"""The trained network: frozen UNet + ControlNet + projector, with masked cross-attention.

``InstantFamilyNet.forward`` is the one noise prediction used by the training loss, by the
validation sampler and by the "what is trained is what runs" comparison against ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from instantfamily_core.attention import FaceAttention
from instantfamily_core.config import InstantFamilyConfig
from instantfamily_core.ldm_convert import is_sdxl
from instantfamily_core.masks import FaceMasks
from instantfamily_core.projector import Projector

from .attention_processor import FaceBatch, install_face_processors


@dataclass
class FaceInputs:
    """Per batch row: the chosen faces (slot order) and their region masks.

    global_features[b]: (n_b, d_gf); local_features[b]: (n_b, d_lf, L, L); masks[b]: FaceMasks
    with n_b slots, or None when the row sees no faces (n_b == 0, or faces dropped for CFG).
    """

    global_features: list[torch.Tensor]
    local_features: list[torch.Tensor]
    masks: list[FaceMasks | None]

    def __post_init__(self) -> None:
        rows = {len(self.global_features), len(self.local_features), len(self.masks)}
        if len(rows) != 1:
            raise ValueError(f"FaceInputs: features and masks disagree on the batch size ({rows})")
        for b, (g, m) in enumerate(zip(self.global_features, self.masks)):
            if (m is None and g.shape[0] != 0) or (m is not None and len(m) != g.shape[0]):
                raise ValueError(f"FaceInputs row {b}: {g.shape[0]} faces but {0 if m is None else len(m)} masks")

    @classmethod
    def empty(cls, batch: int, config: InstantFamilyConfig) -> FaceInputs:
        """No faces in any row (the unconditional branch)."""
        return cls(
            [torch.zeros(0, config.d_gf) for _ in range(batch)],
            [torch.zeros(0, config.d_lf, config.L, config.L) for _ in range(batch)],
            [None] * batch,
        )

    @property
    def counts(self) -> list[int]:
        return [int(g.shape[0]) for g in self.global_features]


def default_time_ids(latents: torch.Tensor, vae_factor: int = 8) -> torch.Tensor:
    """SDXL's size conditioning (B, 6) when a batch has none: original = target = the image size
    (vae_factor x the latent size), no crop; the order of SDXL's add_time_ids and ComfyUI's
    ``encode_adm``: (original_h, original_w, crop_top, crop_left, target_h, target_w) in pixels."""
    h, w = (vae_factor * s for s in latents.shape[-2:])
    row = torch.tensor([h, w, 0, 0, h, w], dtype=torch.float32, device=latents.device)
    return row.expand(latents.shape[0], 6)


def added_conditioning(
    unet_config, latents: torch.Tensor, pooled: torch.Tensor | None, time_ids: torch.Tensor | None
) -> dict | None:
    """diffusers' ``added_cond_kwargs`` for an SDXL UNet / ControlNet (pooled text + size); None for SD1.5."""
    if not is_sdxl(unet_config):
        if pooled is not None or time_ids is not None:
            raise ValueError("pooled / time_ids given to an SD1.5 UNet: they are SDXL conditioning")
        return None
    if pooled is None:
        raise ValueError("an SDXL UNet needs the pooled text embedding (B, 1280): train.models.encode_prompts")
    time_ids = default_time_ids(latents) if time_ids is None else time_ids
    if time_ids.shape != (latents.shape[0], 6):
        raise ValueError(
            f"time_ids {tuple(time_ids.shape)}: expected (B={latents.shape[0]}, 6) = (original_h, "
            "original_w, crop_top, crop_left, target_h, target_w)"
        )
    # sizes stay float32 (bf16 would round 1023 px to 1024); diffusers embeds them as ComfyUI does, in float32
    return {"text_embeds": pooled.to(latents.dtype), "time_ids": time_ids.to(latents.device, torch.float32)}


class InstantFamilyNet(nn.Module):
    """UNet + ControlNet (diffusers) + Projector; attn2 of both go through the core FaceAttention."""

    def __init__(self, unet: nn.Module, controlnet: nn.Module, projector: Projector, config: InstantFamilyConfig):
        super().__init__()
        if unet.config.cross_attention_dim != config.d_K:
            raise ValueError(
                f"UNet cross_attention_dim {unet.config.cross_attention_dim} != projector d_K {config.d_K}"
            )
        self.unet = unet
        self.controlnet = controlnet
        self.projector = projector
        self.config = config
        self.face_batch = FaceBatch()
        self.patched_layers = install_face_processors(unet, self.face_batch) + [
            "controlnet." + name for name in install_face_processors(controlnet, self.face_batch)
        ]

    def face_context(self, text: torch.Tensor, faces: FaceInputs) -> tuple[torch.Tensor, FaceAttention | None]:
        """[text ; faces of each row, zero-padded to the longest row] and the batch's FaceAttention."""
        counts = faces.counts
        n_max, total = max(counts, default=0), sum(counts)
        if total == 0:
            # Keep the projector in the graph (DDP expects every trainable parameter to get a gradient).
            dummy = self.projector(
                text.new_zeros(1, self.config.d_gf).float(),
                text.new_zeros(1, self.config.d_lf, self.config.L, self.config.L).float(),
            )
            return text + 0.0 * dummy.sum().to(text.dtype), None
        device = text.device
        global_feature = torch.cat(faces.global_features).to(device=device, dtype=torch.float32)
        local_feature = torch.cat(faces.local_features).to(device=device, dtype=torch.float32)
        tokens = self.projector(global_feature, local_feature).to(text.dtype)  # (sum n_b, T, d_K)
        per_face = self.config.tokens_per_face
        padded = text.new_zeros(text.shape[0], n_max, per_face, text.shape[-1])  # (B, N_max, T, d_K)
        row = torch.repeat_interleave(torch.arange(len(counts), device=device), torch.tensor(counts, device=device))
        slot = torch.cat([torch.arange(n, device=device) for n in counts])
        padded = padded.index_put((row, slot), tokens)
        context = torch.cat([text, padded.flatten(1, 2)], dim=1)  # (B, T_text + N_max*T, d_K)
        attention = FaceAttention(faces.masks, per_face, mode=self.config.mask_mode, overlap=self.config.overlap)
        return context, attention

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeddings: torch.Tensor,
        faces: FaceInputs,
        control_image: torch.Tensor,
        conditioning_scale: float = 1.0,
        pooled: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noise prediction (B, 4, h, w).

        noisy_latents (B, 4, h, w); timesteps (B,) in the DDPM range [0, 1000); text_embeddings
        (B, 77, d_K); control_image (B, 3, 8h, 8w) in [0, 1] (the Pose + Circle image). SDXL only:
        pooled (B, 1280) text embedding and time_ids (B, 6) (``default_time_ids`` when None); both
        reach the UNet and the ControlNet, as ComfyUI's ``y`` reaches both.
        """
        context, attention = self.face_context(text_embeddings, faces)
        self.face_batch.set(attention, tuple(noisy_latents.shape[-2:]))
        added = added_conditioning(self.unet.config, noisy_latents, pooled, time_ids)
        down, mid = self.controlnet(
            noisy_latents,
            timesteps,
            encoder_hidden_states=context,
            controlnet_cond=control_image,
            conditioning_scale=conditioning_scale,
            added_cond_kwargs=added,
            return_dict=False,
        )
        return self.unet(
            noisy_latents,
            timesteps,
            encoder_hidden_states=context,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every parameter that requires grad, by its name in this module."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}
