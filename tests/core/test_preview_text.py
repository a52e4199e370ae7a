"""The one slot label: slot colour on a black plate, kept inside the image, above a box or centred."""

import numpy as np

from instantfamily_core.config import InstantFamilyConfig
from instantfamily_core.faces.preview import draw_preview
from instantfamily_core.preview_text import draw_note, draw_slot_label


def _plate(canvas):
    """(rows, cols) bounds of the black pixels."""
    rows, cols = np.nonzero((canvas == 0).all(axis=-1))
    return rows.min(), rows.max(), cols.min(), cols.max()


def test_a_label_above_a_box_and_a_centred_label_stay_inside_the_image():
    canvas = np.full((60, 80, 3), 200, np.uint8)
    draw_slot_label(canvas, "12", (75, 5), (0, 255, 0), 0.5, 1)  # too far right and too high: moved inside
    top, bottom, left, right = _plate(canvas)
    assert top == 0 and right == 79 and left > 40
    assert (canvas == (0, 255, 0)).all(axis=-1).any()
    centred = np.full((60, 80, 3), 200, np.uint8)
    draw_slot_label(centred, "3", (40, 30), (255, 0, 0), 0.5, 1, centred=True)
    top, bottom, left, right = _plate(centred)
    assert abs((top + bottom) / 2 - 30) <= 1 and abs((left + right) / 2 - 40) <= 1


def test_the_faces_preview_labels_its_box_with_the_same_label():
    class Face:
        box = np.array([20.0, 30.0, 60.0, 70.0])

    config = InstantFamilyConfig(palette=((255, 0, 0), (0, 0, 255)))
    face = Face()
    image = np.full((100, 120, 3), 200, np.uint8)
    drawn = draw_preview(image, [face], {id(face): 1}, config)
    expected = image.copy()
    draw_slot_label(expected, "1", (20, 30), (0, 0, 255), 0.4, 2)
    plate = (expected == 0).all(axis=-1)
    assert plate.any() and np.array_equal(drawn[:30][plate[:30]], expected[:30][plate[:30]])


def test_the_note_band_is_black_with_white_text():
    canvas = np.full((120, 200, 3), 90, np.uint8)
    draw_note(canvas, "a note long enough to wrap onto two lines of this narrow image")
    band = canvas[-30:]
    assert (band > 200).any() and (band == 0).any() and (canvas[:40] == 90).all()
