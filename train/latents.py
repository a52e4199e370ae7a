"""VAE latents computed once by ``train.prepare`` and read by the trainer instead of encoding pixels.

A sample's ``latent.npz`` (no pickles) holds the VAE's posterior of the image resized so that it
just covers the training crop (a square of the training resolution, or with aspect buckets the
sample's bucket) and both sides are multiples of 8 (``latent_geometry``): ``mean`` and ``std``
(4, h/8, w/8), ``size`` (w, h) of that resized image, ``resolution`` and ``target`` (w, h) of the
crop (caches written before buckets have no ``target``: a square of ``resolution``).
Training crops ``target / 8`` latent cells from it and draws the latent as
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

from .buckets import nearest_bucket, target_size

logger = logging.getLogger(__name__)
MEMBER = "latent.npz"
FACTOR = 8  # pixels per latent cell (SD1.5 and SDXL VAEs)


def latent_geometry(width: int, height: int, target: int | tuple[int, int]) -> tuple[int, int]:
    """(w, h) of the smallest resize covering ``target`` (a square side, or a (w, h) bucket: the
    shorter-side resize for a square), both sides rounded to multiples of 8."""
    tw, th = target_size(target)
    scale = max(tw / width, th / height)
    return (
        max(tw, int(round(width * scale / FACTOR)) * FACTOR),
        max(th, int(round(height * scale / FACTOR)) * FACTOR),
    )


def resize_for_latents(image: Image.Image, target: int | tuple[int, int]) -> Image.Image:
    """The image the VAE sees (and the trainer crops its pixels from): bicubic, as training resizes."""
    return image.resize(latent_geometry(image.width, image.height, target), Image.Resampling.BICUBIC)


def encode_latent_member(
    mean: np.ndarray,
    std: np.ndarray,
    size: tuple[int, int],
    resolution: int,
    dtype=np.float16,
    target: tuple[int, int] | None = None,
) -> bytes:
    """target: (w, h) of the training crop; default a square of ``resolution``."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        mean=mean.astype(dtype),
        std=std.astype(dtype),
        size=np.array(size, np.int64),
        resolution=np.array(resolution, np.int64),
        target=np.array(target or (resolution, resolution), np.int64),
    )
    return buffer.getvalue()


def cached_target(cached: dict[str, np.ndarray]) -> tuple[int, int]:
    """(w, h) of the crop a decoded latent.npz was cached for."""
    if "target" in cached:
        return int(cached["target"][0]), int(cached["target"][1])
    return int(cached["resolution"]), int(cached["resolution"])


def decode_latent_member(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        out = {name: npz[name] for name in npz.files}
    out["mean"], out["std"] = out["mean"].astype(np.float32), out["std"].astype(np.float32)
    return out


PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def vae_dtype(family: str, compute_dtype: torch.dtype) -> torch.dtype:
    """The VAE's dtype for a compute dtype: SDXL's VAE overflows in float16 (NaN latents), so it stays float32."""
    return torch.float32 if family == "SDXL" and compute_dtype == torch.float16 else compute_dtype


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
    raise ValueError(
        f"--pretrained {pretrained!r}: expected a diffusers folder or a single-file .safetensors checkpoint"
    )


class LatentEncoder:
    """Encodes prepared images at the training resolution (or each at its aspect bucket), batching
    images of one size.

    dtype: the VAE's compute dtype. The SDXL VAE overflows in float16 (inf/NaN latents): use float32
    or bfloat16 there (``train.prepare --vae-precision``).
    """

    def __init__(
        self,
        vae,
        resolution: int,
        device: str = "cpu",
        dtype: str | torch.dtype = "float32",
        store: str = "float16",
        buckets: list[tuple[int, int]] | None = None,
    ):
        if resolution % FACTOR:
            raise ValueError(f"--latent-resolution {resolution}: must be a multiple of {FACTOR}")
        self.dtype = PRECISIONS[dtype] if isinstance(dtype, str) else dtype
        self.vae = vae.to(device, self.dtype).eval().requires_grad_(False)
        self.resolution, self.device, self.store = int(resolution), device, np.dtype(store)
        self.buckets = [tuple(b) for b in buckets] if buckets else None

    def target(self, image: Image.Image) -> tuple[int, int]:
        """(w, h) of the training crop of ``image``: its aspect bucket, or the square resolution."""
        if self.buckets is None:
            return self.resolution, self.resolution
        return self.buckets[nearest_bucket(image.width, image.height, self.buckets)]

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> list[bytes]:
        """latent.npz bytes per image (same order)."""
        targets = [self.target(image) for image in images]
        resized = [resize_for_latents(image, target) for image, target in zip(images, targets)]
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
                if not (np.isfinite(mean[j]).all() and np.isfinite(std[j]).all()):
                    raise FloatingPointError(
                        f"the VAE gave non-finite latents in {self.dtype}: encode in float32 or bfloat16"
                    )
                out[index] = encode_latent_member(mean[j], std[j], size, self.resolution, self.store, targets[index])
        return out
