"""The Pose+Circle ControlNet on a real host: its cross-attention sees the faces, masked; for an
SD1.5-shaped and an SDXL-shaped tiny model."""

import numpy as np
import pytest
import torch
from recording import Recorder

CONTEXT = 32
SMALL = dict(d_gf=16, d_lf=8, L=3, d_K=CONTEXT, projector_hidden=24)
LATENT = (1, 4, 8, 12)
IMAGE_SIZE = (64, 96)
GRIDS = {"SD1.5": 4, "SDXL": 2}  # attention grids of LATENT in the ControlNet (the UNet's input side)


@pytest.fixture(scope="module", params=["SD1.5", "SDXL"])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def base(comfy_host, family):
    return comfy_host.tiny_sd15_model(context_dim=CONTEXT, seed=1, family=family)


def conditioning(comfy_host, pack, model, seed):
    """Random text conditioning for ``model`` (SDXL also needs a pooled embedding)."""
    pooled = 1280 if pack.engine.model_family(model) == "SDXL" else None
    return comfy_host.random_conditioning(CONTEXT, seed=seed, pooled=pooled)


@pytest.fixture(scope="module")
def instantfamily(comfy_host, pack, base, family):
    """A checkpoint with a random (non-zero) ControlNet mirroring the tiny UNet."""
    import comfy.cldm.cldm
    import comfy.ops

    config = dict(base.model.model_config.unet_config, hint_channels=3, operations=comfy.ops.disable_weight_init)
    config.pop("out_channels")
    control = comfy_host.fixtures.tiny_model.fill_weights(comfy.cldm.cldm.ControlNet(**config), seed=4)
    ifconfig = pack.config.InstantFamilyConfig(**SMALL, base_model=family)
    torch.manual_seed(0)
    name = f"controlnet_test_{family}.safetensors"
    pack.checkpoint.save_checkpoint(
        comfy_host.models_dir / "instantfamily" / name,
        ifconfig,
        pack.projector.Projector(ifconfig).state_dict(),
        control.state_dict(),
    )
    comfy_host.folder_paths.filename_list_cache.clear()
    (model,) = comfy_host.node_class("InstantFamilyModelLoader")().load(name)
    return model


def stack_and_masks(comfy_host, pack, instantfamily, n=3, seed=0):
    rng = np.random.default_rng(seed)
    faces = pack.identity.Faces(
        [
            pack.identity.Identity(
                rng.normal(size=16).astype(np.float32), rng.normal(size=(8, 3, 3)).astype(np.float32)
            )
            for _ in range(n)
        ]
    )
    (stack,) = comfy_host.node_class("InstantFamilyBuildEmbeddingStack")().build(instantfamily, faces)
    boxes = torch.tensor([[5 + 25 * i, 10, 20 + 25 * i, 30] for i in range(n)], dtype=torch.float32)
    return stack, pack.masks.masks_from_boxes(boxes, IMAGE_SIZE)


def apply_controlnet(comfy_host, base, instantfamily, stack, masks, strength=1.0):
    pooled = 1280 if comfy_host.pack_import("nodes.engine").model_family(base) == "SDXL" else None
    positive = comfy_host.random_conditioning(CONTEXT, seed=2, pooled=pooled)
    negative = comfy_host.random_conditioning(CONTEXT, seed=3, pooled=pooled)
    control_image = torch.rand(1, *IMAGE_SIZE, 3, generator=torch.Generator().manual_seed(0))
    node = comfy_host.node_class("InstantFamilyPoseCircleControlNet")()
    return node.apply(positive, negative, base, instantfamily, stack, masks, control_image, strength, 0.0, 1.0)


def sample(comfy_host, model, positive, negative):
    return comfy_host.sample(model, positive, negative, torch.zeros(LATENT), seed=5, steps=2, cfg=3.0)


def record_control_calls(control, patch):
    """Wrap the control model's face replaces for ``patch`` in recorders; returns the call list."""
    recorded = []
    replaces = control._replaces(patch)
    for kind in replaces:
        replaces[kind] = {key: Recorder(r, recorded) for key, r in replaces[kind].items()}
    return recorded


def batches_cond_and_uncond(comfy_host):
    return comfy_host.pack_import("nodes.controlnet").host_batches_cond_and_uncond()


def test_one_controlnet_object_serves_cond_and_uncond_where_the_host_allows(comfy_host, pack, base, instantfamily):
    stack, masks = stack_and_masks(comfy_host, pack, instantfamily)
    positive, negative = apply_controlnet(comfy_host, base, instantfamily, stack, masks)
    cond_control, uncond_control = positive[0][1]["control"], negative[0][1]["control"]
    calls = []
    original = type(cond_control).get_control

    def counting(self, x_noisy, *args, **kwargs):
        calls.append(x_noisy.shape[0])
        return original(self, x_noisy, *args, **kwargs)

    type(cond_control).get_control = counting
    try:
        sample(comfy_host, base, positive, negative)
    finally:
        type(cond_control).get_control = original
    if batches_cond_and_uncond(comfy_host):  # 0.3.x: one batched pass per step
        assert cond_control is uncond_control
        assert calls == [2, 2]
    else:  # 2024: get_control cannot tell cond rows from uncond rows, so two passes of one row
        assert cond_control is not uncond_control and not uncond_control.sees_faces
        assert calls == [1, 1, 1, 1]


def test_controlnet_cross_attention_sees_the_faces_in_every_layer(comfy_host, pack, base, instantfamily):
    stack, masks = stack_and_masks(comfy_host, pack, instantfamily)
    positive, negative = apply_controlnet(comfy_host, base, instantfamily, stack, masks)
    control = positive[0][1]["control"]
    recorded = record_control_calls(control, control.face_patch)
    sample(comfy_host, base, positive, negative)
    expected_keys = set(pack.unet_keys.cross_attention_keys(control.control_model))
    unet_keys = pack.unet_keys.cross_attention_keys(base.model.diffusion_model)
    assert expected_keys == {k for k in unet_keys if k[0] != "output"}  # SD1.5: input 1,2,4,5,7,8 + middle 0
    called = {}
    for _, q, k, v, options, out in recorded:
        layer = (tuple(options["block"]), options.get("block_index", 0))
        called[layer] = called.get(layer, 0) + 1
        assert k.shape[1] == 77  # the context; the faces' K/V come from the layer itself
        assert not torch.equal(out, pack.engine.host_attention(q, k, v, options["n_heads"], options))
    layers = pack.unet_keys.cross_attention_layers(control.control_model)
    assert set(called) == {(key, t) for key in expected_keys for t in range(len(layers[key]))}
    assert len(set(called.values())) == 1  # every layer (SDXL: several per key) called once per pass


def test_hard_mode_controlnet_attention_changes_only_inside_face_n(comfy_host, pack, base, instantfamily, family):
    stack, masks = stack_and_masks(comfy_host, pack, instantfamily)
    positive, negative = apply_controlnet(comfy_host, base, instantfamily, stack, masks)
    control = positive[0][1]["control"]
    patch = control.face_patch
    recorded = record_control_calls(control, patch)
    sample(comfy_host, base, positive, negative)
    tokens = stack.tokens_per_face
    grids = set()
    for replace, q, k, v, options, out in recorded:
        layer = replace.layers[options.get("block_index", 0)]
        face_k, face_v = patch.face_kv(layer, q.device, k.dtype)
        latent = pack.comfy_patch.latent_size_from_options(options)
        grid = pack.masks.latent_grid(q.shape[1], latent)
        grids.add(grid)
        visibility = patch.face_attention.plan(grid, latent).visibility[0]
        rows = pack.comfy_patch.face_rows_from_options(options, q.shape[0])
        rows = torch.ones(q.shape[0], dtype=torch.bool) if rows is None else rows

        def attend(fk, fv, q=q, k=k, v=v, options=options, latent=latent, rows=rows):
            k_all = torch.cat([k, fk.expand(q.shape[0], -1, -1)], dim=1)
            v_all = torch.cat([v, fv.expand(q.shape[0], -1, -1)], dim=1)
            return patch.face_attention(
                q,
                k_all,
                v_all,
                options["n_heads"],
                latent_size=latent,
                face_rows=rows,
                text_attention=lambda a, b, c, h: pack.engine.host_attention(a, b, c, h, options),
            )

        assert torch.equal(attend(face_k, face_v), out)
        for n in range(3):
            face = slice(n * tokens, (n + 1) * tokens)
            k2, v2 = face_k.clone(), face_v.clone()
            k2[:, face], v2[:, face] = torch.randn_like(k2[:, face]), torch.randn_like(v2[:, face])
            changed = (attend(k2, v2) - out).abs().amax(dim=2) > 1e-6  # (B, Q)
            allowed = rows[:, None] & visibility[n][None]
            assert not (changed & ~allowed).any(), f"face {n} leaked at grid {grid}"
            assert changed[rows][:, visibility[n]].all()
    assert len(grids) == GRIDS[family]  # SD1.5: 8x12, 4x6, 2x3 and the middle block's 1x2


def test_applys_settings_reach_the_controlnet(comfy_host, pack, base, instantfamily):
    """weight / start_at / end_at / mask_mode of Apply InstantFamily change the ControlNet's attention
    exactly as they change the UNet's: the ControlNet runs the FacePatch of the MODEL it is given."""
    stack, masks = stack_and_masks(comfy_host, pack, instantfamily)
    node = comfy_host.node_class("InstantFamilyApply")()

    def run(weight, start_at, end_at, mode):
        (patched,) = node.apply(base, instantfamily, stack, masks, weight, start_at, end_at, mode, "both")
        positive, negative = apply_controlnet(comfy_host, patched, instantfamily, stack, masks)
        control = positive[0][1]["control"]
        patch = patched.model_options["transformer_options"]["instantfamily"]
        assert control.face_patch is patch  # one settings object for both networks
        recorded = record_control_calls(control, patch)
        out = sample(comfy_host, patched, positive, negative)
        return patch, recorded, out

    # start_at 0.5: the ControlNet's first step is text-only, its last step is not
    patch, recorded, _ = run(1.0, 0.5, 1.0, "hard")
    text_only = {}
    for _, q, k, v, options, out in recorded:
        same = torch.equal(out, pack.engine.host_attention(q, k, v, options["n_heads"], options))
        text_only.setdefault(round(float(options["sigmas"][0]), 4), set()).add(same)
    assert text_only[max(text_only)] == {True} and False in text_only[min(text_only)]
    # paper mode leaks outside the regions, in the ControlNet too; hard mode does not
    leaks = {}
    for mode in ("hard", "paper"):
        patch, recorded, _ = run(1.0, 0.0, 1.0, mode)
        assert patch.settings.mode == mode
        replace, q, k, v, options, out = recorded[0]
        latent = pack.comfy_patch.latent_size_from_options(options)
        outside = ~patch.face_attention.plan(pack.masks.latent_grid(q.shape[1], latent), latent).visibility[0].any(0)
        rows = pack.comfy_patch.face_rows_from_options(options, q.shape[0])
        cond = rows if rows is not None else torch.ones(q.shape[0], dtype=torch.bool)
        text = pack.engine.host_attention(q, k, v, options["n_heads"], options)
        leaks[mode] = (out - text)[cond][:, outside].abs().max().item()
    assert leaks["hard"] < 1e-6 < leaks["paper"]
    # weight: 0 is the ControlNet's text-only attention (nothing wrapped), 0.5 differs from 1
    _, recorded_zero, out_zero = run(0.0, 0.0, 1.0, "hard")
    assert recorded_zero == []
    _, _, out_half = run(0.5, 0.0, 1.0, "hard")
    _, _, out_one = run(1.0, 0.0, 1.0, "hard")
    assert (out_half - out_one).abs().max() > 1e-5


def test_weight_zero_with_the_controlnet_equals_the_stock_controlnet(comfy_host, pack, base, instantfamily):
    """Apply at weight 0 + Pose+Circle ControlNet = the plain model + ComfyUI's own ControlNet Apply
    (Advanced) with the same weights; bit for bit."""
    import comfy.controlnet
    import comfy.model_management

    import nodes as comfy_nodes

    stack, masks = stack_and_masks(comfy_host, pack, instantfamily)
    (plain,) = comfy_host.node_class("InstantFamilyApply")().apply(
        base, instantfamily, stack, masks, 0.0, 0.0, 1.0, "as trained", "both"
    )
    positive, negative = apply_controlnet(comfy_host, plain, instantfamily, stack, masks)
    ours = sample(comfy_host, plain, positive, negative)

    control_model = positive[0][1]["control"].control_model
    stock = comfy.controlnet.ControlNet(control_model, load_device=comfy.model_management.get_torch_device())
    image = torch.rand(1, *IMAGE_SIZE, 3, generator=torch.Generator().manual_seed(0))
    stock_positive, stock_negative = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
        conditioning(comfy_host, pack, base, 2), conditioning(comfy_host, pack, base, 3), stock, image, 1.0, 0.0, 1.0
    )[:2]
    assert torch.equal(ours, sample(comfy_host, base, stock_positive, stock_negative))


def test_controlnet_refuses_stack_or_masks_other_than_applys(comfy_host, pack, base, instantfamily):
    stack, masks = stack_and_masks(comfy_host, pack, instantfamily)
    other_stack, _ = stack_and_masks(comfy_host, pack, instantfamily, seed=7)
    (patched,) = comfy_host.node_class("InstantFamilyApply")().apply(
        base, instantfamily, stack, masks, 1.0, 0.0, 1.0, "as trained", "both"
    )
    with pytest.raises(ValueError, match="not the ones Apply InstantFamily used"):
        apply_controlnet(comfy_host, patched, instantfamily, other_stack, masks)


def test_controlnet_changes_the_result_and_strength_zero_is_no_controlnet(comfy_host, pack, base, instantfamily):
    stack, masks = stack_and_masks(comfy_host, pack, instantfamily)
    plain_positive = conditioning(comfy_host, pack, base, 2)
    plain_negative = conditioning(comfy_host, pack, base, 3)
    without = sample(comfy_host, base, plain_positive, plain_negative)
    positive, negative = apply_controlnet(comfy_host, base, instantfamily, stack, masks, strength=0.0)
    assert torch.equal(sample(comfy_host, base, positive, negative), without)
    positive, negative = apply_controlnet(comfy_host, base, instantfamily, stack, masks, strength=1.0)
    assert (sample(comfy_host, base, positive, negative) - without).abs().max() > 1e-4


def test_controlnet_chains_after_an_existing_controlnet(comfy_host, pack, base, instantfamily):
    stack, masks = stack_and_masks(comfy_host, pack, instantfamily)
    first_positive, first_negative = apply_controlnet(comfy_host, base, instantfamily, stack, masks)
    node = comfy_host.node_class("InstantFamilyPoseCircleControlNet")()
    image = torch.rand(1, *IMAGE_SIZE, 3)
    positive, _ = node.apply(first_positive, first_negative, base, instantfamily, stack, masks, image, 0.5, 0.0, 1.0)
    chained = positive[0][1]["control"]
    assert chained.previous_controlnet is first_positive[0][1]["control"]


def test_checkpoint_without_controlnet_is_explained(comfy_host, pack, base, family):
    ifconfig = pack.config.InstantFamilyConfig(**SMALL, base_model=family)
    pack.checkpoint.save_checkpoint(
        comfy_host.models_dir / "instantfamily" / "no_cn.safetensors",
        ifconfig,
        pack.projector.Projector(ifconfig).state_dict(),
    )
    comfy_host.folder_paths.filename_list_cache.clear()
    (model,) = comfy_host.node_class("InstantFamilyModelLoader")().load("no_cn.safetensors")
    stack, masks = stack_and_masks(comfy_host, pack, model)
    with pytest.raises(ValueError, match="no_cn.safetensors.*holds no ControlNet weights"):
        apply_controlnet(comfy_host, base, model, stack, masks)
