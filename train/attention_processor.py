"""diffusers attention processors that route every cross-attention (attn2) through the core.

The UNet and the ControlNet share one :class:`FaceBatch`: before each forward the trainer sets
the batch's :class:`~instantfamily_core.attention.FaceAttention` (per-row face masks) and the
latent size, and every attn2 processor computes q, k, v with the layer's own projections and
calls that FaceAttention -- the same function the ComfyUI patch calls at inference.
"""

from __future__ import annotations

import torch.nn as nn

from instantfamily_core.attention import FaceAttention, sdpa_attention


class FaceBatch:
    """What every attn2 processor needs for the current forward (and its checkpoint recompute).

    face_attention: None = text-only attention (no row has faces).
    latent_size: (h, w) of the UNet's input latent, to find each layer's grid.
    """

    def __init__(self) -> None:
        self.face_attention: FaceAttention | None = None
        self.latent_size: tuple[int, int] | None = None
        self.calls = 0  # attn2 calls since the last set(); tests check every layer was reached

    def set(self, face_attention: FaceAttention | None, latent_size: tuple[int, int]) -> None:
        self.face_attention = face_attention
        self.latent_size = (int(latent_size[0]), int(latent_size[1]))
        self.calls = 0


class FaceCrossAttnProcessor:
    """attn2 processor: to_q/to_k/to_v, masked attention over [text ; faces], to_out.

    Mirrors ComfyUI's CrossAttention (q, k, v projections, attention, to_out) so that a
    checkpoint computes the same function in both worlds. SD1.5 attn2 layers have no group
    norm, spatial norm, cross norm or residual inside the attention; those are refused.
    """

    def __init__(self, face_batch: FaceBatch):
        self.face_batch = face_batch

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is None:
            raise RuntimeError("FaceCrossAttnProcessor is for cross-attention (attn2) layers only")
        if attention_mask is not None:
            raise RuntimeError(
                "FaceCrossAttnProcessor: the UNet was given an attention mask; InstantFamily builds its own"
            )
        if hidden_states.dim() != 3:
            raise RuntimeError(f"attn2 expects (B, tokens, C) hidden states, got shape {tuple(hidden_states.shape)}")
        batch = self.face_batch
        if batch.latent_size is None:
            raise RuntimeError("FaceBatch.set() was not called before the forward pass")
        batch.calls += 1
        q = attn.to_q(hidden_states)  # (B, Q, H*d)
        k = attn.to_k(encoder_hidden_states)  # (B, T_text + N*T, H*d)
        v = attn.to_v(encoder_hidden_states)
        if batch.face_attention is None:
            text_len = encoder_hidden_states.shape[1]
            out = sdpa_attention(q, k[:, :text_len], v[:, :text_len], attn.heads)
        else:
            out = batch.face_attention(q, k, v, attn.heads, latent_size=batch.latent_size)
        out = attn.to_out[0](out.to(q.dtype))
        return attn.to_out[1](out)


def _check_plain_attn2(name: str, attn: nn.Module) -> None:
    unsupported = [flag for flag in ("group_norm", "spatial_norm", "norm_cross") if getattr(attn, flag, None)]
    if getattr(attn, "residual_connection", False):
        unsupported.append("residual_connection")
    if getattr(attn, "rescale_output_factor", 1.0) != 1.0:
        unsupported.append("rescale_output_factor")
    if unsupported:
        raise ValueError(
            f"{name}: attention features {unsupported} are not SD1.5-shaped; InstantFamily cannot patch it"
        )


def install_face_processors(model: nn.Module, face_batch: FaceBatch) -> list[str]:
    """Put a FaceCrossAttnProcessor on every attn2 of ``model`` (UNet or ControlNet); returns their names."""
    processors = dict(model.attn_processors)
    names = []
    for name in processors:
        if name.endswith("attn2.processor"):
            module = model.get_submodule(name[: -len(".processor")])
            _check_plain_attn2(name, module)
            processors[name] = FaceCrossAttnProcessor(face_batch)
            names.append(name)
    if not names:
        raise ValueError(f"{type(model).__name__} has no cross-attention (attn2) layers to patch")
    model.set_attn_processor(processors)
    return names


def install_sdpa_processors(model: nn.Module) -> None:
    """Plain SDPA processors everywhere (the baseline for benchmarks)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    model.set_attn_processor(AttnProcessor2_0())
