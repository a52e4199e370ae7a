"""Face regions per ID slot: sources, margin, left-to-right / explicit order, overlap, count errors."""

import numpy as np
import pytest
import torch

from instantfamily_core.config import InstantFamilyConfig
from instantfamily_core.face_regions import (
    face_masks_from_detections,
    face_masks_from_pose,
    face_masks_from_user_masks,
    preview_face_masks,
    resolve_overlap,
    slot_boxes,
)
from instantfamily_core.identity import DetectedFace
from instantfamily_core.masks import masks_from_boxes
from instantfamily_core.pose import encode_pose_keypoint, parse_pose_keypoint

H, W = 200, 400


def head(cx, cy, ear_px=40.0):
    """Normalised (18, 3) body with only nose, eyes and ears: face box = ear_px wide, 1.25 x tall."""
    body = np.zeros((18, 3))
    half = ear_px / 2
    for index, (dx, dy) in {
        0: (0, 0),
        14: (-0.4 * half, 0),
        15: (0.4 * half, 0),
        16: (-half, 0),
        17: (half, 0),
    }.items():
        body[index] = ((cx + dx) / W, (cy + dy) / H, 1.0)
    return body


def pose_frame(*centres, with_head=True):
    bodies = [head(x, y) for x, y in centres]
    if not with_head:
        for body in bodies:
            body[[0, 14, 15, 16, 17]] = 0
            body[1] = (0.5, 0.5, 1.0)
    return parse_pose_keypoint(encode_pose_keypoint(bodies, W, H))


def detected(x1, y1, x2, y2):
    return DetectedFace(
        box=np.array([x1, y1, x2, y2], np.float32), keypoints=np.zeros((5, 2), np.float32), score=0.9,
        global_feature=np.zeros(512, np.float32), local_feature=np.zeros((512, 7, 7), np.float32),
        image_size=(H, W),
    )  # fmt: skip


def rows_cols(mask):
    rows, cols = torch.nonzero(mask >= 0.5, as_tuple=True)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def test_pose_slots_go_left_to_right_and_the_margin_grows_the_face_box_by_25_percent():
    frame = pose_frame((300, 100), (100, 100))  # given right person first
    face_masks, people = face_masks_from_pose(frame)
    assert people == [1, 0]
    assert face_masks.centres[:, 0].tolist() == pytest.approx([100 / W, 300 / W])
    # face box 40 x 50 px centred at (100, 100): x 80..120, y 75..125; x1.25 -> 50 x 62.5 px
    assert rows_cols(face_masks.masks[0]) == (69, 130, 75, 124)  # pixel centres in y 68.75..131.25
    expected = masks_from_boxes(torch.tensor([[80.0, 75, 120, 125]]), (H, W), 0.25)
    assert torch.equal(face_masks.masks[0], expected.masks[0])
    assert torch.allclose(face_masks.boxes[0], torch.tensor([80 / W, 75 / H, 120 / W, 125 / H]))
    wider, _ = face_masks_from_pose(frame, margin=1.0)
    assert rows_cols(wider.masks[0]) == (50, 149, 60, 139)


def test_explicit_order_and_more_people_than_ids():
    frame = pose_frame((300, 100), (100, 100), (200, 60))  # left to right: people 1, 2, 0
    _, people = face_masks_from_pose(frame, n_ids=3, order="2,0,1")
    assert people == [0, 1, 2]
    _, people = face_masks_from_pose(frame, n_ids=2)
    assert people == [1, 2]  # the rightmost person keeps no ID
    _, people = face_masks_from_pose(frame, order=" 2 , 1 ")
    assert people == [0, 2]


def test_count_mismatch_messages_say_what_to_do():
    frame = pose_frame((100, 100), (300, 100))
    with pytest.raises(ValueError) as error:
        face_masks_from_pose(frame, n_ids=3)
    assert str(error.value) == (
        "3 IDs in the stack but the pose has 2 people: remove an ID or use a pose with 3 people"
    )
    with pytest.raises(ValueError, match="1 ID in the stack but the template image has 0 faces|no face was found"):
        face_masks_from_detections([], (H, W), n_ids=1)
    with pytest.raises(
        ValueError,
        match=r"^3 IDs in the stack but the template image has 2 faces: remove an ID or use a template image with 3 faces$",
    ):
        face_masks_from_detections([detected(0, 0, 10, 10), detected(50, 0, 60, 10)], (H, W), n_ids=3)
    masks = torch.zeros(2, H, W)
    masks[:, :10, :10] = 1
    with pytest.raises(
        ValueError, match=r"^3 IDs in the stack but the mask batch has 2 masks: remove an ID or give one mask per ID$"
    ):
        face_masks_from_user_masks(masks, n_ids=3)
    with pytest.raises(ValueError, match="1 ID in the stack but the mask batch has 2 masks: give one mask per ID"):
        face_masks_from_user_masks(masks, n_ids=1)


def test_zero_people_and_people_without_heads():
    empty = parse_pose_keypoint([{"people": [], "canvas_width": W, "canvas_height": H}])
    with pytest.raises(ValueError, match="the pose has no people"):
        face_masks_from_pose(empty, n_ids=2)
    with pytest.raises(ValueError, match="the pose has no people"):
        face_masks_from_pose(empty)
    none_left, people = face_masks_from_pose(empty, n_ids=0)
    assert len(none_left) == 0 and people == [] and none_left.image_size == (H, W)
    with pytest.raises(ValueError, match="none shows a nose, eye or ear"):
        face_masks_from_pose(pose_frame((100, 100), with_head=False), n_ids=1)


@pytest.mark.parametrize(
    "order, message",
    [
        ("0,5", "position 5 does not exist; the pose has 2 people, numbered 0..1 from left to right"),
        ("1,1", "position 1 is given to more than one ID"),
        ("0", "lists 1 position but the stack has 2 IDs"),
        ("a,b", "write position numbers separated by commas"),
    ],
)
def test_bad_orders(order, message):
    with pytest.raises(ValueError, match=message):
        face_masks_from_pose(pose_frame((100, 100), (300, 100)), n_ids=2, order=order)


def test_detected_faces_left_to_right_with_margin():
    faces = [detected(300, 50, 340, 90), detected(40, 60, 80, 100)]
    face_masks = face_masks_from_detections(faces, (H, W), n_ids=2)
    assert torch.allclose(face_masks.centres, torch.tensor([[60 / W, 80 / H], [320 / W, 70 / H]]))
    assert rows_cols(face_masks.masks[0]) == (55, 104, 35, 84)
    assert len(face_masks_from_detections(faces, (H, W), order="1")) == 1


def test_user_masks_in_batch_order_or_by_order_without_margin():
    masks = torch.zeros(3, H, W)
    masks[0, 10:30, 300:340] = 1
    masks[1, 100:150, 20:60] = 1
    masks[2, 50:60, 150:160] = 1
    face_masks = face_masks_from_user_masks(masks)
    assert face_masks.boxes is None
    assert torch.equal(face_masks.masks, masks)  # batch order, no margin
    picked = face_masks_from_user_masks(masks, n_ids=2, order="2,0")
    assert torch.equal(picked.masks, masks[[2, 0]])
    assert slot_boxes(picked) == pytest.approx(
        np.array([[150 / W, 50 / H, 160 / W, 60 / H], [300 / W, 10 / H, 340 / W, 30 / H]])
    )
    with pytest.raises(ValueError, match="mask 0 is empty"):
        face_masks_from_user_masks(torch.zeros(1, H, W))


def test_nearest_overlap_splits_shared_pixels_between_faces():
    faces = [detected(100, 50, 200, 150), detected(160, 50, 260, 150)]
    both = face_masks_from_detections(faces, (H, W), overlap="both")
    nearest = face_masks_from_detections(faces, (H, W), overlap="nearest")
    assert ((both.masks[0] * both.masks[1]) > 0).sum() > 0
    assert ((nearest.masks[0] * nearest.masks[1]) > 0).sum() == 0
    assert torch.equal(nearest.masks[0] + nearest.masks[1], (both.masks[0] + both.masks[1]).clamp(max=1))
    # the shared strip is cut at the midpoint between the centres (x = 180)
    assert rows_cols(nearest.masks[0])[3] == 179 and rows_cols(nearest.masks[1])[2] == 180
    with pytest.raises(ValueError, match="overlap must be one of"):
        resolve_overlap(both, "first")


def test_preview_tints_each_region_in_its_slot_colour():
    config = InstantFamilyConfig(palette=((255, 0, 0), (0, 0, 255)))
    face_masks = face_masks_from_detections([detected(20, 20, 60, 60), detected(300, 100, 360, 160)], (H, W))
    preview = preview_face_masks(face_masks, config, background=np.full((H // 2, W // 2, 3), 100, np.uint8))
    assert preview.shape == (H, W, 3) and preview.dtype == np.uint8
    assert preview[20, 20].tolist() == [170, 55, 55]  # 0.55 * 100 + 0.45 * (255, 0, 0)
    assert preview[110, 305].tolist() == [55, 55, 170]
    assert preview[190, 200].tolist() == [100, 100, 100]
    text = (preview[30:50, 30:50] == 0).all(axis=-1)  # the slot label's black plate sits at the face centre
    assert text.any()
    assert (preview[30:50, 30:50] == (255, 0, 0)).all(axis=-1).any()  # its number in the slot's colour
