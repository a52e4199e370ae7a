"""The face projector: recognizer features -> L*L + 1 tokens of the cross-attention width.

K_fn = concat(P_g(c_gf), P_l(c_lf)) in R^((L*L + 1) x d_K)  (paper §3.3).
The global embedding goes through a small MLP to one token; each of the L*L cells of the
local feature map goes through a shared linear map plus a learned position embedding.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import InstantFamilyConfig


class Projector(nn.Module):
    def __init__(self, config: InstantFamilyConfig):
        super().__init__()
        self.config = config
        self.global_mlp = nn.Sequential(
            nn.Linear(config.d_gf, config.projector_hidden),
            nn.GELU(),
            nn.Linear(config.projector_hidden, config.d_K),
        )
        self.local_norm = nn.LayerNorm(config.d_lf)
        self.local_proj = nn.Linear(config.d_lf, config.d_K)
        self.local_position = nn.Parameter(torch.zeros(config.L * config.L, config.d_K))
        self.out_norm = nn.LayerNorm(config.d_K)

    def forward(self, global_feature: torch.Tensor, local_feature: torch.Tensor) -> torch.Tensor:
        """global_feature (N, d_gf), local_feature (N, d_lf, L, L) -> tokens (N, L*L + 1, d_K)."""
        c = self.config
        if global_feature.shape[1:] != (c.d_gf,) or local_feature.shape[1:] != (c.d_lf, c.L, c.L):
            raise ValueError(
                f"projector expects global (N, {c.d_gf}) and local (N, {c.d_lf}, {c.L}, {c.L}) features, got "
                f"{tuple(global_feature.shape)} and {tuple(local_feature.shape)}: were the faces analysed with "
                "the recognizer this checkpoint was trained with?"
            )
        global_token = self.global_mlp(F.normalize(global_feature, dim=-1))[:, None]  # (N, 1, d_K)
        cells = local_feature.flatten(2).transpose(1, 2)  # (N, L*L, d_lf)
        local_tokens = self.local_proj(self.local_norm(cells)) + self.local_position  # (N, L*L, d_K)
        return self.out_norm(torch.cat([global_token, local_tokens], dim=1))
