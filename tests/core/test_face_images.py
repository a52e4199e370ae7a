"""Image normalisation for detection: grayscale, RGBA, 16-bit, float, tiny and huge images."""

import numpy as np
import pytest

from instantfamily_core.faces.images import Placement, for_detection, pad_border
from instantfamily_core.images import image_to_uint8, images_to_uint8, to_rgb_uint8, uint8_to_images


def test_layouts_and_dtypes_become_rgb_uint8():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = to_rgb_uint8(gray)
    assert (
        out.shape == (3, 4, 3) and out.dtype == np.uint8 and (out[..., 0] == gray).all() and (out[..., 2] == gray).all()
    )
    assert (to_rgb_uint8(gray[:, :, None]) == out).all()
    sixteen = gray.astype(np.uint16) * 257
    assert (to_rgb_uint8(sixteen) == out).all()
    floats = np.stack([gray / 255.0] * 3, -1).astype(np.float32)
    assert (to_rgb_uint8(floats) == out).all()
    wild = np.array([[[-0.5, 2.0, np.nan]]], np.float32)
    assert to_rgb_uint8(wild).tolist() == [[[0, 255, 0]]]


def test_rgba_is_composited_over_grey():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent
    out = to_rgb_uint8(rgba)
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [128, 128, 128]
    rgb = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    opaque = np.concatenate([rgb, np.full((8, 9, 1), 255, np.uint8)], -1)
    assert np.array_equal(to_rgb_uint8(opaque), rgb)


def test_rgb_uint8_passes_through_and_floats_round_half_to_even():
    rgb = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    assert np.array_equal(to_rgb_uint8(rgb), rgb)
    assert to_rgb_uint8(rgb[..., 0]).shape == (8, 9, 3)
    assert np.array_equal(to_rgb_uint8(rgb.astype(np.float32) / 255.0), rgb)
    assert np.array_equal(to_rgb_uint8(rgb.astype(np.uint16) * 257), rgb)
    halves = np.array([[[0.5, 1.5, 2.5]]]) / 255.0  # float64: exactly k + 0.5 after scaling
    assert to_rgb_uint8(halves).tolist() == [[[0, 2, 2]]]


def test_comfy_image_batches_round_trip():
    import torch

    rgb = np.random.default_rng(1).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    batch = uint8_to_images(list(rgb))
    assert batch.shape == (2, 5, 6, 3) and batch.dtype == torch.float32 and float(batch.max()) <= 1.0
    assert uint8_to_images(rgb[0]).shape == (1, 5, 6, 3)
    assert all(np.array_equal(a, b) for a, b in zip(images_to_uint8(batch), rgb))
    assert np.array_equal(image_to_uint8(batch, 1), rgb[1]) and np.array_equal(image_to_uint8(batch[0]), rgb[0])
    with pytest.raises(ValueError, match="pose_image: asked for image 2 of a batch of 2"):
        image_to_uint8(batch, 2, name="pose_image")
    with pytest.raises(ValueError, match="template: expected an IMAGE"):
        image_to_uint8(batch[0, 0, 0], name="template")
    with pytest.raises(ValueError, match="uint8"):
        uint8_to_images(batch.numpy())


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros((3, 32, 32), np.uint8), "channels last"),
        (np.zeros((5, 5, 2), np.uint8), "(H, W, 4)"),
        (np.zeros((4, 4), np.int64), "8- or 16-bit"),
        (np.zeros((0, 4, 3), np.uint8), "got shape"),
    ],
)
def test_bad_images_are_named(bad, words):
    with pytest.raises(ValueError) as error:
        to_rgb_uint8(bad, "image 3")
    assert str(error.value).startswith("image 3:") and words in str(error.value)


def test_tiny_images_are_upscaled_and_huge_downscaled():
    tiny, placement = for_detection(np.zeros((40, 50, 3), np.uint8))
    assert min(tiny.shape[:2]) >= 192 and placement.scale == 5.0
    huge, placement = for_detection(np.zeros((3000, 5000, 3), np.uint8))
    assert max(huge.shape[:2]) == 2048 and placement.scale == pytest.approx(2048 / 5000)
    same, placement = for_detection(np.zeros((480, 640, 3), np.uint8))
    assert same.shape == (480, 640, 3) and placement == Placement()


def test_placement_maps_back_through_scale_and_padding():
    image = np.zeros((100, 60, 3), np.uint8)
    padded, offset = pad_border(image, 0.25)
    assert padded.shape == (150, 110, 3) and offset == (25.0, 25.0)
    placement = Placement(2.0).then(1.0, offset)  # upscaled x2, then padded by 25 px
    source = np.array([[10.0, 20.0], [0.0, 0.0]], np.float32)
    detected = source * 2.0 + 25.0
    np.testing.assert_allclose(placement.to_source(detected), source)
