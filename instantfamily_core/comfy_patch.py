"""The face patch ComfyUI runs: one settings object, one runtime, one replace object per layer.

Apply InstantFamily builds a :class:`FaceSettings` -- the one source of truth for the stack, the
masks, weight, window, mask mode, overlap and attn1 isolation -- and a :class:`FacePatch` around
it. The patch is stored in the MODEL's transformer options, so the Pose+Circle ControlNet finds
the very same object while sampling and both networks run the same settings.

No face tokens are appended to the context. Each patched cross-attention computes q, k, v of
the context as usual (the text, plus whatever other packs appended); its replace object adds the
face keys/values of *its* layer, projected once by that layer's own to_k / to_v and cached, and
runs the masked attention. Other packs' attention patches therefore never see face tokens, and
the face K/V are not projected again at every step.

Host-agnostic: the node layer passes the host's own attention function, so text-only rows stay
bit-for-bit what the unpatched model computes.
"""

from __future__ import annotations

import copy
import logging
import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from .attention import FaceAttention
from .config import DEFAULT_OVERLAP
from .masks import FaceMasks, centre_crop_box
from .stack import EmbeddingStack

log = logging.getLogger("InstantFamily")

# (q, k, v, heads, extra_options) -> out, in the merged-head layout.
HostAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, dict], torch.Tensor]

# Where the FacePatch lives in a MODEL's transformer options (and so in every layer's extra_options).
OPTIONS_KEY = "instantfamily"


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


def sigma_from_options(extra_options: dict) -> float | None:
    sigmas = extra_options.get("sigmas")
    return None if sigmas is None else float(sigmas.detach().flatten()[0])


@dataclass(frozen=True, eq=False)  # holds tensors: compared and hashed by identity
class FaceSettings:
    """Everything that decides what the faces do, for the UNet and the ControlNet alike.

    sigma_start / sigma_end: the faces act while sigma_end <= sigma <= sigma_start (ComfyUI's
    start_at / end_at percent, converted by the node).
    """

    stack: EmbeddingStack
    face_masks: FaceMasks
    mode: str = "hard"
    weight: float = 1.0
    overlap: str = DEFAULT_OVERLAP
    sigma_start: float = math.inf
    sigma_end: float = 0.0
    isolate_self_attention: bool = False

    def __post_init__(self) -> None:
        if self.stack.num_faces != len(self.face_masks):
            raise ValueError(
                f"the embedding stack has {self.stack.num_faces} IDs but the face masks have {len(self.face_masks)} "
                "positions: give one position per ID (Face Mask node) or remove IDs"
            )
        if not self.weight >= 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")

    @property
    def enabled(self) -> bool:
        """False when the faces can never act (weight 0 or no IDs): nothing is patched then."""
        return self.weight > 0 and self.stack.num_faces > 0

    def active_at(self, sigma: float | None) -> bool:
        return self.enabled and (sigma is None or self.sigma_end <= sigma <= self.sigma_start)


def _projection_signature(layer: nn.Module, device, dtype) -> tuple:
    """What the cached face K/V of ``layer`` depend on: its to_k / to_v weights (object and
    in-place version, so patched or reloaded weights invalidate it), their on-the-fly weight
    functions (ComfyUI's low-VRAM patches), device and dtype."""
    parts: list = [str(device), str(dtype)]
    for linear in (_linear(layer, "to_k"), _linear(layer, "to_v")):
        weight = linear.weight
        parts += [id(weight), weight.data_ptr(), _version(weight), str(weight.device), str(weight.dtype)]
        parts.append(tuple(id(f) for f in getattr(linear, "weight_function", ()) or ()))
    return tuple(parts)


def _linear(layer: nn.Module, name: str) -> nn.Linear:
    return getattr(layer, name)


def _version(tensor: torch.Tensor) -> int | None:
    """The in-place version counter; None for inference-mode tensors, which keep none (ComfyUI
    then patches weights by replacing the Parameter, which the id and data pointer see)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


class FacePatch:
    """The runtime of one FaceSettings: region plans, face tokens and K/V caches, host attention."""

    def __init__(self, settings: FaceSettings, host_attention: HostAttention):
        self.settings = settings
        self.face_attention = FaceAttention(
            settings.face_masks,
            settings.stack.tokens_per_face,
            mode=settings.mode,
            weight=settings.weight,
            overlap=settings.overlap,
        )
        self.host_attention = host_attention
        self._tokens: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self._face_kv: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> (signature, k, v)
        self._last_step: tuple[object, tuple[int, int]] | None = None
        self._checked_latents: set[tuple[int, int]] = set()

    # -- state ComfyUI's memory manager sees ---------------------------------------------------
    def to(self, device_or_dtype):
        """Move the face tokens once (ComfyUI calls this on model load); K/V are recomputed."""
        if isinstance(device_or_dtype, (torch.device, str)):
            tokens = self.settings.stack.flat_tokens()  # (N*T, d_K)
            self._tokens = {(str(torch.device(device_or_dtype)), tokens.dtype): tokens.to(device_or_dtype)}
            self._face_kv = weakref.WeakKeyDictionary()
        return self

    def models(self) -> list:
        return []

    def __deepcopy__(self, memo):
        # ModelPatcher.clone() deep-copies model_options; the settings are immutable and the
        # caches are keyed by what they depend on, so every clone shares one patch.
        return self

    # -- per call -------------------------------------------------------------------------------
    def active(self, extra_options: dict) -> bool:
        return self.settings.active_at(sigma_from_options(extra_options))

    def face_tokens(self, device, dtype) -> torch.Tensor:
        """(N * T, d_K) face tokens on ``device`` in ``dtype``, converted once."""
        key = (str(device), dtype)
        if key not in self._tokens:
            self._tokens[key] = self.settings.stack.flat_tokens().to(device=device, dtype=dtype)
        return self._tokens[key]

    @torch.no_grad()
    def face_kv(self, layer: nn.Module, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, N*T, C) keys and values of the face tokens through ``layer``'s own projections."""
        signature = _projection_signature(layer, device, dtype)
        cached = self._face_kv.get(layer)
        if cached is None or cached[0] != signature:
            tokens = self.face_tokens(device, dtype)[None]  # (1, N*T, d_K)
            cached = (signature, _linear(layer, "to_k")(tokens), _linear(layer, "to_v")(tokens))
            self._face_kv[layer] = cached
        return cached[1], cached[2]

    def latent_size(self, extra_options: dict) -> tuple[int, int]:
        """The latent this call runs on; refuses area conditioning and warns on an aspect mismatch."""
        latent = latent_size_from_options(extra_options)
        sigmas = extra_options.get("sigmas")
        if sigmas is not None:
            last = self._last_step
            if last is not None and last[0] is sigmas and last[1] != latent:
                raise ValueError(
                    f"InstantFamily: one sampling step ran the model on latents of {last[1]} and {latent} cells, "
                    "as area conditioning (ConditioningSetArea) or a tiled sampler does; the face masks describe "
                    "the whole image, so they cannot be placed on a crop. Remove the area conditioning, or place "
                    "the people with the Face Mask node instead"
                )
            self._last_step = (sigmas, latent)
        if latent not in self._checked_latents:
            self._checked_latents.add(latent)
            self._warn_on_aspect(latent)
        return latent

    def _warn_on_aspect(self, latent: tuple[int, int]) -> None:
        height, width = self.settings.face_masks.image_size
        _, _, crop_h, crop_w = centre_crop_box((height, width), latent)
        if (crop_h, crop_w) != (height, width):
            log.warning(
                "InstantFamily: the latent is %dx%d px but the face masks were made on a %dx%d template; like "
                "ComfyUI does with the control image, the template's centre %dx%d is used and the rest is cut "
                "off. Make the template (pose image) the latent's aspect to use all of it.",
                latent[1] * 8,
                latent[0] * 8,
                width,
                height,
                crop_w,
                crop_h,
            )

    def cross_attention(self, layer: nn.Module, q, k, v, extra_options: dict) -> torch.Tensor:
        """Masked attention of q over [context ; faces] at one attn2 ``layer``.

        k, v: (B, T_ctx, C), the layer's projections of the context (text and other packs' tokens).
        """
        heads = extra_options["n_heads"]

        def text_attention(q_, k_, v_, heads_):
            return self.host_attention(q_, k_, v_, heads_, extra_options)

        if not self.active(extra_options):
            return text_attention(q, k, v, heads)
        latent = self.latent_size(extra_options)
        rows = face_rows_from_options(extra_options, q.shape[0])
        if rows is not None and not rows.any():
            return text_attention(q, k, v, heads)  # uncond-only batch: the text model
        face_k, face_v = self.face_kv(layer, q.device, k.dtype)
        batch = q.shape[0]
        k = torch.cat([k, face_k.expand(batch, -1, -1)], dim=1)  # (B, T_ctx + N*T, C)
        v = torch.cat([v, face_v.expand(batch, -1, -1)], dim=1)
        return self.face_attention(q, k, v, heads, latent_size=latent, face_rows=rows, text_attention=text_attention)

    def self_attention(self, q, k, v, extra_options: dict) -> torch.Tensor:
        """attn1 with face regions isolated from each other (attn1 isolation)."""
        heads = extra_options["n_heads"]

        def plain_attention(q_, k_, v_, heads_):
            return self.host_attention(q_, k_, v_, heads_, extra_options)

        if not self.active(extra_options):
            return plain_attention(q, k, v, heads)
        return self.face_attention.self_attention(
            q,
            k,
            v,
            heads,
            latent_size=self.latent_size(extra_options),
            face_rows=face_rows_from_options(extra_options, q.shape[0]),
            text_attention=plain_attention,
        )


def _in_window(kwargs: Mapping, extra_options: dict) -> bool:
    """IPAdapter-style callbacks carry their own sigma_start / sigma_end."""
    sigma = sigma_from_options(extra_options)
    if sigma is None or "sigma_start" not in kwargs:
        return True
    return kwargs.get("sigma_end", 0.0) <= sigma <= kwargs["sigma_start"]


class _ComposableReplace:
    """An attention replace that wraps the one it found at its key and takes ``add()`` callbacks.

    Composition is additive, the way IPAdapter / InstantID / PuLID compose: with ``previous``
    (another pack's replace installed earlier) the output is previous(q, k, v) plus what the faces
    change (ours - plain attention); callbacks added later (``add(callback, **kwargs)``, called
    ``callback(out, q, k, v, extra_options, **kwargs)``) add their own term on top.
    """

    def __init__(self, patch: FacePatch, previous=None):
        self.patch = patch
        self.previous = previous
        self.callbacks: list[tuple[Callable, dict]] = []

    def _ours(self, q, k, v, extra_options) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, q, k, v, extra_options):
        if self.previous is None:
            out = self._ours(q, k, v, extra_options)
        else:
            out = self.previous(q, k, v, extra_options)
            if self.patch.active(extra_options):
                plain = self.patch.host_attention(q, k, v, extra_options["n_heads"], extra_options)
                out = out + (self._ours(q, k, v, extra_options) - plain).to(out.dtype)
        for callback, kwargs in self.callbacks:
            if _in_window(kwargs, extra_options):
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out

    def add(self, callback, **kwargs):
        """IPAdapter's protocol for a later patch on the same key: an additive callback."""
        self.callbacks.append((callback, kwargs))

    def to(self, device_or_dtype):
        self.patch.to(device_or_dtype)
        if hasattr(self.previous, "to"):
            self.previous = self.previous.to(device_or_dtype)
        return self

    def models(self) -> list:
        return list(self.previous.models()) if hasattr(self.previous, "models") else []

    def __deepcopy__(self, memo):
        # Share the patch; copy the callback list, so a later add() on a clone leaves this one as it is.
        clone = copy.copy(self)
        clone.previous = copy.deepcopy(self.previous, memo)
        clone.callbacks = list(self.callbacks)
        return clone

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"InstantFamily's attention patch has no '{name}': another node is trying to extend it. Apply that "
            "node before Apply InstantFamily (InstantFamily then wraps its patch), or use only one of them"
        )


class CrossAttentionReplace(_ComposableReplace):
    """The attn2 replace of one block key: masked attention over [context ; this layer's faces].

    layers: the block's attn2 modules by ComfyUI's ``block_index`` (their to_k / to_v project the faces).
    """

    def __init__(self, patch: FacePatch, layers: Mapping[int, nn.Module], previous=None):
        super().__init__(patch, previous)
        self.layers = dict(layers)

    def _ours(self, q, k, v, extra_options):
        layer = self.layers[extra_options.get("block_index", 0)]
        return self.patch.cross_attention(layer, q, k, v, extra_options)


class SelfAttentionReplace(_ComposableReplace):
    """The attn1 replace of one block key when attn1 isolation is on."""

    def _ours(self, q, k, v, extra_options):
        return self.patch.self_attention(q, k, v, extra_options)
