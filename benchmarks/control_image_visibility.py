"""How much of each ID's head the Pose + Circle control image leaves readable, on prepared training data.

    python benchmarks/control_image_visibility.py output/toyworld/shards [--samples 200] [--resolution 256]

For the trainer's examples of the first samples (their own face choice, regions and circles), per ID
person: the share of its present nose / eye / ear keypoints whose pixel shows the skeleton's colour
(not a circle's), and the share of its circle's pixels still in the circle colour, for the pack's
drawing (head keypoints redrawn over the circles) and for circles drawn last (the drawing before).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def measure(data: str, samples: int, resolution: int) -> dict:
    from instantfamily_core.config import InstantFamilyConfig
    from instantfamily_core.control_image import circle_geometry, draw_circles, draw_skeletons
    from instantfamily_core.face_regions import slot_boxes
    from instantfamily_core.pose import HEAD_POINTS, parse_pose_keypoint
    from train.data import TrainDataset, sample_rng
    from train.manifest import find_shards
    from train.shards import ShardReader

    config = InstantFamilyConfig()
    reader = ShardReader(find_shards([data])[0])
    dataset = TrainDataset(reader, config, resolution, text_dropout=0, face_dropout=0, random_crop=False)
    tallies = {
        "head points visible": [0, 0],
        "circles on top: head points visible": [0, 0],
        "circle pixels visible": [0, 0],
    }
    for index in range(min(samples, len(reader))):
        example = dataset.example(*reader.read(index), sample_rng(0, 0, index))
        if example["masks"] is None:
            continue
        frame = parse_pose_keypoint(example["pose_keypoint"])
        control = (example["control"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
        skeleton = draw_skeletons(frame.bodies(), frame.size)
        centres, radii = circle_geometry(
            example["masks"].centres.numpy(), slot_boxes(example["masks"]), frame.size, config.circle_radius_fraction
        )
        on_top = draw_circles(skeleton.copy(), centres, radii, example["colours"])
        people = [frame.people[p] for p in face_slots(frame, example["order"])]
        for slot, person in enumerate(people):
            for point in HEAD_POINTS:
                if person.body[point, 2] <= 0:
                    continue
                x, y = int(person.body[point, 0] * frame.width), int(person.body[point, 1] * frame.height)
                for name, image in (("head points visible", control), ("circles on top: head points visible", on_top)):
                    tallies[name][0] += int(np.array_equal(image[y, x], skeleton[y, x]))
                    tallies[name][1] += 1
            alone = draw_circles(np.zeros_like(skeleton), centres[slot : slot + 1], radii[slot : slot + 1], [(1, 1, 1)])
            inside = alone.any(axis=2)
            colour = np.array(example["colours"][slot], np.uint8)
            tallies["circle pixels visible"][0] += int(np.all(control[inside] == colour, axis=-1).sum())
            tallies["circle pixels visible"][1] += int(inside.sum())
    return {name: round(hit / total, 4) if total else None for name, (hit, total) in tallies.items()}


def face_slots(frame, order: str) -> list[int]:
    """People of the slots, from the Face Mask node's ``order`` string."""
    from instantfamily_core.face_regions import pose_positions

    positions = pose_positions(frame)
    return [positions[int(v)] for v in order.split(",") if v]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="prepared shards (train.prepare or toyworld.build)")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--resolution", type=int, default=256)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.data, args.samples, args.resolution), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
