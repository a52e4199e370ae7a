"""Aspect-ratio buckets: training sizes of about one area, each image to the nearest aspect.

SDXL was fine-tuned on a fixed set of aspect ratios at about one megapixel (1024x1024, 1152x896,
1216x832, 1344x768, 1536x640 and their portrait twins). ``bucket_sizes`` derives the sizes from
those ratios, an area and a granularity (both sides multiples of it), so a tiny test world at
64x64 gets its own small buckets. A batch holds one bucket (``BucketBatchSampler``); crops, boxes,
masks, pose and the control image follow each sample's bucket crop in ``train.data``.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Iterator

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


class BucketBatchSampler(torch.utils.data.Sampler):
    """Endless batches of (epoch, index), each from one bucket, resumable like ``ResumableBatchSampler``.

    Per epoch (seed, epoch): each bucket's samples are shuffled and cut into global batches of
    batch_size x world (the remainder waits for another epoch's draw), the global batches are
    shuffled, and rank r takes its batch_size slice of each. Every rank steps the same number of
    batches per epoch and sees the same bucket at the same step. Batch b counts from the start of
    training; ``start_batch`` resumes exactly where a run stopped.
    """

    def __init__(
        self,
        bucket_of: np.ndarray,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        start_batch: int = 0,
        shuffle: bool = True,
    ):
        self.bucket_of = np.asarray(bucket_of)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.rank, self.world, self.start_batch, self.shuffle = int(rank), int(world), int(start_batch), shuffle
        self.members = [np.nonzero(self.bucket_of == b)[0] for b in range(int(self.bucket_of.max(initial=-1)) + 1)]
        step = self.batch_size * self.world
        self.per_epoch = sum(len(m) // step for m in self.members)
        if self.per_epoch == 0:
            largest = max((len(m) for m in self.members), default=0)
            raise ValueError(
                f"no aspect bucket holds batch_size {self.batch_size} x {self.world} processes samples "
                f"(largest bucket: {largest}): prepare more data, lower --batch-size or turn --aspect-buckets off"
            )

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of ``epoch`` (sample indices), in order."""
        rng = np.random.default_rng([self.seed, epoch])
        step = self.batch_size * self.world
        batches = []
        for members in self.members:
            order = rng.permutation(members) if self.shuffle else members
            for start in range(0, len(order) - step + 1, step):
                batches.append(order[start : start + step])  # (batch_size * world,) one bucket
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        lo = self.rank * self.batch_size
        return [b[lo : lo + self.batch_size] for b in batches]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch = self.start_batch
        cached_epoch, batches = -1, []
        while True:
            epoch, position = divmod(batch, self.per_epoch)
            if epoch != cached_epoch:
                cached_epoch, batches = epoch, self.epoch_batches(epoch)
            yield [(epoch, int(i)) for i in batches[position]]
            batch += 1

    def __len__(self) -> int:  # one epoch; the iterator itself never ends
        return self.per_epoch
