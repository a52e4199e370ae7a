"""The engine on a real ComfyUI host: equivalences, locality at every layer, keys, clone isolation."""

import numpy as np
import pytest
import torch

CONTEXT = 32  # the tiny model's cross-attention width
SMALL = dict(d_gf=16, d_lf=8, L=3, d_K=CONTEXT, projector_hidden=24)
LATENT = (1, 4, 8, 12)  # a non-square latent: grids 8x12, 4x6, 2x3, 1x2
IMAGE_SIZE = (64, 96)  # the template the masks are drawn on


@pytest.fixture(scope="module")
def instantfamily(comfy_host, pack):
    """A checkpoint written to models/instantfamily and loaded through the loader node."""
    config = pack.config.InstantFamilyConfig(**SMALL)
    torch.manual_seed(0)
    projector = pack.projector.Projector(config)
    pack.checkpoint.save_checkpoint(comfy_host.models_dir / "instantfamily" / "engine_test.safetensors",
                                    config, projector.state_dict())
    comfy_host.folder_paths.filename_list_cache.clear()
    (model,) = comfy_host.node_class("InstantFamilyModelLoader")().load("engine_test.safetensors")
    return model


def make_faces(pack, n, seed):
    rng = np.random.default_rng(seed)
    identities = [pack.identity.Identity(rng.normal(size=16).astype(np.float32),
                                         rng.normal(size=(8, 3, 3)).astype(np.float32), f"id{i}")
                  for i in range(n)]
    return pack.identity.Faces(identities)


def make_masks(pack, n):
    """n face boxes spread left to right over the template (the last two overlap)."""
    boxes = [[5 + 20 * i, 10, 20 + 20 * i, 30] for i in range(n)]
    return pack.masks.masks_from_boxes(torch.tensor(boxes, dtype=torch.float32), IMAGE_SIZE)


def build_stack(comfy_host, instantfamily, faces):
    (stack,) = comfy_host.node_class("InstantFamilyBuildEmbeddingStack")().build(instantfamily, faces)
    return stack


def apply(comfy_host, model, instantfamily, stack, masks, weight=1.0, **kw):
    node = comfy_host.node_class("InstantFamilyApply")()
    (patched,) = node.apply(model, instantfamily, stack, masks, weight, kw.get("start_at", 0.0),
                            kw.get("end_at", 1.0), kw.get("mask_mode", "as trained"), "both",
                            kw.get("attn1_isolation", False))
    return patched


@pytest.fixture(scope="module")
def base(comfy_host):
    return comfy_host.tiny_sd15_model(context_dim=CONTEXT, seed=1)


@pytest.fixture(scope="module")
def conds(comfy_host):
    return comfy_host.random_conditioning(CONTEXT, seed=2), comfy_host.random_conditioning(CONTEXT, seed=3)


def sample(comfy_host, model, conds, seed=5):
    positive, negative = conds
    return comfy_host.sample(model, positive, negative, torch.zeros(LATENT), seed=seed, steps=2, cfg=3.0)


def test_weight_zero_no_faces_and_masks_off_equal_the_unpatched_model(comfy_host, pack, instantfamily, base, conds):
    reference = sample(comfy_host, base, conds)
    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 3, seed=0))
    masks = make_masks(pack, 3)
    off = pack.masks.FaceMasks(torch.zeros_like(masks.masks), masks.centres, masks.boxes)
    empty_stack = build_stack(comfy_host, instantfamily, make_faces(pack, 0, seed=0))
    empty_masks = make_masks(pack, 0)
    for patched in (apply(comfy_host, base, instantfamily, stack, masks, weight=0.0),
                    apply(comfy_host, base, instantfamily, empty_stack, empty_masks),
                    apply(comfy_host, base, instantfamily, stack, off),
                    apply(comfy_host, base, instantfamily, stack, off, mask_mode="paper")):
        assert (sample(comfy_host, patched, conds) - reference).abs().max() <= 1e-6
    # and a real stack with real masks does change the result
    assert (sample(comfy_host, apply(comfy_host, base, instantfamily, stack, masks), conds) - reference).abs().max() > 1e-4


def test_every_cross_attention_key_is_patched_and_called(comfy_host, pack, instantfamily, base, conds):
    emitted = {}

    def probe(n, context, value, extra_options):
        block = tuple(extra_options["block"])
        emitted[block] = emitted.get(block, 0) + 1
        return n, context, value

    probed = base.clone()
    probed.set_model_attn2_patch(probe)
    sample(comfy_host, probed, conds)

    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 2, seed=0))
    patched = apply(comfy_host, base, instantfamily, stack, make_masks(pack, 2))
    patch = patched.model_options["transformer_options"]["instantfamily_patch"]
    sample(comfy_host, patched, conds)
    called = {}
    for (block, _, _), count in patch.calls.items():
        called[tuple(block)] = called.get(tuple(block), 0) + count
    replaced = set(patched.model_options["transformer_options"]["patches_replace"]["attn2"])
    keys = comfy_host.pack_import("instantfamily_core.unet_keys").cross_attention_keys(base.model.diffusion_model)
    assert set(keys) == set(emitted) == replaced == set(called)
    assert called == emitted  # same number of calls per key as the UNet makes


def test_hard_mode_changes_only_face_n_region_at_every_layer(comfy_host, pack, instantfamily, base, conds):
    """Record every attn2 call of a real forward, then swap face n's keys/values: only positions
    inside face n's region (cond rows) may change; uncond rows never change."""
    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 3, seed=0))
    masks = make_masks(pack, 3)
    patch = pack.comfy_patch.InstantFamilyAttentionPatch(stack, masks, pack.engine.host_attention, mode="hard")
    recorded = []
    original = patch.attention

    def recorder(q, k, v, extra_options):
        recorded.append((q, k, v, dict(extra_options)))
        return original(q, k, v, extra_options)

    patch.attention = recorder
    patched = base.clone()
    pack.engine.install_patch(patched, patch)
    sample(comfy_host, patched, conds)
    grids = set()
    tokens = stack.tokens_per_face
    for q, k, v, options in recorded:
        text_len = k.shape[1] - 3 * tokens
        rows = pack.comfy_patch.face_rows_from_options(options, q.shape[0])
        rows = torch.ones(q.shape[0], dtype=torch.bool) if rows is None else rows
        grid = pack.masks.latent_grid(q.shape[1], pack.comfy_patch.latent_size_from_options(options))
        grids.add(grid)
        visibility = patch.face_attention.plan(grid).visibility[0]  # (N, Q)
        for n in range(3):
            k2, v2 = k.clone(), v.clone()
            face = slice(text_len + n * tokens, text_len + (n + 1) * tokens)
            k2[:, face] = torch.randn_like(k2[:, face])
            v2[:, face] = torch.randn_like(v2[:, face])
            changed = (original(q, k2, v2, options) - original(q, k, v, options)).abs().amax(dim=2) > 1e-6  # (B, Q)
            allowed = rows[:, None] & visibility[n][None]
            assert not (changed & ~allowed).any(), f"face {n} leaked outside its region at grid {grid}"
            if rows.any():
                assert changed[rows][:, visibility[n]].all()
    assert {g[0] * g[1] for g in grids} == {8 * 12, 4 * 6, 2 * 3, 1 * 2}


def test_paper_mode_leak_is_measured(comfy_host, pack, instantfamily, base, conds):
    """The paper's literal M ⊙ QKᵀ leaks hidden faces into every position; report how much."""
    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 2, seed=0))
    masks = make_masks(pack, 2)
    leaks = {}
    for mode in ("hard", "paper"):
        patch = pack.comfy_patch.InstantFamilyAttentionPatch(stack, masks, pack.engine.host_attention, mode=mode)
        q = torch.randn(1, 8 * 12, CONTEXT)
        k = torch.randn(1, 77 + 2 * stack.tokens_per_face, CONTEXT)
        v = torch.randn_like(k)
        options = {"n_heads": 1, "original_shape": list(LATENT)}
        visibility = patch.face_attention.plan((8, 12)).visibility[0]
        outside_all = ~visibility.any(dim=0)
        text_only = pack.engine.host_attention(q, k[:, :77], v[:, :77], 1, options)
        out = patch.attention(q, k, v, options)
        leaks[mode] = (out - text_only)[:, outside_all].abs().mean().item()
    print(f"\nmean |output - text-only| outside every face region: hard {leaks['hard']:.2e}, paper {leaks['paper']:.2e}")
    assert leaks["hard"] < 1e-6 < leaks["paper"]


def test_patched_model_is_a_clone_and_prompts_do_not_share_faces(comfy_host, pack, instantfamily, base, conds):
    before = sample(comfy_host, base, conds)
    masks = make_masks(pack, 2)
    first = apply(comfy_host, base, instantfamily, build_stack(comfy_host, instantfamily, make_faces(pack, 2, seed=10)), masks)
    second = apply(comfy_host, base, instantfamily, build_stack(comfy_host, instantfamily, make_faces(pack, 2, seed=11)), masks)
    out_first = sample(comfy_host, first, conds)
    out_second = sample(comfy_host, second, conds)
    assert "patches" not in base.model_options.get("transformer_options", {})
    assert torch.equal(sample(comfy_host, base, conds), before)
    assert torch.equal(sample(comfy_host, first, conds), out_first)
    assert (out_first - out_second).abs().max() > 1e-4


def test_start_end_window_limits_the_patch(comfy_host, pack, instantfamily, base, conds):
    """start_at=0.5: the first step (sigma_max) runs without faces, the last one with them."""
    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 2, seed=0))
    patched = apply(comfy_host, base, instantfamily, stack, make_masks(pack, 2), start_at=0.5, end_at=1.0)
    patch = patched.model_options["transformer_options"]["instantfamily_patch"]
    seen = []
    original = patch.append_face_tokens

    def recorder(n, context, value, extra_options):
        out = original(n, context, value, extra_options)
        seen.append((float(extra_options["sigmas"][0]), out[1].shape[1] - context.shape[1]))
        return out

    patch.append_face_tokens = recorder
    patched.model_options["transformer_options"]["patches"]["attn2_patch"] = [recorder]
    sample(comfy_host, patched, conds)
    by_sigma = {}
    for sigma, added in seen:
        by_sigma.setdefault(round(sigma, 4), set()).add(added)
    high, low = max(by_sigma), min(by_sigma)
    assert by_sigma[high] == {0} and by_sigma[low] == {2 * stack.tokens_per_face}
    with pytest.raises(ValueError, match="start_at"):
        apply(comfy_host, base, instantfamily, stack, make_masks(pack, 2), start_at=0.8, end_at=0.2)


def test_count_mismatch_between_stack_and_masks_is_explained(comfy_host, pack, instantfamily, base):
    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 3, seed=0))
    with pytest.raises(ValueError, match="3 IDs but the face masks have 2 positions"):
        apply(comfy_host, base, instantfamily, stack, make_masks(pack, 2))


def test_attn1_isolation_patches_self_attention_and_is_a_no_op_for_one_face(comfy_host, pack, instantfamily, base, conds):
    one = build_stack(comfy_host, instantfamily, make_faces(pack, 1, seed=0))
    plain_one = sample(comfy_host, apply(comfy_host, base, instantfamily, one, make_masks(pack, 1)), conds)
    isolated_one = apply(comfy_host, base, instantfamily, one, make_masks(pack, 1), attn1_isolation=True)
    assert set(isolated_one.model_options["transformer_options"]["patches_replace"]["attn1"]) == \
        set(isolated_one.model_options["transformer_options"]["patches_replace"]["attn2"])
    assert torch.allclose(sample(comfy_host, isolated_one, conds), plain_one, atol=1e-5)
    three = build_stack(comfy_host, instantfamily, make_faces(pack, 3, seed=0))
    plain = sample(comfy_host, apply(comfy_host, base, instantfamily, three, make_masks(pack, 3)), conds)
    isolated = sample(comfy_host, apply(comfy_host, base, instantfamily, three, make_masks(pack, 3), attn1_isolation=True), conds)
    assert (plain - isolated).abs().max() > 1e-4
