"""The trainer's network: every attn2 of UNet and ControlNet goes through the core FaceAttention."""

import math

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from net_fixtures import D_K, RES, faces_for, inputs, tiny_net

from instantfamily_core.config import InstantFamilyConfig
from train.attention_processor import FaceBatch, FaceCrossAttnProcessor
from train.net import FaceInputs


def test_every_cross_attention_is_patched_and_called():
    net = tiny_net()
    unet_attn2 = [n for n in net.unet.attn_processors if n.endswith("attn2.processor")]
    cn_attn2 = [n for n in net.controlnet.attn_processors if n.endswith("attn2.processor")]
    assert len(net.patched_layers) == len(unet_attn2) + len(cn_attn2) and len(cn_attn2) > 0
    for model in (net.unet, net.controlnet):
        for name, processor in model.attn_processors.items():
            assert isinstance(processor, FaceCrossAttnProcessor) == name.endswith("attn2.processor"), name
    latents, t, text, control = inputs()
    with torch.no_grad():
        net(latents, t, text, faces_for([[[0, 0, 32, 32]], []], net.config), control)
    assert net.face_batch.calls == len(net.patched_layers)


def test_without_faces_equals_the_plain_diffusers_models():
    net = tiny_net()
    latents, t, text, control = inputs()
    with torch.no_grad():
        ours = net(latents, t, text, FaceInputs.empty(2, net.config), control)
        net.unet.set_attn_processor(AttnProcessor2_0())
        net.controlnet.set_attn_processor(AttnProcessor2_0())
        down, mid = net.controlnet(latents, t, encoder_hidden_states=text, controlnet_cond=control, return_dict=False)
        plain = net.unet(
            latents,
            t,
            encoder_hidden_states=text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
    torch.testing.assert_close(ours, plain, atol=1e-6, rtol=0)


def test_rows_are_independent_and_faces_act_only_inside_their_regions():
    """A row without faces equals the face-free model; a face changes only the positions its
    region reaches (in the first attn2 layer, before convolutions spread it)."""
    net = tiny_net()
    latents, t, text, control = inputs()
    faces = faces_for([[[0, 0, 16, 16], [40, 40, 60, 60]], []], net.config)
    with torch.no_grad():
        mixed = net(latents, t, text, faces, control)
        plain = net(latents, t, text, FaceInputs.empty(2, net.config), control)
    torch.testing.assert_close(mixed[1], plain[1], atol=1e-6, rtol=0)
    assert (mixed[0] - plain[0]).abs().max() > 1e-4

    attn = net.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    hidden = torch.randn(1, (RES // 8) ** 2, attn.to_q.in_features)
    context, attention = net.face_context(text[:1], faces_for([[[0, 0, 16, 16]]], net.config))
    batch = FaceBatch()
    processor = FaceCrossAttnProcessor(batch)
    with torch.no_grad():
        batch.set(attention, (RES // 8, RES // 8))
        with_face = processor(attn, hidden, context)
        batch.set(None, (RES // 8, RES // 8))
        text_only = processor(attn, hidden, context[:, :77])
    changed = ((with_face - text_only).abs().amax(-1) > 1e-6).reshape(RES // 8, RES // 8)
    region = attention.plan((RES // 8, RES // 8)).visibility[0, 0].reshape(RES // 8, RES // 8)
    assert changed.any() and torch.equal(changed, region)


def test_processor_matches_a_hand_written_masked_attention():
    net = tiny_net()
    attn = net.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2  # a 4x4 grid of an 8x8 latent
    _, _, text, _ = inputs(batch=1)
    faces = faces_for([[[0, 0, 30, 64], [30, 0, 64, 64]]], net.config)  # two overlapping halves
    context, attention = net.face_context(text, faces)
    hidden = torch.randn(1, 16, attn.to_q.in_features)
    batch = FaceBatch()
    batch.set(attention, (8, 8))
    with torch.no_grad():
        ours = FaceCrossAttnProcessor(batch)(attn, hidden, context)
        q, k, v = attn.to_q(hidden), attn.to_k(context), attn.to_v(context)
        heads, d = attn.heads, q.shape[-1] // attn.heads
        visible = attention.plan((4, 4)).visibility[0]  # (N, 16)
        out = torch.zeros_like(q)
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            logits = q[0, :, sl] @ k[0, :, sl].T / math.sqrt(d)  # (16, K)
            allowed = torch.ones_like(logits, dtype=torch.bool)
            allowed[:, 77:] = visible.T.repeat_interleave(net.config.tokens_per_face, dim=1)
            out[0, :, sl] = logits.masked_fill(~allowed, float("-inf")).softmax(-1) @ v[0, :, sl]
        reference = attn.to_out[0](out)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_face_inputs_are_checked():
    config = InstantFamilyConfig(d_gf=16, d_lf=8, L=3, d_K=D_K)
    with pytest.raises(ValueError, match="row 0: 2 faces but 1 masks"):
        faces = faces_for([[[0, 0, 8, 8]]], config)
        FaceInputs([torch.zeros(2, 16)], faces.local_features, faces.masks)


def test_gradient_checkpointing_gives_the_same_gradients():
    """Checkpointed blocks recompute attn2 in the backward pass: the shared FaceBatch must still hold
    this batch's masks then."""
    latents, t, text, control = inputs()
    grads = []
    for checkpointing in (False, True):
        net = tiny_net()
        net.train()
        if checkpointing:
            net.unet.enable_gradient_checkpointing()
            net.controlnet.enable_gradient_checkpointing()
        faces = faces_for([[[0, 0, 30, 30], [30, 30, 64, 64]], [[0, 32, 32, 64]]], net.config)
        loss = net(latents, t, text, faces, control).square().mean()
        forward_calls = net.face_batch.calls
        loss.backward()
        assert (net.face_batch.calls > forward_calls) == checkpointing  # attn2 recomputed in the backward
        grads.append(
            torch.cat(
                [
                    p.grad.flatten()
                    for p in list(net.controlnet.parameters()) + list(net.projector.parameters())
                    if p.grad is not None
                ]
            )
        )
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)
