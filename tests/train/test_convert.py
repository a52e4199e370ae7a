"""diffusers <-> ComfyUI/ldm key mapping: round trips, agreement with diffusers' own ldm converters,
and the well-known SD1.5 ldm names (the layout ComfyUI's cldm ControlNet and add_patches use)."""

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint, convert_ldm_unet_checkpoint

from instantfamily_core.ldm_convert import (
    UNET_PREFIX,
    controlnet_from_ldm,
    controlnet_to_ldm,
    ldm_controlnet_kwargs,
    ldm_unet_config,
    unet_from_ldm,
    unet_to_ldm,
)
from train.models import config_dir

CONFIGS = {
    "one_layer": dict(
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        transformer_layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ),
    "deep": dict(
        layers_per_block=2,
        block_out_channels=(32, 32, 64),
        transformer_layers_per_block=(2, 1, 3),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ),
    "attention_last": dict(
        layers_per_block=2,
        block_out_channels=(32, 64),
        transformer_layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    ),
}


def tiny_pair(name):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, cross_attention_dim=16, attention_head_dim=2, norm_num_groups=32, **CONFIGS[name]
    )
    return unet, ControlNetModel.from_unet(unet, conditioning_channels=3)


def sd15_pair():
    """Full-size SD1.5 UNet + ControlNet on the meta device (names and shapes only)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(config_dir("sd15") / "unet")))
        return unet, ControlNetModel.from_unet(unet, conditioning_channels=3)


@pytest.mark.parametrize("name", [*sorted(CONFIGS), "tiny_sdxl"])
def test_round_trip_and_agreement_with_diffusers_converters(name):
    unet, controlnet = sdxl_pair(name) if name == "tiny_sdxl" else tiny_pair(name)
    state = unet.state_dict()
    ldm = unet_to_ldm(state, unet.config, prefix="model.diffusion_model.")
    assert len(ldm) == len(state)
    back = unet_from_ldm(ldm, unet.config, prefix="model.diffusion_model.")
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    # diffusers' own ldm -> diffusers converter (written independently) reads our names back exactly.
    theirs = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert set(theirs) == set(state) and all(torch.equal(theirs[k], state[k]) for k in state)

    cstate = controlnet.state_dict()
    cldm = controlnet_to_ldm(cstate, controlnet.config)
    assert set(controlnet_from_ldm(cldm, controlnet.config)) == set(cstate)
    theirs = convert_controlnet_checkpoint({"control_model." + k: v for k, v in cldm.items()}, dict(controlnet.config))
    # diffusers' ControlNet converter skips SDXL's size embedding (ldm label_emb); everything else agrees
    size_embedding = {f"add_embedding.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
    assert set(cstate) - set(theirs) == (size_embedding if name == "tiny_sdxl" else set())
    assert all(torch.equal(theirs[k], cstate[k]) for k in theirs)
    if name == "tiny_sdxl":
        assert "model.diffusion_model.label_emb.0.0.weight" in ldm and "label_emb.0.2.bias" in cldm


def test_sd15_names_are_comfyui_names():
    unet, controlnet = sd15_pair()
    ldm = unet_to_ldm(unet.state_dict(), unet.config, prefix=UNET_PREFIX)
    for key in (
        "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "diffusion_model.input_blocks.3.0.op.weight",
        "diffusion_model.input_blocks.4.0.skip_connection.weight",
        "diffusion_model.middle_block.1.proj_in.weight",
        "diffusion_model.middle_block.2.emb_layers.1.weight",
        "diffusion_model.output_blocks.2.1.conv.weight",
        "diffusion_model.output_blocks.5.2.conv.weight",
        "diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_v.weight",
        "diffusion_model.time_embed.2.weight",
        "diffusion_model.out.2.weight",
    ):
        assert key in ldm, key
    assert ldm["diffusion_model.output_blocks.8.2.conv.weight"].shape == (640, 640, 3, 3)
    cldm = controlnet_to_ldm(controlnet.state_dict(), controlnet.config)
    assert {k.split(".")[0] for k in cldm} == {
        "time_embed",
        "input_blocks",
        "zero_convs",
        "input_hint_block",
        "middle_block",
        "middle_block_out",
    }
    assert cldm["zero_convs.11.0.weight"].shape == (1280, 1280, 1, 1)
    assert cldm["input_hint_block.0.weight"].shape == (16, 3, 3, 3)
    assert cldm["input_hint_block.14.weight"].shape == (320, 256, 3, 3)
    assert "middle_block_out.0.bias" in cldm and "input_blocks.8.1.transformer_blocks.0.attn2.to_k.weight" in cldm
    attn2_deltas = {k: v for k, v in unet.state_dict().items() if ".attn2.to_k." in k or ".attn2.to_v." in k}
    assert len(unet_to_ldm(attn2_deltas, unet.config, prefix=UNET_PREFIX)) == 32  # 16 attn2 layers x (K, V)


def test_sd15_comfy_configs():
    unet, controlnet = sd15_pair()
    config = ldm_unet_config(unet.config)
    assert config["model_channels"] == 320 and config["channel_mult"] == [1, 2, 4, 4]
    assert config["num_res_blocks"] == [2, 2, 2, 2] and config["transformer_depth"] == [1, 1, 1, 1, 1, 1, 0, 0]
    assert config["transformer_depth_output"] == [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert config["transformer_depth_middle"] == 1 and config["context_dim"] == 768
    assert (config["num_heads"], config["num_head_channels"]) == (8, -1)
    kwargs = ldm_controlnet_kwargs(controlnet.config)
    assert kwargs["hint_channels"] == 3 and "out_channels" not in kwargs and "transformer_depth_output" not in kwargs


def test_unmapped_or_incompatible_models_are_refused():
    unet, controlnet = tiny_pair("one_layer")
    with pytest.raises(ValueError, match="no mapping"):
        unet_to_ldm({"not_a_block.weight": torch.zeros(1)}, unet.config)
    config = dict(controlnet.config, conditioning_embedding_out_channels=(16, 32))
    with pytest.raises(ValueError, match="conditioning_embedding_out_channels"):
        controlnet_to_ldm(controlnet.state_dict(), config)
    with pytest.raises(ValueError, match="norm_num_groups"):
        ldm_unet_config(dict(unet.config, norm_num_groups=8))


def sdxl_pair(name="tiny_sdxl"):
    """An SDXL-shaped UNet + ControlNet from a shipped config (the full-size one on the meta device)."""
    torch.manual_seed(0)
    with torch.device("meta" if name == "sdxl" else "cpu"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(config_dir(name) / "unet")))
        return unet, ControlNetModel.from_unet(unet, conditioning_channels=3)


def test_sdxl_names_and_comfy_config():
    unet, controlnet = sdxl_pair("sdxl")
    ldm = unet_to_ldm(unet.state_dict(), unet.config, prefix=UNET_PREFIX)
    assert ldm["diffusion_model.label_emb.0.0.weight"].shape == (1280, 2816)
    for key in (
        "diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
        "diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_v.weight",
        "diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_k.weight",
        "diffusion_model.output_blocks.2.1.transformer_blocks.9.attn2.to_k.weight",
        "diffusion_model.output_blocks.8.0.skip_connection.weight",
        "diffusion_model.output_blocks.5.2.conv.weight",
    ):
        assert key in ldm, key
    attn2 = {k: v for k, v in unet.state_dict().items() if ".attn2.to_k." in k or ".attn2.to_v." in k}
    assert len(unet_to_ldm(attn2, unet.config)) == 140  # SDXL: 70 attn2 layers x (K, V)
    config = ldm_unet_config(unet.config)
    assert config["transformer_depth"] == [0, 0, 2, 2, 10, 10] and config["transformer_depth_middle"] == 10
    assert config["transformer_depth_output"] == [0, 0, 0, 2, 2, 2, 10, 10, 10]
    assert (config["context_dim"], config["adm_in_channels"], config["num_classes"]) == (2048, 2816, "sequential")
    assert (config["num_heads"], config["num_head_channels"], config["use_linear_in_transformer"]) == (-1, 64, True)
    kwargs = ldm_controlnet_kwargs(controlnet.config)
    assert (kwargs["adm_in_channels"], kwargs["num_classes"]) == (2816, "sequential")
    assert controlnet_to_ldm(controlnet.state_dict(), controlnet.config)["zero_convs.8.0.weight"].shape[0] == 1280


def test_sdxl_size_embedding_other_than_comfyui_s_is_refused():
    unet, _ = sdxl_pair()
    with pytest.raises(ValueError, match="2816"):
        ldm_unet_config(dict(unet.config, projection_class_embeddings_input_dim=1536))
    with pytest.raises(ValueError, match="addition_embed_type"):
        ldm_unet_config(dict(unet.config, addition_embed_type="text"))
