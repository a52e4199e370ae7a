"""The attention patch installed on a ComfyUI MODEL (and handed to the ControlNet).

Host-agnostic: ComfyUI calls ``append_face_tokens`` as an ``attn2_patch`` (it may return a
longer context) and ``attention`` as the ``attn2_replace`` of every cross-attention key; the
node layer passes the host's own attention function so that text-only rows stay bit-for-bit
what the unpatched model computes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .attention import FaceAttention
from .masks import FaceMasks
from .stack import EmbeddingStack, append_face_tokens

# (q, k, v, heads, extra_options) -> out, in the merged-head layout.
HostAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, dict], torch.Tensor]


def latent_size_from_options(extra_options: dict) -> tuple[int, int]:
    """(h, w) of the UNet's input latent as ComfyUI reports it to attention patches.

    ``original_shape`` (B, C, H, W) is the latent (2024 and 0.3.x). 0.3.x also reports
    ``activations_shape`` for the current layer, which is a valid start for the grid search.
    """
    shape = extra_options.get("original_shape") or extra_options.get("activations_shape")
    if not shape or len(shape) < 4:
        raise RuntimeError("ComfyUI did not report the latent shape to the attention patch; update ComfyUI")
    return int(shape[-2]), int(shape[-1])


def face_rows_from_options(extra_options: dict, batch: int) -> torch.Tensor | None:
    """(B,) bool: True on cond rows. ComfyUI batches chunks flagged 0 (cond) / 1 (uncond)."""
    flags = extra_options.get("cond_or_uncond")
    if not flags:
        return None
    per_chunk = batch // len(flags)
    return torch.tensor([flag == 0 for flag in flags for _ in range(per_chunk)])


class InstantFamilyAttentionPatch:
    """Face tokens + masked cross-attention for one MODEL clone.

    sigma_start / sigma_end: the patch acts while sigma_end <= sigma <= sigma_start
    (ComfyUI's ``start_at``/``end_at`` percent, converted by the node). Outside that window,
    with weight 0 or with no faces, the model is untouched.
    """

    def __init__(
        self,
        stack: EmbeddingStack,
        face_masks: FaceMasks,
        host_attention: HostAttention,
        *,
        mode: str = "hard",
        weight: float = 1.0,
        overlap: str = "both",
        sigma_start: float = float("inf"),
        sigma_end: float = 0.0,
        isolate_self_attention: bool = False,
    ):
        if stack.num_faces != len(face_masks):
            raise ValueError(
                f"the embedding stack has {stack.num_faces} IDs but the face masks have {len(face_masks)} "
                "positions: give one position per ID (Face Mask node) or remove IDs"
            )
        self.stack = stack
        self.face_attention = FaceAttention(face_masks, stack.tokens_per_face, mode=mode, weight=weight, overlap=overlap)
        self.host_attention = host_attention
        self.weight = float(weight)
        self.sigma_start = float(sigma_start)
        self.sigma_end = float(sigma_end)
        self.isolate_self_attention = bool(isolate_self_attention)
        self.calls: dict = {}  # attention key -> number of calls (tests count these)

    def is_active(self, extra_options: dict) -> bool:
        if self.weight == 0 or self.stack.num_faces == 0:
            return False
        sigmas = extra_options.get("sigmas")
        if sigmas is None:
            return True
        sigma = float(sigmas.detach().flatten()[0])
        return self.sigma_end <= sigma <= self.sigma_start

    def append_face_tokens(self, n, context, value, extra_options):
        """attn2_patch: (n, context, value) -> the same with the face tokens after the text."""
        if not self.is_active(extra_options):
            return n, context, value
        tokens = self.stack.flat_tokens()
        extended = append_face_tokens(context, tokens)
        if value is None or value is context:
            return n, extended, extended
        return n, extended, append_face_tokens(value, tokens)

    def attention(self, q, k, v, extra_options):
        """attn2_replace: masked attention over [text ; faces]; the host's attention otherwise."""
        heads = extra_options["n_heads"]
        key = (extra_options.get("block"), extra_options.get("block_index"), extra_options.get("transformer_index"))
        self.calls[key] = self.calls.get(key, 0) + 1

        def text_attention(q_, k_, v_, heads_):
            return self.host_attention(q_, k_, v_, heads_, extra_options)

        if not self.is_active(extra_options):
            return text_attention(q, k, v, heads)
        return self.face_attention(
            q, k, v, heads,
            latent_size=latent_size_from_options(extra_options),
            face_rows=face_rows_from_options(extra_options, q.shape[0]),
            text_attention=text_attention,
        )

    def self_attention(self, q, k, v, extra_options):
        """attn1_replace (only with isolate_self_attention): face regions don't see each other."""
        heads = extra_options["n_heads"]

        def plain_attention(q_, k_, v_, heads_):
            return self.host_attention(q_, k_, v_, heads_, extra_options)

        if not self.is_active(extra_options):
            return plain_attention(q, k, v, heads)
        return self.face_attention.self_attention(
            q, k, v, heads,
            latent_size=latent_size_from_options(extra_options),
            face_rows=face_rows_from_options(extra_options, q.shape[0]),
            text_attention=plain_attention,
        )

    def __deepcopy__(self, memo):
        # ModelPatcher.clone() deep-copies model_options; the patch is immutable apart from its
        # caches and call counters, so every clone shares it instead of copying the face tokens.
        return self

    # ComfyUI's memory manager asks patches for the models they hold and moves them.
    def models(self) -> list:
        return []

    def to(self, device_or_dtype):
        if isinstance(device_or_dtype, (torch.device, str)):
            self.stack = EmbeddingStack(self.stack.face_tokens.to(device_or_dtype), self.stack.labels)
        return self
