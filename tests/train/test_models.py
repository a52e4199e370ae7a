"""Base weights load offline from a diffusers folder or a single-file (ComfyUI-style) checkpoint."""

import re

import torch
from safetensors.torch import save_file

from instantfamily_core.ldm_convert import unet_to_ldm
from train.models import CONFIG_ROOT, load_base


def vae_to_ldm(state: dict, levels: int) -> dict:
    """diffusers AutoencoderKL names -> the original LDM names of single-file SD checkpoints (test helper)."""
    out = {}
    for key, value in state.items():
        k = key
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(
            r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.block.", k
        )
        k = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.",
            k,
        )
        k = k.replace("mid_block.resnets.0.", "mid.block_1.").replace("mid_block.resnets.1.", "mid.block_2.")
        k = k.replace("mid_block.attentions.0.", "mid.attn_1.").replace("conv_shortcut", "nin_shortcut")
        k = k.replace("conv_norm_out", "norm_out").replace("attn_1.group_norm", "attn_1.norm")
        for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            if f"attn_1.{a}." in k:
                k = k.replace(f"attn_1.{a}.", f"attn_1.{b}.")
                if value.dim() == 2:
                    value = value[:, :, None, None]  # LDM's attention uses 1x1 convolutions
        out["first_stage_model." + k] = value
    return out


def assert_same(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_single_file_and_diffusers_folder_load_the_same_weights(tmp_path):
    reference = load_base("", "tiny", seed=5)
    unet, vae, text = reference.unet, reference.vae, reference.text_encoder
    tensors = unet_to_ldm(unet.state_dict(), unet.config, prefix="model.diffusion_model.")
    tensors.update(vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels)))
    clip = {k.removeprefix("text_model."): v for k, v in text.state_dict().items()}
    tensors.update({"cond_stage_model.transformer.text_model." + k: v for k, v in clip.items()})
    tensors["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    single = tmp_path / "tiny-sd.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(single))
    loaded = load_base(str(single), "tiny", tokenizer=str(CONFIG_ROOT / "tiny" / "tokenizer"))
    assert_same(loaded.unet, unet)
    assert_same(loaded.vae, vae)
    assert_same(loaded.text_encoder, text)

    folder = tmp_path / "diffusers"
    for name, part in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        part.save_pretrained(str(folder / name))
    reference.tokenizer.save_pretrained(str(folder / "tokenizer"))
    from_folder = load_base(str(folder), "tiny")
    assert_same(from_folder.unet, unet)
    assert_same(from_folder.text_encoder, text)
    ids = from_folder.tokenizer(["two people"]).input_ids
    assert ids == reference.tokenizer(["two people"]).input_ids


def test_sdxl_random_base_has_two_text_encoders_and_the_sdxl_conditioning():
    from train.models import encode_prompts

    base = load_base("", "tiny_sdxl", seed=1)
    assert base.family == "SDXL" and len(base.text_encoders) == 2
    captions = ["two people", ""]
    cond = encode_prompts(base.text_encoders, base.tokenizers, captions, "cpu")
    assert cond.context.shape == (2, 77, base.unet.config.cross_attention_dim)
    assert cond.pooled.shape == (2, 1280)
    ids = base.tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    first = base.text_encoder(ids, output_hidden_states=True).hidden_states[-2]  # the penultimate layer
    assert torch.equal(cond.context[..., : first.shape[-1]], first)
    assert not torch.equal(first, base.text_encoder(ids).last_hidden_state)
    # the second tokenizer pads with token 0, as SDXL's tokenizer_2 and ComfyUI's clip_g tokenizer do
    first_ids, second_ids = (t(["two"], padding="max_length", max_length=77).input_ids[0] for t in base.tokenizers)
    words = first_ids.index(base.tokenizer.eos_token_id) + 1  # start, the words, the end token
    assert second_ids[:words] == first_ids[:words]
    assert set(first_ids[words:]) == {base.tokenizer.eos_token_id} and set(second_ids[words:]) == {0}
    sd15 = load_base("", "tiny", seed=1)
    assert (
        sd15.family == "SD1.5" and encode_prompts(sd15.text_encoders, sd15.tokenizers, captions, "cpu").pooled is None
    )


def test_sdxl_single_file_and_folder_load_the_same_weights_and_other_families_are_refused(tmp_path):
    import pytest
    from sdxl_files import sdxl_single_file_tensors

    reference = load_base("", "tiny_sdxl", seed=5)
    single = tmp_path / "tiny-sdxl.safetensors"
    save_file(sdxl_single_file_tensors(reference), str(single))
    loaded = load_base(str(single), "tiny_sdxl")
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert_same(getattr(loaded, part), getattr(reference, part))

    folder = tmp_path / "diffusers"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        getattr(reference, name).save_pretrained(str(folder / name))
    reference.tokenizer.save_pretrained(str(folder / "tokenizer"))
    from_folder = load_base(str(folder), "tiny_sdxl")
    assert_same(from_folder.text_encoder_2, reference.text_encoder_2)
    assert_same(from_folder.unet, reference.unet)

    with pytest.raises(ValueError, match=r"SDXL model, but --model-config tiny is SD1\.5; pass --model-config sdxl"):
        load_base(str(single), "tiny")
    with pytest.raises(ValueError, match=r"SDXL model, but --model-config tiny is SD1\.5"):
        load_base(str(folder), "tiny")
    sd15 = load_base("", "tiny", seed=5)
    sd15_file = tmp_path / "tiny-sd.safetensors"
    save_file(unet_to_ldm(sd15.unet.state_dict(), sd15.unet.config, prefix="model.diffusion_model."), str(sd15_file))
    with pytest.raises(ValueError, match=r"SD1\.5 model, but --model-config tiny_sdxl is SDXL"):
        load_base(str(sd15_file), "tiny_sdxl")


def test_sdxl_controlnet_from_the_unet_or_a_file_and_an_sd15_controlnet_is_refused(tmp_path):
    import pytest

    from instantfamily_core.ldm_convert import CONTROLNET_PREFIX, controlnet_to_ldm
    from train.models import build_controlnet

    unet = load_base("", "tiny_sdxl", seed=3).unet
    controlnet = build_controlnet(unet)
    assert torch.equal(controlnet.add_embedding.linear_1.weight, unet.add_embedding.linear_1.weight)
    torch.manual_seed(4)
    with torch.no_grad():
        for p in controlnet.parameters():
            p.copy_(torch.randn_like(p))
    for layout, tensors in (
        (
            "ldm",
            {
                CONTROLNET_PREFIX + k: v
                for k, v in controlnet_to_ldm(controlnet.state_dict(), controlnet.config).items()
            },
        ),
        ("diffusers", controlnet.state_dict()),
    ):
        path = tmp_path / f"openpose_sdxl_{layout}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        assert_same(build_controlnet(unet, str(path)), controlnet)
    sd15_unet = load_base("", "tiny", seed=3).unet
    sd15 = build_controlnet(sd15_unet)
    wrong = tmp_path / "control_v11p_sd15_openpose.safetensors"
    save_file({k: v.contiguous() for k, v in controlnet_to_ldm(sd15.state_dict(), sd15.config).items()}, str(wrong))
    with pytest.raises(ValueError, match=r"control_v11p_sd15_openpose\.safetensors does not fit the base model.*SDXL"):
        build_controlnet(unet, str(wrong))
