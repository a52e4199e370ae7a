"""Starting from an existing OpenPose ControlNet: ComfyUI's single file (ldm names) or a diffusers folder."""

import pytest
import torch
from safetensors.torch import save_file

from instantfamily_core.ldm_convert import CONTROLNET_PREFIX, controlnet_to_ldm
from train.models import build_controlnet, load_base


@pytest.fixture(scope="module")
def unet_and_controlnet():
    """The tiny UNet and a ControlNet of its shape with weights unlike a fresh copy of the UNet."""
    unet = load_base("", "tiny", seed=3).unet
    controlnet = build_controlnet(unet)
    torch.manual_seed(11)
    with torch.no_grad():
        for p in controlnet.parameters():
            p.copy_(torch.randn_like(p))
    return unet, controlnet


def assert_weights_equal(loaded, reference):
    a, b = loaded.state_dict(), reference.state_dict()
    assert set(a) == set(b)
    for name in b:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("layout", ["control_model", "bare_ldm", "diffusers_file"])
def test_single_file_layouts_load_the_weights_that_went_in(unet_and_controlnet, tmp_path, layout):
    unet, reference = unet_and_controlnet
    state = reference.state_dict()
    if layout == "control_model":  # lllyasviel's control_v11p_sd15_openpose, fp16 as ComfyUI users have it
        tensors = {CONTROLNET_PREFIX + k: v.half() for k, v in controlnet_to_ldm(state, reference.config).items()}
        tensors["model.diffusion_model.out.2.bias"] = torch.zeros(4)  # other parts of a full file are ignored
        reference = build_controlnet(unet)
        reference.load_state_dict({k: v.half().float() for k, v in state.items()})
    elif layout == "bare_ldm":
        tensors = controlnet_to_ldm(state, reference.config)
    else:
        tensors = dict(state)
    path = tmp_path / "control_v11p_sd15_openpose.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    loaded = build_controlnet(unet, str(path))
    assert_weights_equal(loaded, reference)
    fresh = build_controlnet(unet)
    assert not torch.equal(fresh.controlnet_mid_block.weight, loaded.controlnet_mid_block.weight)


def test_diffusers_folder_loads_and_pickles_are_refused(unet_and_controlnet, tmp_path):
    unet, reference = unet_and_controlnet
    reference.save_pretrained(str(tmp_path / "openpose"), safe_serialization=True)
    assert_weights_equal(build_controlnet(unet, str(tmp_path / "openpose")), reference)

    reference.save_pretrained(str(tmp_path / "pickled"), safe_serialization=False)
    with pytest.raises(ValueError, match="no .safetensors weights in this folder"):
        build_controlnet(unet, str(tmp_path / "pickled"))
    (tmp_path / "control_v11p_sd15_openpose.pth").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="only .safetensors files"):
        build_controlnet(unet, str(tmp_path / "control_v11p_sd15_openpose.pth"))
    with pytest.raises(ValueError, match="no such file"):
        build_controlnet(unet, str(tmp_path / "missing.safetensors"))


def test_a_controlnet_of_another_shape_or_no_controlnet_is_named(unet_and_controlnet, tmp_path):
    unet, reference = unet_and_controlnet
    tensors = controlnet_to_ldm(reference.state_dict(), reference.config)
    tensors["input_blocks.0.0.weight"] = torch.zeros(32, 4, 5, 5)  # e.g. an SDXL / other-width ControlNet
    wrong = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(wrong))
    with pytest.raises(ValueError, match=r"does not fit the base model's shape .*input_blocks\.0\.0|conv_in"):
        build_controlnet(unet, str(wrong))
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.weight": torch.zeros(2)}, str(lora))
    with pytest.raises(ValueError, match="not a ControlNet"):
        build_controlnet(unet, str(lora))


def test_the_trainer_starts_from_the_given_controlnet(prepared, tmp_path):
    from train_fixtures import train_args

    from train.options import parse
    from train.train import Trainer

    unet = load_base("", "tiny", seed=0).unet  # the trainer's base with its default seed
    reference = build_controlnet(unet)
    with torch.no_grad():
        reference.controlnet_mid_block.weight.fill_(0.25)
    tensors = {CONTROLNET_PREFIX + k: v for k, v in controlnet_to_ldm(reference.state_dict(), reference.config).items()}
    path = tmp_path / "control_v11p_sd15_openpose.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    trainer = Trainer(parse(train_args(prepared, tmp_path / "run", "--max-steps", "1", "--controlnet", str(path))))
    net = trainer.accelerator.unwrap_model(trainer.net)
    assert torch.equal(net.controlnet.controlnet_mid_block.weight, reference.controlnet_mid_block.weight)
    assert torch.equal(net.controlnet.conv_in.weight.contiguous(), reference.conv_in.weight)
