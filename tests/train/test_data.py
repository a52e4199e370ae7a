"""Training examples: random face choice/order without slot bias, circles only for chosen faces,
skeletons for everyone, masks with the margin, and a resumable rank-sharded batch order."""

from collections import Counter

import numpy as np
import pytest
import torch

from instantfamily_core.config import InstantFamilyConfig
from instantfamily_core.masks import masks_from_boxes, masks_on_grid
from train.data import ResumableBatchSampler, TrainDataset, choose_faces, crop_bodies, sample_rng
from train.manifest import find_shards
from train.sample_format import decode_faces
from train.shards import ShardReader

RES = 128


@pytest.mark.parametrize("count", [2, 3, 4, 6])
def test_every_slot_gets_every_face_position(count):
    """Paper §4.2: with fewer than N faces, a fixed order would let only the first slot learn."""
    draws = 6000
    tally = Counter()
    for i in range(draws):
        chosen = choose_faces(count, 4, sample_rng(0, 0, i))
        assert len(chosen) == min(4, count) and len(set(chosen)) == len(chosen)
        tally.update(enumerate(chosen))
    expected = draws / count  # P(face f in slot s) = 1 / count for every slot that exists
    for slot in range(min(4, count)):
        for face in range(count):
            assert abs(tally[(slot, face)] - expected) < 5 * np.sqrt(expected), (slot, face, tally[(slot, face)])


def five_face_example(prepared, seed_index, **kwargs):
    shards, _ = find_shards([str(prepared)])
    reader = ShardReader(shards)
    index = next(i for i in range(len(reader)) if len(decode_faces(reader.read(i)[1]["faces.npz"])["boxes"]) == 5)
    dataset = TrainDataset(reader, InstantFamilyConfig(), RES, max_faces=4, text_dropout=0, face_dropout=0,
                           random_crop=False, **kwargs)
    key, members = reader.read(index)
    return dataset.example(key, members, sample_rng(0, 0, seed_index)), decode_faces(members["faces.npz"])


def test_circles_only_for_chosen_faces_in_slot_colours_and_masks_with_margin(prepared):
    config = InstantFamilyConfig()
    slots_seen = Counter()
    for seed_index in range(8):
        example, faces = five_face_example(prepared, seed_index)
        chosen = example["face_order"]
        assert len(chosen) == 4
        boxes = faces["boxes"] * RES / 640  # square 640 image: pure scaling
        control = (example["control"].permute(1, 2, 0).numpy() * 255).round().astype(int)  # (H, W, 3)
        for face, box in enumerate(boxes):
            cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            colour = tuple(control[cy, cx])
            if face in chosen:
                assert colour == config.palette_colour(chosen.index(face)), (face, chosen, colour)
                slots_seen[(face, chosen.index(face))] += 1
            else:
                assert colour not in config.palette[:4], (face, colour)  # skeleton or black: no circle
        masks = example["masks"]
        assert len(masks) == 4 and example["global_features"].shape == (4, 512)
        torch.testing.assert_close(example["global_features"][0], torch.from_numpy(faces["global_features"][chosen[0]]))
        # slot n's region = chosen face n's box with the 25% margin, on every attention grid
        full = masks_from_boxes(torch.from_numpy(boxes[chosen]), (RES, RES), 0.25)
        for side in (RES // 8, RES // 16, RES // 32, RES // 64):
            assert torch.equal(masks_on_grid(masks, (side, side)), masks_on_grid(full, (side, side)))
        torch.testing.assert_close(masks.boxes, full.boxes)
        assert full.masks.sum() > 1.5 * (boxes[chosen][:, 2:] - boxes[chosen][:, :2]).prod(1).sum()  # (1.25)^2 area
        neck = [(int((b[0] + b[2]) / 2), int((b[1] + b[3]) / 2 + 0.25 * (b[3] - b[1]))) for b in boxes]
        assert all(control[y, x].any() for x, y in neck)  # every person's skeleton, chosen or not
    assert len(slots_seen) > 6  # different faces land in different slots across draws


def test_dropped_faces_and_text_keep_the_control_image(prepared):
    """CFG dropout removes the face tokens/masks and the caption, not the circles: at inference the
    uncond rows also get the control image with circles (ComfyUI applies the ControlNet to both)."""
    shards, _ = find_shards([str(prepared)])
    reader = ShardReader(shards)
    key, members = reader.read(0)
    kept, dropped = (TrainDataset(reader, InstantFamilyConfig(), RES, face_dropout=p, text_dropout=p, random_crop=False)
                     .example(key, members, sample_rng(0, 0, 0)) for p in (0.0, 1.0))
    assert kept["masks"] is not None and kept["caption"] and kept["global_features"].shape[0] > 0
    assert dropped["masks"] is None and dropped["caption"] == "" and dropped["global_features"].shape[0] == 0
    assert torch.equal(kept["control"], dropped["control"]) and torch.equal(kept["pixel_values"], dropped["pixel_values"])


def test_crop_moves_keypoints_and_drops_points_outside():
    body = np.zeros((18, 3))
    body[0] = (0.5, 0.5, 1)  # centre of a 200x100 image
    body[1] = (0.05, 0.5, 1)  # near the left edge: cropped away
    (out,) = crop_bodies([body], resized=(256, 128), offset=(64, 0), resolution=128)
    np.testing.assert_allclose(out[0], (0.5, 0.5, 1))
    assert out[1, 2] == 0 and out[2, 2] == 0


def test_sampler_resumes_exactly_and_splits_ranks():
    def take(sampler, n):
        iterator = iter(sampler)
        return [next(iterator) for _ in range(n)]

    full = take(ResumableBatchSampler(10, 2, seed=3), 12)  # 5 batches per epoch: crosses two epochs
    assert take(ResumableBatchSampler(10, 2, seed=3, start_batch=7), 5) == full[7:]
    first_epoch = sorted(i for batch in full[:5] for _, i in batch)
    assert first_epoch == list(range(10)) and full[5] != full[0]
    ranks = [take(ResumableBatchSampler(10, 2, seed=3, rank=r, world=2), 2) for r in range(2)]
    seen = [i for batches in ranks for batch in batches for _, i in batch]
    assert len(seen) == len(set(seen)) == 8
    with pytest.raises(ValueError, match="fewer than batch_size"):
        ResumableBatchSampler(3, 2, world=2)
