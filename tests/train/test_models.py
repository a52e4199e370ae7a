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
