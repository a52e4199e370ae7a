"""The tiny trainer net and its inputs, shared by the trainer's tests and the node tests
(tests/train is on pytest's pythonpath: ``from net_fixtures import tiny_net``)."""

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from instantfamily_core.config import InstantFamilyConfig
from instantfamily_core.masks import masks_from_boxes
from instantfamily_core.projector import Projector
from train.models import config_dir
from train.net import FaceInputs, InstantFamilyNet

D_K, RES = 32, 64


def tiny_net(seed=0, model_config="tiny"):
    """The tiny trainer net of a shipped config (``tiny``: SD1.5-shaped, ``tiny_sdxl``: SDXL-shaped)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(config_dir(model_config) / "unet")))
    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3)
    for p in controlnet.parameters():  # zero convs start at 0: give the ControlNet a real effect
        p.data.normal_(0, 0.05)
    family = "SDXL" if unet.config.addition_embed_type == "text_time" else "SD1.5"
    config = InstantFamilyConfig(d_gf=16, d_lf=8, L=3, d_K=D_K, projector_hidden=16, base_model=family)
    return InstantFamilyNet(unet, controlnet, Projector(config), config).eval()


def faces_for(boxes_per_row, config, seed=1):
    g = torch.Generator().manual_seed(seed)
    gl, lo, masks = [], [], []
    for boxes in boxes_per_row:
        n = len(boxes)
        gl.append(torch.randn(n, config.d_gf, generator=g))
        lo.append(torch.randn(n, config.d_lf, config.L, config.L, generator=g))
        masks.append(masks_from_boxes(torch.tensor(boxes, dtype=torch.float32), (RES, RES), 0.25) if n else None)
    return FaceInputs(gl, lo, masks)


def inputs(batch=2, seed=2):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 4, RES // 8, RES // 8, generator=g),
        torch.tensor([10, 700][:batch]),
        torch.randn(batch, 77, D_K, generator=g),
        torch.rand(batch, 3, RES, RES, generator=g),
    )


def pooled_text(batch=2, seed=3):
    """A random SDXL pooled text embedding (B, 1280)."""
    return torch.randn(batch, 1280, generator=torch.Generator().manual_seed(seed))
