"""diffusers <-> ComfyUI/ldm state-dict names for SD1.5- and SDXL-shaped UNets and ControlNets.

Works for any channel_mult, layers_per_block and transformer depth (not only the full-size
SD1.5 config that converters keyed on known shapes recognise). The mapping is built at module
level from the diffusers config: each diffusers module prefix gets its ldm prefix, and a key is
renamed by its longest known prefix. Transformer blocks keep their inner names in both worlds.

ldm layout (``openaimodel.UNetModel`` / ``cldm.ControlNet``): ``time_embed.{0,2}``,
``input_blocks.k.{0: ResBlock | Downsample(op), 1: SpatialTransformer}``, ``middle_block.{0,1,2}``,
``output_blocks.k.{0: ResBlock, 1: SpatialTransformer | Upsample, 2: Upsample}``, ``out.{0,2}``;
ControlNet adds ``zero_convs.k.0``, ``middle_block_out.0`` and ``input_hint_block.{0,2,..,14}``.
SDXL's size/pooled-text embedding (diffusers ``addition_embed_type="text_time"``,
``add_embedding.linear_{1,2}``) is ldm's ``label_emb.0.{0,2}`` (``num_classes="sequential"``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

UNET_PREFIX = "diffusion_model."  # ComfyUI's add_patches keys: diffusion_model.<ldm key>
CONTROLNET_PREFIX = "control_model."  # lllyasviel's ControlNet files (control_v11p_sd15_openpose, ...)
HINT_CHANNELS = (16, 32, 96, 256)  # ComfyUI's cldm hard-codes its hint encoder widths

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _get(config: Mapping, name: str, default=None):
    return config[name] if name in config else getattr(config, name, default)


def _per_level(value, levels: int) -> list[int]:
    return [int(value)] * levels if isinstance(value, int) else [int(v) for v in value]


def is_sdxl(config: Mapping) -> bool:
    """Whether a diffusers UNet / ControlNet config is SDXL-shaped (pooled text + size embedding)."""
    return _get(config, "addition_embed_type") == "text_time"


def base_model_family(config: Mapping) -> str:
    """The checkpoint ``base_model`` name ("SD1.5" or "SDXL") of a diffusers UNet / ControlNet config."""
    return "SDXL" if is_sdxl(config) else "SD1.5"


def _check_sd15_shaped(config: Mapping, what: str) -> None:
    """Refuse configs whose blocks have no ComfyUI SD1.5 / SDXL equivalent."""
    down = list(_get(config, "down_block_types"))
    if any(t not in ("CrossAttnDownBlock2D", "DownBlock2D") for t in down):
        raise ValueError(f"{what}: down_block_types {down} are not SD1.5-shaped (CrossAttnDownBlock2D / DownBlock2D)")
    if _get(config, "mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise ValueError(f"{what}: mid_block_type must be UNetMidBlock2DCrossAttn")
    for name in ("class_embed_type", "encoder_hid_dim"):
        if _get(config, name) is not None:
            raise ValueError(f"{what}: {name}={_get(config, name)!r} has no ComfyUI SD1.5 / SDXL equivalent")
    addition = _get(config, "addition_embed_type")
    if addition not in (None, "text_time"):
        raise ValueError(f"{what}: addition_embed_type={addition!r} has no ComfyUI equivalent (SDXL's is 'text_time')")
    if _get(config, "resnet_time_scale_shift", "default") != "default":
        raise ValueError(f"{what}: resnet_time_scale_shift must be 'default'")


def _resnet(table: dict[str, str], diffusers: str, ldm: str) -> None:
    for d_name, l_name in _RESNET.items():
        table[f"{diffusers}.{d_name}"] = f"{ldm}.{l_name}"


def _encoder_table(config: Mapping, what: str) -> dict[str, str]:
    """Module prefixes shared by the UNet and ControlNet: time embedding, input and middle blocks."""
    _check_sd15_shaped(config, what)
    down = list(_get(config, "down_block_types"))
    levels = len(down)
    layers = _per_level(_get(config, "layers_per_block"), levels)
    table = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
    }
    if is_sdxl(config):
        table["add_embedding.linear_1"] = "label_emb.0.0"
        table["add_embedding.linear_2"] = "label_emb.0.2"
    k = 1
    for i, block_type in enumerate(down):
        for j in range(layers[i]):
            _resnet(table, f"down_blocks.{i}.resnets.{j}", f"input_blocks.{k}.0")
            if block_type == "CrossAttnDownBlock2D":
                table[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{k}.1"
            k += 1
        if i < levels - 1:
            table[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{k}.0.op"
            k += 1
    _resnet(table, "mid_block.resnets.0", "middle_block.0")
    table["mid_block.attentions.0"] = "middle_block.1"
    _resnet(table, "mid_block.resnets.1", "middle_block.2")
    return table


def unet_table(config: Mapping) -> dict[str, str]:
    """diffusers module prefix -> ldm module prefix for a ``UNet2DConditionModel`` config."""
    table = _encoder_table(config, "UNet")
    up = list(_get(config, "up_block_types"))
    if any(t not in ("CrossAttnUpBlock2D", "UpBlock2D") for t in up):
        raise ValueError(f"UNet: up_block_types {up} are not SD1.5-shaped (CrossAttnUpBlock2D / UpBlock2D)")
    layers = list(reversed(_per_level(_get(config, "layers_per_block"), len(up))))
    k = 0
    for i, block_type in enumerate(up):
        attention = block_type == "CrossAttnUpBlock2D"
        for j in range(layers[i] + 1):
            _resnet(table, f"up_blocks.{i}.resnets.{j}", f"output_blocks.{k}.0")
            if attention:
                table[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{k}.1"
            if j == layers[i] and i < len(up) - 1:
                table[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{k}.{2 if attention else 1}.conv"
            k += 1
    table["conv_norm_out"] = "out.0"
    table["conv_out"] = "out.2"
    return table


def controlnet_table(config: Mapping) -> dict[str, str]:
    """diffusers module prefix -> ldm module prefix for a ``ControlNetModel`` config."""
    table = _encoder_table(config, "ControlNet")
    hint = tuple(_get(config, "conditioning_embedding_out_channels"))
    if hint != HINT_CHANNELS:
        raise ValueError(f"ControlNet: conditioning_embedding_out_channels {hint} must be {HINT_CHANNELS} for ComfyUI")
    levels = len(_get(config, "down_block_types"))
    layers = _per_level(_get(config, "layers_per_block"), levels)
    zero_convs = 1 + sum(layers) + levels - 1
    for n in range(zero_convs):
        table[f"controlnet_down_blocks.{n}"] = f"zero_convs.{n}.0"
    table["controlnet_mid_block"] = "middle_block_out.0"
    table["controlnet_cond_embedding.conv_in"] = "input_hint_block.0"
    blocks = 2 * (len(HINT_CHANNELS) - 1)
    for m in range(blocks):
        table[f"controlnet_cond_embedding.blocks.{m}"] = f"input_hint_block.{2 * (m + 1)}"
    table["controlnet_cond_embedding.conv_out"] = f"input_hint_block.{2 * (blocks + 1)}"
    return table


def rename(key: str, table: Mapping[str, str]) -> str:
    """Rename ``key`` by the longest module prefix of ``table`` it starts with."""
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in table:
            return ".".join([table[prefix], *parts[n:]])
    raise KeyError(key)


def _convert(state: Mapping[str, torch.Tensor], table: Mapping[str, str], what: str) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for key, tensor in state.items():
        try:
            out[rename(key, table)] = tensor
        except KeyError:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"{what}: {len(unknown)} keys have no mapping, e.g. {unknown[:3]}; is the model SD1.5- or SDXL-shaped?"
        )
    if len(out) != len(state):
        raise ValueError(f"{what}: the mapping is not one-to-one ({len(state)} keys -> {len(out)})")
    return out


def _inverse(table: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}


def unet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping, prefix: str = "") -> dict[str, torch.Tensor]:
    """diffusers UNet state (or any subset, e.g. attn2 deltas) -> ldm names, each prefixed by ``prefix``."""
    return {prefix + k: v for k, v in _convert(state, unet_table(config), "UNet diffusers->ldm").items()}


def unet_from_ldm(state: Mapping[str, torch.Tensor], config: Mapping, prefix: str = "") -> dict[str, torch.Tensor]:
    """ldm UNet names (optionally all starting with ``prefix``) -> diffusers names."""
    stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if len(stripped) != len(state):
        raise ValueError(f"UNet ldm->diffusers: some keys do not start with {prefix!r}")
    return _convert(stripped, _inverse(unet_table(config)), "UNet ldm->diffusers")


def controlnet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """diffusers ControlNet state -> ComfyUI ``comfy.cldm.cldm.ControlNet`` state names."""
    return _convert(state, controlnet_table(config), "ControlNet diffusers->ldm")


def controlnet_from_ldm(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """ComfyUI ControlNet state names -> diffusers ``ControlNetModel`` names."""
    return _convert(state, _inverse(controlnet_table(config)), "ControlNet ldm->diffusers")


def controlnet_from_any(state: Mapping[str, torch.Tensor], config: Mapping, what: str) -> dict[str, torch.Tensor]:
    """A ControlNet state in any naming people have -> diffusers ``ControlNetModel`` names.

    ldm naming as ComfyUI's ``load_controlnet`` reads it: ``control_model.zero_convs.0.0.weight``
    (lllyasviel's files; other top-level keys such as a full SD model are ignored) or the same
    without the prefix; or diffusers naming (``controlnet_cond_embedding.conv_in.weight``).
    """
    if any(k.startswith(CONTROLNET_PREFIX) for k in state):
        state = {k[len(CONTROLNET_PREFIX) :]: v for k, v in state.items() if k.startswith(CONTROLNET_PREFIX)}
    if "controlnet_cond_embedding.conv_in.weight" in state:
        return dict(state)
    if "zero_convs.0.0.weight" in state:
        return controlnet_from_ldm(state, config)
    raise ValueError(
        f"{what}: not a ControlNet (neither {CONTROLNET_PREFIX}zero_convs.0.0.weight, "
        "zero_convs.0.0.weight nor controlnet_cond_embedding.conv_in.weight is in it)"
    )


def _heads(config: Mapping) -> tuple[int, int]:
    """(num_heads, num_head_channels) in ldm terms; one of them is -1."""
    heads = _get(config, "num_attention_heads") or _get(config, "attention_head_dim")
    widths = list(_get(config, "block_out_channels"))
    heads = _per_level(heads, len(widths))
    if len(set(heads)) == 1:
        return heads[0], -1
    dims = {w // h for w, h in zip(widths, heads)}
    if len(dims) == 1 and all(w % h == 0 for w, h in zip(widths, heads)):
        return -1, dims.pop()
    raise ValueError(f"attention heads {heads} for widths {widths}: neither a fixed head count nor a fixed head width")


def ldm_unet_config(config: Mapping) -> dict:
    """ComfyUI's ``unet_config`` (``openaimodel.UNetModel`` kwargs) for a diffusers SD1.5/SDXL-shaped config.

    The keys ComfyUI's ``model_detection.detect_unet_config`` produces, plus num_heads /
    num_head_channels (which ComfyUI takes from its SD15 model class).
    """
    _check_sd15_shaped(config, "UNet")
    for name, wanted in (("norm_num_groups", 32), ("flip_sin_to_cos", True), ("freq_shift", 0)):
        if _get(config, name, wanted) != wanted:
            raise ValueError(f"ComfyUI's SD1.5 blocks need {name}={wanted!r}, got {_get(config, name)!r}")
    down = list(_get(config, "down_block_types"))
    widths = [int(w) for w in _get(config, "block_out_channels")]
    model_channels = widths[0]
    if any(w % model_channels for w in widths):
        raise ValueError(f"block_out_channels {widths} are not multiples of the first width")
    layers = _per_level(_get(config, "layers_per_block"), len(down))
    depth = _per_level(_get(config, "transformer_layers_per_block", 1), len(down))
    transformer_depth = [
        depth[i] if t == "CrossAttnDownBlock2D" else 0 for i, t in enumerate(down) for _ in range(layers[i])
    ]
    up = list(_get(config, "up_block_types", ()))
    up_depth, up_layers = list(reversed(depth)), list(reversed(layers))
    per_output_block = [
        up_depth[i] if t == "CrossAttnUpBlock2D" else 0 for i, t in enumerate(up) for _ in range(up_layers[i] + 1)
    ]
    transformer_depth_output = per_output_block[::-1]  # ComfyUI pops it from the end
    num_heads, num_head_channels = _heads(config)
    sdxl = {}
    if is_sdxl(config):
        sdxl = {"num_classes": "sequential", "adm_in_channels": _sdxl_adm_channels(config)}
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        **sdxl,
        "in_channels": int(_get(config, "in_channels")),
        "out_channels": int(_get(config, "out_channels", 4)),
        "model_channels": model_channels,
        "num_res_blocks": layers,
        "transformer_depth": transformer_depth,
        "transformer_depth_output": transformer_depth_output,
        "channel_mult": [w // model_channels for w in widths],
        "transformer_depth_middle": depth[-1],
        "use_linear_in_transformer": bool(_get(config, "use_linear_projection", False)),
        "context_dim": int(_get(config, "cross_attention_dim")),
        "num_heads": num_heads,
        "num_head_channels": num_head_channels,
    }


SDXL_POOLED_WIDTH = 1280  # ComfyUI's SDXL model class: pooled text (1280) + 6 size values x Timestep(256)
SDXL_TIME_EMBED_WIDTH = 256


def _sdxl_adm_channels(config: Mapping) -> int:
    """ldm ``adm_in_channels`` of an SDXL config; ComfyUI's ``y`` is fixed at 1280 + 6 x 256 = 2816."""
    time_width = int(_get(config, "addition_time_embed_dim"))
    adm = int(_get(config, "projection_class_embeddings_input_dim"))
    if time_width != SDXL_TIME_EMBED_WIDTH or adm != SDXL_POOLED_WIDTH + 6 * SDXL_TIME_EMBED_WIDTH:
        raise ValueError(
            f"SDXL UNet: addition_time_embed_dim={time_width}, projection_class_embeddings_input_dim={adm}; "
            f"ComfyUI's SDXL feeds {SDXL_POOLED_WIDTH} pooled + 6 x {SDXL_TIME_EMBED_WIDTH} size values "
            f"(= {SDXL_POOLED_WIDTH + 6 * SDXL_TIME_EMBED_WIDTH})"
        )
    return adm


def ldm_controlnet_kwargs(config: Mapping, hint_channels: int = 3) -> dict:
    """Constructor kwargs of ComfyUI's ``comfy.cldm.cldm.ControlNet`` for a diffusers ControlNet config.

    ``ldm_unet_config`` without the decoder entries, plus ``hint_channels``. Call:
    ``comfy.cldm.cldm.ControlNet(**kwargs, device=..., dtype=..., operations=...)``.
    """
    kwargs = ldm_unet_config(config)
    for name in ("out_channels", "transformer_depth_output"):
        kwargs.pop(name)
    kwargs["hint_channels"] = int(hint_channels)
    return kwargs
