"""Aspect-ratio buckets: the SDXL list, batches of one bucket that resume exactly, crops that boxes,
masks, pose and circles follow, size/crop conditioning, and latents cached at the bucket size."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from train_fixtures import PACK, SIZE, cached_and_live_losses, person, prepare_args, train_args

from instantfamily_core.config import InstantFamilyConfig
from instantfamily_core.face_regions import control_image_for_slots, face_masks_from_pose
from instantfamily_core.pose import parse_pose_keypoint
from instantfamily_dev import face_fixtures
from train.buckets import assign_buckets, bucket_sizes, nearest_bucket
from train.data import BucketBatchSampler, TrainDataset, collate, sample_rng
from train.latents import MEMBER, decode_latent_member, load_vae
from train.manifest import find_shards
from train.options import parse
from train.prepare import main
from train.shards import ShardReader
from train.train import Trainer, train

RES, GRANULARITY = 96, 32  # tiny buckets whose latent sides the tiny UNet (2 downsamplings) takes
# name: ((width, height), face centres px)
PHOTOS = {
    "wide": ((600, 400), ((160, 192), (448, 192))),  # aspect 1.5: exactly the 96x64 bucket
    "tall": ((400, 600), ((192, 160), (192, 448))),
    "wider": ((640, 384), ((160, 192), (480, 192))),  # 104x64 resized: crops move in latent cells
    "square": ((512, 512), ((160, 256), (352, 256))),
}


def test_sdxl_buckets_and_tiny_ones():
    assert bucket_sizes(1024 * 1024, 64) == [
        (1024, 1024),
        (1152, 896),
        (896, 1152),
        (1216, 832),
        (832, 1216),
        (1344, 768),
        (768, 1344),
        (1536, 640),
        (640, 1536),
    ]
    tiny = bucket_sizes(64 * 64, 8)
    assert len(tiny) == len(set(tiny)) == 9 and tiny[0] == (64, 64)
    assert all(w % 8 == 0 and h % 8 == 0 and w * h <= 64 * 64 for w, h in tiny)
    assert bucket_sizes(64 * 64, 64) == [(64, 64)]  # too coarse for other aspects at this area
    assert all(w * h <= 96 * 96 for w, h in bucket_sizes(96 * 96, 32))
    assert nearest_bucket(1216, 832, bucket_sizes(1024**2)) == 3
    assert bucket_sizes(1024**2)[nearest_bucket(500, 1200, bucket_sizes(1024**2))] == (640, 1536)
    with pytest.raises(ValueError, match="multiple of 8"):
        bucket_sizes(4096, 12)


def take(sampler, count):
    iterator = iter(sampler)
    return [next(iterator) for _ in range(count)]


def test_bucket_batches_hold_one_bucket_and_resume_exactly():
    rng = np.random.default_rng(0)
    bucket_of = rng.integers(0, 3, 61)
    bucket_of[5] = -1  # unreadable: never batched
    sampler = BucketBatchSampler(bucket_of, batch_size=4, seed=3)
    batches = take(sampler, 3 * len(sampler))
    for batch in batches:
        assert len(batch) == 4 and len({bucket_of[i] for _, i in batch}) == 1 and (0, 5) not in batch
    first = [i for batch in batches[: len(sampler)] for _, i in batch]
    second = [i for batch in batches[len(sampler) : 2 * len(sampler)] for _, i in batch]
    assert len(set(first)) == len(first)  # an epoch never repeats a sample
    assert first != second and {e for batch in batches[len(sampler) :][:1] for e, _ in batch} == {1}
    resumed = take(BucketBatchSampler(bucket_of, batch_size=4, seed=3, start_batch=7), 8)
    assert resumed == batches[7:15]
    ranks = [take(BucketBatchSampler(bucket_of, 2, seed=3, rank=r, world=2), 10) for r in range(2)]
    for a, b in zip(*ranks):
        assert not {i for _, i in a} & {i for _, i in b}  # disjoint shares
        assert bucket_of[a[0][1]] == bucket_of[b[0][1]]  # the same bucket on every rank at a step
    with pytest.raises(ValueError, match="aspect bucket"):
        BucketBatchSampler(np.arange(5), batch_size=2)


def pose_for(size, centres) -> str:
    width, height = size
    people = []
    for cx, cy in centres:
        body = person(cx, cy)
        body[:, 0] *= SIZE / width  # person() normalises by SIZE
        body[:, 1] *= SIZE / height
        body[(body[:, 0] >= 1) | (body[:, 1] >= 1)] = 0
        people.append({"pose_keypoints_2d": body.reshape(-1).tolist()})
    return json.dumps([{"people": people, "canvas_width": width, "canvas_height": height}])


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory, pack_root):
    torch.set_num_threads(1)
    photos = tmp_path_factory.mktemp("aspect_photos")
    for name, (size, centres) in PHOTOS.items():
        Image.fromarray(face_fixtures.disc_image(size[::-1], centres=centres)).save(photos / f"{name}.png")
        (photos / f"{name}.pose.json").write_text(pose_for(size, centres))
    output = tmp_path_factory.mktemp("aspect_prepared")
    extra = ("--pretrained", "", "--model-config", "tiny", "--latent-resolution", str(RES), "--latent-dtype")
    extra += ("float32", "--aspect-buckets", "--bucket-granularity", str(GRANULARITY), "--vae-precision", "float32")
    assert main(prepare_args([photos], output, pack_root, PACK, *extra)) == 0
    reader = ShardReader(find_shards([str(output)])[0])
    names = {json.loads(reader.read(i)[1]["meta.json"])["source"].rsplit("/", 1)[1][:-4]: i for i in range(len(reader))}
    return output, reader, names


def dataset(reader, **kwargs):
    kwargs = {"max_faces": 4, "text_dropout": 0, "face_dropout": 0, **kwargs}
    return TrainDataset(reader, InstantFamilyConfig(), RES, buckets=bucket_sizes(RES * RES, GRANULARITY), **kwargs)


def test_latents_are_cached_at_the_bucket_and_match_encoding_the_crop_live(bucketed):
    _, reader, names = bucketed
    buckets = bucket_sizes(RES * RES, GRANULARITY)
    assert list(assign_buckets(reader, buckets)[[names[n] for n in ("wide", "tall", "square")]]) == [
        buckets.index((96, 64)),
        buckets.index((64, 96)),
        0,
    ]
    vae = load_vae("", "tiny", 0).eval()
    for name, bucket in (("wide", (96, 64)), ("tall", (64, 96))):
        index = names[name]
        stored = decode_latent_member(reader.read(index)[1][MEMBER])
        assert tuple(stored["size"]) == bucket and tuple(stored["target"]) == bucket
        example = dataset(reader, random_crop=False)[(0, index)]
        assert example["pixel_values"].shape == (3, bucket[1], bucket[0]) == example["control"].shape
        with torch.no_grad():  # the crop is the whole resized image: encoding it live must give the cache
            live = vae.encode(example["pixel_values"][None]).latent_dist.mean[0]  # (4, h/8, w/8)
        torch.testing.assert_close(example["latent_mean"], live, atol=1e-5, rtol=1e-4)


def test_boxes_masks_pose_and_circles_follow_the_bucket_crop(bucketed):
    _, reader, names = bucketed
    config = InstantFamilyConfig()
    index = names["wider"]
    stored = decode_latent_member(reader.read(index)[1][MEMBER])
    assert tuple(stored["size"]) == (104, 64) and tuple(stored["target"]) == (96, 64)
    offsets = set()
    for seed in range(8):
        key, members = reader.read(index)
        example = dataset(reader).example(key, members, sample_rng(seed, 0, index))
        cells = [
            k for k in range(2) if np.array_equal(stored["mean"][:, :, k : k + 12], example["latent_mean"].numpy())
        ]
        assert len(cells) == 1
        ox = 8 * cells[0]
        offsets.add(ox)
        # time_ids: original (h, w), crop (top, left), target (h, w)
        assert example["time_ids"].tolist() == [384, 640, 0, ox, 64, 96]
        frame = example["pose_keypoint"][0]
        assert (frame["canvas_width"], frame["canvas_height"]) == (96, 64)
        scale = 104 / 640
        discs = [np.array((x * scale - ox, y * 64 / 384)) for x, y in PHOTOS["wider"][1]]
        masks = example["masks"]
        assert masks.masks.shape[1:] == (8, 12)  # pooled to the latent grid of the 96x64 bucket
        centres = masks.centres.numpy() * (96, 64)
        assert len(centres) == 2
        for centre in centres:  # every region sits on a disc, shifted by the crop
            assert min(np.hypot(*(centre - d)) for d in discs) < 3
        control = (example["control"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (64, 96, 3)
        # the control image is the nodes' drawing of the crop's pose (replayed), its heads on the discs
        replay = parse_pose_keypoint(example["pose_keypoint"])
        slot_masks, _ = face_masks_from_pose(replay, 2, example["order"], config.mask_margin)
        drawn = control_image_for_slots(slot_masks, config, (64, 96), replay.bodies(), colours=example["colours"])
        np.testing.assert_array_equal(control, drawn)
        for x, y in discs:
            assert control[int(y), int(round(x))].any()  # head keypoints drawn where the face is after the crop
        assert not control[:5].any()  # nothing above the heads
    assert offsets == {0, 8}  # random crops move in whole latent cells


def test_bucketed_training_runs_with_one_bucket_per_batch(bucketed, tmp_path):
    output, reader, _ = bucketed
    items = [(0, i) for i in range(len(reader))]
    examples = [dataset(reader)[item] for item in items]
    sizes = {tuple(e["pixel_values"].shape) for e in examples}
    assert len(sizes) == 3  # square, landscape and portrait buckets
    batch = collate([e for e in examples if e["pixel_values"].shape[1:] == (64, 96)])
    assert batch["time_ids"].shape == (2, 6)
    args = train_args(output, tmp_path / "run", "--max-steps", "2", "--resolution", str(RES), "--batch-size", "1")
    losses = train(parse([*args, "--aspect-buckets", "on", "--bucket-granularity", str(GRANULARITY)]))
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_buckets_are_on_by_default_for_sdxl_family_unets_only():
    from types import SimpleNamespace

    from train.buckets import training_buckets

    sdxl = SimpleNamespace(config=SimpleNamespace(addition_embed_type="text_time"))
    sd15 = SimpleNamespace(config=SimpleNamespace(addition_embed_type=None))
    opts = parse(["--resolution", "1024"])
    assert opts.aspect_buckets == "auto"
    assert training_buckets(opts, sdxl) == bucket_sizes(1024 * 1024, 64) and training_buckets(opts, sd15) is None
    assert training_buckets(parse(["--aspect-buckets", "on"]), sd15) == bucket_sizes(512 * 512, 64)
    assert training_buckets(parse(["--aspect-buckets", "off"]), sdxl) is None
    with pytest.raises(ValueError, match="aspect_buckets"):
        parse(["--aspect-buckets", "yes"])


def test_a_bucketed_cached_latent_trains_like_its_pixels(bucketed, tmp_path):
    output, reader, names = bucketed
    args = train_args(output, tmp_path / "run", "--max-steps", "1", "--resolution", str(RES), "--text-dropout", "0")
    trainer = Trainer(parse([*args, "--face-dropout", "0", "--aspect-buckets", "on", "--bucket-granularity", "32"]))
    assert trainer.dataset.buckets == bucket_sizes(RES * RES, GRANULARITY)
    cached, pixels = dataset(trainer.reader, random_crop=False), dataset(trainer.reader, random_crop=False)
    pixels.cached_latents = False
    # the wide photo's bucket crop is its whole cached image: encoding it live must give the cache
    losses = cached_and_live_losses(trainer, cached, pixels, [(0, names["wide"])])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5), losses


def test_the_sdxl_trainer_takes_buckets_by_default_and_their_time_ids(bucketed, tmp_path):
    output, reader, names = bucketed
    args = train_args(output, tmp_path / "run", "--model-config", "tiny_sdxl", "--max-steps", "2")
    args += ["--resolution", str(RES), "--batch-size", "1", "--bucket-granularity", str(GRANULARITY)]
    trainer = Trainer(parse(args))  # aspect_buckets "auto": on, the tiny SDXL UNet takes add_time_ids
    assert trainer.dataset.buckets == bucket_sizes(RES * RES, GRANULARITY)
    batch = collate([trainer.dataset[(0, names["tall"])]])
    assert batch["pixel_values"].shape[2:] == (96, 64) and batch["time_ids"][0, 4:].tolist() == [96, 64]
    torch.manual_seed(0)
    with_crop = trainer.loss(batch).item()
    torch.manual_seed(0)
    batch["time_ids"] = batch["time_ids"] + torch.tensor([0, 0, 32, 0, 0, 0])  # another crop_top: SDXL sees it
    assert trainer.loss(batch).item() != with_crop
    losses = train(parse(args))
    assert len(losses) == 2 and all(np.isfinite(losses))
