"""The one enumerator of cross-attention patch keys, derived from the model itself."""

from __future__ import annotations

import torch.nn as nn


def _has_cross_attention(module: nn.Module) -> bool:
    return any(getattr(m, "attn2", None) is not None for m in module.modules())


def cross_attention_keys(diffusion_model: nn.Module) -> list[tuple[str, int]]:
    """ComfyUI's (block, index) keys of every block holding a cross-attention (attn2).

    Works for the SD1.5 UNet (input/middle/output) and its ControlNet (input/middle). For
    SD1.5 this yields input 1,2,4,5,7,8; middle 0; output 3..11: 16 keys.
    """
    keys: list[tuple[str, int]] = []
    for i, block in enumerate(getattr(diffusion_model, "input_blocks", [])):
        if _has_cross_attention(block):
            keys.append(("input", i))
    middle = getattr(diffusion_model, "middle_block", None)
    if middle is not None and _has_cross_attention(middle):
        keys.append(("middle", 0))
    for i, block in enumerate(getattr(diffusion_model, "output_blocks", [])):
        if _has_cross_attention(block):
            keys.append(("output", i))
    return keys
