"""Identity slots from detected faces: modes, order, indices, averaging, appending, preview."""

import numpy as np
import pytest

from instantfamily_core.config import InstantFamilyConfig, RecognizerInfo
from instantfamily_core.faces.grouping import append_faces, build_faces, choose_faces, parse_indices
from instantfamily_core.faces.pipeline import load_faces
from instantfamily_core.identity import DetectedFace
from instantfamily_dev.face_fixtures import disc_image

INFO = RecognizerInfo(pack="p", file_name="r.onnx", sha256="a" * 64)


def face(x, y, size, image=0, seed=0):
    rng = np.random.default_rng(seed)
    return DetectedFace(
        box=np.array([x, y, x + size, y + size], np.float32),
        keypoints=np.zeros((5, 2), np.float32),
        score=0.9,
        global_feature=rng.normal(size=512).astype(np.float32) * (seed + 1),
        local_feature=rng.normal(size=(512, 7, 7)).astype(np.float32),
        image_index=image,
        crop=np.full((112, 112, 3), seed, np.uint8),
    )


def test_largest_face_per_image():
    per_image = [[face(0, 0, 10, 0, 1), face(50, 0, 30, 0, 2)], [face(5, 5, 40, 1, 3), face(90, 0, 20, 1, 4)]]
    chosen = choose_faces(per_image, "largest face per image")
    assert [f.area for f in chosen] == [900, 1600] and [f.image_index for f in chosen] == [0, 1]


def test_every_face_left_to_right_or_by_size_across_images():
    a, b, c = face(200, 0, 10, 0, 1), face(0, 0, 20, 0, 2), face(100, 50, 30, 0, 3)
    d = face(0, 0, 5, 1, 4)
    per_image = [[a, b, c], [d]]
    assert choose_faces(per_image, "every face") == [b, c, a, d]
    assert choose_faces(per_image, "every face", "largest first") == [c, b, a, d]
    assert choose_faces(per_image, "every face", indices="3, 0,2") == [d, b, a]


def test_indices_errors_name_the_problem():
    per_image = [[face(0, 0, 10), face(20, 0, 10)]]
    with pytest.raises(ValueError, match=r"face indices \[5\] do not exist: 2 face\(s\) were found, numbered 0 to 1"):
        choose_faces(per_image, "every face", indices="0,5")
    with pytest.raises(ValueError, match="'x' is not a face number"):
        parse_indices("0,x")
    assert parse_indices(" ") == [] and parse_indices("2;1") == [2, 1]
    with pytest.raises(ValueError, match="face 0 is listed twice"):
        parse_indices("0,0")
    with pytest.raises(ValueError, match="face mode must be one of"):
        choose_faces(per_image, "all")


def test_separate_average_and_normalized_average():
    faces = [face(0, 0, 10, i, seed=i) for i in range(3)]
    separate = build_faces([[f] for f in faces], INFO, combine="separate")
    assert len(separate) == 3 and separate.recognizer is INFO
    np.testing.assert_array_equal(separate.global_features()[2], faces[2].global_feature)
    assert separate.local_features().shape == (3, 512, 7, 7)

    average = build_faces([[f] for f in faces], INFO, combine="average")
    assert len(average) == 1 and average.identities[0].sources == faces
    np.testing.assert_allclose(
        average.identities[0].global_feature, np.mean([f.global_feature for f in faces], 0), rtol=1e-6
    )
    np.testing.assert_allclose(
        average.identities[0].local_feature, np.mean([f.local_feature for f in faces], 0), rtol=1e-5, atol=1e-6
    )

    normalized = build_faces([[f] for f in faces], INFO, combine="normalized average").identities[0]
    g = np.stack([f.global_feature for f in faces]).astype(np.float64)
    norms = np.linalg.norm(g, axis=1)
    direction = (g / norms[:, None]).mean(0)
    np.testing.assert_allclose(
        normalized.global_feature, direction / np.linalg.norm(direction) * norms.mean(), rtol=1e-5
    )
    assert np.linalg.norm(normalized.global_feature) == pytest.approx(norms.mean(), rel=1e-5)
    # each photo weighs the same: the normalized mean leans less to the largest-norm face than the plain mean
    cos = lambda u, v: float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))  # noqa: E731
    assert cos(normalized.global_feature, g[0]) > cos(average.identities[0].global_feature, g[0])


def test_append_faces_keeps_order_and_refuses_other_recognizers():
    first = build_faces([[face(0, 0, 10, 0, 1)]], INFO)
    second = build_faces([[face(0, 0, 10, 0, 2)], [face(0, 0, 10, 1, 3)]], INFO)
    both = append_faces(first, second)
    assert len(both) == 3 and both.identities[0] is first.identities[0] and both.identities[2] is second.identities[1]
    other = build_faces([[face(0, 0, 10)]], RecognizerInfo(file_name="other.onnx", sha256="b" * 64))
    with pytest.raises(ValueError, match="use the same Load Face Analyzer"):
        append_faces(first, other)
    assert append_faces(None, second) is second


def test_load_faces_preview_and_crops(tiny_analyzer):
    image = disc_image(centres=((544, 320), (96, 320), (320, 320)))
    loaded = load_faces(tiny_analyzer, [image], mode="every face", indices="2,0")
    assert len(loaded.faces) == 2 and len(loaded.detections[0]) == 3
    xs = [identity.sources[0].box[0] + 80 for identity in loaded.faces.identities]
    np.testing.assert_allclose(xs, [544, 96], atol=1e-3)  # slot 0 = face 2 (rightmost), slot 1 = face 0
    assert loaded.crops.shape == (2, 112, 112, 3)
    np.testing.assert_array_equal(loaded.crops[0], loaded.faces.identities[0].sources[0].crop)
    preview = loaded.previews[0]
    assert preview.shape == image.shape and preview.dtype == np.uint8
    palette = InstantFamilyConfig().palette
    # box edges drawn in the slot colours (slot 0 at x=464, slot 1 at x=16), the unchosen face in grey
    assert tuple(preview[390, 464]) == palette[0]
    assert tuple(preview[390, 16]) == palette[1]
    assert tuple(preview[390, 240]) == (128, 128, 128)
    assert (image == disc_image(centres=((544, 320), (96, 320), (320, 320)))).all()  # input untouched


def test_load_faces_widget_values_stay_what_saved_workflows_hold():
    from instantfamily_core.faces.grouping import COMBINE_RULES, FACE_ORDERS, FACE_SELECTION_MODES

    assert FACE_SELECTION_MODES == ("largest face per image", "every face")
    assert FACE_ORDERS == ("left to right", "largest first")
    assert COMBINE_RULES == ("separate", "average", "normalized average")
