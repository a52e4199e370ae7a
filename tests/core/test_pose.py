"""POSE_KEYPOINT parsing: coordinates, missing points, face boxes from landmarks or head points."""

import json

import numpy as np
import pytest

from instantfamily_core import pose
from instantfamily_core.pose import encode_pose_keypoint, parse_pose_keypoint

W, H = 400, 200


def body_px(cx, cy, head=20.0):
    """A standing person in pixels: nose at (cx, cy); ears `head` px apart; all 18 points present."""
    points = {
        pose.NOSE: (cx, cy), pose.NECK: (cx, cy + head),
        pose.R_EYE: (cx - 0.2 * head, cy - 0.1 * head), pose.L_EYE: (cx + 0.2 * head, cy - 0.1 * head),
        pose.R_EAR: (cx - 0.5 * head, cy), pose.L_EAR: (cx + 0.5 * head, cy),
        2: (cx - head, cy + head), 3: (cx - 1.3 * head, cy + 2 * head), 4: (cx - 1.4 * head, cy + 3 * head),
        5: (cx + head, cy + head), 6: (cx + 1.3 * head, cy + 2 * head), 7: (cx + 1.4 * head, cy + 3 * head),
        8: (cx - 0.5 * head, cy + 3.5 * head), 9: (cx - 0.6 * head, cy + 5 * head), 10: (cx - 0.6 * head, cy + 6.5 * head),
        11: (cx + 0.5 * head, cy + 3.5 * head), 12: (cx + 0.6 * head, cy + 5 * head), 13: (cx + 0.6 * head, cy + 6.5 * head),
    }  # fmt: skip
    body = np.zeros((18, 3))
    for index, (x, y) in points.items():
        body[index] = (x, y, 1.0)
    return body


def normalised(body, width=W, height=H):
    out = body.copy()
    out[:, 0] /= width
    out[:, 1] /= height
    out[body[:, 2] <= 0] = 0
    return out


def test_head_points_give_a_box_centred_on_the_head_with_the_ear_distance_as_width():
    body = body_px(100, 50, head=20)
    frame = parse_pose_keypoint(encode_pose_keypoint([normalised(body)], W, H))
    person = frame.people[0]
    assert person.face_source == "head_points"
    x1, y1, x2, y2 = person.face_box * [W, H, W, H]
    # width = max(1.0 * ears 20, 2.2 * eyes 8, 1.6 * nose-ear 10, 0.9 * nose-neck 20) = 20
    assert x2 - x1 == pytest.approx(20, abs=1e-3)
    assert y2 - y1 == pytest.approx(25, abs=1e-3)  # 1.25 x width
    head_mean = body[list(pose.HEAD_POINTS), :2].mean(axis=0)
    assert ((x1 + x2) / 2, (y1 + y2) / 2) == pytest.approx(tuple(head_mean), abs=1e-3)


def test_profile_head_uses_nose_to_ear_distance():
    body = body_px(100, 50, head=20)
    body[[pose.L_EYE, pose.L_EAR, pose.NECK]] = 0  # right profile: nose, right eye, right ear
    frame = parse_pose_keypoint(encode_pose_keypoint([normalised(body)], W, H))
    x1, _, x2, _ = frame.people[0].face_box * [W, H, W, H]
    assert x2 - x1 == pytest.approx(1.6 * 10, abs=1e-3)


def test_only_shoulders_fall_back_to_shoulder_width_and_no_head_gives_no_box():
    body = body_px(100, 50, head=20)
    body[[pose.R_EYE, pose.L_EYE, pose.R_EAR, pose.L_EAR, pose.NECK]] = 0  # a nose alone has no size
    frame = parse_pose_keypoint(encode_pose_keypoint([normalised(body)], W, H))
    x1, _, x2, _ = frame.people[0].face_box * [W, H, W, H]
    assert x2 - x1 == pytest.approx(0.4 * 40, abs=1e-3)  # shoulders 40 px apart

    body[pose.NOSE] = 0
    frame = parse_pose_keypoint(encode_pose_keypoint([normalised(body)], W, H))
    assert frame.people[0].face_box is None and frame.people[0].face_source == ""


def test_face_landmarks_win_over_head_points_and_ignore_missing_points():
    body = body_px(100, 50, head=20)
    face = np.zeros((68, 3))
    rng = np.random.default_rng(0)
    face[:60, 0] = rng.uniform(300, 340, 60) / W
    face[:60, 1] = rng.uniform(120, 170, 60) / H
    face[:60, 2] = 1.0
    face[60] = (-1 / W, -1 / H, 1.0)  # OpenPose's face detector writes missed peaks as -1
    face[61] = (0.99, 0.99, 0.0)  # zero confidence: missing
    frame = parse_pose_keypoint(encode_pose_keypoint([normalised(body)], W, H, faces=[face])[0])
    person = frame.people[0]
    assert person.face_source == "face_keypoints"
    expected = [face[:60, 0].min(), face[:60, 1].min(), face[:60, 0].max(), face[:60, 1].max()]
    assert person.face_box == pytest.approx(expected, abs=1e-6)


def test_too_few_landmarks_fall_back_to_head_points():
    body = body_px(100, 50, head=20)
    face = np.zeros((68, 3))
    face[:3] = (0.8, 0.8, 1.0)
    frame = parse_pose_keypoint(encode_pose_keypoint([normalised(body)], W, H, faces=[face]))
    assert frame.people[0].face_source == "head_points"


def test_pixel_coordinates_are_detected_and_equal_normalised_ones():
    bodies = [body_px(100, 50), body_px(300, 60, head=30)]
    from_normalised = parse_pose_keypoint(encode_pose_keypoint([normalised(b) for b in bodies], W, H))
    pixel_value = [{
        "people": [{"pose_keypoints_2d": b.reshape(-1).tolist(), "face_keypoints_2d": None} for b in bodies],
        "canvas_width": W, "canvas_height": H,
    }]  # fmt: skip
    from_pixels = parse_pose_keypoint(pixel_value)
    for a, b in zip(from_normalised.people, from_pixels.people):
        np.testing.assert_allclose(a.body, b.body, atol=1e-6)
        np.testing.assert_allclose(a.face_box, b.face_box, atol=1e-6)
    assert from_pixels.people[0].body[pose.NOSE, :2] == pytest.approx([100 / W, 50 / H])


def test_missing_points_are_zero_rows_and_not_visible():
    body = normalised(body_px(100, 50))
    body[[4, 7, 10]] = 0  # wrists and an ankle missing, written as 0, 0, 0
    frame = parse_pose_keypoint(encode_pose_keypoint([body], W, H))
    person = frame.people[0]
    assert not person.visible[[4, 7, 10]].any() and person.visible.sum() == 15
    assert (person.body[[4, 7, 10]] == 0).all()
    assert frame.size == (H, W) and frame.bodies()[0].shape == (18, 3)


def test_zero_people_json_text_and_frame_selection():
    value = [
        {"people": [], "canvas_width": 64, "canvas_height": 32},
        encode_pose_keypoint([normalised(body_px(100, 50))], W, H)[0],
    ]
    assert parse_pose_keypoint(value).people == []
    second = parse_pose_keypoint(json.dumps(value), frame=1)
    assert len(second.people) == 1 and second.size == (H, W)
    with pytest.raises(ValueError, match="has 2 frame"):
        parse_pose_keypoint(value, frame=2)


def test_person_without_body_keypoints_is_kept_without_a_face():
    value = [{"people": [{"pose_keypoints_2d": None}], "canvas_width": 8, "canvas_height": 8}]
    frame = parse_pose_keypoint(value)
    assert len(frame.people) == 1 and frame.people[0].face_box is None


@pytest.mark.parametrize(
    "value, message",
    [
        ([], "empty"),
        ([{"canvas_width": 8, "canvas_height": 8}], "no 'people'"),
        ([{"people": [], "canvas_width": 0, "canvas_height": 8}], "canvas_width"),
        ([{"people": [{"pose_keypoints_2d": [0.5, 0.5, 1.0] * 25}], "canvas_width": 8, "canvas_height": 8}], "BODY_25"),
        ([{"people": [{"pose_keypoints_2d": [0.5, 0.5]}], "canvas_width": 8, "canvas_height": 8}], "triples"),
    ],
)
def test_malformed_values_raise_clear_errors(value, message):
    with pytest.raises(ValueError, match=message):
        parse_pose_keypoint(value)
