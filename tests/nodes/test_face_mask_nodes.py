"""Face Mask and Pose + Circle Image nodes on a real ComfyUI host."""

import numpy as np
import pytest
import torch
from PIL import Image

H, W = 96, 160
RED, BLUE = (250, 3, 3), (3, 3, 250)  # colours OpenPose never draws


class FakeModel:
    """Stands in for a loaded INSTANTFAMILY_MODEL: the nodes read only its config."""

    def __init__(self, config):
        self.config = config


def head(cx, cy, ear_px=20.0):
    """Normalised (18, 3) body: nose, eyes, ears around (cx, cy) px, a neck below; face box 20 x 25 px."""
    body = np.zeros((18, 3))
    for index, (dx, dy) in {0: (0, 0), 14: (-4, -2), 15: (4, -2), 16: (-10, 0), 17: (10, 0), 1: (0, 18)}.items():
        body[index] = ((cx + dx) / W, (cy + dy) / H, 1.0)
    return body


def faces(pack, n):
    rng = np.random.default_rng(n)
    return pack.identity.Faces([
        pack.identity.Identity(rng.normal(size=8).astype(np.float32), rng.normal(size=(4, 2, 2)).astype(np.float32))
        for _ in range(n)
    ])  # fmt: skip


def colour_centroid(image, colour):
    """(x, y) continuous pixel centroid of the pixels of exactly ``colour`` in a ComfyUI IMAGE."""
    array = (image[0].numpy() * 255).round().astype(np.uint8)
    rows, cols = np.nonzero(np.all(array == np.array(colour, np.uint8), axis=-1))
    assert rows.size > 0, f"no pixel of colour {colour}"
    return cols.mean() + 0.5, rows.mean() + 0.5


def test_nodes_are_registered_with_categories_and_types(comfy_host):
    face_mask = comfy_host.node_class("InstantFamilyFaceMask")
    circles = comfy_host.node_class("InstantFamilyPoseCircleImage")
    assert face_mask.RETURN_TYPES == ("INSTANTFAMILY_FACE_MASKS", "IMAGE")
    assert face_mask.CATEGORY == "InstantFamily/masks" and circles.CATEGORY == "InstantFamily/control"
    optional = face_mask.INPUT_TYPES()["optional"]
    assert optional["pose_keypoint"][0] == "POSE_KEYPOINT" and optional["analyzer"][0] == "INSTANTFAMILY_ANALYZER"
    assert circles.RETURN_TYPES == ("IMAGE",)


def test_pose_to_face_masks_to_control_image(comfy_host, pack):
    pose_value = pack.pose.encode_pose_keypoint([head(120, 30), head(40, 40), head(80, 35)], W, H)
    config = pack.config.InstantFamilyConfig(palette=(RED, BLUE), circle_radius_fraction=0.25)
    model = FakeModel(config)
    node = comfy_host.node_class("InstantFamilyFaceMask")()
    face_masks, preview = node.build(
        0.25, "", "both", faces=faces(pack, 2), pose_keypoint=pose_value, instantfamily=model
    )
    assert isinstance(face_masks, pack.masks.FaceMasks) and len(face_masks) == 2
    assert face_masks.centres[:, 0].tolist() == pytest.approx([40 / W, 80 / W], abs=1e-6)  # left to right
    assert preview.shape == (1, H, W, 3) and 0 <= float(preview.min()) and float(preview.max()) <= 1

    (image,) = comfy_host.node_class("InstantFamilyPoseCircleImage")().draw(
        pose_keypoint=pose_value, face_masks=face_masks, instantfamily=model
    )
    assert image.shape == (1, H, W, 3) and image.dtype == torch.float32
    for slot, (colour, x) in enumerate(((RED, 40), (BLUE, 80))):
        cx, cy = colour_centroid(image, colour)  # the head keypoints drawn over the circle move its centroid a little
        assert (cx, cy) == pytest.approx((x, face_masks.centres[slot, 1].item() * H), abs=1.5)
    # the third person (x = 120) has its skeleton but no circle
    array = (image[0].numpy() * 255).round().astype(np.uint8)
    assert array[25:60, 110:130].any()
    assert not np.all(array[15:45, 105:135] == np.array(RED, np.uint8), axis=-1).any()
    assert not np.all(array[15:45, 105:135] == np.array(BLUE, np.uint8), axis=-1).any()


def test_count_mismatch_and_source_errors(comfy_host, pack):
    node = comfy_host.node_class("InstantFamilyFaceMask")()
    pose_value = pack.pose.encode_pose_keypoint([head(40, 40), head(120, 40)], W, H)
    with pytest.raises(
        ValueError, match="3 IDs in the stack but the pose has 2 people: remove an ID or use a pose with 3 people"
    ):
        node.build(0.25, "", "both", faces=faces(pack, 3), pose_keypoint=pose_value)
    empty = [{"people": [], "canvas_width": W, "canvas_height": H}]
    with pytest.raises(ValueError, match="the pose has no people"):
        node.build(0.25, "", "both", faces=faces(pack, 1), pose_keypoint=empty)
    with pytest.raises(ValueError, match="connect exactly one of"):
        node.build(0.25, "", "both")
    with pytest.raises(ValueError, match="needs an 'analyzer'"):
        node.build(0.25, "", "both", template=torch.zeros(1, H, W, 3))
    circles = comfy_host.node_class("InstantFamilyPoseCircleImage")()
    with pytest.raises(ValueError, match="connect 'face_masks'"):
        circles.draw(pose_image=torch.zeros(1, H, W, 3))


def test_default_palette_when_no_model_is_connected(comfy_host, pack):
    pose_value = pack.pose.encode_pose_keypoint([head(50, 40)], W, H)
    (image,) = comfy_host.node_class("InstantFamilyPoseCircleImage")().draw(pose_keypoint=pose_value)
    default = pack.config.InstantFamilyConfig()
    cx, cy = colour_centroid(image, default.palette_colour(0))
    assert cx == pytest.approx(50, abs=0.5)


def test_prompt_with_a_drawn_mask_and_an_existing_pose_image(comfy_host, pack):
    """Stock LoadImageMask + EmptyImage -> Face Mask -> Pose + Circle Image -> PreviewImage, run by ComfyUI."""
    canvas = np.zeros((H, W, 3), np.uint8)
    canvas[20:50, 100:130, 0] = 255  # the drawn face region, in the red channel
    Image.fromarray(canvas).save(comfy_host.session_dir / "input" / "face_region.png")
    prompt = {
        "1": {"class_type": "LoadImageMask", "inputs": {"image": "face_region.png", "channel": "red"}},
        "2": {
            "class_type": "InstantFamilyFaceMask",
            "inputs": {"margin": 0.25, "order": "", "overlap": "both", "masks": ["1", 0]},
        },
        "3": {"class_type": "EmptyImage", "inputs": {"width": W, "height": H, "batch_size": 1, "color": 0}},
        "4": {"class_type": "InstantFamilyPoseCircleImage", "inputs": {"pose_image": ["3", 0], "face_masks": ["2", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},
    }
    outputs = comfy_host.run_prompt(prompt)
    face_masks = outputs["2"][0]
    assert len(face_masks) == 1 and face_masks.boxes is None
    assert torch.equal(face_masks.masks[0] > 0.5, torch.from_numpy(canvas[..., 0] > 0))
    image = outputs["4"][0]
    assert image.shape == (1, H, W, 3)
    cx, cy = colour_centroid(image, pack.config.InstantFamilyConfig().palette_colour(0))
    assert (cx, cy) == pytest.approx((115, 35), abs=0.5)
    # radius = 0.25 * 30 px: the circle covers about pi * 7.5^2 pixels
    array = (image[0].numpy() * 255).round().astype(np.uint8)
    assert np.count_nonzero(array.any(axis=-1)) == pytest.approx(np.pi * 7.5**2, rel=0.08)


class BoxAnalyzer:
    """A face analyzer with fixed detections: ``analyze_faces`` calls ``analyzer.analyze(image)``."""

    def __init__(self, pack, boxes):
        self.pack, self.boxes, self.seen = pack, boxes, []

    def analyze(self, image):
        self.seen.append(np.asarray(image))
        return [
            self.pack.identity.DetectedFace(
                box=np.array(box, np.float32), keypoints=np.zeros((5, 2), np.float32), score=0.9,
                global_feature=np.zeros(8, np.float32), local_feature=np.zeros((4, 2, 2), np.float32),
            )
            for box in self.boxes
        ]  # fmt: skip


def test_template_faces_through_the_analyzer_with_order_and_nearest_overlap(comfy_host, pack):
    analyzer = BoxAnalyzer(pack, [[100, 20, 140, 60], [20, 30, 60, 70], [50, 30, 90, 70]])  # detector order
    template = torch.full((1, H, W, 3), 0.5)
    node = comfy_host.node_class("InstantFamilyFaceMask")()
    face_masks, preview = node.build(0.25, "2,0", "nearest", faces=faces(pack, 2), template=template, analyzer=analyzer)
    seen = analyzer.seen[0]
    assert seen.shape == (H, W, 3) and seen.dtype == np.uint8 and int(seen[0, 0, 0]) == 128
    # positions left to right: 0 = box x 20..60, 1 = x 50..90, 2 = x 100..140; order "2,0"
    assert face_masks.centres[:, 0].tolist() == pytest.approx([120 / W, 40 / W])
    rows, cols = torch.nonzero(face_masks.masks[1] > 0.5, as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (25, 74, 15, 64)  # 25% margin
    assert preview.shape == (1, H, W, 3)
    assert float(preview[0, 0, 0, 0]) == pytest.approx(128 / 255, abs=1e-6)  # the template shows through
    with pytest.raises(ValueError, match="order '2,0' lists 2 positions but the stack has 3 IDs"):
        node.build(0.25, "2,0", "both", faces=faces(pack, 3), template=template, analyzer=analyzer)
    nearest, _ = node.build(0.25, "", "nearest", template=template, analyzer=analyzer)
    both, _ = node.build(0.25, "", "both", template=template, analyzer=analyzer)
    assert len(both) == 3 and ((both.masks[0] * both.masks[1]) > 0).any()
    assert not ((nearest.masks[0] * nearest.masks[1]) > 0).any()


def test_a_training_sample_through_the_nodes_gives_the_masks_and_circles_the_trainer_used(comfy_host, pack):
    """The trainer's example for one toy-world sample, replayed through Face Mask and Pose + Circle Image
    with that sample's POSE_KEYPOINT and order: the same slot masks and the same control image, bit for bit.
    The trainer draws each sample's circle colours at random (every palette colour gets trained); the node
    draws slot n in palette[n], so the replay's palette starts with the sample's colours."""
    import torch.nn.functional as F

    from instantfamily_core.config import InstantFamilyConfig
    from instantfamily_core.identity import DetectedFace
    from toyworld import data, world
    from train.data import TrainDataset, sample_rng

    rng = np.random.default_rng(3)
    scene = world.make_scene([11, 22, 33, 44, 55], rng)
    people = [data.person_dict(p) for p in scene.people]
    detected = [
        DetectedFace(
            box=np.asarray(p["face_box"], np.float32) * 8,
            keypoints=np.zeros((5, 2), np.float32),
            score=1.0,
            global_feature=rng.normal(size=8).astype(np.float32),
            local_feature=rng.normal(size=(8, 2, 2)).astype(np.float32),
        )
        for p in people
    ]
    members = data.shard_members(scene.image, scene.caption, people, detected)
    config = InstantFamilyConfig(d_gf=8, d_lf=8, L=2)
    dataset = TrainDataset(None, config, 256, max_faces=4, text_dropout=0, face_dropout=0, random_crop=False)
    mask_node = comfy_host.node_class("InstantFamilyFaceMask")()
    circle_node = comfy_host.node_class("InstantFamilyPoseCircleImage")()
    orders = set()
    for index in range(3):
        example = dataset.example("sample", members, sample_rng(0, 0, index))
        assert example["region_source"] == "pose" and len(example["face_order"]) == 4
        orders.add(example["order"])
        colours = list(example["colours"])
        palette = tuple(colours) + tuple(c for c in config.palette if c not in colours)
        model = FakeModel(pack.config.InstantFamilyConfig(palette=palette, mask_margin=config.mask_margin))
        face_masks, _ = mask_node.build(
            config.mask_margin,
            example["order"],
            "both",
            faces=faces(pack, 4),
            pose_keypoint=example["pose_keypoint"],
            instantfamily=model,
        )
        pooled = F.avg_pool2d(face_masks.masks[:, None], 8)[:, 0]  # the trainer keeps latent-resolution masks
        assert torch.equal(pooled, example["masks"].masks)
        assert torch.equal(face_masks.centres, example["masks"].centres)
        (image,) = circle_node.draw(pose_keypoint=example["pose_keypoint"], face_masks=face_masks, instantfamily=model)
        assert torch.equal(image[0].permute(2, 0, 1), example["control"])
    assert len(orders) > 1  # different draws put different people in the slots


def test_more_ids_than_trained_are_noted_and_more_than_colours_refused(comfy_host, pack, caplog):
    bodies = [head(16 + 32 * i, 40) for i in range(5)]
    pose_value = pack.pose.encode_pose_keypoint(bodies, W, H)
    node = comfy_host.node_class("InstantFamilyFaceMask")()
    model = FakeModel(pack.config.InstantFamilyConfig(max_ids_trained=4))
    with caplog.at_level("WARNING"):
        face_masks, preview = node.build(
            0.25, "", "both", faces=faces(pack, 5), pose_keypoint=pose_value, instantfamily=model
        )
    assert "5 IDs: this checkpoint was trained with at most 4 per image (works, not trained)" in caplog.text
    band = (preview[0, -6:].numpy() * 255).round()
    assert band.max() > 100 and (band == 0).mean() > 0.5  # the note: light text on a black band
    _, quiet = node.build(0.25, "", "both", faces=faces(pack, 4), pose_keypoint=pose_value, instantfamily=model)
    assert not torch.equal(quiet[0, -6:], preview[0, -6:])
    legacy = FakeModel(pack.config.InstantFamilyConfig.from_dict({"max_ids_trained": 4}))  # no colour_rule recorded
    assert legacy.config.colour_rule == "by_slot"
    assert "circle colours its ControlNet never saw" in legacy.config.untrained_note(5)
    few = FakeModel(pack.config.InstantFamilyConfig(palette=((250, 3, 3), (3, 3, 250), (3, 250, 3), (250, 250, 3))))
    with pytest.raises(ValueError, match="5 ID slots but this checkpoint's palette has 4 circle colours"):
        node.build(0.25, "", "both", faces=faces(pack, 5), pose_keypoint=pose_value, instantfamily=few)
