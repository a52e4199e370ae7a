"""The aligned crop equals insightface's norm_crop (what the recognizers were trained on)."""

import warnings

import numpy as np
import pytest

from instantfamily_core.faces.align import align_crop, similarity_transform, template
from instantfamily_dev.face_fixtures import astronaut


@pytest.mark.parametrize("size", [112, 128, 224])
def test_crop_matches_insightface_norm_crop(size):
    from insightface.utils import face_align

    image = astronaut()
    rng = np.random.default_rng(size)
    for _ in range(5):
        keypoints = np.array([[200, 100], [245, 104], [225, 127], [201, 139], [245, 141]], np.float32)
        keypoints += rng.normal(scale=4.0, size=(5, 2)).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            expected = face_align.norm_crop(image, keypoints, image_size=size)
        got = align_crop(image, keypoints, size)
        assert got.shape == expected.shape == (size, size, 3)
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
        assert np.mean(got != expected) < 0.01


def test_similarity_transform_recovers_a_known_one():
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -3.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = template(112)
    dst = scale * src @ rotation.T + shift
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)
