"""Apply InstantFamily next to other face adapters, in both orders, with stand-ins written the way
IPAdapter / InstantID / PuLID patch ComfyUI: a callable attn2 replace per block that takes more
callbacks through ``add()``, and an attn2_patch that extends the context."""

import numpy as np
import pytest
import torch
from recording import record_calls

CONTEXT = 32
SMALL = dict(d_gf=16, d_lf=8, L=3, d_K=CONTEXT, projector_hidden=24)
LATENT = (1, 4, 8, 12)
IMAGE_SIZE = (64, 96)
EXTRA_TOKENS = 5


class AdapterStyleReplace:
    """An IPAdapter-style attn2 replace: the host's attention plus additive callbacks, each with a
    sigma window, and ``add()`` for the next node that patches the same key."""

    def __init__(self, callback, **kwargs):
        self.callbacks = [(callback, kwargs)]
        self.calls = 0

    def add(self, callback, **kwargs):
        self.callbacks.append((callback, kwargs))

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        self.calls += 1
        out = optimized_attention(q, k, v, extra_options["n_heads"])
        for callback, kwargs in self.callbacks:
            out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out


def adapter_term(out, q, k, v, extra_options, scale=0.3, sigma_start=999.0, sigma_end=0.0):
    """The stand-in adapter's contribution: depends on the query only (like IP tokens would)."""
    return scale * torch.tanh(q)


def patch_like_an_adapter(model, keys, callback=adapter_term, **kwargs):
    """What IPAdapter's set_model_patch_replace does: copy the options, then install a new replace
    at a free key or ``add()`` to the one already there."""
    patched = model.clone()
    options = patched.model_options["transformer_options"] = patched.model_options["transformer_options"].copy()
    replaces = options["patches_replace"] = dict(options.get("patches_replace", {}))
    attn2 = replaces["attn2"] = dict(replaces.get("attn2", {}))
    for key in keys:
        if key in attn2:
            attn2[key].add(callback, **kwargs)
        else:
            attn2[key] = AdapterStyleReplace(callback, **kwargs)
    return patched


def extend_context(n, context, value, extra_options):
    """An attn2_patch that appends tokens of its own to the context (visible everywhere)."""
    extra = torch.linspace(-1, 1, EXTRA_TOKENS * context.shape[-1]).reshape(1, EXTRA_TOKENS, -1).to(context)
    extra = extra.expand(context.shape[0], -1, -1)
    return n, torch.cat([context, extra], dim=1), torch.cat([value, extra], dim=1)


@pytest.fixture(scope="module")
def base(comfy_host):
    return comfy_host.tiny_sd15_model(context_dim=CONTEXT, seed=1)


@pytest.fixture(scope="module")
def instantfamily(comfy_host, pack):
    config = pack.config.InstantFamilyConfig(**SMALL)
    torch.manual_seed(0)
    pack.checkpoint.save_checkpoint(
        comfy_host.models_dir / "instantfamily" / "composition_test.safetensors",
        config,
        pack.projector.Projector(config).state_dict(),
    )
    comfy_host.folder_paths.filename_list_cache.clear()
    (model,) = comfy_host.node_class("InstantFamilyModelLoader")().load("composition_test.safetensors")
    return model


@pytest.fixture(scope="module")
def faces(comfy_host, pack, instantfamily):
    rng = np.random.default_rng(0)
    identities = pack.identity.Faces(
        [
            pack.identity.Identity(
                rng.normal(size=16).astype(np.float32), rng.normal(size=(8, 3, 3)).astype(np.float32)
            )
            for _ in range(2)
        ]
    )
    (stack,) = comfy_host.node_class("InstantFamilyBuildEmbeddingStack")().build(instantfamily, identities)
    boxes = torch.tensor([[5, 10, 30, 35], [55, 10, 80, 35]], dtype=torch.float32)
    return stack, pack.masks.masks_from_boxes(boxes, IMAGE_SIZE)


def apply(comfy_host, model, instantfamily, faces):
    stack, masks = faces
    (patched,) = comfy_host.node_class("InstantFamilyApply")().apply(
        model, instantfamily, stack, masks, 1.0, 0.0, 1.0, "hard", "both"
    )
    return patched


def sample(comfy_host, model):
    positive = comfy_host.random_conditioning(CONTEXT, seed=2)
    negative = comfy_host.random_conditioning(CONTEXT, seed=3)
    return comfy_host.sample(model, positive, negative, torch.zeros(LATENT), seed=5, steps=2, cfg=3.0)


def faces_alone(pack, replace, q, k, v, options):
    """The same layer's face attention without the other adapter."""
    alone = pack.comfy_patch.CrossAttentionReplace(replace.patch, replace.layers)
    return alone(q, k, v, options)


def outside_regions(pack, replace, q, options):
    latent = pack.comfy_patch.latent_size_from_options(options)
    grid = pack.masks.latent_grid(q.shape[1], latent)
    return ~replace.patch.face_attention.plan(grid, latent).visibility[0].any(dim=0)  # (Q,)


def keys_of(pack, model):
    return pack.unet_keys.cross_attention_keys(model.model.diffusion_model)


def test_an_adapter_applied_before_is_wrapped_and_both_act(comfy_host, pack, base, instantfamily, faces):
    keys = keys_of(pack, base)
    adapted = patch_like_an_adapter(base, keys)
    both, calls = record_calls(apply(comfy_host, adapted, instantfamily, faces))
    out = sample(comfy_host, both)
    assert len({tuple(options["block"]) for *_, options, _ in calls}) == len(keys)
    for replace, q, k, v, options, result in calls:
        assert isinstance(replace.previous, AdapterStyleReplace)  # wrapped, not overwritten
        plain = pack.engine.host_attention(q, k, v, options["n_heads"], options)
        expected = replace.previous(q, k, v, options) + (faces_alone(pack, replace, q, k, v, options) - plain)
        assert (result - expected).abs().max() <= 1e-5
        outside = outside_regions(pack, replace, q, options)
        assert torch.allclose(result[:, outside], replace.previous(q, k, v, options)[:, outside], atol=1e-6)
    assert (out - sample(comfy_host, adapted)).abs().max() > 1e-4
    assert (out - sample(comfy_host, apply(comfy_host, base, instantfamily, faces))).abs().max() > 1e-4


def test_an_adapter_applied_after_adds_its_callback_to_ours(comfy_host, pack, base, instantfamily, faces):
    ours = apply(comfy_host, base, instantfamily, faces)
    both, calls = record_calls(patch_like_an_adapter(ours, keys_of(pack, base)))
    sample(comfy_host, both)
    assert len({tuple(options["block"]) for *_, options, _ in calls}) == len(keys_of(pack, base))
    for replace, q, k, v, options, result in calls:
        assert len(replace.callbacks) == 1  # the adapter's callback joined our replace
        expected = faces_alone(pack, replace, q, k, v, options)
        expected = expected + adapter_term(expected, q, k, v, options)
        assert (result - expected).abs().max() <= 1e-6
    # the earlier model is untouched by the later add()
    assert all(not r.callbacks for r in ours.model_options["transformer_options"]["patches_replace"]["attn2"].values())


def test_an_unknown_protocol_is_told_which_order_works(comfy_host, pack, base, instantfamily, faces):
    ours = apply(comfy_host, base, instantfamily, faces)
    replace = next(iter(ours.model_options["transformer_options"]["patches_replace"]["attn2"].values()))
    with pytest.raises(AttributeError, match="Apply that node before Apply InstantFamily"):
        replace.set_new_condition(weight=1.0)


def test_a_replace_keyed_with_a_transformer_index_is_wrapped_under_its_key(
    comfy_host, pack, base, instantfamily, faces
):
    adapted = base.clone()
    for block, index in keys_of(pack, base):
        adapted.set_model_attn2_replace(AdapterStyleReplace(adapter_term), block, index, 0)
    both = apply(comfy_host, adapted, instantfamily, faces)
    attn2 = both.model_options["transformer_options"]["patches_replace"]["attn2"]
    wrapped = [attn2[(block, index, 0)].previous for block, index in keys_of(pack, base)]
    assert all(isinstance(w, AdapterStyleReplace) for w in wrapped)  # ComfyUI calls the 3-tuple key: ours is there
    sample(comfy_host, both)
    assert all(w.calls > 0 for w in wrapped)


def test_a_replace_that_overwrites_ours_later_never_sees_face_tokens(comfy_host, pack, base, instantfamily, faces):
    ours = apply(comfy_host, base, instantfamily, faces)
    seen = []

    def overwriting(q, k, v, extra_options):
        seen.append(k.shape[1])
        return pack.engine.host_attention(q, k, v, extra_options["n_heads"], extra_options)

    later = ours.clone()
    for block, index in keys_of(pack, base):
        later.set_model_attn2_replace(overwriting, block, index)
    sample(comfy_host, later)
    assert seen and set(seen) == {77}


@pytest.mark.parametrize("order", ["extension first", "InstantFamily first"])
def test_a_context_extending_patch_composes_in_both_orders(comfy_host, pack, base, instantfamily, faces, order):
    if order == "extension first":
        extended = base.clone()
        extended.set_model_attn2_patch(extend_context)
        model = apply(comfy_host, extended, instantfamily, faces)
    else:
        model = apply(comfy_host, base, instantfamily, faces).clone()
        model.set_model_attn2_patch(extend_context)
    recorded, calls = record_calls(model)
    sample(comfy_host, recorded)
    for replace, q, k, v, options, result in calls:
        assert k.shape[1] == 77 + EXTRA_TOKENS  # the other pack's tokens reach our attention...
        outside = outside_regions(pack, replace, q, options)
        plain = pack.engine.host_attention(q, k, v, options["n_heads"], options)
        assert torch.allclose(result[:, outside], plain[:, outside], atol=1e-6)  # ...and the faces stay in place
        assert (result - plain).abs().max() > 1e-6
