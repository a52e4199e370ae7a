"""The Pose + Circle control image: pixel checks of circles, palette slots and skeletons."""

import numpy as np
import pytest

from instantfamily_core.config import InstantFamilyConfig
from instantfamily_core.control_image import (
    MIN_RADIUS_PX,
    circle_geometry,
    draw_control_image,
    draw_skeletons,
    openpose_drawing,
)
from instantfamily_core.face_regions import control_image_for_slots, face_masks_from_pose, slot_boxes
from instantfamily_core.pose import encode_pose_keypoint, parse_pose_keypoint

H, W = 192, 320
# Colours that OpenPose never draws, so a pixel of one of them can only be a circle.
PALETTE = ((250, 250, 250), (3, 3, 250), (250, 3, 3), (3, 250, 3))


def config(**kw):
    return InstantFamilyConfig(palette=PALETTE, **kw)


def standing(cx, cy, head=0.05):
    """Normalised (18, 3) body with the nose at (cx, cy); all points present."""
    offsets = [
        (0, 0), (0, 1), (-1, 1), (-1.3, 2), (-1.4, 3), (1, 1), (1.3, 2), (1.4, 3), (-0.5, 3.5),
        (-0.6, 5), (-0.6, 6.5), (0.5, 3.5), (0.6, 5), (0.6, 6.5), (-0.2, -0.1), (0.2, -0.1), (-0.5, 0), (0.5, 0),
    ]  # fmt: skip
    body = np.ones((18, 3))
    body[:, 0] = cx + np.array([o[0] for o in offsets]) * head * H / W
    body[:, 1] = cy + np.array([o[1] for o in offsets]) * head
    return body


def colour_pixels(image, colour):
    return np.all(image == np.array(colour, np.uint8), axis=-1)


def test_circle_centres_radii_and_colours_match_face_boxes_and_slots():
    boxes = np.array([[0.10, 0.20, 0.25, 0.45], [0.60, 0.30, 0.70, 0.50], [0.40, 0.70, 0.46, 0.80]])
    cfg = config(circle_radius_fraction=0.3)
    image = draw_control_image((H, W), cfg, face_boxes=boxes)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    for slot, box in enumerate(boxes):
        on = colour_pixels(image, PALETTE[slot])
        rows, cols = np.nonzero(on)
        centre = ((box[0] + box[2]) / 2 * W, (box[1] + box[3]) / 2 * H)
        # pixel i spans [i, i+1): the mean of pixel centres equals the continuous centre
        assert cols.mean() + 0.5 == pytest.approx(centre[0], abs=0.35)
        assert rows.mean() + 0.5 == pytest.approx(centre[1], abs=0.35)
        radius = 0.3 * max((box[2] - box[0]) * W, (box[3] - box[1]) * H)
        assert on.sum() == pytest.approx(np.pi * radius**2, rel=0.06)
        assert (cols.max() - cols.min() + 1) == pytest.approx(2 * radius, abs=1.5)
    assert colour_pixels(image, PALETTE[3]).sum() == 0  # no fourth slot, no fourth colour
    assert np.count_nonzero(image.any(axis=-1)) == sum(colour_pixels(image, c).sum() for c in PALETTE[:3])


def test_explicit_centres_radius_floor_and_no_colour_repeat():
    boxes = np.tile([[0.5, 0.5, 0.5, 0.5]], (5, 1))  # degenerate boxes: the radius floor applies
    centres = np.array([[0.1, 0.1], [0.3, 0.1], [0.5, 0.1], [0.7, 0.1], [0.9, 0.9]])
    _, radii = circle_geometry(centres, boxes, (H, W), 0.25)
    assert (radii == MIN_RADIUS_PX).all()
    with pytest.raises(ValueError, match="5 ID slots but this checkpoint's palette has 4 circle colours"):
        draw_control_image((H, W), config(), face_boxes=boxes, face_centres=centres)  # never a repeated colour
    image = draw_control_image((H, W), config(), face_boxes=boxes[:4], face_centres=centres[:4])
    assert image[int(0.1 * H), int(0.1 * W)].tolist() == list(PALETTE[0])
    assert image[int(0.1 * H), int(0.7 * W)].tolist() == list(PALETTE[3])


def test_skeletons_are_controlnet_aux_openpose_drawings():
    BodyResult, Keypoint, PoseResult, draw_poses = openpose_drawing()  # controlnet_aux's own types
    body = standing(0.5, 0.2)
    wrist = (int(body[4, 0] * W), int(body[4, 1] * H))
    elbow = (int(body[3, 0] * W), int(body[3, 1] * H))
    body[4] = 0  # a missing wrist: neither its dot nor its limb is drawn
    keypoints = [Keypoint(x, y) if c > 0 else None for x, y, c in body]
    expected = draw_poses([PoseResult(BodyResult(keypoints, 0.0, 0), None, None, None)], H, W, True, False, False)
    drawn = draw_skeletons([body], (H, W))
    np.testing.assert_array_equal(drawn, expected)
    assert drawn[elbow[1], elbow[0]].tolist() == [255, 255, 0]  # OpenPose's colour of keypoint 3
    assert drawn[wrist[1] - 1 : wrist[1] + 2, wrist[0] - 1 : wrist[0] + 2].sum() == 0
    assert draw_skeletons([], (H, W)).sum() == 0


def test_all_people_get_skeletons_and_only_id_slots_get_circles():
    bodies = [standing(0.8, 0.2, 0.1), standing(0.2, 0.2, 0.1), standing(0.5, 0.25, 0.1)]
    frame = parse_pose_keypoint(encode_pose_keypoint(bodies, W, H))
    face_masks, people = face_masks_from_pose(frame, n_ids=2)
    assert people == [1, 2]  # the two leftmost people take the two IDs
    cfg = config()
    image = control_image_for_slots(face_masks, cfg, frame.size, bodies=frame.bodies())
    skeletons = draw_skeletons(frame.bodies(), frame.size)
    circles = colour_pixels(image, PALETTE[0]) | colour_pixels(image, PALETTE[1])
    # outside the circles the image is exactly the skeleton drawing of all three people
    np.testing.assert_array_equal(image[~circles], skeletons[~circles])
    assert (image[circles] == skeletons[circles]).all(axis=-1).mean() < 0.5
    alone = draw_control_image(
        frame.size, cfg, face_boxes=slot_boxes(face_masks), face_centres=face_masks.centres.numpy()
    )  # the circles without skeletons
    for person, slot in ((1, 0), (2, 1)):
        centre = face_masks.centres[slot].numpy() * [W, H]
        rows, cols = np.nonzero(colour_pixels(alone, PALETTE[slot]))
        assert (cols.mean() + 0.5, rows.mean() + 0.5) == pytest.approx(tuple(centre), abs=0.5)
        assert frame.people[person].face_centre * [W, H] == pytest.approx(centre, abs=1e-3)
        # only the head keypoint discs are drawn over the circle (a 12 px circle here: a fifth stays visible)
        visible = colour_pixels(image, PALETTE[slot]).sum() / colour_pixels(alone, PALETTE[slot]).sum()
        assert 0.1 < visible < 1
    for body in bodies:  # nose, eyes and ears stay visible: the pixel of each is the skeleton's, not a circle's
        for point in (0, 14, 15, 16, 17):
            x, y = int(body[point, 0] * W), int(body[point, 1] * H)
            assert image[y, x].tolist() == skeletons[y, x].tolist() and skeletons[y, x].any(), point
    # the person without an ID: skeleton pixels present at its hips, no circle colour anywhere near its head
    x, y = int(0.8 * W), int(0.2 * H)
    assert not circles[y - 15 : y + 15, x - 15 : x + 15].any()
    assert skeletons[int(0.2 * H + 3.5 * 0.1 * H) - 3 :, x - 20 : x + 20].any()
    assert colour_pixels(image, PALETTE[2]).sum() == 0


def test_circles_on_an_existing_pose_image_and_determinism():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, size=(H, W, 3), dtype=np.uint8)
    boxes = np.array([[0.2, 0.2, 0.3, 0.4]])
    first = draw_control_image((H, W), config(), face_boxes=boxes, base=base)
    second = draw_control_image((H, W), config(), face_boxes=boxes, base=base)
    np.testing.assert_array_equal(first, second)
    circle = colour_pixels(first, PALETTE[0])
    assert circle.sum() > 50
    np.testing.assert_array_equal(first[~circle], base[~circle])
    assert base.max() < 250  # the base was not drawn on in place
    with pytest.raises(ValueError, match="pose image is"):
        draw_control_image((H + 1, W), config(), face_boxes=boxes, base=base)
    with pytest.raises(ValueError, match="not both"):
        draw_control_image((H, W), config(), bodies=[standing(0.5, 0.5)], base=base)
