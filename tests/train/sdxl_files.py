"""Single-file SDXL checkpoints as ComfyUI and Stability write them, built from the tiny SDXL base
(shared by the trainer's and the nodes' tests): UNet ``model.diffusion_model.``, VAE
``first_stage_model.``, CLIP-L ``conditioner.embedders.0.transformer.text_model.`` (transformers
naming) and OpenCLIP bigG ``conditioner.embedders.1.model.`` (its own naming, fused q/k/v)."""

import torch
from test_models import vae_to_ldm

from instantfamily_core.ldm_convert import unet_to_ldm

_OPEN_CLIP_LAYER = (
    (".self_attn.out_proj.", ".attn.out_proj."),
    (".layer_norm1.", ".ln_1."),
    (".layer_norm2.", ".ln_2."),
    (".mlp.fc1.", ".mlp.c_fc."),
    (".mlp.fc2.", ".mlp.c_proj."),
)


def open_clip_names(state: dict) -> dict:
    """CLIPTextModelWithProjection weights -> OpenCLIP's text tower names (the inverse of diffusers'
    ``convert_open_clip_checkpoint``)."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T.contiguous(),  # OpenCLIP: (width, projection)
    }
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        head = f"encoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{head}{p}_proj.{kind}") for p in ("q", "k", "v")]
            )
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        name = key.replace("encoder.layers.", "transformer.resblocks.")
        for a, b in _OPEN_CLIP_LAYER:
            name = name.replace(a, b)
        out[name] = value
    return out


def sdxl_single_file_tensors(base) -> dict:
    """The tensors of a single-file SDXL checkpoint of ``base`` (train.models.BaseModels, SDXL)."""
    unet, vae = base.unet, base.vae
    tensors = unet_to_ldm(unet.state_dict(), unet.config, prefix="model.diffusion_model.")
    tensors.update(vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels)))
    clip_l = {k.removeprefix("text_model."): v for k, v in base.text_encoder.state_dict().items()}
    tensors.update({"conditioner.embedders.0.transformer.text_model." + k: v for k, v in clip_l.items()})
    clip_g = open_clip_names(base.text_encoder_2.state_dict())
    tensors.update({"conditioner.embedders.1.model." + k: v for k, v in clip_g.items()})
    return {k: v.contiguous() for k, v in tensors.items()}
