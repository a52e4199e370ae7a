"""Masked cross-attention over the embedding stack (paper Eq. 6): the one implementation.

Keys/values are laid out as [text ; face 0 ; ... ; face N-1], each face ``tokens_per_face``
long. A query may always see the text; it sees face n's tokens only where face n's region
covers it. Two modes:

* ``hard`` (default): hidden face logits are -inf, so a query outside every region gets
  exactly text-only attention.
* ``paper``: the literal softmax(M ⊙ QKᵀ/√d)V. A hidden logit becomes 0, not -inf, so hidden
  faces still receive weight e⁰: the paper's formula leaks, and that leak is measured.

``weight`` w multiplies the (unnormalised) attention mass of visible face tokens by adding
log(w) to their logits: w = 0 is text-only, w = 1 is the trained behaviour.

Two exact kernels serve ``hard`` mode. When every face-seeing row shares one set of regions
(inference: the cond rows of a sampler batch), queries are grouped by the set of faces they
see and each group attends to [text ; its faces] only: the cost grows with the area the faces
cover, not with N. On coarse grids crowded with regions the per-group overhead outweighs the
saving and the plan picks one boolean-masked SDPA over the whole stack instead, which is also
the kernel for rows with their own regions (training batches). Both kernels are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import DEFAULT_OVERLAP, MASK_MODES
from .masks import FaceMasks, crop_to_latent, latent_grid, masks_on_grid
from .region_plan import RegionPlan

# (q, k, v, heads) -> out, all in the merged-head layout (B, L, heads * d).
TextAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]

KERNELS = ("auto", "dense", "region")  # masked_cross_attention's ``kernel``


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain multi-head attention in the merged-head layout: (B, Q, H*d) -> (B, Q, H*d)."""
    batch, _, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(batch, -1, heads, d).transpose(1, 2) for t in (q, k, v))  # (B, H, L, d)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(batch, -1, inner)


def masked_cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    plan: RegionPlan | None,
    tokens_per_face: int,
    *,
    face_rows: torch.Tensor | None = None,
    mode: str = "hard",
    weight: float = 1.0,
    text_attention: TextAttention = sdpa_attention,
    kernel: str = "auto",
) -> torch.Tensor:
    """Attention of q over the embedding stack with face regions.

    q: (B, Q, H*d); k, v: (B, T_text + N*T, H*d) laid out [text ; face 0 ; ... ; face N-1].
    plan: face visibility per query (see RegionPlan); None or N == 0 means text only.
    face_rows: (B,) bool, the rows that see faces at all (the cond rows under CFG); None = all.
      With a per-row plan, its R rows map onto the face rows in order.
    text_attention: computes the text-only rows/queries; the ComfyUI patch passes the host's
      own attention so that text-only output is bit-for-bit the unpatched model's.
    kernel: "auto" (region-sparse for shared regions where it is cheaper, dense otherwise), or
      force "dense" / "region" (tests, benchmarks). Both are exact.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    num_faces = 0 if plan is None else plan.num_faces
    text_len = k.shape[1] - num_faces * tokens_per_face
    if text_len <= 0:
        raise ValueError(
            f"context has {k.shape[1]} tokens but {num_faces} faces x {tokens_per_face} tokens were expected "
            "after the text: the embedding stack and the masks disagree"
        )
    rows = _face_row_index(face_rows, q.shape[0], q.device)
    if plan is None or num_faces == 0 or weight == 0 or rows.numel() == 0:
        return text_attention(q, k[:, :text_len], v[:, :text_len], heads)
    if plan.visibility.shape[2] != q.shape[1]:
        raise ValueError(f"region plan has {plan.visibility.shape[2]} positions but the layer has {q.shape[1]}")
    if not plan.shared and plan.visibility.shape[0] != rows.numel():
        raise ValueError(f"region plan has {plan.visibility.shape[0]} rows but {rows.numel()} rows see faces")
    call = _Call(heads, plan, tokens_per_face, text_len, rows, weight, text_attention)
    if mode == "paper":
        return _paper_attention(q, k, v, call)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    use_region = kernel == "region" or (kernel == "auto" and plan.region_is_cheaper(text_len, tokens_per_face))
    if plan.shared and use_region:
        return _region_sparse_attention(q, k, v, call)
    return _dense_hard_attention(q, k, v, call)


@dataclass(frozen=True)
class _Call:
    """What every kernel needs besides q, k, v: one bundle instead of seven positional arguments.

    rows: (Bf,) indices of the face-seeing rows; text_len: keys before the first face token.
    """

    heads: int
    plan: RegionPlan
    tokens_per_face: int
    text_len: int
    rows: torch.Tensor
    weight: float
    text_attention: TextAttention

    def text(self, q, k, v) -> torch.Tensor:
        """Text-only attention of every row (the host's, for bit-for-bit text rows)."""
        return self.text_attention(q, k[:, : self.text_len], v[:, : self.text_len], self.heads)


def _face_row_index(face_rows: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    if face_rows is None:
        return torch.arange(batch, device=device)
    if face_rows.shape != (batch,):
        raise ValueError(f"face_rows must be ({batch},), got {tuple(face_rows.shape)}")
    return face_rows.to(device).nonzero().squeeze(1)


def _face_bias(weight: float, text_len: int, key_len: int, like: torch.Tensor) -> torch.Tensor | None:
    """(key_len,) additive logit bias: 0 on text keys, log(weight) on face keys; None when w == 1."""
    if weight == 1.0:
        return None
    bias = torch.zeros(key_len, dtype=like.dtype, device=like.device)
    bias[text_len:] = math.log(weight)
    return bias


def _region_sparse_attention(q, k, v, call: _Call) -> torch.Tensor:
    """Shared regions: text attention for all queries, then each region group re-attends to
    [text ; its faces] and overwrites its queries. Exact for overlapping regions too."""
    out = call.text(q, k, v)  # (B, Q, C)
    rows = call.rows
    all_rows = rows.numel() == q.shape[0]
    outputs, queries = [], []
    for query_index, key_index, _ in call.plan.key_groups(call.text_len, call.tokens_per_face, q.device):
        if all_rows:
            qg = q.index_select(1, query_index)  # (B, Qg, C)
            kg, vg = k.index_select(1, key_index), v.index_select(1, key_index)  # (B, Kg, C)
        else:
            qg = q[rows[:, None], query_index[None]]  # (Bf, Qg, C)
            kg, vg = k[rows[:, None], key_index[None]], v[rows[:, None], key_index[None]]
        bias = _face_bias(call.weight, call.text_len, key_index.numel(), q)
        outputs.append(sdpa_attention(qg, kg, vg, call.heads, None if bias is None else bias.view(1, 1, 1, -1)))
        queries.append(query_index)
    if not outputs:
        return out
    face_out = torch.cat(outputs, dim=1)  # (Bf, sum Qg, C)
    face_queries = torch.cat(queries)
    return out.index_put((rows[:, None], face_queries[None]), face_out.to(out.dtype))


def _rows_key_mask(call: _Call, batch: int, device: torch.device) -> torch.Tensor:
    """(B, 1, Q, K) bool: the plan's mask on face rows, text-only elsewhere."""
    face_mask = call.plan.key_mask(call.text_len, call.tokens_per_face, device)  # (R, 1, Q, K)
    if call.rows.numel() == batch and not call.plan.shared:
        return face_mask
    _, _, queries, keys = face_mask.shape
    mask = torch.zeros(batch, 1, queries, keys, dtype=torch.bool, device=device)
    mask[:, :, :, : call.text_len] = True
    mask[call.rows] = face_mask.expand(call.rows.numel(), -1, -1, -1)
    return mask


def _dense_hard_attention(q, k, v, call: _Call) -> torch.Tensor:
    """One SDPA with a boolean (or -inf / log w) mask over the whole stack, on the face rows; the
    other rows (uncond under CFG) get the text attention, as in the unpatched model."""
    mask = call.plan.key_mask(call.text_len, call.tokens_per_face, q.device)  # (R, 1, Q, K)
    rows = call.rows
    if call.plan.shared:
        mask = mask.expand(rows.numel(), -1, -1, -1)
    bias = _face_bias(call.weight, call.text_len, k.shape[1], q)
    if bias is not None:
        mask = torch.where(mask, bias, torch.tensor(float("-inf"), dtype=q.dtype, device=q.device))
    if rows.numel() == q.shape[0]:
        return sdpa_attention(q, k, v, call.heads, mask)
    out = call.text(q, k, v)  # (B, Q, C)
    face_out = sdpa_attention(q[rows], k[rows], v[rows], call.heads, mask)  # (Bf, Q, C)
    return out.index_put((rows,), face_out.to(out.dtype))


def _paper_attention(q, k, v, call: _Call) -> torch.Tensor:
    """softmax(M ⊙ QKᵀ/√d)V with M = 1 on text and visible faces, 0 on hidden faces.

    Rows without faces (uncond rows, rows whose faces were all dropped) stay text-only, so the
    negative branch of CFG is the text model in both modes.
    """
    batch, queries, inner = q.shape
    heads, text_len = call.heads, call.text_len
    d = inner // heads
    out = call.text(q, k, v)  # (B, Q, C)
    visible = _rows_key_mask(call, batch, q.device)  # (B, 1, Q, K)
    bias = _face_bias(call.weight, text_len, k.shape[1], q)
    results = []
    for row in call.rows.tolist():
        if not visible[row, :, :, text_len:].any():
            results.append(out[row])
            continue
        qr = q[row].reshape(queries, heads, d).transpose(0, 1)  # (H, Q, d)
        kr = k[row].reshape(-1, heads, d).transpose(0, 1)  # (H, K, d)
        vr = v[row].reshape(-1, heads, d).transpose(0, 1)
        logits = (qr @ kr.transpose(1, 2)) / math.sqrt(d)  # (H, Q, K)
        logits = logits * visible[row].to(logits.dtype)  # M ⊙ QKᵀ/√d: hidden logits become 0
        if bias is not None:
            logits = logits + bias * visible[row]
        attended = logits.softmax(dim=-1) @ vr  # (H, Q, d)
        results.append(attended.transpose(0, 1).reshape(queries, inner).to(out.dtype))
    return out.index_put((call.rows,), torch.stack(results))


def isolated_self_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    plan: RegionPlan | None,
    *,
    face_rows: torch.Tensor | None = None,
    text_attention: TextAttention = sdpa_attention,
) -> torch.Tensor:
    """Self-attention (q, k, v all (B, Q, H*d)) in which positions inside face n's region do not
    attend to positions inside face m's region (m != n); everything else is unchanged.

    The paper attributes the identity mixing that remains to self-attention; this is the
    optional remedy, off by default and measured by the toy-world benchmark.
    """
    rows = _face_row_index(face_rows, q.shape[0], q.device)
    out = text_attention(q, k, v, heads)
    if plan is None or plan.num_faces < 2 or rows.numel() == 0:
        return out
    mask = plan.isolation_mask(q.device)  # (R, 1, Q, Q)
    if plan.shared:
        mask = mask.expand(rows.numel(), -1, -1, -1)
    isolated = sdpa_attention(q[rows], k[rows], v[rows], heads, mask)
    return out.index_put((rows,), isolated.to(out.dtype))


class FaceAttention:
    """Masked cross-attention for one set of face regions, building each grid's plan once.

    face_masks: one FaceMasks shared by every face-seeing row (inference), or a sequence with
      one FaceMasks (or None for "no faces") per batch row (training; slots padded to the
      longest row, matching zero-padded face tokens).
    """

    def __init__(
        self,
        face_masks: FaceMasks | Sequence[FaceMasks | None],
        tokens_per_face: int,
        mode: str = "hard",
        weight: float = 1.0,
        overlap: str = DEFAULT_OVERLAP,
        kernel: str = "auto",
    ):
        if mode not in MASK_MODES:
            raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
        self.per_row = not isinstance(face_masks, FaceMasks)
        self.face_masks: list[FaceMasks | None] = (
            [face_masks] if isinstance(face_masks, FaceMasks) else list(face_masks)
        )
        self.num_faces = max((len(m) for m in self.face_masks if m is not None), default=0)
        self.tokens_per_face = tokens_per_face
        self.mode = mode
        self.weight = float(weight)
        self.overlap = overlap
        self.kernel = kernel
        self._plans: dict[tuple[tuple[int, int], tuple[int, int]], RegionPlan] = {}

    def plan(self, grid: tuple[int, int], latent_size: tuple[int, int] | None = None) -> RegionPlan:
        """The RegionPlan of an (h, w) attention grid of a UNet whose input latent is
        ``latent_size`` (default: the grid itself), cached. Masks of another aspect than the
        latent are centre-cropped to it first, as ComfyUI crops the control image."""
        latent: tuple[int, int] = (int(latent_size[0]), int(latent_size[1])) if latent_size else (grid[0], grid[1])
        cache_key = ((grid[0], grid[1]), latent)
        if cache_key not in self._plans:
            h, w = grid
            visibility = torch.zeros(len(self.face_masks), self.num_faces, h * w, dtype=torch.bool)
            for row, masks in enumerate(self.face_masks):
                if masks is not None and len(masks) > 0:
                    visibility[row, : len(masks)] = masks_on_grid(crop_to_latent(masks, latent), grid, self.overlap)
            self._plans[cache_key] = RegionPlan(visibility)  # (R, N, h*w)
        return self._plans[cache_key]

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        heads: int,
        latent_size: tuple[int, int],
        face_rows: torch.Tensor | None = None,
        text_attention: TextAttention = sdpa_attention,
    ) -> torch.Tensor:
        """q (B, Q, H*d) at a layer of a UNet whose input latent is ``latent_size`` (h, w)."""
        plan = self.plan(latent_grid(q.shape[1], latent_size), latent_size) if self.num_faces else None
        return masked_cross_attention(
            q,
            k,
            v,
            heads,
            plan,
            self.tokens_per_face,
            face_rows=face_rows,
            mode=self.mode,
            weight=self.weight,
            text_attention=text_attention,
            kernel=self.kernel,
        )

    def self_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        heads: int,
        latent_size: tuple[int, int],
        face_rows: torch.Tensor | None = None,
        text_attention: TextAttention = sdpa_attention,
    ) -> torch.Tensor:
        """attn1 with face regions isolated from each other (see isolated_self_attention)."""
        plan = self.plan(latent_grid(q.shape[1], latent_size), latent_size) if self.num_faces else None
        return isolated_self_attention(q, k, v, heads, plan, face_rows=face_rows, text_attention=text_attention)
