"""The toy "base model": a tiny SD1.5-family UNet, a fixed caption embedding table, an identity VAE.

* **Latent = the scene.** A toy scene is ``S x S`` RGB (S = 32 by default). Its "latent" is the
  scene itself plus a zero 4th channel, divided by SD1.5's scaling factor 0.18215, so that the
  model sees RGB in [-1, 1] after ComfyUI's (and the trainer's) ``* scaling_factor``. ComfyUI
  therefore takes a toy latent of 32 x 32 for an 8x larger "image" (256 x 256), and the
  ControlNet's control image is drawn at 256 x 256, exactly as for SD1.5.
* **Text.** Captions use a closed vocabulary (``world.caption_for``); the "text encoder" is a
  fixed table: token embedding + position embedding, ``TEXT_TOKENS`` x ``TEXT_WIDTH``.
* **UNet.** diffusers ``UNet2DConditionModel`` with SD1.5's block types and tiny widths.

One safetensors file holds the UNet (diffusers names) and the text tables, with the configs in
its metadata (``toy_base``); ``load_toy_base`` rebuilds every part from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import world

SCALING_FACTOR = 0.18215  # SD1.5's latent scale: ComfyUI and the trainer multiply by it
LATENT_CHANNELS = 4
VAE_FACTOR = 8  # "pixels" per latent cell, as SD1.5's VAE (control images are drawn at 8x)
TEXT_TOKENS = 16
TEXT_WIDTH = 64
METADATA_KEY = "toy_base"

PAD = "<pad>"
VOCAB = (
    PAD,
    "person",
    "people",
    "on",
    "a",
    "background",
    *world.COUNT_WORDS,
    *world.BACKGROUND_COLOURS,
    *world.BACKGROUND_STYLES,
)


def unet_config(scene_size: int = 32, width: int = 32, text_width: int = TEXT_WIDTH) -> dict:
    """diffusers config of the toy UNet: SD1.5 block types, width ``w`` at all three levels
    (0.56 M parameters: the demo model must stay small enough to ship). Transformers
    (self- and cross-attention) sit at the two coarser levels and in the middle: grids 16 and 8
    for a 32 px scene. (Self-attention over the 32 x 32 grid would cost more than the rest of the
    UNet on a CPU, as SDXL also leaves its finest level without attention.)"""
    return {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": 8,  # 8 heads, as SD1.5 (ComfyUI's SD15 class fixes num_heads = 8)
        "block_out_channels": [width, width, width],
        "cross_attention_dim": text_width,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "layers_per_block": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "sample_size": scene_size,
    }


# ---------------------------------------------------------------------------------------------
# text


class _Ids:
    def __init__(self, input_ids: torch.Tensor):
        self.input_ids = input_ids


class ToyTokenizer:
    """Word tokenizer of the caption vocabulary with the call signature of CLIPTokenizer."""

    def __init__(self, max_length: int = TEXT_TOKENS):
        self.model_max_length = int(max_length)
        self.index = {word: i for i, word in enumerate(VOCAB)}

    def encode(self, caption: str) -> list[int]:
        words = caption.lower().replace(",", " ").split()
        unknown = [w for w in words if w not in self.index]
        if unknown:
            raise ValueError(
                f"toy caption {caption!r}: unknown words {unknown}; the toy vocabulary is {list(VOCAB[1:])}"
            )
        ids = [self.index[w] for w in words][: self.model_max_length]
        return ids + [0] * (self.model_max_length - len(ids))

    def __call__(self, captions, padding=None, max_length=None, truncation=True, return_tensors="pt"):
        captions = [captions] if isinstance(captions, str) else list(captions)
        return _Ids(torch.tensor([self.encode(c) for c in captions], dtype=torch.long))


@dataclass
class _TextConfig:
    max_position_embeddings: int
    hidden_size: int


class ToyTextEncoder(nn.Module):
    """Fixed token + position embeddings; ``forward(ids)`` returns ``(hidden,)`` like CLIPTextModel."""

    def __init__(self, tokens: torch.Tensor, positions: torch.Tensor):
        super().__init__()
        self.register_buffer("tokens", tokens.float())  # (V, d)
        self.register_buffer("positions", positions.float())  # (T, d)
        self.config = _TextConfig(max_position_embeddings=int(positions.shape[0]), hidden_size=int(tokens.shape[1]))

    @classmethod
    def fresh(cls, seed: int = 0, width: int = TEXT_WIDTH, length: int = TEXT_TOKENS) -> ToyTextEncoder:
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randn(len(VOCAB), width, generator=gen)
        positions = 0.3 * torch.randn(length, width, generator=gen)
        return cls(tokens, positions)

    def forward(self, input_ids: torch.Tensor):
        hidden = self.tokens[input_ids.to(self.tokens.device)] + self.positions[: input_ids.shape[1]]  # (B, T, d)
        return (hidden,)

    def encode(self, captions: list[str]) -> torch.Tensor:
        """(B, T, d) embeddings of captions."""
        return self(ToyTokenizer(self.positions.shape[0])(captions).input_ids)[0]


# ---------------------------------------------------------------------------------------------
# "VAE"


@dataclass
class _VaeConfig:
    scaling_factor: float = SCALING_FACTOR
    latent_channels: int = LATENT_CHANNELS
    block_out_channels: tuple[int, ...] = (1, 1, 1, 1)  # 4 levels = 8x downsampling, as SD1.5's VAE


class _LatentDist:
    def __init__(self, latents: torch.Tensor):
        self.latents = latents

    def sample(self, generator=None) -> torch.Tensor:
        return self.latents

    def mode(self) -> torch.Tensor:
        return self.latents


class _Encoded:
    def __init__(self, latents: torch.Tensor):
        self.latent_dist = _LatentDist(latents)


class _Decoded:
    def __init__(self, sample: torch.Tensor):
        self.sample = sample


class ToyVAE(nn.Module):
    """Pixels (B, 3, 8h, 8w) in [-1, 1] <-> latents (B, 4, h, w): area average, zero 4th channel."""

    def __init__(self):
        super().__init__()
        self.config = _VaeConfig()

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def encode(self, pixels: torch.Tensor) -> _Encoded:
        rgb = F.avg_pool2d(pixels.float(), VAE_FACTOR)  # (B, 3, h, w)
        latents = torch.cat([rgb, torch.zeros_like(rgb[:, :1])], dim=1) / SCALING_FACTOR  # (B, 4, h, w)
        return _Encoded(latents.to(pixels.dtype))

    def decode(self, latents: torch.Tensor) -> _Decoded:
        rgb = latents[:, :3].float() * SCALING_FACTOR
        return _Decoded(F.interpolate(rgb, scale_factor=VAE_FACTOR, mode="nearest").clamp(-1, 1))


def latent_to_image(latents: torch.Tensor) -> torch.Tensor:
    """ComfyUI LATENT (B, 4, h, w) -> IMAGE (B, h, w, 3) in [0, 1], one pixel per latent cell."""
    rgb = latents[:, :3].float() * SCALING_FACTOR  # (B, 3, h, w) in [-1, 1]
    return ((rgb.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).contiguous()


def image_to_latent(images: torch.Tensor) -> torch.Tensor:
    """IMAGE (B, h, w, 3) in [0, 1] -> ComfyUI LATENT (B, 4, h, w)."""
    rgb = images.permute(0, 3, 1, 2).float() * 2 - 1
    return torch.cat([rgb, torch.zeros_like(rgb[:, :1])], dim=1) / SCALING_FACTOR


# ---------------------------------------------------------------------------------------------
# the file


@dataclass
class ToyBase:
    unet: nn.Module  # diffusers UNet2DConditionModel
    text_encoder: ToyTextEncoder
    tokenizer: ToyTokenizer
    vae: ToyVAE
    unet_config: dict
    scene_size: int


def new_toy_base(scene_size: int = 32, width: int = 32, seed: int = 0) -> ToyBase:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    config = unet_config(scene_size, width)
    unet = UNet2DConditionModel.from_config(config)
    return ToyBase(unet, ToyTextEncoder.fresh(seed), ToyTokenizer(), ToyVAE(), config, scene_size)


def save_toy_base(base: ToyBase, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"unet.{k}": v.detach().to(dtype).contiguous() for k, v in base.unet.state_dict().items()}
    tensors["text.tokens"] = base.text_encoder.tokens.contiguous()
    tensors["text.positions"] = base.text_encoder.positions.contiguous()
    meta = {
        "unet_config": base.unet_config,
        "scene_size": base.scene_size,
        "vocab": list(VOCAB),
        "scaling_factor": SCALING_FACTOR,
        "vae_factor": VAE_FACTOR,
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    tmp.replace(path)
    return path


def read_toy_base(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a toy base file; safetensors only, validated."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"toy base model {path} not found; build it with `python -m toyworld.build`")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path}: not a toy base model (no '{METADATA_KEY}' metadata)")
    meta = json.loads(metadata[METADATA_KEY])
    if list(meta["vocab"]) != list(VOCAB):
        raise ValueError(f"{path}: its caption vocabulary differs from this code's; rebuild the toy model")
    return meta, tensors


def load_toy_base(path: str | Path) -> ToyBase:
    from diffusers import UNet2DConditionModel

    meta, tensors = read_toy_base(path)
    unet = UNet2DConditionModel.from_config(meta["unet_config"])
    unet.load_state_dict({k[5:]: v.float() for k, v in tensors.items() if k.startswith("unet.")})
    text = ToyTextEncoder(tensors["text.tokens"], tensors["text.positions"])
    return ToyBase(
        unet.eval(), text, ToyTokenizer(text.positions.shape[0]), ToyVAE(), meta["unet_config"], int(meta["scene_size"])
    )
