"""The one enumerator of cross-attention patch keys and layers, derived from the model itself."""

from __future__ import annotations

import torch.nn as nn

BlockKey = tuple[str, int]


def _attn2_layers(block: nn.Module) -> list[nn.Module]:
    """The attn2 modules of one UNet block, in ComfyUI's ``block_index`` order.

    ComfyUI numbers the transformer blocks inside a block's SpatialTransformer 0, 1, ...; a
    block holds one SpatialTransformer in the SD UNets (SD1.5: one transformer block each).
    """
    layers = []
    for module in block.modules():
        for transformer in getattr(module, "transformer_blocks", ()):
            if getattr(transformer, "attn2", None) is not None:
                layers.append(transformer.attn2)
    return layers


def _blocks(diffusion_model: nn.Module):
    for i, block in enumerate(getattr(diffusion_model, "input_blocks", [])):
        yield ("input", i), block
    middle = getattr(diffusion_model, "middle_block", None)
    if middle is not None:
        yield ("middle", 0), middle
    for i, block in enumerate(getattr(diffusion_model, "output_blocks", [])):
        yield ("output", i), block


def cross_attention_layers(diffusion_model: nn.Module) -> dict[BlockKey, list[nn.Module]]:
    """ComfyUI's (block, index) key of every block holding a cross-attention -> its attn2 modules
    (indexed by ComfyUI's ``block_index``). UNet (input/middle/output) and ControlNet alike."""
    layers = {}
    for key, block in _blocks(diffusion_model):
        found = _attn2_layers(block)
        if found:
            layers[key] = found
    return layers


def cross_attention_keys(diffusion_model: nn.Module) -> list[BlockKey]:
    """ComfyUI's (block, index) keys of every block holding a cross-attention (attn2).

    For SD1.5 this yields input 1,2,4,5,7,8; middle 0; output 3..11: 16 keys (7 in its ControlNet).
    """
    return list(cross_attention_layers(diffusion_model))
