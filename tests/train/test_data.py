"""Training examples: random face choice/order without slot bias, circles only for chosen faces,
skeletons for everyone, masks with the margin, and a resumable rank-sharded batch order."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from instantfamily_core.config import InstantFamilyConfig
from instantfamily_core.face_regions import face_masks_from_pose
from instantfamily_core.masks import masks_on_grid
from instantfamily_core.pose import encode_pose_keypoint, parse_pose_keypoint
from train.data import ResumableBatchSampler, TrainDataset, choose_faces, crop_frame, sample_rng
from train.manifest import find_shards
from train.sample_format import decode_faces
from train.shards import ShardReader

RES = 256


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
    dataset = TrainDataset(
        reader, InstantFamilyConfig(), RES, max_faces=4, text_dropout=0, face_dropout=0, random_crop=False, **kwargs
    )
    key, members = reader.read(index)
    return dataset.example(key, members, sample_rng(0, 0, seed_index)), decode_faces(members["faces.npz"])


def test_circles_only_for_chosen_faces_in_random_distinct_colours_and_pose_regions(prepared):
    config = InstantFamilyConfig()
    slots_seen, colours_seen = Counter(), set()
    for seed_index in range(8):
        example, faces = five_face_example(prepared, seed_index)
        chosen, colours = example["face_order"], example["colours"]
        assert len(chosen) == 4 and example["region_source"] == "pose"
        assert len(set(colours)) == 4 and set(colours) <= set(config.palette)
        colours_seen.update(colours)
        boxes = faces["boxes"] * RES / 640  # square 640 image: pure scaling
        control = (example["control"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
        for face, box in enumerate(boxes):
            x1, y1, x2, y2 = (int(v) for v in box)
            found = {
                colour
                for colour in config.palette
                if np.all(control[y1:y2, x1:x2] == np.array(colour, np.uint8), axis=-1).any()
            }
            if face in chosen:
                assert found == {colours[chosen.index(face)]}, (face, chosen, found)
                slots_seen[(face, chosen.index(face))] += 1
            else:
                assert not found, (face, found)  # skeleton or black: no circle
        masks = example["masks"]
        assert len(masks) == 4 and example["global_features"].shape == (4, 512)
        torch.testing.assert_close(example["global_features"][0], torch.from_numpy(faces["global_features"][chosen[0]]))
        # slot n's region = the Face Mask node's region for the crop's pose with the example's order
        frame = parse_pose_keypoint(example["pose_keypoint"])
        full, people = face_masks_from_pose(frame, 4, example["order"], 0.25)
        for slot, face in enumerate(chosen):
            centre = (boxes[face, :2] + boxes[face, 2:]) / 2 / RES
            assert frame.people[people[slot]].face_centre == pytest.approx(centre, abs=0.05)
        for side in (RES // 8, RES // 16, RES // 32, RES // 64):
            assert torch.equal(masks_on_grid(masks, (side, side)), masks_on_grid(full, (side, side)))
        torch.testing.assert_close(masks.boxes, full.boxes)
        neck = [(int((b[0] + b[2]) / 2), int((b[1] + b[3]) / 2 + 0.25 * (b[3] - b[1]))) for b in boxes]
        assert all(control[y, x].any() for x, y in neck)  # every person's skeleton, chosen or not
    assert len(slots_seen) > 6  # different faces land in different slots across draws
    assert len(colours_seen) > 8  # colours beyond the first four slots' are trained


def test_dropped_faces_and_text_keep_the_control_image(prepared):
    """CFG dropout removes the face tokens/masks and the caption, not the circles: at inference the
    uncond rows also get the control image with circles (ComfyUI applies the ControlNet to both)."""
    shards, _ = find_shards([str(prepared)])
    reader = ShardReader(shards)
    key, members = reader.read(0)
    kept, dropped = (
        TrainDataset(reader, InstantFamilyConfig(), RES, face_dropout=p, text_dropout=p, random_crop=False).example(
            key, members, sample_rng(0, 0, 0)
        )
        for p in (0.0, 1.0)
    )
    assert kept["masks"] is not None and kept["caption"] and kept["global_features"].shape[0] > 0
    assert dropped["masks"] is None and dropped["caption"] == "" and dropped["global_features"].shape[0] == 0
    assert torch.equal(kept["control"], dropped["control"]) and torch.equal(
        kept["pixel_values"], dropped["pixel_values"]
    )


def test_crop_moves_keypoints_and_drops_points_outside():
    body = np.zeros((18, 3))
    body[0] = (0.5, 0.5, 1)  # centre of a 200x100 image
    body[1] = (0.05, 0.5, 1)  # near the left edge: cropped away
    members = {"pose.json": json.dumps(encode_pose_keypoint([body], 200, 100)).encode()}
    value, frame = crop_frame(members, resized=(256, 128), offset=(64, 0), resolution=128)
    assert frame.size == (128, 128) and value[0]["canvas_width"] == 128
    out = frame.people[0].body
    np.testing.assert_allclose(out[0], (0.5, 0.5, 1))
    assert out[1, 2] == 0 and out[2, 2] == 0
    assert crop_frame({}, (128, 128), (0, 0), 128)[1].people == []


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
