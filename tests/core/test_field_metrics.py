"""MultiID-Bench, MultiHuman-Testbench and UMO metrics against hand-computed values."""

import numpy as np
import pytest

from instantfamily_core.evaluation import field_metrics as fm


def unit(*v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def at_angle(degrees):
    r = np.radians(degrees)
    return np.array([np.cos(r), np.sin(r), 0.0])


def test_copy_paste_sign_on_crafted_triplets():
    target, reference = at_angle(0), at_angle(60)  # the person's ground-truth photo and the reference photo
    copied = at_angle(55)  # output almost the reference photo
    person = at_angle(5)  # output close to how the person looks in the ground truth
    # (MultiID-Bench normalises with x / (|x| + 1e-6), hence the 1e-4 tolerance)
    assert fm.copy_paste(copied, target, reference) == pytest.approx((55 - 5) / 60, abs=1e-4)
    assert fm.copy_paste(person, target, reference) == pytest.approx((5 - 55) / 60, abs=1e-4)
    assert fm.copy_paste(at_angle(30), target, reference) == pytest.approx(0.0, abs=1e-4)
    assert fm.copy_paste(copied, target * 1e12, target * 1e12) == 0.0  # θ(t, r) < 1e-6
    # their + 1e-6 in the norm puts two unit embeddings 1e-4° apart ~2e-3 rad apart: an exact copy of r
    # then scores ~0.001, not 1 (reproduced as their code has it)
    assert 0 < fm.copy_paste(at_angle(1e-4), target, at_angle(1e-4)) < 0.01


def test_copy_paste_sample_pairs_by_two_assignments_and_drops_count_mismatch():
    targets = np.stack([at_angle(0), at_angle(90)])
    refs = np.stack([at_angle(80), at_angle(10)])  # reference k is nearer target 1 - k
    gens = np.stack([at_angle(88), at_angle(2)])
    cp = fm.copy_paste_sample(gens, targets, refs)
    # gen 0 pairs with target 1 (90°) and reference 0 (80°); gen 1 with target 0 and reference 1
    assert cp.tolist() == pytest.approx([(2 - 8) / 10, (2 - 8) / 10], abs=1e-3)
    assert fm.copy_paste_sample(gens[:1], targets, refs) is None


def test_hungarian_similarity_and_non_matched_by_hand():
    refs = np.eye(3)[:2]  # (2, 3)
    gens = np.stack([unit(0.6, 0.8, 0), unit(1, 0, 0), unit(0, 0, 1)])  # third face is nobody
    matched, off = fm.hungarian_similarity(gens, refs)
    # optimum: gen 0 -> ref 1 (0.8), gen 1 -> ref 0 (1.0); off-assignment entries: 0.6, 0, 0, 0
    assert sorted(matched.tolist()) == pytest.approx([0.8, 1.0])
    assert off == pytest.approx(0.6 / 4)


def test_id_conf_by_hand():
    refs = np.eye(3)[:2]
    gens = np.stack([unit(1, 0, 0), unit(1, 1, 0)])
    # ref 0: s1 = 1, s2 = 0.7071 -> 29.29; ref 1: s1 = 0.7071, s2 = 0 -> 100
    assert fm.id_conf(refs, gens).tolist() == pytest.approx([100 * (1 - 2**-0.5), 100.0])
    assert fm.id_conf(refs, gens[:1]).tolist() == pytest.approx([100.0, 0.0])  # one face: s2 = 0; s1 = 0 -> 0
    assert fm.id_conf(refs, np.zeros((0, 3))).tolist() == [0.0, 0.0]


def test_missing_face_scores_zero_nothing_dropped_and_is_left_out_their_way():
    refs = np.eye(4)[:2]
    targets = refs.copy()
    one_face = refs[:1]
    s = fm.field_scores(refs, one_face, targets)
    assert not s["count_ok"] and s["faces"] == 1 and s["people"] == 2
    assert s["sim_ref"] == pytest.approx(1.0)  # theirs: the mean over the faces found
    assert s["sim_ref_all"] == pytest.approx(0.5)  # nothing dropped: the missing person scores 0
    assert s["copy_paste"] is None  # theirs: counts differ -> the sample is dropped from CP
    none = fm.field_scores(refs, np.zeros((0, 4)), targets)
    assert none["sim_ref"] is None and none["sim_ref_all"] == 0.0 and none["non_matched"] is None


def test_iqr_trimming_and_median_fallback():
    values = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 9.0]
    kept, removed = fm.iqr_filter(values)
    assert removed == 1 and 9.0 not in kept
    assert fm.their_mean(values)["mean"] == pytest.approx(np.mean(values[:-1]))
    assert fm.their_mean(values)["outliers_removed"] == 1
    assert fm.plain_mean(values + [None])["mean"] == pytest.approx(np.mean(values))
    assert fm.their_mean([])["mean"] is None
