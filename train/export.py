"""Export a training checkpoint to the pack's single safetensors file (DESIGN §3).

    python -m train.export --checkpoint runs/a/checkpoints/latest --output models/instantfamily/a.safetensors

``base_model`` ("SD1.5" / "SDXL") is the family of the UNet the run trained on. The ControlNet is stored in ComfyUI's ``comfy.cldm.cldm.ControlNet`` naming (``input_blocks.*``,
``zero_convs.*``, ``input_hint_block.*``, ...) and its constructor kwargs go into the config's
``controlnet`` entry; trained UNet attn2 K/V become deltas named like ComfyUI's ``add_patches`` keys
(``diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight``). The projector keeps
its own names.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from instantfamily_core.checkpoint import save_checkpoint
from instantfamily_core.config import InstantFamilyConfig
from instantfamily_core.ldm_convert import (
    UNET_PREFIX,
    base_model_family,
    controlnet_from_ldm,
    controlnet_to_ldm,
    ldm_controlnet_kwargs,
    unet_from_ldm,
    unet_to_ldm,
)

from . import state as ckpt

logger = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def split_weights(weights: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Trainer names ('controlnet.*', 'projector.*', 'unet.*') -> one dict per part, prefixes removed."""
    parts: dict[str, dict[str, torch.Tensor]] = {"controlnet": {}, "projector": {}, "unet": {}}
    for name, tensor in weights.items():
        part, _, rest = name.partition(".")
        if part not in parts:
            raise ValueError(f"unexpected trained tensor {name!r}")
        parts[part][rest] = tensor
    return parts


def convert_for_comfy(
    weights: dict[str, torch.Tensor],
    state: dict,
    unet_base: dict[str, torch.Tensor] | None,
    dtype: torch.dtype = torch.float16,
):
    """(config, projector_state, controlnet_state, unet_deltas) ready for ``save_checkpoint``."""
    parts = split_weights(weights)
    config = InstantFamilyConfig.from_dict(state["instantfamily"])
    config.training_steps = int(state["step"])
    config.base_model = base_model_family(state["unet_config"])  # the UNet trained on decides, never a flag
    config.controlnet = ldm_controlnet_kwargs(state["controlnet_config"])
    projector = {k: v.float() for k, v in parts["projector"].items()}
    controlnet = {k: v.to(dtype) for k, v in controlnet_to_ldm(parts["controlnet"], state["controlnet_config"]).items()}
    deltas = {}
    if parts["unet"]:
        if unet_base is None:
            raise ValueError("the checkpoint trained UNet K/V weights but their base values were not found")
        missing = sorted(set(parts["unet"]) - set(unet_base))
        if missing:
            raise ValueError(f"base values missing for trained UNet weights {missing[:3]}")
        diff = {k: v.float() - unet_base[k].float() for k, v in parts["unet"].items()}
        deltas = {k: v.to(dtype) for k, v in unet_to_ldm(diff, state["unet_config"], prefix=UNET_PREFIX).items()}
    return config, projector, controlnet, deltas


def export(
    checkpoint: str | Path, output: str | Path, use_ema: bool = False, dtype: str | torch.dtype = "fp32"
) -> Path:
    """Write the pack checkpoint for a training checkpoint folder (or 'latest' of a run's checkpoints/)."""
    checkpoint = Path(checkpoint)
    if checkpoint.name == "latest":
        found = ckpt.list_checkpoints(checkpoint.parent)
        if not found:
            raise ValueError(f"no checkpoints in {checkpoint.parent}")
        checkpoint = found[-1]
    state = json.loads((checkpoint / "state.json").read_text())
    weights = load_file(str(checkpoint / "trainable.safetensors"))
    if use_ema:
        if not state.get("ema"):
            raise ValueError(f"{checkpoint} was trained without EMA (ema_decay = 0); export without --ema")
        weights = {k[len("ema.") :]: v for k, v in weights.items() if k.startswith("ema.")}
    else:
        weights = {k: v for k, v in weights.items() if not k.startswith("ema.")}
    unet_base = None
    if any(k.startswith("unet.") for k in weights):
        candidates = [Path(state.get("unet_kv_base") or ""), checkpoint.parent.parent / "unet_kv_base.safetensors"]
        base_file = next((c for c in candidates if c.is_file()), None)
        unet_base = load_file(str(base_file)) if base_file else None
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    config, projector, controlnet, deltas = convert_for_comfy(weights, state, unet_base, dtype)
    save_checkpoint(output, config, projector, controlnet, deltas)
    logger.info("exported %s (step %d) to %s", checkpoint, config.training_steps, output)
    return Path(output)


def net_from_export(path: str | Path, base_unet: torch.nn.Module):
    """An InstantFamilyNet (diffusers) rebuilt from an exported file and the base UNet it was trained on.

    The inverse of the export: ldm names back to diffusers, UNet deltas added to a copy of
    ``base_unet``. Its forward is the trainer's noise prediction for the exported weights.
    """
    import copy

    from diffusers import ControlNetModel

    from instantfamily_core.checkpoint import load_checkpoint

    from .net import InstantFamilyNet

    model = load_checkpoint(path)
    unet = copy.deepcopy(base_unet).float()
    if model.unet_deltas:
        deltas = unet_from_ldm(model.unet_deltas, unet.config, prefix=UNET_PREFIX)
        parameters = dict(unet.named_parameters())
        with torch.no_grad():
            for name, delta in deltas.items():
                parameters[name].add_(delta.float())
    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3)
    controlnet.load_state_dict(
        {k: v.float() for k, v in controlnet_from_ldm(model.controlnet_state, controlnet.config).items()}
    )
    return InstantFamilyNet(unet, controlnet, model.projector, model.config).eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoints/step-XXXXXXXX folder, or checkpoints/latest")
    parser.add_argument("--output", required=True, help="the .safetensors file to write (models/instantfamily/...)")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="ControlNet / delta precision")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    export(args.checkpoint, args.output, use_ema=args.ema, dtype=args.dtype)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
