"""Real photos from installed packages with a real detector/recognizer whose weights ship on PyPI
(dlib-bin + face_recognition_models), driven through the pack's FaceAnalyzer and Load Faces path.

Same person: no package ships two different photos of one person, so the astronaut photo is
paired with a mirrored, re-cropped, rescaled and colour-jittered copy of itself; different people
are Grace Hopper, Tom Hanks (insightface's sample) and the six people of t1.jpg.
"""

import os

import cv2
import numpy as np
import pytest

from instantfamily_core.faces.pipeline import load_faces
from instantfamily_dev.face_fixtures import astronaut, grace_hopper, group_photo


def iou(a, b):
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def tom_hanks():
    import insightface

    path = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "Tom_Hanks_54745.png")
    return np.ascontiguousarray(cv2.imread(path)[:, :, ::-1])


def jittered(image):
    """Mirrored, re-cropped, rescaled, brighter and warmer: the same person, a different picture."""
    height, width = image.shape[:2]
    out = image[:, ::-1][int(0.05 * height) : int(0.8 * height), int(0.1 * width) : int(0.95 * width)]
    out = cv2.resize(out, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA).astype(np.float32)
    out = out * 1.15 + np.array([12.0, 0.0, -10.0])
    return np.clip(out, 0, 255).astype(np.uint8)


def test_group_photo_gives_six_ids_left_to_right(dlib_analyzer, dlib_backend):
    photo = group_photo()
    loaded = load_faces(dlib_analyzer, [photo], mode="every face")
    assert len(loaded.faces) == 6
    boxes = [identity.sources[0].box for identity in loaded.faces.identities]
    centres = [(b[0] + b[2]) / 2 for b in boxes]
    assert centres == sorted(centres)
    # the same six faces dlib finds on the full-resolution photo, one for one
    reference, _ = dlib_backend.detect(np.ascontiguousarray(photo[:, :, ::-1]))
    assert len(reference) == 6
    reference = sorted(reference[:, :4], key=lambda b: b[0] + b[2])
    assert all(iou(a, b) > 0.5 for a, b in zip(boxes, reference))
    by_size = load_faces(dlib_analyzer, [photo], mode="every face", order="largest first")
    areas = [identity.sources[0].area for identity in by_size.faces.identities]
    assert areas == sorted(areas, reverse=True) and by_size.crops.shape == (6, 112, 112, 3)


def test_keypoints_are_in_insightface_order(dlib_analyzer):
    (face,) = dlib_analyzer.analyze(astronaut())
    left_eye, right_eye, nose, mouth_left, mouth_right = face.keypoints
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    x1, y1, x2, y2 = face.box
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face.keypoints)


def test_same_person_is_closer_than_different_people(dlib_analyzer):
    """The analyzer's faces, described by the evaluator's dlib encoder (the crop around each box)."""
    from instantfamily_core.evaluation.encoders import DlibEncoder

    encoder = DlibEncoder()

    def around(image, box):
        x1, y1, x2, y2 = box
        pad = 0.5 * max(x2 - x1, y2 - y1)
        top, left = int(max(0, y1 - pad)), int(max(0, x1 - pad))
        return image[top : int(y2 + pad), left : int(x2 + pad)]

    def descriptor(image, pick=0):
        faces = sorted(dlib_analyzer.analyze(image), key=lambda f: -f.area)
        return encoder.embed_crop(around(image, faces[pick].box))

    ast = astronaut()
    reference = descriptor(ast)
    same = np.linalg.norm(reference - descriptor(jittered(ast)))
    others = [descriptor(grace_hopper()), descriptor(tom_hanks())]
    group = group_photo()
    others += [encoder.embed_crop(around(group, f.box)) for f in dlib_analyzer.analyze(group)]
    different = [np.linalg.norm(reference - o) for o in others]
    assert len(different) == 8
    # measured: same 0.22; different 0.69 (Hopper), 0.75 (Hanks), 0.72-0.83 (t1's six)
    assert same < 0.45 and min(different) > 0.55 and same < min(different)


def test_tiny_gray_and_cut_faces_are_found(dlib_analyzer):
    ast = astronaut()
    (face,) = dlib_analyzer.analyze(ast)
    x1, y1, x2, y2 = face.box.astype(int)
    crop = ast[max(0, y1 - 20) : y2 + 20, max(0, x1 - 20) : x2 + 20]
    tiny = cv2.resize(crop, (40, 40), interpolation=cv2.INTER_AREA)
    (small,) = dlib_analyzer.analyze(tiny)
    assert small.image_size == (40, 40) and 0 <= small.box[0] < small.box[2] <= 40
    gray = cv2.cvtColor(ast, cv2.COLOR_RGB2GRAY)
    (gray_face,) = dlib_analyzer.analyze(gray)
    assert iou(gray_face.box, face.box) > 0.8
    cut = int(x1 + 0.4 * (x2 - x1))  # the left 40% of the face is outside the image
    (edge,) = dlib_analyzer.analyze(ast[:, cut:])
    assert edge.box[0] == 0.0 and edge.crop.shape == (112, 112, 3)


def test_huge_photo_maps_boxes_back(dlib_analyzer):
    ast = astronaut()
    (face,) = dlib_analyzer.analyze(ast)
    huge = cv2.resize(ast, (4608, 4608), interpolation=cv2.INTER_LINEAR)
    (big,) = dlib_analyzer.analyze(huge)
    assert big.image_size == (4608, 4608)
    assert iou(big.box / 9.0, face.box) > 0.8


def test_photo_without_a_face_is_refused(dlib_analyzer):
    from skimage import data

    with pytest.raises(ValueError, match=r"no face found in image 1 \(600x400 px\)"):
        load_faces(dlib_analyzer, [astronaut(), data.coffee()])
