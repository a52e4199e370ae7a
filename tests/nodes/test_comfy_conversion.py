"""The engine's diffusers <-> ldm names and unet_config agree with ComfyUI's own converter and
model detection, for SD1.5- and SDXL-shaped UNets (tiny configs, and full SDXL on the meta device)."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from train.models import config_dir


def _unet(name):
    with torch.device("meta" if name == "sdxl" else "cpu"):
        return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(config_dir(name) / "unet")))


@pytest.mark.parametrize("name", ["tiny", "tiny_sdxl", "sdxl"])
def test_names_match_comfyui_unet_to_diffusers(comfy_host, name):
    import comfy.utils

    from instantfamily_core.ldm_convert import ldm_unet_config, unet_to_ldm

    unet = _unet(name)
    state = unet.state_dict()
    ours = unet_to_ldm(state, unet.config)
    theirs = comfy.utils.unet_to_diffusers(ldm_unet_config(unet.config))  # diffusers key -> ldm key
    assert set(state) <= set(theirs)  # ComfyUI's map also lists optional layers (class_embedding, ...)
    wrong = {k: (ours_key, theirs[k]) for k, ours_key in zip(state, ours) if ours_key != theirs[k]}
    assert not wrong, list(wrong.items())[:3]


def test_full_sdxl_is_detected_by_comfyui_as_sdxl_with_our_config(comfy_host):
    import comfy.model_detection

    from instantfamily_core.ldm_convert import UNET_PREFIX, ldm_unet_config, unet_to_ldm

    unet = _unet("sdxl")
    ldm = unet_to_ldm(unet.state_dict(), unet.config, prefix=UNET_PREFIX)
    model_config = comfy.model_detection.model_config_from_unet(ldm, UNET_PREFIX)
    assert type(model_config).__name__ == "SDXL"
    detected = model_config.unet_config  # detected from the shapes, plus the SDXL class's own entries
    ours = ldm_unet_config(unet.config)
    for key in (
        "model_channels",
        "channel_mult",
        "num_res_blocks",
        "transformer_depth",
        "transformer_depth_output",
        "transformer_depth_middle",
        "context_dim",
        "adm_in_channels",
        "num_classes",
        "use_linear_in_transformer",
        "num_head_channels",
    ):
        assert ours[key] == detected[key], (key, ours[key], detected[key])


def test_sdxl_single_file_as_comfyui_saves_its_text_encoders_loads_in_the_trainer(comfy_host, tmp_path):
    """ComfyUI's own SDXL checkpoint writer (supported_models.SDXL.process_clip_state_dict_for_saving)
    names both text encoders; the trainer's single-file loader reads what it writes."""
    import comfy.supported_models
    from safetensors.torch import save_file
    from sdxl_files import sdxl_single_file_tensors
    from test_models import assert_same

    from train.models import load_base

    reference = load_base("", "tiny_sdxl", seed=2)
    tensors = {k: v for k, v in sdxl_single_file_tensors(reference).items() if not k.startswith("conditioner.")}
    clip_l = {k.removeprefix("text_model."): v for k, v in reference.text_encoder.state_dict().items()}
    clip = {"clip_l.transformer.text_model." + k: v for k, v in clip_l.items()}  # ComfyUI's own CLIP names
    clip.update({"clip_g.transformer." + k: v for k, v in reference.text_encoder_2.state_dict().items()})
    saving = comfy.supported_models.SDXL.process_clip_state_dict_for_saving
    written = saving(comfy.supported_models.SDXL.__new__(comfy.supported_models.SDXL), clip)
    assert any(k.startswith("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_") for k in written)
    tensors.update({k: v.contiguous() for k, v in written.items()})
    path = tmp_path / "tiny-sdxl-comfy.safetensors"
    save_file(tensors, str(path))
    loaded = load_base(str(path), "tiny_sdxl")
    assert_same(loaded.text_encoder, reference.text_encoder)
    assert_same(loaded.text_encoder_2, reference.text_encoder_2)
    assert_same(loaded.unet, reference.unet)
