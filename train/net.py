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
    ) -> torch.Tensor:
        """Noise prediction (B, 4, h, w).

        noisy_latents (B, 4, h, w); timesteps (B,) in the DDPM range [0, 1000); text_embeddings
        (B, 77, d_K); control_image (B, 3, 8h, 8w) in [0, 1] (the Pose + Circle image).
        """
        context, attention = self.face_context(text_embeddings, faces)
        self.face_batch.set(attention, tuple(noisy_latents.shape[-2:]))
        down, mid = self.controlnet(
            noisy_latents,
            timesteps,
            encoder_hidden_states=context,
            controlnet_cond=control_image,
            conditioning_scale=conditioning_scale,
            return_dict=False,
        )
        return self.unet(
            noisy_latents,
            timesteps,
            encoder_hidden_states=context,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every parameter that requires grad, by its name in this module."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}
