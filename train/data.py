"""Training examples from prepared shards, with a resumable, rank-sharded batch order.

Per sample (paper §4.2): crop to a square, choose min(max_faces, faces) faces at random in random
order, draw the Pose + Circle control image with the core drawing (skeletons of everyone, circles
only for the chosen faces), and build each chosen face's region mask with the configured margin.
Every random choice comes from a generator seeded by (seed, epoch, sample index), so a resumed run
sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from instantfamily_core.config import InstantFamilyConfig
from instantfamily_core.control_image import draw_control_image
from instantfamily_core.masks import FaceMasks, masks_from_boxes
from instantfamily_core.pose import parse_pose_keypoint

from .latents import FACTOR, MEMBER as LATENT_MEMBER, decode_latent_member
from .sample_format import decode_faces, image_member
from .shards import ShardReader

logger = logging.getLogger(__name__)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def choose_faces(count: int, max_faces: int, rng: np.random.Generator) -> list[int]:
    """min(max_faces, count) distinct face indices in random order (no first-slot bias)."""
    return [int(i) for i in rng.permutation(count)[: min(max_faces, count)]]


def crop_geometry(width: int, height: int, resolution: int, rng: np.random.Generator | None):
    """(scale, resized (w, h), offset (x, y)) of a shorter-side resize plus a square crop."""
    scale = resolution / min(width, height)
    new_w, new_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    if rng is None:
        ox, oy = (new_w - resolution) // 2, (new_h - resolution) // 2
    else:
        ox, oy = int(rng.integers(0, new_w - resolution + 1)), int(rng.integers(0, new_h - resolution + 1))
    return scale, (new_w, new_h), (ox, oy)


def latent_crop_offset(resized: tuple[int, int], resolution: int, rng: np.random.Generator | None):
    """(x, y) pixel offset of a square crop of cached latents: whole latent cells (multiples of 8)."""
    cells_x, cells_y = (resized[0] - resolution) // FACTOR, (resized[1] - resolution) // FACTOR
    if rng is None:
        return cells_x // 2 * FACTOR, cells_y // 2 * FACTOR
    return int(rng.integers(0, cells_x + 1)) * FACTOR, int(rng.integers(0, cells_y + 1)) * FACTOR


def crop_bodies(bodies: list[np.ndarray], resized: tuple[int, int], offset: tuple[int, int], resolution: int):
    """Normalised (18, 3) keypoints of the full image -> of the crop; points outside become missing."""
    out = []
    for body in bodies:
        body = np.asarray(body, np.float64).copy()  # (18, 3)
        x = (body[:, 0] * resized[0] - offset[0]) / resolution
        y = (body[:, 1] * resized[1] - offset[1]) / resolution
        inside = (body[:, 2] > 0) & (x >= 0) & (x < 1) & (y >= 0) & (y < 1)
        body[:, 0], body[:, 1] = np.where(inside, x, 0), np.where(inside, y, 0)
        body[:, 2] = np.where(inside, body[:, 2], 0)
        out.append(body)
    return out


def region_masks(boxes_px: np.ndarray, resolution: int, margin: float, factor: int = 8) -> FaceMasks:
    """Masks of the enlarged boxes, area-averaged to the latent resolution (resolution / factor).

    Each attention grid takes the area average of these again, and averages of averages over
    whole cells are the averages of the full-resolution mask: the same regions as masks built at
    full resolution, from 64x smaller tensors (cheaper to collate and to resize per grid).
    """
    full = masks_from_boxes(torch.from_numpy(np.asarray(boxes_px, np.float32)), (resolution, resolution), margin)
    if resolution % factor:
        return full
    pooled = F.avg_pool2d(full.masks[:, None], factor)[:, 0]  # (N, res/8, res/8) coverage in [0, 1]
    return FaceMasks(masks=pooled, centres=full.centres, boxes=full.boxes)


class TrainDataset(torch.utils.data.Dataset):
    """Items are addressed by (epoch, sample index) so that each epoch re-draws the random choices."""

    def __init__(self, reader: ShardReader, config: InstantFamilyConfig, resolution: int = 512, max_faces: int = 4,
                 text_dropout: float = 0.05, face_dropout: float = 0.05, random_crop: bool = True, seed: int = 0,
                 cached_latents: bool = True):
        self.reader, self.config, self.resolution = reader, config, int(resolution)
        self.max_faces, self.text_dropout, self.face_dropout = int(max_faces), float(text_dropout), float(face_dropout)
        self.random_crop, self.seed, self.cached_latents = bool(random_crop), int(seed), bool(cached_latents)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, item: tuple[int, int]) -> dict | None:
        epoch, index = item
        key, members = self.reader.read(index)
        try:
            return self.example(key, members, sample_rng(self.seed, epoch, index))
        except Exception as error:  # a damaged sample must not stop a long run
            logger.warning("skipping sample %s: %s", key, error)
            return None

    def cached_latent(self, members: dict[str, bytes]) -> dict | None:
        """The sample's latent.npz when it was made for this resolution (else training encodes pixels)."""
        if not self.cached_latents or LATENT_MEMBER not in members:
            return None
        cached = decode_latent_member(members[LATENT_MEMBER])
        return cached if int(cached["resolution"]) == self.resolution else None

    def example(self, key: str, members: dict[str, bytes], rng: np.random.Generator) -> dict:
        found = image_member(members)
        if found is None:
            raise ValueError("no image member")
        image = Image.open(io.BytesIO(found[1])).convert("RGB")
        res, config = self.resolution, self.config
        width, height = image.size
        cached = self.cached_latent(members)
        latent = None
        if cached is not None:  # crop the cached latents in whole cells; pixels, boxes and pose follow
            resized = (int(cached["size"][0]), int(cached["size"][1]))
            ox, oy = latent_crop_offset(resized, res, rng if self.random_crop else None)
            scale = np.array([resized[0] / width, resized[1] / height] * 2, np.float32)
            rows, cols = slice(oy // FACTOR, (oy + res) // FACTOR), slice(ox // FACTOR, (ox + res) // FACTOR)
            latent = {name: torch.from_numpy(cached[name][:, rows, cols]) for name in ("mean", "std")}  # (4, h, w)
        else:
            scale, resized, (ox, oy) = crop_geometry(width, height, res, rng if self.random_crop else None)
        image = image.resize(resized, Image.Resampling.BICUBIC).crop((ox, oy, ox + res, oy + res))
        pixels = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1.0).permute(2, 0, 1)  # (3, res, res)

        faces = decode_faces(members["faces.npz"]) if "faces.npz" in members else None
        boxes = np.zeros((0, 4), np.float32) if faces is None else faces["boxes"] * scale - [ox, oy, ox, oy]
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        kept = np.nonzero(((centres >= 0) & (centres < res)).all(axis=1))[0]
        chosen = [int(kept[i]) for i in choose_faces(len(kept), self.max_faces, rng)]
        chosen_boxes = np.clip(boxes[chosen], 0, res)  # (n, 4) px of the crop

        bodies = []
        if "pose.json" in members:
            frame = parse_pose_keypoint(members["pose.json"].decode())
            bodies = crop_bodies(frame.bodies(), resized, (ox, oy), res)
        control = draw_control_image((res, res), config, bodies, face_boxes=chosen_boxes / res if chosen else None)
        control = torch.from_numpy(control.astype(np.float32) / 255.0).permute(2, 0, 1)  # (3, res, res)

        caption = members.get("txt", b"").decode("utf-8", "replace").strip()
        if rng.random() < self.text_dropout:
            caption = ""
        drop_faces = rng.random() < self.face_dropout
        if chosen and not drop_faces:
            global_feature = torch.from_numpy(faces["global_features"][chosen])  # (n, d_gf)
            local_feature = torch.from_numpy(faces["local_features"][chosen])  # (n, d_lf, L, L)
            masks: FaceMasks | None = region_masks(chosen_boxes, res, config.mask_margin)
        else:
            global_feature = torch.zeros(0, config.d_gf)
            local_feature = torch.zeros(0, config.d_lf, config.L, config.L)
            masks = None
        example = {"key": key, "pixel_values": pixels, "control": control, "caption": caption,
                   "global_features": global_feature, "local_features": local_feature, "masks": masks,
                   "face_order": chosen}
        if latent is not None:
            example["latent_mean"], example["latent_std"] = latent["mean"], latent["std"]  # (4, res/8, res/8)
        return example


def collate(examples: list[dict | None]) -> dict:
    examples = [e for e in examples if e is not None]
    if not examples:
        return {}
    latents = {}
    if all("latent_mean" in e for e in examples):  # else the trainer encodes every pixel crop
        latents = {name: torch.stack([e[name] for e in examples]) for name in ("latent_mean", "latent_std")}
    return {
        **latents,
        "keys": [e["key"] for e in examples],
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "control": torch.stack([e["control"] for e in examples]),
        "captions": [e["caption"] for e in examples],
        "global_features": [e["global_features"] for e in examples],
        "local_features": [e["local_features"] for e in examples],
        "masks": [e["masks"] for e in examples],
    }


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Endless batches of (epoch, index): a fresh permutation per epoch, this rank's share of it.

    Batch b (counted from the start of training, the same on every rank) is epoch b // per_epoch;
    starting at ``start_batch`` resumes exactly where a run stopped.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
                 start_batch: int = 0, shuffle: bool = True):
        self.num_samples, self.batch_size, self.seed = int(num_samples), int(batch_size), int(seed)
        self.rank, self.world, self.start_batch, self.shuffle = int(rank), int(world), int(start_batch), shuffle
        self.per_epoch = (self.num_samples // self.world) // self.batch_size
        if self.per_epoch == 0:
            raise ValueError(
                f"{self.num_samples} training samples are fewer than batch_size {self.batch_size} x {self.world} "
                "processes: prepare more data or lower --batch-size"
            )

    def epoch_order(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples) if self.shuffle \
            else np.arange(self.num_samples)
        share = self.num_samples // self.world
        return order[self.rank * share:(self.rank + 1) * share]  # contiguous per-rank share

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch = self.start_batch
        cached_epoch, order = -1, None
        while True:
            epoch, position = divmod(batch, self.per_epoch)
            if epoch != cached_epoch:
                cached_epoch, order = epoch, self.epoch_order(epoch)
            chunk = order[position * self.batch_size:(position + 1) * self.batch_size]
            yield [(epoch, int(i)) for i in chunk]
            batch += 1

    def __len__(self) -> int:  # one epoch; the iterator itself never ends
        return self.per_epoch
