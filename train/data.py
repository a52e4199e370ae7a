"""Training examples from prepared shards, with a resumable, rank-sharded batch order.

Per sample (paper §4.2): crop to a square (or, with aspect buckets, to the sample's bucket:
``train.buckets``), choose min(max_faces, faces) faces at random in random
order, draw the Pose + Circle control image with the core drawing (skeletons of everyone, circles
only for the chosen faces, in distinct palette colours drawn at random: ``config.slot_colours``),
and build each chosen face's region mask with the configured margin.

Regions and circles come from the sample's stored pose exactly as the Face Mask node makes them:
the crop's POSE_KEYPOINT (``pose.crop_pose``) goes through ``face_regions.face_masks_from_pose``
with an ``order`` that puts the chosen faces in their slots, and the control image through
``face_regions.control_image_for_slots``. A detected face takes part when a pose person matches
it (``face_regions.match_faces_to_people``); a sample whose pose matches no face uses the
detector boxes (``face_masks_from_boxes``, the node's template path) instead. Each example keeps
the POSE_KEYPOINT, order and colours it used, so a test can replay it through the nodes.
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

from instantfamily_core import face_regions
from instantfamily_core.config import InstantFamilyConfig
from instantfamily_core.images import uint8_to_images
from instantfamily_core.masks import FaceMasks
from instantfamily_core.pose import PoseFrame, crop_pose, encode_pose_keypoint, parse_pose_keypoint

from .buckets import assign_buckets, nearest_bucket, sample_size, target_size, time_ids
from .latents import FACTOR, cached_target, decode_latent_member
from .latents import MEMBER as LATENT_MEMBER
from .sample_format import decode_faces, image_member
from .shards import ShardReader

logger = logging.getLogger(__name__)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def choose_faces(count: int, max_faces: int, rng: np.random.Generator) -> list[int]:
    """min(max_faces, count) distinct face indices in random order (no first-slot bias)."""
    return [int(i) for i in rng.permutation(count)[: min(max_faces, count)]]


def crop_geometry(width: int, height: int, target: int | tuple[int, int], rng: np.random.Generator | None):
    """(scale, resized (w, h), offset (x, y)) of the smallest resize covering ``target`` plus its crop.

    target: a square side (a shorter-side resize) or a (width, height) bucket.
    """
    tw, th = target_size(target)
    scale = max(tw / width, th / height)
    new_w, new_h = max(tw, round(width * scale)), max(th, round(height * scale))
    if rng is None:
        ox, oy = (new_w - tw) // 2, (new_h - th) // 2
    else:
        ox, oy = int(rng.integers(0, new_w - tw + 1)), int(rng.integers(0, new_h - th + 1))
    return scale, (new_w, new_h), (ox, oy)


def latent_crop_offset(resized: tuple[int, int], target: int | tuple[int, int], rng: np.random.Generator | None):
    """(x, y) pixel offset of a crop of cached latents: whole latent cells (multiples of 8)."""
    tw, th = target_size(target)
    cells_x, cells_y = (resized[0] - tw) // FACTOR, (resized[1] - th) // FACTOR
    if rng is None:
        return cells_x // 2 * FACTOR, cells_y // 2 * FACTOR
    return int(rng.integers(0, cells_x + 1)) * FACTOR, int(rng.integers(0, cells_y + 1)) * FACTOR


def pooled_masks(full: FaceMasks, factor: int = 8) -> FaceMasks:
    """Full-resolution slot masks area-averaged to the latent resolution (resolution / factor).

    Each attention grid takes the area average of these again, and averages of averages over
    whole cells are the averages of the full-resolution mask: the same regions as masks built at
    full resolution, from 64x smaller tensors (cheaper to collate and to resize per grid).
    """
    height, width = full.image_size
    if height % factor or width % factor:
        return full
    pooled = F.avg_pool2d(full.masks[:, None], factor)[:, 0]  # (N, res/8, res/8) coverage in [0, 1]
    return FaceMasks(masks=pooled, centres=full.centres, boxes=full.boxes)


def crop_frame(
    members: dict[str, bytes], resized: tuple[int, int], offset: tuple[int, int], resolution: int | tuple[int, int]
):
    """The crop's POSE_KEYPOINT value (what a pose detector on the crop gives) and its parsed frame.

    resolution: the crop's square side or (width, height)."""
    tw, th = target_size(resolution)
    if "pose.json" in members:
        source = parse_pose_keypoint(members["pose.json"].decode())
        window = (
            offset[0] / resized[0],
            offset[1] / resized[1],
            (offset[0] + tw) / resized[0],
            (offset[1] + th) / resized[1],
        )
        value = crop_pose(source, window, (th, tw))
    else:
        value = encode_pose_keypoint([], tw, th)
    return value, parse_pose_keypoint(value)


def slot_regions(frame: PoseFrame, boxes_px: np.ndarray, max_faces: int, margin: float, rng: np.random.Generator):
    """The chosen faces (indices into ``boxes_px``), their slot masks (full resolution), the Face Mask node's
    ``order`` that gives those slots, and the region source ("pose" or "boxes").

    boxes_px: (F, 4) detected face boxes in pixels of the crop (faces whose centre is outside dropped).
    """
    size = np.array([frame.width, frame.height], np.float64)
    centres = (boxes_px[:, :2] + boxes_px[:, 2:]) / 2
    kept = np.nonzero(((centres >= 0) & (centres < size)).all(axis=1))[0]
    people = face_regions.match_faces_to_people(boxes_px / np.tile(size, 2), frame)
    matched = [int(f) for f in kept if people[f] is not None]
    if matched:
        chosen = [matched[i] for i in choose_faces(len(matched), max_faces, rng)]
        positions = face_regions.pose_positions(frame)
        order = [positions.index(people[f]) for f in chosen]
        masks, _ = face_regions.face_masks_from_pose(frame, len(chosen), order, margin)
        return chosen, masks, order, "pose"
    chosen = [int(kept[i]) for i in choose_faces(len(kept), max_faces, rng)]
    boxes = np.clip(boxes_px[kept], 0, np.tile(size, 2))
    ranked = face_regions.left_to_right((boxes[:, :2] + boxes[:, 2:]) / 2)
    order = [ranked.index(list(kept).index(f)) for f in chosen]
    masks = face_regions.face_masks_from_boxes(boxes, frame.size, len(chosen), order, margin)
    return chosen, masks, order, "boxes"


class TrainDataset(torch.utils.data.Dataset):
    """Items are addressed by (epoch, sample index) so that each epoch re-draws the random choices."""

    def __init__(
        self,
        reader: ShardReader,
        config: InstantFamilyConfig,
        resolution: int = 512,
        max_faces: int = 4,
        text_dropout: float = 0.05,
        face_dropout: float = 0.05,
        random_crop: bool = True,
        seed: int = 0,
        cached_latents: bool = True,
        buckets: list[tuple[int, int]] | None = None,
    ):
        """buckets: (width, height) aspect buckets (``train.buckets.bucket_sizes``); None = square crops."""
        self.reader, self.config, self.resolution = reader, config, int(resolution)
        self.buckets = [tuple(b) for b in buckets] if buckets else None
        self._warned_cache = False
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

    def target(self, members: dict[str, bytes]) -> tuple[int, int]:
        """(width, height) of the sample's crop: its aspect bucket, or the square resolution."""
        if self.buckets is None:
            return self.resolution, self.resolution
        return self.buckets[nearest_bucket(*sample_size(members), self.buckets)]

    def cached_latent(self, members: dict[str, bytes], target: tuple[int, int]) -> dict | None:
        """The sample's latent.npz when it was made for this crop size (else training encodes pixels)."""
        if not self.cached_latents or LATENT_MEMBER not in members:
            return None
        cached = decode_latent_member(members[LATENT_MEMBER])
        if cached_target(cached) == target:
            return cached
        if not self._warned_cache:
            self._warned_cache = True
            logger.warning(
                "cached latents are for a %s crop, this sample's is %s: encoding pixels instead (prepare with "
                "the same --latent-resolution / --aspect-buckets as training)",
                cached_target(cached),
                target,
            )
        return None

    def example(self, key: str, members: dict[str, bytes], rng: np.random.Generator) -> dict:
        found = image_member(members)
        if found is None:
            raise ValueError("no image member")
        image = Image.open(io.BytesIO(found[1])).convert("RGB")
        config = self.config
        width, height = image.size
        tw, th = target = self.target(members)
        cached = self.cached_latent(members, target)
        latent = None
        if cached is not None:  # crop the cached latents in whole cells; pixels, boxes and pose follow
            resized = (int(cached["size"][0]), int(cached["size"][1]))
            ox, oy = latent_crop_offset(resized, target, rng if self.random_crop else None)
            scale = np.array([resized[0] / width, resized[1] / height] * 2, np.float32)
            rows, cols = slice(oy // FACTOR, (oy + th) // FACTOR), slice(ox // FACTOR, (ox + tw) // FACTOR)
            latent = {name: torch.from_numpy(cached[name][:, rows, cols]) for name in ("mean", "std")}  # (4, h, w)
        else:
            scale, resized, (ox, oy) = crop_geometry(width, height, target, rng if self.random_crop else None)
        image = image.resize(resized, Image.Resampling.BICUBIC).crop((ox, oy, ox + tw, oy + th))
        pixels = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1.0).permute(2, 0, 1)  # (3, th, tw)

        faces = decode_faces(members["faces.npz"]) if "faces.npz" in members else None
        boxes = np.zeros((0, 4), np.float32) if faces is None else faces["boxes"] * scale - [ox, oy, ox, oy]
        pose_keypoint, frame = crop_frame(members, resized, (ox, oy), target)
        chosen, slot_masks, order, source = slot_regions(frame, boxes, self.max_faces, config.mask_margin, rng)
        colours = config.slot_colours(len(chosen), rng)
        control = face_regions.control_image_for_slots(slot_masks, config, (th, tw), frame.bodies(), colours=colours)
        control = uint8_to_images(control)[0].permute(2, 0, 1)  # (th, tw, 3) -> (3, th, tw)

        caption = members.get("txt", b"").decode("utf-8", "replace").strip()
        if rng.random() < self.text_dropout:
            caption = ""
        drop_faces = rng.random() < self.face_dropout
        if chosen and not drop_faces:
            global_feature = torch.from_numpy(faces["global_features"][chosen])  # (n, d_gf)
            local_feature = torch.from_numpy(faces["local_features"][chosen])  # (n, d_lf, L, L)
            masks: FaceMasks | None = pooled_masks(slot_masks)
        else:
            global_feature = torch.zeros(0, config.d_gf)
            local_feature = torch.zeros(0, config.d_lf, config.L, config.L)
            masks = None
        example = {
            "key": key,
            "pixel_values": pixels,
            "control": control,
            "caption": caption,
            "global_features": global_feature,
            "local_features": local_feature,
            "masks": masks,
            "face_order": chosen,
            "pose_keypoint": pose_keypoint,
            "order": ",".join(map(str, order)),
            "colours": colours,
            "region_source": source,
            "time_ids": time_ids((width, height), (ox, oy), target),  # (6,) SDXL's size/crop conditioning
        }
        if latent is not None:
            example["latent_mean"], example["latent_std"] = latent["mean"], latent["std"]  # (4, th/8, tw/8)
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
        "time_ids": torch.stack([e["time_ids"] for e in examples]),  # (B, 6)
    }


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Endless batches of (epoch, index): a fresh permutation per epoch, this rank's share of it.

    Batch b (counted from the start of training, the same on every rank) is epoch b // per_epoch;
    starting at ``start_batch`` resumes exactly where a run stopped.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        start_batch: int = 0,
        shuffle: bool = True,
    ):
        self.num_samples, self.batch_size, self.seed = int(num_samples), int(batch_size), int(seed)
        self.rank, self.world, self.start_batch, self.shuffle = int(rank), int(world), int(start_batch), shuffle
        self.per_epoch = self.batches_per_epoch()
        if self.per_epoch == 0:
            raise ValueError(self.too_few_samples())

    def batches_per_epoch(self) -> int:
        return (self.num_samples // self.world) // self.batch_size

    def too_few_samples(self) -> str:
        return (
            f"{self.num_samples} training samples are fewer than batch_size {self.batch_size} x {self.world} "
            "processes: prepare more data or lower --batch-size"
        )

    def epoch_order(self, epoch: int) -> np.ndarray:
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            if self.shuffle
            else np.arange(self.num_samples)
        )
        share = self.num_samples // self.world
        return order[self.rank * share : (self.rank + 1) * share]  # contiguous per-rank share

    def epoch_plan(self, epoch: int):
        """What ``batch_in`` cuts this rank's batches of ``epoch`` from (built once per epoch)."""
        return self.epoch_order(epoch)

    def batch_in(self, plan, position: int) -> np.ndarray:
        """Sample indices of batch ``position`` of an epoch."""
        return plan[position * self.batch_size : (position + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch = self.start_batch
        cached_epoch, plan = -1, None
        while True:
            epoch, position = divmod(batch, self.per_epoch)
            if epoch != cached_epoch:
                cached_epoch, plan = epoch, self.epoch_plan(epoch)
            yield [(epoch, int(i)) for i in self.batch_in(plan, position)]
            batch += 1

    def __len__(self) -> int:  # one epoch; the iterator itself never ends
        return self.per_epoch


class BucketBatchSampler(ResumableBatchSampler):
    """Endless batches of (epoch, index), each from one aspect bucket, resumable the same way.

    Per epoch (seed, epoch): each bucket's samples are shuffled and cut into global batches of
    batch_size x world (the remainder waits for another epoch's draw), the global batches are
    shuffled, and rank r takes its batch_size slice of each. Every rank steps the same number of
    batches per epoch and sees the same bucket at the same step.

    bucket_of: (S,) bucket index per sample (``train.buckets.assign_buckets``; -1 = never batched).
    """

    def __init__(self, bucket_of: np.ndarray, batch_size: int, *args, **kwargs):
        """bucket_of, then ResumableBatchSampler's arguments after num_samples."""
        bucket_of = np.asarray(bucket_of)
        self.members = [np.nonzero(bucket_of == b)[0] for b in range(int(bucket_of.max(initial=-1)) + 1)]
        super().__init__(len(bucket_of), batch_size, *args, **kwargs)

    def batches_per_epoch(self) -> int:
        return sum(len(m) // (self.batch_size * self.world) for m in self.members)

    def too_few_samples(self) -> str:
        largest = max((len(m) for m in self.members), default=0)
        return (
            f"no aspect bucket holds batch_size {self.batch_size} x {self.world} processes samples "
            f"(largest bucket: {largest}): prepare more data, lower --batch-size or set --aspect-buckets off"
        )

    def epoch_plan(self, epoch: int) -> list[np.ndarray]:
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

    def batch_in(self, plan, position: int) -> np.ndarray:
        return plan[position]


def batch_sampler(reader: ShardReader, buckets, opts, rank: int, world: int, start_batch: int):
    """The run's resumable batch order: one bucket per batch with aspect buckets, else square crops."""
    if buckets:
        bucket_of = assign_buckets(reader, buckets)
        return BucketBatchSampler(bucket_of, opts.batch_size, opts.seed, rank, world, start_batch=start_batch)
    return ResumableBatchSampler(len(reader), opts.batch_size, opts.seed, rank, world, start_batch=start_batch)
