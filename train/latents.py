"""VAE latents computed once by ``train.prepare`` and read by the trainer instead of encoding pixels.

A sample's ``latent.npz`` (no pickles) holds the VAE's posterior of the image resized so that its
shorter side is the training resolution and both sides are multiples of 8 (``latent_geometry``):
``mean`` and ``std`` (4, h/8, w/8), ``size`` (w, h) of that resized image and ``resolution``.
Training crops a square of ``resolution / 8`` latent cells from it and draws the latent as
``mean + std * noise``, as ``vae.encode(...).latent_dist.sample()`` does; the pixel crop, boxes,
masks and pose use the same geometry, in whole latent cells.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)
MEMBER = "latent.npz"
FACTOR = 8  # pixels per latent cell (SD1.5 VAE)


def latent_geometry(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(w, h) of the shorter-side resize to ``resolution``, both sides rounded to multiples of 8."""
    scale = resolution / min(width, height)

    def side(length: int) -> int:
        return max(resolution, int(round(length * scale / FACTOR)) * FACTOR)

    return side(width), side(height)


def resize_for_latents(image: Image.Image, resolution: int) -> Image.Image:
    """The image the VAE sees (and the trainer crops its pixels from): bicubic, as training resizes."""
    return image.resize(latent_geometry(image.width, image.height, resolution), Image.Resampling.BICUBIC)


def encode_latent_member(
    mean: np.ndarray, std: np.ndarray, size: tuple[int, int], resolution: int, dtype=np.float16
) -> bytes:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        mean=mean.astype(dtype),
        std=std.astype(dtype),
        size=np.array(size, np.int64),
        resolution=np.array(resolution, np.int64),
    )
    return buffer.getvalue()


def decode_latent_member(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        out = {name: npz[name] for name in npz.files}
    out["mean"], out["std"] = out["mean"].astype(np.float32), out["std"].astype(np.float32)
    return out


def sample_latents(mean: torch.Tensor, std: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Scaled latents drawn like ``latent_dist.sample()`` (one standard normal draw of mean's shape)."""
    noise = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype)
    return (mean + std * noise) * scaling_factor


def load_vae(pretrained: str, model_config: str = "sd15", seed: int = 0):
    """The trainer's VAE for the same ``--pretrained`` / ``--model-config`` / ``--seed``."""
    from diffusers import AutoencoderKL

    from .models import config_dir, load_base

    if not pretrained:  # random init (tests): the VAE load_base builds, in its RNG order
        return load_base("", model_config, seed=seed).vae
    if Path(pretrained).is_dir():
        return AutoencoderKL.from_pretrained(pretrained, subfolder="vae", local_files_only=True)
    if Path(pretrained).is_file() and pretrained.endswith(".safetensors"):
        return AutoencoderKL.from_single_file(
            pretrained, config=str(config_dir(model_config)), subfolder="vae", local_files_only=True
        )
    raise ValueError(f"--pretrained {pretrained!r}: expected a diffusers folder or a .safetensors SD1.5 checkpoint")


class LatentEncoder:
    """Encodes prepared images at the training resolution, batching images of one size."""

    def __init__(self, vae, resolution: int, device: str = "cpu", dtype: str = "float32", store: str = "float16"):
        if resolution % FACTOR:
            raise ValueError(f"--latent-resolution {resolution}: must be a multiple of {FACTOR}")
        self.dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
        self.vae = vae.to(device, self.dtype).eval().requires_grad_(False)
        self.resolution, self.device, self.store = int(resolution), device, np.dtype(store)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> list[bytes]:
        """latent.npz bytes per image (same order)."""
        resized = [resize_for_latents(image, self.resolution) for image in images]
        out: list[bytes | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(resized):
            by_size.setdefault(image.size, []).append(index)
        for size, indices in by_size.items():
            pixels = np.stack([np.asarray(resized[i], np.float32) for i in indices]) / 127.5 - 1.0  # (B, h, w, 3)
            # (B, 3, h, w), contiguous like the trainer's batches (a channels-last view picks other conv kernels)
            batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(self.device, self.dtype)
            posterior = self.vae.encode(batch).latent_dist
            mean, std = posterior.mean.float().cpu().numpy(), posterior.std.float().cpu().numpy()
            for j, index in enumerate(indices):
                out[index] = encode_latent_member(mean[j], std[j], size, self.resolution, self.store)
        return out
