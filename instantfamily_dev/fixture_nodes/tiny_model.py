"""Tiny SD1.5-family models and random conditioning, built inside a real ComfyUI host.

The UNet has SD1.5's layout (4 levels, channel_mult 1,2,4,4, two res blocks per level,
one transformer per attention block at levels 0-2 and in the middle), so it emits the same
16 attn2 keys as SD1.5, but with ``model_channels`` 32 and a small ``context_dim``.
"""

import math

import torch

# SD1.5's unet_config as ComfyUI's model detection builds it, minus the sizes.
_SD15_LAYOUT = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "in_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_linear_in_transformer": False,
    "num_heads": 8,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

# The attn2 keys (block name, block id) SD1.5 emits; the tiny model must emit the same.
SD15_ATTN2_BLOCKS = [("input", i) for i in (1, 2, 4, 5, 7, 8)] + [("middle", 0)] + [("output", i) for i in range(3, 12)]


# SDXL's layout as ComfyUI's model detection builds it (3 levels, attention at levels 1-2 with two
# transformer blocks per attention block at level 2, an ADM input for pooled text + sizes), tiny widths.
_SDXL_LAYOUT = dict(
    _SD15_LAYOUT,
    adm_in_channels=2816,
    num_classes="sequential",
    use_linear_in_transformer=True,
    num_res_blocks=[2, 2, 2],
    channel_mult=[1, 2, 4],
    transformer_depth=[0, 0, 1, 1, 2, 2],
    transformer_depth_middle=2,
    transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2],
    num_head_channels=32,
    num_heads=-1,
)


def tiny_unet_config(context_dim=32, model_channels=32):
    """SD1.5's unet_config with tiny widths (model_channels must be a multiple of 32)."""
    if model_channels % 32:
        raise ValueError(f"model_channels={model_channels}: GroupNorm(32) needs a multiple of 32")
    config = dict(_SD15_LAYOUT)
    config.update(context_dim=context_dim, model_channels=model_channels, dtype=torch.float32)
    return config


def fill_weights(module, seed):
    """Deterministic random init: norms = identity, other weights ~ N(0, 1/fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for sub in module.modules():
            for name, param in sub.named_parameters(recurse=False):
                if isinstance(sub, norms):
                    param.fill_(1.0 if name == "weight" else 0.0)
                elif param.ndim >= 2:
                    fan_in = param[0].numel()
                    param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(fan_in))
                else:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    return module


def tiny_sd15_model(context_dim=32, seed=0, model_channels=32, family="SD1.5"):
    """A tiny MODEL of ``family`` ("SD1.5" or "SDXL"): ``SD15(config).get_model({})`` (or SDXL's)
    in a ``ModelPatcher``."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = tiny_unet_config(context_dim, model_channels)
    if family == "SDXL":
        config = dict(config, **{k: v for k, v in _SDXL_LAYOUT.items() if k not in ("model_channels", "image_size")})
        model_config = comfy.supported_models.SDXL(config)
    else:
        model_config = comfy.supported_models.SD15(config)
    model = model_config.get_model({})
    fill_weights(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def random_conditioning(context_dim=32, seed=0, batch=1, tokens=77, pooled=None):
    """A CONDITIONING list with one random text embedding (batch, tokens, context_dim); ``pooled``:
    the width of a random pooled embedding (SDXL: 1280), None for none."""
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn((batch, tokens, context_dim), generator=gen)  # (B, T, C)
    pooled_output = None if pooled is None else torch.randn((batch, pooled), generator=gen)
    return [[cond, {"pooled_output": pooled_output}]]
