"""DWPose on ONNX Runtime: decoding of the real files' outputs, checked on tiny stand-ins."""

import json

import numpy as np
import pytest
from dwpose_fixtures import POSE_SIZE, build_dwpose_folder, export_standin_pose, standin_layout

from instantfamily_core.dwpose import (
    DWPoseEstimator,
    box_to_centre_scale,
    decode_yolox,
    person_boxes_from_faces,
    to_openpose,
)
from instantfamily_core.pose import parse_pose_keypoint


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_dwpose_folder(str(tmp_path_factory.mktemp("dwpose")), boxes=((240, 120, 400, 600), (32, 64, 160, 320)))


def test_detector_finds_the_standin_people_in_source_pixels(folder):
    estimator = DWPoseEstimator.from_folder(folder, provider="CPU")
    bright = np.full((640, 640, 3), 255, np.uint8)
    boxes = estimator.people(bright)
    order = np.argsort(boxes[:, 0])
    np.testing.assert_allclose(boxes[order, :4], [[32, 64, 160, 320], [240, 120, 400, 600]], atol=1e-3)
    # A 1280x1280 image is letterboxed at ratio 0.5: the same people at twice the coordinates.
    big = estimator.people(np.full((1280, 1280, 3), 255, np.uint8))
    np.testing.assert_allclose(np.sort(big[:, 0]), [64, 480], atol=1e-2)
    assert len(estimator.people(np.full((640, 640, 3), 20, np.uint8))) == 0  # dark: nobody


@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16 export"])
def test_keypoints_land_where_the_simcc_peaks_point(tmp_path, folder, half):
    layout = standin_layout()
    layout[0] = (POSE_SIZE[1] / 2, POSE_SIZE[0] / 2)  # nose at the crop centre -> the box centre
    layout[1] = (0, 0)  # left eye at the crop's top-left corner
    export_standin_pose(str(tmp_path / "pose.onnx"), layout, half=half)
    estimator = DWPoseEstimator(f"{folder}/yolox_l.onnx", tmp_path / "pose.onnx", provider="CPU")
    box = np.array([100, 50, 200, 450], np.float32)  # 100 x 400: the 1.25x box is widened to 3:4
    result = estimator(np.zeros((500, 400, 3), np.uint8), boxes=box[None])
    points = result.points[0]
    np.testing.assert_allclose(points[0, :2], [150, 250], atol=1e-3)  # nose (OpenPose 0)
    width, height = 400 * 1.25 * 0.75, 400 * 1.25
    np.testing.assert_allclose(points[15, :2], [150 - width / 2, 250 - height / 2], atol=1e-3)  # left eye -> 15
    np.testing.assert_allclose(points[:, 2], 0.9, atol=1e-3)
    assert box_to_centre_scale(box, 0.75)[1].tolist() == pytest.approx([width, height])


def test_wholebody_order_matches_openpose():
    keypoints = np.arange(133 * 2, dtype=np.float32).reshape(1, 133, 2)
    scores = np.full((1, 133), 0.9, np.float32)
    scores[0, 5] = 0.1  # left shoulder missing: no neck
    out = to_openpose(keypoints, scores)[0]
    assert out.shape == (134, 3)
    np.testing.assert_array_equal(out[2, :2], keypoints[0, 6])  # right shoulder
    np.testing.assert_array_equal(out[5, :2], keypoints[0, 5])  # left shoulder
    np.testing.assert_array_equal(out[14, :2], keypoints[0, 2])  # right eye
    np.testing.assert_array_equal(out[6, :2], keypoints[0, 7])  # left elbow
    np.testing.assert_array_equal(out[11, :2], keypoints[0, 11])  # left hip
    np.testing.assert_array_equal(out[1, :2], keypoints[0, [5, 6]].mean(0))
    assert out[1, 2] == pytest.approx(0.1)
    np.testing.assert_array_equal(out[24:92, :2], keypoints[0, 23:91])  # face after the 6 feet points
    np.testing.assert_array_equal(out[92:113, :2], keypoints[0, 91:112])  # left hand


def test_pose_keypoint_is_what_the_pack_parses(folder):
    estimator = DWPoseEstimator.from_folder(folder, provider="CPU")
    result = estimator(np.full((640, 640, 3), 255, np.uint8))
    frame_json = json.dumps(result.pose_keypoint())
    frame = parse_pose_keypoint(frame_json)
    assert (frame.width, frame.height) == (640, 640) and len(frame.people) == 2
    person = json.loads(frame_json)[0]["people"][0]
    assert len(person["pose_keypoints_2d"]) == 54 and len(person["face_keypoints_2d"]) == 204
    assert len(person["hand_left_keypoints_2d"]) == 63 and len(person["hand_right_keypoints_2d"]) == 63
    assert all(p.face_source == "face_keypoints" for p in frame.people)
    assert all(0 <= v <= 1 for p in frame.people for v in p.body[:, :2].ravel())


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="yolox_l.onnx"):
        DWPoseEstimator.from_folder(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        DWPoseEstimator.from_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="anchors"):
        decode_yolox(np.zeros((1, 10, 85), np.float32), (640, 640), 1.0)


def test_person_boxes_from_faces_stand_below_the_face_and_stay_in_the_image():
    boxes = person_boxes_from_faces(np.array([[100, 50, 140, 100], [0, 0, 20, 20]]), 400, 300)
    x1, y1, x2, y2 = boxes[0]
    assert (x1 + x2) / 2 == pytest.approx(120) and x2 - x1 == pytest.approx(3.5 * 40)
    assert y1 == pytest.approx(50 - 0.3 * 50) and y2 == pytest.approx(300)  # the body runs out of the image
    assert boxes[1].tolist() == pytest.approx([0, 0, 45, 150])
