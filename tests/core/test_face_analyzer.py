"""Detection + one-pass features through the real insightface SCRFD code and onnxruntime, with the
tiny exported pack: positions, retries at smaller sizes, odd image formats, edges, huge images."""

import logging

import cv2
import numpy as np
import pytest

from instantfamily_core.faces.pipeline import load_faces
from instantfamily_dev.face_fixtures import TOY_BOX_HALF, TOY_KEYPOINTS, disc_image


def centres_of(faces):
    return sorted(((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2) for f in faces)


def test_detector_is_insightface_scrfd(tiny_analyzer):
    # insightface 2.x names its SCRFD class SCRFD; 0.7.x routes the same model to an SCRFD-style "RetinaFace"
    assert type(tiny_analyzer.detector).__name__ in ("SCRFD", "RetinaFace")
    assert type(tiny_analyzer.detector).__module__.startswith("insightface.model_zoo")
    assert tiny_analyzer.det_size == 640 and tiny_analyzer.providers == ("CPUExecutionProvider",)


def test_discs_are_found_with_box_keypoints_and_features(tiny_analyzer):
    faces = tiny_analyzer.analyze(disc_image(centres=((160, 320), (480, 224))))
    assert len(faces) == 2
    for face, (cx, cy) in zip(sorted(faces, key=lambda f: f.box[0]), ((160, 320), (480, 224))):
        np.testing.assert_allclose(
            face.box, [cx - TOY_BOX_HALF, cy - TOY_BOX_HALF, cx + TOY_BOX_HALF, cy + TOY_BOX_HALF], atol=1e-3
        )
        np.testing.assert_allclose(face.keypoints, np.array(TOY_KEYPOINTS) * 32 + (cx, cy), atol=1e-3)
        assert face.score > 0.9 and face.image_size == (640, 640)
        assert face.global_feature.shape == (512,) and face.local_feature.shape == (512, 7, 7)
        assert face.crop.shape == (112, 112, 3) and face.crop.dtype == np.uint8
    assert not np.allclose(faces[0].global_feature, faces[1].global_feature)


def test_no_face_at_640_retries_smaller_sizes(tiny_analyzer, caplog):
    image = disc_image(centres=((320, 320),), radius=50)  # too large for the toy detector at 640
    boxes, _, _ = tiny_analyzer.detect(image)
    assert len(boxes) == 1  # detect() alone also retries
    with caplog.at_level(logging.INFO):
        faces = tiny_analyzer.analyze(image)
    assert len(faces) == 1 and "faces found at detection size 384" in caplog.text
    np.testing.assert_allclose(centres_of(faces)[0], (320, 320), atol=1.0)


def test_no_face_error_names_the_image_and_the_fix(tiny_analyzer):
    images = [disc_image(), np.zeros((300, 400, 3), np.uint8)]
    with pytest.raises(ValueError) as error:
        load_faces(tiny_analyzer, images)
    message = str(error.value)
    assert message.startswith("no face found in image 1 (400x300 px)")
    assert "640, 512, 384, 256" in message and "crop the image tighter" in message and "larger" in message


@pytest.mark.parametrize("kind", ["gray", "gray1", "rgba", "uint16", "float"])
def test_odd_formats_give_the_same_faces(tiny_analyzer, kind):
    rgb = disc_image(centres=((160, 320), (480, 320)))
    variants = {
        "gray": rgb[:, :, 0],
        "gray1": rgb[:, :, :1],
        "rgba": np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1),
        "uint16": rgb.astype(np.uint16) * 257,
        "float": rgb.astype(np.float32) / 255.0,
    }
    expected = tiny_analyzer.analyze(rgb)
    got = tiny_analyzer.analyze(variants[kind])
    assert len(got) == len(expected) == 2
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.box, b.box)
        np.testing.assert_allclose(a.global_feature, b.global_feature, atol=1e-5)


def test_face_at_the_edge_is_clipped_to_the_image(tiny_analyzer):
    faces = tiny_analyzer.analyze(disc_image(centres=((32, 320),)))
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, [0, 240, 32 + TOY_BOX_HALF, 400], atol=1e-3)
    assert faces[0].keypoints[0, 0] < faces[0].keypoints[1, 0]  # keypoints stay where the detector put them


def test_huge_image_is_downscaled_for_detection_and_mapped_back(tiny_analyzer):
    huge = np.zeros((5120, 5120, 3), np.uint8)
    cv2.circle(huge, (2560, 2560), 160, (220, 220, 220), -1)  # ~20 px at the detector's scale (x0.125)
    faces = tiny_analyzer.analyze(huge)
    assert len(faces) == 1 and faces[0].image_size == (5120, 5120)
    half = TOY_BOX_HALF / 0.125
    np.testing.assert_allclose(faces[0].box, [2560 - half, 2560 - half, 2560 + half, 2560 + half], atol=1.0)


def test_detector_sessions_of_every_size_have_spinning_off(tiny_analyzer):
    from instantfamily_core.faces.providers import spinning_disabled

    tiny_analyzer.analyze(disc_image(centres=((320, 320),), radius=50))  # uses sizes 640, 512, 384
    sessions = getattr(tiny_analyzer.detector, "resolution_sessions", {}) or {"main": tiny_analyzer.detector.session}
    assert sessions and all(spinning_disabled(s) for s in sessions.values())
