"""The fast masked attention equals a plain, slow reference written here, query by query."""

import math

import pytest
import torch

from instantfamily_core.attention import FaceAttention, masked_cross_attention, sdpa_attention
from instantfamily_core.masks import masks_from_boxes
from instantfamily_core.region_plan import RegionPlan

HEADS, DIM, TOKENS, TEXT = 2, 8, 5, 7


def reference(q, k, v, visibility, face_rows, mode, weight):
    """Loop over rows, heads and queries; build each query's mask by hand (paper Eq. 6)."""
    batch, queries, inner = q.shape
    n_faces = visibility.shape[1]
    text_len = k.shape[1] - n_faces * TOKENS
    out = torch.zeros_like(q)
    for b in range(batch):
        sees_faces = b in face_rows
        row_vis = visibility[0 if visibility.shape[0] == 1 else face_rows.index(b)] if sees_faces else None
        for h in range(HEADS):
            sl = slice(h * DIM, (h + 1) * DIM)
            for i in range(queries):
                logits = (k[b, :, sl] @ q[b, i, sl]) / math.sqrt(DIM)
                visible = torch.ones(k.shape[1], dtype=torch.bool)
                visible[text_len:] = row_vis[:, i].repeat_interleave(TOKENS) if sees_faces else False
                face_bias = torch.zeros(k.shape[1])
                face_bias[text_len:] = math.log(weight)
                if mode == "paper" and sees_faces and row_vis.any():
                    logits = logits * visible.float() + face_bias * visible.float()
                else:
                    logits = (logits + face_bias).masked_fill(~visible, float("-inf"))
                out[b, i, sl] = logits.softmax(0) @ v[b, :, sl]
    return out


def random_inputs(n_faces, batch=2, queries=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, queries, HEADS * DIM, generator=g)
    k = torch.randn(batch, TEXT + n_faces * TOKENS, HEADS * DIM, generator=g)
    v = torch.randn(batch, TEXT + n_faces * TOKENS, HEADS * DIM, generator=g)
    return q, k, v, g


@pytest.mark.parametrize("n_faces", [0, 1, 4, 16])
@pytest.mark.parametrize("mode", ["hard", "paper"])
@pytest.mark.parametrize("weight", [1.0, 0.4, 2.0])
@pytest.mark.parametrize("cond_rows_only", [False, True])
def test_shared_regions_match_reference(n_faces, mode, weight, cond_rows_only):
    q, k, v, g = random_inputs(n_faces)
    visibility = torch.rand(1, n_faces, q.shape[1], generator=g) < 0.3  # overlapping regions included
    face_rows = torch.tensor([True, False]) if cond_rows_only else None
    expected = reference(q, k, v, visibility, [0] if cond_rows_only else [0, 1], mode, weight)
    for kernel in ("auto", "dense", "region"):
        out = masked_cross_attention(
            q, k, v, HEADS, RegionPlan(visibility), TOKENS, face_rows=face_rows, mode=mode, weight=weight, kernel=kernel
        )
        assert torch.allclose(out, expected, atol=2e-6), (kernel, (out - expected).abs().max())


@pytest.mark.parametrize("n_faces", [1, 4])
@pytest.mark.parametrize("mode", ["hard", "paper"])
def test_per_row_regions_match_reference(n_faces, mode):
    q, k, v, g = random_inputs(n_faces, batch=3)
    visibility = torch.rand(3, n_faces, q.shape[1], generator=g) < 0.4
    visibility[2] = False  # a row whose faces were dropped: text only in both modes
    out = masked_cross_attention(q, k, v, HEADS, RegionPlan(visibility), TOKENS, mode=mode)
    assert torch.allclose(out, reference(q, k, v, visibility, [0, 1, 2], mode, 1.0), atol=2e-6)
    text_only = sdpa_attention(q[2:], k[2:, :TEXT], v[2:, :TEXT], HEADS)
    assert torch.allclose(out[2:], text_only, atol=1e-6)


def test_all_masks_off_is_text_only():
    q, k, v, _ = random_inputs(4)
    plan = RegionPlan(torch.zeros(1, 4, q.shape[1], dtype=torch.bool))
    out = masked_cross_attention(q, k, v, HEADS, plan, TOKENS)
    assert torch.equal(out, sdpa_attention(q, k[:, :TEXT], v[:, :TEXT], HEADS))


def test_weight_zero_is_text_only_and_all_ones_mask_is_unmasked():
    q, k, v, _ = random_inputs(3)
    everywhere = RegionPlan(torch.ones(1, 3, q.shape[1], dtype=torch.bool))
    assert torch.equal(
        masked_cross_attention(q, k, v, HEADS, everywhere, TOKENS, weight=0.0),
        sdpa_attention(q, k[:, :TEXT], v[:, :TEXT], HEADS),
    )
    for mode in ("hard", "paper"):
        out = masked_cross_attention(q, k, v, HEADS, everywhere, TOKENS, mode=mode)
        assert torch.allclose(out, sdpa_attention(q, k, v, HEADS), atol=1e-6)


def test_paper_mode_leaks_outside_the_region_and_hard_mode_does_not():
    q, k, v, _ = random_inputs(2)
    visibility = torch.zeros(1, 2, q.shape[1], dtype=torch.bool)
    visibility[0, 0, :10] = True
    visibility[0, 1, 30:40] = True
    plan = RegionPlan(visibility)
    k2, v2 = k.clone(), v.clone()
    k2[:, TEXT + TOKENS :], v2[:, TEXT + TOKENS :] = (
        torch.randn_like(k2[:, TEXT + TOKENS :]),
        torch.randn_like(v2[:, TEXT + TOKENS :]),
    )
    outside = torch.ones(q.shape[1], dtype=torch.bool)
    outside[30:40] = False
    for mode, leaks in (("hard", False), ("paper", True)):
        a = masked_cross_attention(q, k, v, HEADS, plan, TOKENS, mode=mode)
        b = masked_cross_attention(q, k2, v2, HEADS, plan, TOKENS, mode=mode)
        change_outside = (a - b)[:, outside].abs().max().item()
        assert (change_outside > 1e-3) == leaks, (mode, change_outside)
        assert (a - b)[:, 30:40].abs().max() > 1e-3  # inside face 1's region it always changes


def test_face_attention_builds_each_grid_once_and_rejects_mismatched_context():
    masks = masks_from_boxes(torch.tensor([[10.0, 10, 30, 30], [40, 20, 60, 44]]), (64, 64))
    attention = FaceAttention(masks, TOKENS)
    q, k, v, _ = random_inputs(2, queries=8 * 8)
    out1 = attention(q, k, v, HEADS, latent_size=(8, 8))
    plan = attention.plan((8, 8))
    out2 = attention(q, k, v, HEADS, latent_size=(8, 8))
    assert attention.plan((8, 8)) is plan and torch.equal(out1, out2)
    with pytest.raises(ValueError, match="faces x 5 tokens"):
        attention(q, k[:, : TEXT + 2], v[:, : TEXT + 2], HEADS, latent_size=(8, 8))


def test_attn1_isolation_matches_a_reference_and_blocks_only_cross_face_pairs():
    from instantfamily_core.attention import isolated_self_attention

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 12, HEADS * DIM, generator=g) for _ in range(3))
    visibility = torch.zeros(1, 2, 12, dtype=torch.bool)
    visibility[0, 0, 0:4] = True
    visibility[0, 1, 3:7] = True  # position 3 belongs to both faces
    out = isolated_self_attention(q, k, v, HEADS, RegionPlan(visibility), face_rows=torch.tensor([True, False]))
    face_of = [{0}, {0}, {0}, {0, 1}, {1}, {1}, {1}] + [set()] * 5
    allowed = torch.tensor(
        [[not (face_of[i] and face_of[j] and not face_of[i] & face_of[j]) for j in range(12)] for i in range(12)]
    )
    assert not allowed[0, 4] and allowed[0, 3] and allowed[0, 8] and allowed[8, 0]
    expected = sdpa_attention(q[:1], k[:1], v[:1], HEADS, allowed[None, None])
    assert torch.allclose(out[:1], expected, atol=1e-6)
    assert torch.allclose(out[1:], sdpa_attention(q[1:], k[1:], v[1:], HEADS), atol=1e-6)  # uncond row untouched
