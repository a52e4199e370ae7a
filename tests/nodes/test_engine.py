"""The engine on a real ComfyUI host: equivalences, locality at every layer, keys, clone isolation,
the host's attention, cached face K/V, the model check and the aspect rule -- for an SD1.5-shaped
and an SDXL-shaped tiny model (SDXL: several transformer blocks per key, an ADM input)."""

import logging

import numpy as np
import pytest
import torch
from recording import record_calls

CONTEXT = 32  # the tiny model's cross-attention width
SMALL = dict(d_gf=16, d_lf=8, L=3, d_K=CONTEXT, projector_hidden=24)
LATENT = (1, 4, 8, 12)  # a non-square latent: grids 8x12, 4x6, 2x3, 1x2
IMAGE_SIZE = (64, 96)  # the template the masks are drawn on (same aspect as the latent)
# The attention grids of LATENT per family (SDXL has no attention at the full-size level).
GRIDS = {"SD1.5": {(8, 12), (4, 6), (2, 3), (1, 2)}, "SDXL": {(4, 6), (2, 3)}}
POOLED = {"SD1.5": None, "SDXL": 1280}
# A latent each family's users really sample (768x512 px; 1216x832 px) and the attention grids it gives.
REAL_SIZES = {
    "SD1.5": ((1, 4, 64, 96), {(64, 96), (32, 48), (16, 24), (8, 12)}),
    "SDXL": ((1, 4, 104, 152), {(52, 76), (26, 38)}),
}


@pytest.fixture(scope="module", params=["SD1.5", "SDXL"])
def family(request):
    return request.param


def save_and_load(comfy_host, pack, name, family, unet_deltas=None):
    config = pack.config.InstantFamilyConfig(**SMALL, base_model=family)
    torch.manual_seed(0)
    projector = pack.projector.Projector(config)
    pack.checkpoint.save_checkpoint(
        comfy_host.models_dir / "instantfamily" / name, config, projector.state_dict(), unet_deltas=unet_deltas
    )
    comfy_host.folder_paths.filename_list_cache.clear()
    (model,) = comfy_host.node_class("InstantFamilyModelLoader")().load(name)
    return model


@pytest.fixture(scope="module")
def instantfamily(comfy_host, pack, family):
    """A checkpoint written to models/instantfamily and loaded through the loader node."""
    return save_and_load(comfy_host, pack, f"engine_test_{family}.safetensors", family)


@pytest.fixture(scope="module")
def with_deltas(comfy_host, pack, base, family):
    """A checkpoint that also changes the UNet's attn2 K/V (as the trainer's export writes)."""
    g = torch.Generator().manual_seed(9)
    deltas = {
        name: torch.randn(tensor.shape, generator=g) * 0.05
        for name, tensor in base.model.state_dict().items()
        if "attn2.to_k" in name or "attn2.to_v" in name
    }
    layers = sum(len(m) for m in pack.unet_keys.cross_attention_layers(base.model.diffusion_model).values())
    assert len(deltas) == 2 * layers  # every attn2 layer x (to_k, to_v)
    return save_and_load(comfy_host, pack, f"engine_deltas_{family}.safetensors", family, unet_deltas=deltas)


def make_faces(pack, n, seed):
    rng = np.random.default_rng(seed)
    identities = [
        pack.identity.Identity(
            rng.normal(size=16).astype(np.float32), rng.normal(size=(8, 3, 3)).astype(np.float32), f"id{i}"
        )
        for i in range(n)
    ]
    return pack.identity.Faces(identities)


def make_masks(pack, n, image_size=IMAGE_SIZE):
    """n face boxes spread left to right over the template (the last two overlap)."""
    boxes = [[5 + 20 * i, 10, 20 + 20 * i, 30] for i in range(n)]
    return pack.masks.masks_from_boxes(torch.tensor(boxes, dtype=torch.float32), image_size)


def build_stack(comfy_host, instantfamily, faces):
    (stack,) = comfy_host.node_class("InstantFamilyBuildEmbeddingStack")().build(instantfamily, faces)
    return stack


def apply(comfy_host, model, instantfamily, stack, masks, weight=1.0, **kw):
    node = comfy_host.node_class("InstantFamilyApply")()
    (patched,) = node.apply(
        model,
        instantfamily,
        stack,
        masks,
        weight,
        kw.get("start_at", 0.0),
        kw.get("end_at", 1.0),
        kw.get("mask_mode", "as trained"),
        "both",
        kw.get("attn1_isolation", False),
    )
    return patched


@pytest.fixture(scope="module")
def base(comfy_host, family):
    return comfy_host.tiny_sd15_model(context_dim=CONTEXT, seed=1, family=family)


@pytest.fixture(scope="module")
def conds(comfy_host, family):
    return (
        comfy_host.random_conditioning(CONTEXT, seed=2, pooled=POOLED[family]),
        comfy_host.random_conditioning(CONTEXT, seed=3, pooled=POOLED[family]),
    )


def sample(comfy_host, model, conds, seed=5, latent=LATENT):
    positive, negative = conds
    return comfy_host.sample(model, positive, negative, torch.zeros(latent), seed=seed, steps=2, cfg=3.0)


def replaces(model, kind="attn2"):
    return model.model_options["transformer_options"]["patches_replace"][kind]


def test_weight_zero_is_the_plain_model_bit_for_bit(comfy_host, pack, instantfamily, with_deltas, base, conds):
    reference = sample(comfy_host, base, conds)
    stack = build_stack(comfy_host, with_deltas, make_faces(pack, 3, seed=0))
    masks = make_masks(pack, 3)
    empty_stack = build_stack(comfy_host, with_deltas, make_faces(pack, 0, seed=0))
    for plain in (
        apply(comfy_host, base, with_deltas, stack, masks, weight=0.0),  # UNet deltas included
        apply(comfy_host, base, with_deltas, empty_stack, make_masks(pack, 0)),
    ):
        assert "patches_replace" not in plain.model_options["transformer_options"]
        assert torch.equal(sample(comfy_host, plain, conds), reference)
    # weight > 0: the deltas and the faces change the result
    assert (
        sample(comfy_host, apply(comfy_host, base, with_deltas, stack, masks), conds) - reference
    ).abs().max() > 1e-4
    # masks that are all off: the text model, within float rounding, in both modes
    off = pack.masks.FaceMasks(torch.zeros_like(masks.masks), masks.centres, masks.boxes)
    for mode in ("hard", "paper"):
        patched = apply(
            comfy_host,
            base,
            instantfamily,
            build_stack(comfy_host, instantfamily, make_faces(pack, 3, 0)),
            off,
            mask_mode=mode,
        )
        assert (sample(comfy_host, patched, conds) - reference).abs().max() <= 1e-6


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
    patched, recorded = record_calls(apply(comfy_host, base, instantfamily, stack, make_masks(pack, 2)))
    sample(comfy_host, patched, conds)
    called = {}
    for _, _, _, _, options, _ in recorded:
        called[tuple(options["block"])] = called.get(tuple(options["block"]), 0) + 1
    keys = pack.unet_keys.cross_attention_keys(base.model.diffusion_model)
    assert set(keys) == set(emitted) == set(replaces(patched)) == set(called)
    assert called == emitted  # same number of calls per key as the UNet makes
    # each replace projects the faces with its own layer's to_k / to_v
    layers = pack.unet_keys.cross_attention_layers(base.model.diffusion_model)
    for key, replace in replaces(patched).items():
        assert replace.inner.layers == dict(enumerate(layers[key]))


def full_context_attention(pack, patch, replace, q, k, v, options, face_k=None, face_v=None):
    """The patch's masked attention over [context ; faces], with the faces' K/V given explicitly."""
    layer = replace.layers[options.get("block_index", 0)]
    cached_k, cached_v = patch.face_kv(layer, q.device, k.dtype)
    face_k = cached_k if face_k is None else face_k
    face_v = cached_v if face_v is None else face_v
    batch = q.shape[0]
    k_all = torch.cat([k, face_k.expand(batch, -1, -1)], dim=1)
    v_all = torch.cat([v, face_v.expand(batch, -1, -1)], dim=1)
    rows = pack.comfy_patch.face_rows_from_options(options, batch)
    return patch.face_attention(
        q,
        k_all,
        v_all,
        options["n_heads"],
        latent_size=patch.latent_size(options),
        face_rows=rows,
        text_attention=lambda a, b, c, h: patch.host_attention(a, b, c, h, options),
    )


def test_hard_mode_changes_only_face_n_region_at_every_layer(comfy_host, pack, instantfamily, base, conds, family):
    """Record every attn2 call of a real forward, then swap face n's keys/values: only positions
    inside face n's region (cond rows) may change; uncond rows never change."""
    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 3, seed=0))
    patched, recorded = record_calls(
        apply(comfy_host, base, instantfamily, stack, make_masks(pack, 3), mask_mode="hard")
    )
    sample(comfy_host, patched, conds)
    assert only_own_regions_change(pack, patched, recorded, stack, 3) == GRIDS[family]


def test_locality_at_the_familys_own_non_square_size(comfy_host, pack, instantfamily, base, conds, family):
    """Each family at a size its users run (SD1.5 768x512; SDXL 1216x832, one of its ~1 MP buckets):
    every face stays in its region at every attention grid of that size."""
    latent, grids = REAL_SIZES[family]
    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 3, seed=0))
    masks = make_masks(pack, 3, image_size=latent[2:])
    patched, recorded = record_calls(apply(comfy_host, base, instantfamily, stack, masks, mask_mode="hard"))
    sample(comfy_host, patched, conds, latent=latent)
    assert only_own_regions_change(pack, patched, recorded, stack, 3) == grids


def only_own_regions_change(pack, patched, recorded, stack, n_faces) -> set:
    """For every recorded attn2 call, swap face n's keys/values: only cond positions inside face n's
    region may change, and all of them do. Returns the attention grids seen."""
    patch = patched.model_options["transformer_options"]["instantfamily"]
    grids = set()
    tokens = stack.tokens_per_face
    for replace, q, k, v, options, out in recorded:
        layer = replace.layers[options.get("block_index", 0)]
        face_k, face_v = patch.face_kv(layer, q.device, k.dtype)
        assert torch.equal(full_context_attention(pack, patch, replace, q, k, v, options), out)
        rows = pack.comfy_patch.face_rows_from_options(options, q.shape[0])
        rows = torch.ones(q.shape[0], dtype=torch.bool) if rows is None else rows
        latent = pack.comfy_patch.latent_size_from_options(options)
        grid = pack.masks.latent_grid(q.shape[1], latent)
        grids.add(grid)
        visibility = patch.face_attention.plan(grid, latent).visibility[0]  # (N, Q)
        for n in range(n_faces):
            face = slice(n * tokens, (n + 1) * tokens)
            k2, v2 = face_k.clone(), face_v.clone()
            k2[:, face], v2[:, face] = torch.randn_like(k2[:, face]), torch.randn_like(v2[:, face])
            swapped = full_context_attention(pack, patch, replace, q, k, v, options, k2, v2)
            changed = (swapped - out).abs().amax(dim=2) > 1e-6  # (B, Q)
            allowed = rows[:, None] & visibility[n][None]
            assert not (changed & ~allowed).any(), f"face {n} leaked outside its region at grid {grid}"
            if rows.any():
                assert changed[rows][:, visibility[n]].all()
    return grids


def test_paper_mode_leak_is_measured(comfy_host, pack, instantfamily, base, conds):
    """The paper's literal M ⊙ QKᵀ leaks hidden faces into every position; report how much."""
    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 2, seed=0))
    masks = make_masks(pack, 2)
    leaks = {}
    for mode in ("hard", "paper"):
        patch = pack.comfy_patch.FacePatch(
            pack.comfy_patch.FaceSettings(stack, masks, mode=mode), pack.engine.host_attention
        )
        q = torch.randn(1, 8 * 12, CONTEXT)
        k = torch.randn(1, 77 + 2 * stack.tokens_per_face, CONTEXT)
        v = torch.randn_like(k)
        options = {"n_heads": 1, "original_shape": list(LATENT)}
        visibility = patch.face_attention.plan((8, 12), (8, 12)).visibility[0]
        outside_all = ~visibility.any(dim=0)
        text_only = pack.engine.host_attention(q, k[:, :77], v[:, :77], 1, options)
        out = patch.face_attention(
            q,
            k,
            v,
            1,
            latent_size=(8, 12),
            text_attention=lambda a, b, c, h, o=options: pack.engine.host_attention(a, b, c, h, o),
        )
        leaks[mode] = (out - text_only)[:, outside_all].abs().mean().item()
    print(
        f"\nmean |output - text-only| outside every face region: hard {leaks['hard']:.2e}, paper {leaks['paper']:.2e}"
    )
    assert leaks["hard"] < 1e-6 < leaks["paper"]


def test_patched_model_is_a_clone_and_prompts_do_not_share_faces(comfy_host, pack, instantfamily, base, conds):
    before = sample(comfy_host, base, conds)
    masks = make_masks(pack, 2)
    first = apply(
        comfy_host, base, instantfamily, build_stack(comfy_host, instantfamily, make_faces(pack, 2, seed=10)), masks
    )
    second = apply(
        comfy_host, base, instantfamily, build_stack(comfy_host, instantfamily, make_faces(pack, 2, seed=11)), masks
    )
    out_first = sample(comfy_host, first, conds)
    out_second = sample(comfy_host, second, conds)
    assert "patches_replace" not in base.model_options.get("transformer_options", {})
    assert torch.equal(sample(comfy_host, base, conds), before)
    assert torch.equal(sample(comfy_host, first, conds), out_first)
    assert (out_first - out_second).abs().max() > 1e-4


def test_start_end_window_limits_the_patch(comfy_host, pack, instantfamily, base, conds):
    """start_at=0.5: the first step (sigma_max) runs without faces, the last one with them."""
    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 2, seed=0))
    patched, recorded = record_calls(
        apply(comfy_host, base, instantfamily, stack, make_masks(pack, 2), start_at=0.5, end_at=1.0)
    )
    sample(comfy_host, patched, conds)
    text_only_by_sigma = {}
    for _, q, k, v, options, out in recorded:
        text_only = torch.equal(out, pack.engine.host_attention(q, k, v, options["n_heads"], options))
        text_only_by_sigma.setdefault(round(float(options["sigmas"][0]), 4), set()).add(text_only)
    high, low = max(text_only_by_sigma), min(text_only_by_sigma)
    assert text_only_by_sigma[high] == {True} and False in text_only_by_sigma[low]
    with pytest.raises(ValueError, match="start_at"):
        apply(comfy_host, base, instantfamily, stack, make_masks(pack, 2), start_at=0.8, end_at=0.2)


def test_count_mismatch_between_stack_and_masks_is_explained(comfy_host, pack, instantfamily, base):
    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 3, seed=0))
    with pytest.raises(ValueError, match="3 IDs but the face masks have 2 positions"):
        apply(comfy_host, base, instantfamily, stack, make_masks(pack, 2))


def test_attn1_isolation_patches_self_attention_and_is_a_no_op_for_one_face(
    comfy_host, pack, instantfamily, base, conds
):
    one = build_stack(comfy_host, instantfamily, make_faces(pack, 1, seed=0))
    plain_one = sample(comfy_host, apply(comfy_host, base, instantfamily, one, make_masks(pack, 1)), conds)
    isolated_one = apply(comfy_host, base, instantfamily, one, make_masks(pack, 1), attn1_isolation=True)
    assert set(replaces(isolated_one, "attn1")) == set(replaces(isolated_one, "attn2"))
    assert torch.allclose(sample(comfy_host, isolated_one, conds), plain_one, atol=1e-5)
    three = build_stack(comfy_host, instantfamily, make_faces(pack, 3, seed=0))
    plain = sample(comfy_host, apply(comfy_host, base, instantfamily, three, make_masks(pack, 3)), conds)
    isolated = sample(
        comfy_host, apply(comfy_host, base, instantfamily, three, make_masks(pack, 3), attn1_isolation=True), conds
    )
    assert (plain - isolated).abs().max() > 1e-4


def test_cached_face_kv_equal_projecting_the_extended_context(comfy_host, pack, instantfamily, base, conds):
    """Face K/V projected once per layer = the layer projecting [text ; faces] (<= 1e-6), and the
    cache follows the layer's weights."""
    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 3, seed=0))
    patched, recorded = record_calls(apply(comfy_host, base, instantfamily, stack, make_masks(pack, 3)))
    sample(comfy_host, patched, conds)
    patch = patched.model_options["transformer_options"]["instantfamily"]
    text = conds[0][0][0][0]  # (77, C)
    for replace, q, k, v, options, out in recorded[:16]:
        layer = replace.layers[options.get("block_index", 0)]
        extended = torch.cat([text, stack.flat_tokens()], dim=0)[None]  # (1, 77 + N*T, C)
        cached_k, cached_v = patch.face_kv(layer, q.device, k.dtype)
        assert (layer.to_k(extended)[:, 77:] - cached_k).abs().max() <= 1e-6
        assert (layer.to_v(extended)[:, 77:] - cached_v).abs().max() <= 1e-6
        uncached = full_context_attention(
            pack,
            patch,
            replace,
            q,
            k,
            v,
            options,
            layer.to_k(stack.flat_tokens()[None]),
            layer.to_v(stack.flat_tokens()[None]),
        )
        assert (uncached - out).abs().max() <= 1e-6
    layer = recorded[0][0].layers[0]
    before = patch.face_kv(layer, "cpu", torch.float32)[0]
    assert patch.face_kv(layer, "cpu", torch.float32)[0] is before  # cached, not projected again
    with torch.no_grad():
        layer.to_k.weight.mul_(2.0)  # weights patched in place (as ComfyUI applies LoRAs)
    try:
        assert torch.allclose(patch.face_kv(layer, "cpu", torch.float32)[0], 2 * before, atol=1e-6)
    finally:
        with torch.no_grad():
            layer.to_k.weight.mul_(0.5)


def test_the_hosts_attention_function_and_its_options_are_used(comfy_host, pack, instantfamily, base, conds):
    """Text attention goes through ComfyUI's optimized_attention, with transformer_options where it
    takes them (a model-level attention override then applies to the patched layers too)."""
    import functools
    import inspect

    import comfy.ldm.modules.attention as host

    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 2, seed=0))
    masks = make_masks(pack, 2)
    off = pack.masks.FaceMasks(torch.zeros_like(masks.masks), masks.centres, masks.boxes)
    takes_options = "transformer_options" in inspect.signature(host.optimized_attention).parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(host.optimized_attention).parameters.values()
    )
    seen = []
    original = host.optimized_attention

    @functools.wraps(original)  # the same signature as the host's function
    def spy(q, k, v, heads, *args, **kwargs):
        seen.append(kwargs.get("transformer_options"))
        return original(q, k, v, heads, *args, **kwargs)

    host.optimized_attention = spy
    try:
        patched = apply(comfy_host, base, instantfamily, stack, off)
        patched.model_options["transformer_options"]["marker"] = "from the MODEL"
        sample(comfy_host, patched, conds)
    finally:
        host.optimized_attention = original
    ours = [options for options in seen if options is not None and "instantfamily" in options]
    if takes_options:
        assert ours and all(options["marker"] == "from the MODEL" for options in ours)
    else:  # the 2024 host's attention takes no options, and none are forced on it
        assert seen and all(options is None for options in seen)


def test_another_family_or_width_is_refused_at_apply(comfy_host, pack, instantfamily, family):
    other = {"SD1.5": "SDXL", "SDXL": "SD1.5"}[family]
    model = comfy_host.tiny_sd15_model(context_dim=CONTEXT, seed=1, family=other)
    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 2, seed=0))
    with pytest.raises(ValueError, match=f"{other} model, {family} checkpoint"):
        apply(comfy_host, model, instantfamily, stack, make_masks(pack, 2))
    wide = comfy_host.tiny_sd15_model(context_dim=64, seed=1, family=family)
    with pytest.raises(ValueError, match="cross-attention is 64 wide but the checkpoint's face tokens are 32"):
        apply(comfy_host, wide, instantfamily, stack, make_masks(pack, 2))


def test_two_apply_nodes_stop_with_a_clear_error(comfy_host, pack, instantfamily, base):
    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 2, seed=0))
    once = apply(comfy_host, base, instantfamily, stack, make_masks(pack, 2))
    with pytest.raises(ValueError, match="already went through an Apply InstantFamily"):
        apply(comfy_host, once, instantfamily, stack, make_masks(pack, 2))


def test_masks_follow_comfyuis_crop_of_the_control_image_on_another_aspect(
    comfy_host, pack, instantfamily, base, conds, caplog
):
    """A 768x512 latent with a square 256x256 template: ComfyUI centre-crops the control image to
    3:2; every mask cell lies under its circle in that crop, a face cut off gets no cells, and
    the log says what happened and how to avoid it."""
    import comfy.utils

    size = (256, 256)
    boxes = torch.tensor(
        [[20, 100, 60, 140], [100, 90, 150, 140], [180, 110, 220, 150], [110, 5, 140, 35]], dtype=torch.float32
    )
    masks = pack.masks.masks_from_boxes(boxes, size)
    config = pack.config.InstantFamilyConfig(**SMALL)
    control = pack.control_image.draw_control_image(
        size, config, face_boxes=masks.boxes.numpy(), face_centres=masks.centres.numpy()
    )
    hint = torch.from_numpy(control).float().permute(2, 0, 1)[None] / 255  # (1, 3, 256, 256)
    latent = (64, 96)  # 512 x 768 px
    placed = comfy.utils.common_upscale(hint, latent[1] * 8, latent[0] * 8, "nearest-exact", "center")[0]
    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 4, seed=0))
    patch = pack.comfy_patch.FacePatch(pack.comfy_patch.FaceSettings(stack, masks), pack.engine.host_attention)
    visibility = patch.face_attention.plan(latent, latent).visibility[0].reshape(4, *latent)
    for slot in range(3):
        colour = torch.tensor(config.palette_colour(slot)).float()[:, None, None] / 255
        on = ((placed - colour).abs().amax(dim=0) < 0.02).nonzero().float()  # circle pixels (y, x) in the crop
        assert len(on) > 0
        cy, cx = (on.mean(dim=0) / 8).long().tolist()  # its centre, in latent cells
        assert visibility[slot, cy, cx], f"slot {slot}: the circle at cell {(cy, cx)} is outside its mask"
        cells = visibility[slot].nonzero().float().mean(dim=0)
        assert (cells - torch.tensor([cy, cx]).float()).abs().max() <= 2.0
    assert not visibility[3].any()  # the face at the top is cut off by the crop, as its circle is
    with caplog.at_level(logging.WARNING, logger="InstantFamily"):
        patched = apply(comfy_host, base, instantfamily, stack, masks)
        sample(comfy_host, patched, conds, latent=(1, 4, 8, 12))
    assert any("centre" in r.getMessage() and "aspect" in r.getMessage() for r in caplog.records)


def test_area_conditioning_is_refused_clearly(comfy_host, pack, instantfamily, base, conds):
    import nodes as comfy_nodes

    stack = build_stack(comfy_host, instantfamily, make_faces(pack, 2, seed=0))
    patched = apply(comfy_host, base, instantfamily, stack, make_masks(pack, 2))
    positive, negative = conds
    (area,) = comfy_nodes.ConditioningSetArea().append(positive, 48, 64, 0, 0, 1.0)
    with pytest.raises(ValueError, match="area conditioning"):
        sample(comfy_host, patched, (area, negative))
