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


def test_the_trainers_sdxl_text_conditioning_is_comfyuis(comfy_host):
    """encode_prompts (the trainer's SDXL context) equals what ComfyUI's SDXL CLIP gives for the same
    tokens: both encoders' penultimate layer without the final norm, CLIP-L first, the second padded
    with token 0. (ComfyUI's CLIP projects pooled text square, hidden -> hidden, as bigG's 1280 -> 1280:
    the tiny encoder's 20 -> 1280 projection has no ComfyUI twin, so the pooled embedding is not compared.)"""
    import comfy.sd1_clip

    from train.models import config_dir, encode_prompts, load_base

    base = load_base("", "tiny_sdxl", seed=6)
    captions = ["two people"]
    ours = encode_prompts(base.text_encoders, base.tokenizers, captions, "cpu")
    outputs = []
    for encoder, tokenizer, folder, pad in (
        (base.text_encoder, base.tokenizer, "text_encoder", base.tokenizer.eos_token_id),
        (base.text_encoder_2, base.tokenizer_2, "text_encoder_2", 0),
    ):
        special = {"start": tokenizer.bos_token_id, "end": tokenizer.eos_token_id, "pad": pad}
        with torch.no_grad():  # (the 2024 host fills its projection in place)
            clip = comfy.sd1_clip.SDClipModel(
                layer="hidden",
                layer_idx=-2,
                textmodel_json_config=str(config_dir("tiny_sdxl") / folder / "config.json"),
                special_tokens=special,
                layer_norm_hidden_state=False,
            )
        state = {
            "text_model." + k.removeprefix("text_model."): v
            for k, v in encoder.state_dict().items()
            if k != "text_projection.weight"
        }
        vocabulary = clip.transformer.text_model.embeddings.token_embedding.weight.shape[0]  # ComfyUI: CLIP's 49408
        embedding = state["text_model.embeddings.token_embedding.weight"]  # the tiny vocabulary's rows first
        state["text_model.embeddings.token_embedding.weight"] = torch.cat(
            [embedding, embedding.new_zeros(vocabulary - embedding.shape[0], embedding.shape[1])]
        )
        missing, unexpected = clip.transformer.load_state_dict(state, strict=False)  # ComfyUI's CLIP names
        assert missing == ["text_projection.weight"] and not [k for k in unexpected if not k.endswith("position_ids")]
        ids = tokenizer(captions, padding="max_length", max_length=77).input_ids[0]
        with torch.no_grad():
            outputs.append(clip.encode_token_weights([[(token, 1.0) for token in ids]])[0])
    torch.testing.assert_close(torch.cat(outputs, dim=-1), ours.context, atol=1e-5, rtol=1e-5)
