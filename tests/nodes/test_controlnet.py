"""The Pose+Circle ControlNet on a real host: its cross-attention sees the faces, masked."""

import numpy as np
import pytest
import torch

CONTEXT = 32
SMALL = dict(d_gf=16, d_lf=8, L=3, d_K=CONTEXT, projector_hidden=24)
LATENT = (1, 4, 8, 12)
IMAGE_SIZE = (64, 96)


@pytest.fixture(scope="module")
def base(comfy_host):
    return comfy_host.tiny_sd15_model(context_dim=CONTEXT, seed=1)


@pytest.fixture(scope="module")
def instantfamily(comfy_host, pack, base):
    """A checkpoint with a random (non-zero) ControlNet mirroring the tiny UNet."""
    import comfy.cldm.cldm
    import comfy.ops

    config = dict(base.model.model_config.unet_config, hint_channels=3, operations=comfy.ops.disable_weight_init)
    config.pop("out_channels")
    control = comfy_host.fixtures.tiny_model.fill_weights(comfy.cldm.cldm.ControlNet(**config), seed=4)
    ifconfig = pack.config.InstantFamilyConfig(**SMALL)
    torch.manual_seed(0)
    pack.checkpoint.save_checkpoint(comfy_host.models_dir / "instantfamily" / "controlnet_test.safetensors", ifconfig,
                                    pack.projector.Projector(ifconfig).state_dict(), control.state_dict())
    comfy_host.folder_paths.filename_list_cache.clear()
    (model,) = comfy_host.node_class("InstantFamilyModelLoader")().load("controlnet_test.safetensors")
    return model


def stack_and_masks(comfy_host, pack, instantfamily, n=3, seed=0):
    rng = np.random.default_rng(seed)
    faces = pack.identity.Faces([pack.identity.Identity(rng.normal(size=16).astype(np.float32),
                                                        rng.normal(size=(8, 3, 3)).astype(np.float32))
                                 for _ in range(n)])
    (stack,) = comfy_host.node_class("InstantFamilyBuildEmbeddingStack")().build(instantfamily, faces)
    boxes = torch.tensor([[5 + 25 * i, 10, 20 + 25 * i, 30] for i in range(n)], dtype=torch.float32)
    return stack, pack.masks.masks_from_boxes(boxes, IMAGE_SIZE)


def apply_controlnet(comfy_host, base, instantfamily, stack, masks, strength=1.0):
    positive = comfy_host.random_conditioning(CONTEXT, seed=2)
    negative = comfy_host.random_conditioning(CONTEXT, seed=3)
    control_image = torch.rand(1, *IMAGE_SIZE, 3, generator=torch.Generator().manual_seed(0))
    node = comfy_host.node_class("InstantFamilyPoseCircleControlNet")()
    return node.apply(positive, negative, base, instantfamily, stack, masks, control_image, strength, 0.0, 1.0)


def sample(comfy_host, model, positive, negative):
    return comfy_host.sample(model, positive, negative, torch.zeros(LATENT), seed=5, steps=2, cfg=3.0)


def test_controlnet_cross_attention_sees_the_extended_context_in_every_layer(comfy_host, pack, base, instantfamily):
    stack, masks = stack_and_masks(comfy_host, pack, instantfamily)
    positive, negative = apply_controlnet(comfy_host, base, instantfamily, stack, masks)
    control = positive[0][1]["control"]
    assert negative[0][1]["control"].face_patch is None  # the uncond branch sees the text only
    patch = control.face_patch
    key_lengths = []
    original = patch.attention

    def recorder(q, k, v, extra_options):
        key_lengths.append(k.shape[1])
        return original(q, k, v, extra_options)

    patch.attention = recorder
    sample(comfy_host, base, positive, negative)
    expected_keys = set(pack.unet_keys.cross_attention_keys(control.control_model))
    assert len(expected_keys) == 7  # input 1,2,4,5,7,8 and middle 0, as in SD1.5's ControlNet
    called = {tuple(block) for block, _, _ in patch.calls}
    assert called == expected_keys
    assert len(set(patch.calls.values())) == 1  # every layer called once per step
    assert key_lengths and set(key_lengths) == {77 + 3 * stack.tokens_per_face}


def test_hard_mode_controlnet_attention_changes_only_inside_face_n(comfy_host, pack, base, instantfamily):
    stack, masks = stack_and_masks(comfy_host, pack, instantfamily)
    positive, negative = apply_controlnet(comfy_host, base, instantfamily, stack, masks)
    patch = positive[0][1]["control"].face_patch
    recorded = []
    original = patch.attention

    def recorder(q, k, v, extra_options):
        recorded.append((q, k, v, dict(extra_options)))
        return original(q, k, v, extra_options)

    patch.attention = recorder
    sample(comfy_host, base, positive, negative)
    tokens = stack.tokens_per_face
    grids = set()
    for q, k, v, options in recorded:
        text_len = k.shape[1] - 3 * tokens
        grid = pack.masks.latent_grid(q.shape[1], pack.comfy_patch.latent_size_from_options(options))
        grids.add(grid)
        visibility = patch.face_attention.plan(grid).visibility[0]
        for n in range(3):
            k2, v2 = k.clone(), v.clone()
            face = slice(text_len + n * tokens, text_len + (n + 1) * tokens)
            k2[:, face], v2[:, face] = torch.randn_like(k2[:, face]), torch.randn_like(v2[:, face])
            changed = (original(q, k2, v2, options) - original(q, k, v, options)).abs().amax(dim=2) > 1e-6  # (B, Q)
            assert not changed[:, ~visibility[n]].any(), f"face {n} leaked at grid {grid}"
            assert changed[:, visibility[n]].all()
    assert len(grids) == 4  # 8x12, 4x6, 2x3 and the middle block's 1x2


def test_controlnet_changes_the_result_and_strength_zero_is_no_controlnet(comfy_host, pack, base, instantfamily):
    stack, masks = stack_and_masks(comfy_host, pack, instantfamily)
    plain_positive = comfy_host.random_conditioning(CONTEXT, seed=2)
    plain_negative = comfy_host.random_conditioning(CONTEXT, seed=3)
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


def test_checkpoint_without_controlnet_is_explained(comfy_host, pack, base):
    ifconfig = pack.config.InstantFamilyConfig(**SMALL)
    pack.checkpoint.save_checkpoint(comfy_host.models_dir / "instantfamily" / "no_cn.safetensors", ifconfig,
                                    pack.projector.Projector(ifconfig).state_dict())
    comfy_host.folder_paths.filename_list_cache.clear()
    (model,) = comfy_host.node_class("InstantFamilyModelLoader")().load("no_cn.safetensors")
    stack, masks = stack_and_masks(comfy_host, pack, model)
    with pytest.raises(ValueError, match="no_cn.safetensors.*holds no ControlNet weights"):
        apply_controlnet(comfy_host, base, model, stack, masks)
