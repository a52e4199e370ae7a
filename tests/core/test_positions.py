"""Position-aware identity scores: a swap that Hungarian matching forgives is caught by slot."""

import numpy as np
import pytest

from instantfamily_core.evaluation.metrics import score_identities
from instantfamily_core.evaluation.positions import faces_in_slots, score_slots


def people(n, d=16, seed=0):
    """n nearly orthogonal unit identities."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, n)))
    return q.T


def two_regions(size=(64, 128)):
    """Left and right halves as the slot regions, centres at their middles."""
    masks = np.zeros((2, *size))
    masks[0, :, : size[1] // 2] = 1
    masks[1, :, size[1] // 2 :] = 1
    return masks, np.array([[0.25, 0.5], [0.75, 0.5]])


def test_swapped_identities_score_zero_slot_accuracy_while_hungarian_stays_high():
    refs = people(2)
    generated = refs[::-1] * 0.98 + 0.01  # slot 0 holds B, slot 1 holds A
    hungarian = score_identities(refs, generated)
    assert hungarian.identity > 0.95  # the matching undoes the swap
    slots = score_slots(refs, generated, [0, 1])
    assert slots.slot_accuracy == 0.0
    assert slots.verdicts == ["swapped", "swapped"]
    assert slots.swaps == [(0, 1)]
    assert slots.own.max() < 0.1 and slots.best_other.min() > 0.95
    np.testing.assert_allclose(np.diag(slots.confusion), slots.own)  # confusion by slot: column n = slot n


def test_correct_duplicate_wrong_missing_and_extra_faces():
    refs = people(4)
    stranger = people(5, seed=1)[4]
    # slot 0: A (ok); slot 1: A again (duplicate); slot 2: D's look-alike while D's slot is empty (wrong);
    # slot 3: missing; one more face outside every slot (extra)
    generated = np.stack([refs[0], refs[0] * 0.9 + 0.1 * stranger, refs[3], stranger])
    slots = score_slots(refs, generated, [0, 1, 2, -1])
    assert slots.verdicts == ["ok", "duplicate", "wrong", "missing"]
    assert slots.slot_accuracy == 0.25 and slots.swaps == []
    assert slots.num_missing == 1 and slots.extra == 1
    assert slots.own[3] == 0.0 and np.isnan(slots.confusion[:, 3]).all()
    record = slots.as_dict()
    assert record["verdicts"][1] == "duplicate" and record["confusion_by_slot"][0][3] is None


def test_three_way_cycle_is_wrong_not_swapped():
    refs = people(3)
    slots = score_slots(refs, refs[[1, 2, 0]], [0, 1, 2])
    assert slots.verdicts == ["wrong", "wrong", "wrong"] and slots.swaps == []


def test_faces_are_placed_by_the_region_holding_their_centre():
    masks, centres = two_regions()
    boxes = np.array(
        [
            [70, 10, 100, 40],  # centre x = 85 of 128: right region
            [5, 10, 35, 40],  # left
            [0, 0, 10, 10],  # also left, farther from the left centre (32, 32): extra
        ]
    )
    assert faces_in_slots(boxes, (64, 128), masks, centres).tolist() == [1, 0, -1]
    # a face outside every region is in no slot; the masks may have any resolution
    small = masks[:, ::4, ::4].copy()
    small[1] = 0
    assert faces_in_slots(boxes[:1], (64, 128), small, centres).tolist() == [-1]


def test_overlapping_regions_give_the_face_to_the_nearest_centre():
    masks = np.ones((2, 10, 10))
    centres = np.array([[0.2, 0.5], [0.8, 0.5]])
    assert faces_in_slots([[60, 40, 80, 60]], (100, 100), masks, centres).tolist() == [1]


def test_bad_slot_indices_are_refused():
    refs = people(2)
    with pytest.raises(ValueError, match="distinct and below 2"):
        score_slots(refs, refs, [0, 0])
    with pytest.raises(ValueError, match="2 generated faces but 1 slot"):
        score_slots(refs, refs, [0])
    with pytest.raises(ValueError, match="same N slots"):
        faces_in_slots([[0, 0, 1, 1]], (2, 2), np.ones((2, 2, 2)), np.zeros((3, 2)))
