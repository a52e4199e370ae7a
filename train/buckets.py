"""Aspect-ratio buckets: training sizes of about one area, each image to the nearest aspect.

SDXL was fine-tuned on a fixed set of aspect ratios at about one megapixel (1024x1024, 1152x896,
1216x832, 1344x768, 1536x640 and their portrait twins). ``bucket_sizes`` derives the sizes from
those ratios, an area and a granularity (both sides multiples of it), so a tiny test world at
64x64 gets its own small buckets. A batch holds one bucket (``train.data.BucketBatchSampler``); crops, boxes,
masks, pose and the control image follow each sample's bucket crop in ``train.data``.
"""

from __future__ import annotations

import io
import json
import logging
import math

import numpy as np
import torch
from PIL import Image

from .sample_format import image_member

logger = logging.getLogger(__name__)

# width / height of SDXL's landscape buckets at 1 MP (square first); portrait buckets are their transposes.
SDXL_ASPECTS = (1.0, 1152 / 896, 1216 / 832, 1344 / 768, 1536 / 640)


def bucket_sizes(area: int, granularity: int = 64, aspects=SDXL_ASPECTS) -> list[tuple[int, int]]:
    """(width, height) buckets: per aspect, the height in steps of ``granularity`` that keeps
    width x height <= area, the width the aspect's multiple of ``granularity`` nearest to it;
    landscape then portrait; duplicates and sizes over the area (coarse granularity) dropped.

    bucket_sizes(1024 * 1024, 64) -> 1024x1024, 1152x896, 1216x832, 1344x768, 1536x640 and transposes.
    """
    if granularity < 8 or granularity % 8:
        raise ValueError(f"bucket granularity {granularity}: must be a positive multiple of 8 (VAE cells)")
    if area < granularity * granularity:
        raise ValueError(f"bucket area {area} is below one {granularity}x{granularity} cell: raise --resolution")
    sizes: list[tuple[int, int]] = []
    for aspect in aspects:
        height = max(granularity, int(math.sqrt(area / aspect) // granularity) * granularity)
        width = max(granularity, int(round(height * aspect / granularity)) * granularity)
        if width * height > area:  # a coarse granularity cannot make this aspect at this area
            continue
        for size in ((width, height), (height, width)):
            if size not in sizes:
                sizes.append(size)
    return sizes


def takes_size_conditioning(unet) -> bool:
    """True for SDXL-family UNets (diffusers' ``addition_embed_type == "text_time"``: add_time_ids)."""
    return getattr(getattr(unet, "config", None), "addition_embed_type", None) == "text_time"


def training_buckets(opts, unet) -> list[tuple[int, int]] | None:
    """The run's buckets (``TrainOptions.aspect_buckets``: auto = on for SDXL-family UNets), or None."""
    on = opts.aspect_buckets == "on" or (opts.aspect_buckets == "auto" and takes_size_conditioning(unet))
    return bucket_sizes(opts.resolution**2, opts.bucket_granularity) if on else None


def target_size(target: int | tuple[int, int]) -> tuple[int, int]:
    """(width, height) of a crop given as a square side or a (width, height) bucket."""
    return (target, target) if isinstance(target, int) else (int(target[0]), int(target[1]))


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect is nearest to width / height (in log ratio; ties: the first)."""
    ratio = math.log(width / height)
    return min(range(len(buckets)), key=lambda b: abs(math.log(buckets[b][0] / buckets[b][1]) - ratio))


def sample_size(members: dict[str, bytes]) -> tuple[int, int]:
    """(width, height) of a prepared sample's image: from its meta.json, else the image header."""
    if "meta.json" in members:
        meta = json.loads(members["meta.json"])
        if "width" in meta and "height" in meta:
            return int(meta["width"]), int(meta["height"])
    found = image_member(members)
    if found is None:
        raise ValueError("no image member")
    with Image.open(io.BytesIO(found[1])) as image:
        return image.size


def assign_buckets(reader, buckets: list[tuple[int, int]]) -> np.ndarray:
    """(S,) int16 bucket index of every sample of ``reader`` (-1: unreadable, never batched)."""
    out = np.full(len(reader), -1, np.int16)
    for index in range(len(reader)):
        key, members = reader.read(index)
        try:
            out[index] = nearest_bucket(*sample_size(members), buckets)
        except Exception as error:  # a damaged sample must not stop a long run
            logger.warning("sample %s has no readable size (%s): left out of the buckets", key, error)
    counts = {f"{w}x{h}": int((out == b).sum()) for b, (w, h) in enumerate(buckets)}
    logger.info("aspect buckets (samples per bucket): %s", counts)
    return out


def time_ids(original: tuple[int, int], crop: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """SDXL's add_time_ids of one sample, (6,) float: original (h, w), crop (top, left), target (h, w).

    original: (width, height) of the image before resizing; crop: (left, top) of the crop in the
    resized image; target: (width, height) of the crop. All in pixels.
    """
    return torch.tensor([original[1], original[0], crop[1], crop[0], target[1], target[0]], dtype=torch.float32)
