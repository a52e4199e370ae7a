"""Metric maths on constructed embeddings: SingleSim, eq. (11), its N-ID generalisation, matching."""

import itertools

import numpy as np
import pytest

from instantfamily_core.evaluation import metrics
from instantfamily_core.evaluation.metrics import (
    cosine_matrix,
    match_faces,
    multi_sim,
    score_identities,
    single_sim,
)


def multi_sim_pair(sim_a: float, sim_b: float, sim_ab: float) -> float:
    """Paper eq. (11), written plainly: SingleSim(A,A'), SingleSim(B,B'), SingleSim(A',B')."""
    return (sim_a + sim_b) / 2.0 + (1.0 - sim_ab)


def orthonormal(n, d=16, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q[:n]  # (n, d), rows orthonormal


def blend(a, b, t):
    """Unit vector t of the way from a to b (a, b orthonormal)."""
    v = (1 - t) * a + t * b
    return v / np.linalg.norm(v)


def test_single_sim_identical_orthogonal_opposite_and_scale_free():
    a, b = orthonormal(2)
    assert single_sim(a, a) == pytest.approx(1.0)
    assert single_sim(a, 7.5 * a) == pytest.approx(1.0)
    assert single_sim(a, b) == pytest.approx(0.0, abs=1e-12)
    assert single_sim(a, -a) == pytest.approx(-1.0)
    assert single_sim(a, np.zeros_like(a)) == 0.0


def test_identical_faces_give_the_maximum():
    refs = orthonormal(2)
    s = score_identities(refs, refs * 3.0)
    assert s.identity == pytest.approx(1.0)
    assert s.mixing == pytest.approx(0.0, abs=1e-12)
    assert s.multi_sim == pytest.approx(2.0)  # the top of eq. (11) for distinct references
    np.testing.assert_allclose(s.confusion, np.eye(2), atol=1e-12)


def test_two_ids_equal_the_papers_formula():
    rng = np.random.default_rng(3)
    for _ in range(20):
        a, b = rng.normal(size=(2, 32))
        a_gen = a + 0.6 * rng.normal(size=32)  # still closest to a
        b_gen = b + 0.6 * rng.normal(size=32)
        expected = multi_sim_pair(single_sim(a, a_gen), single_sim(b, b_gen), single_sim(a_gen, b_gen))
        if min(single_sim(a, a_gen), single_sim(b, b_gen)) < 0:
            continue
        assert multi_sim([a, b], [a_gen, b_gen]) == pytest.approx(expected, abs=1e-12)
        # the order the detector returns the faces in does not matter
        assert multi_sim([a, b], [b_gen, a_gen]) == pytest.approx(expected, abs=1e-12)
        assert multi_sim([a, b], [a_gen, b_gen], clamp=False) == pytest.approx(expected, abs=1e-12)


def test_orthogonal_generated_faces_score_zero_identity():
    refs = orthonormal(4)[:2]
    others = orthonormal(4)[2:]
    s = score_identities(refs, others)
    assert s.identity == pytest.approx(0.0, abs=1e-12)
    assert s.multi_sim == pytest.approx(1.0)  # no identity kept, but no mixing either


def test_matching_undoes_a_swap():
    refs = orthonormal(4, seed=1)
    perm = [2, 0, 3, 1]
    gens = np.stack([blend(refs[p], refs[(p + 1) % 4], 0.1) for p in perm])
    s = score_identities(refs, gens)
    # reference i is matched to the generated face made from it, wherever the detector put it
    assert [perm[j] for j in s.assignment] == [0, 1, 2, 3]
    unswapped = score_identities(refs, gens[np.argsort(perm)])
    assert s.multi_sim == pytest.approx(unswapped.multi_sim, abs=1e-12)
    assert s.identity > 0.9
    # diagonal of the confusion matrix = each identity's own similarity
    np.testing.assert_allclose(np.diag(s.confusion), s.matched, atol=1e-12)


def test_hungarian_beats_greedy_and_equals_brute_force():
    # greedy takes (0,0)=0.9 first and leaves (1,1)=0.0; the optimum is 0.8 + 0.8
    sim = np.array([[0.9, 0.8], [0.8, 0.0]])
    np.testing.assert_array_equal(match_faces(sim), [1, 0])
    rng = np.random.default_rng(7)
    for n, m in [(3, 3), (4, 2), (2, 5), (5, 5)]:
        sim = rng.normal(size=(n, m))
        a = match_faces(sim)
        b = metrics._match_brute_force(sim)
        total = lambda x, sim=sim: sum(sim[i, j] for i, j in enumerate(x) if j >= 0)  # noqa: E731
        assert total(a) == pytest.approx(total(b))
        assert (a >= 0).sum() == min(n, m)
        assert len(set(a[a >= 0])) == (a >= 0).sum()  # one-to-one


def test_mixing_lowers_multisim():
    refs = orthonormal(3, seed=2)
    scores = []
    for t in (0.0, 0.2, 0.4):  # each generated face drifts towards the mean of the others
        mean = refs.mean(0)
        gens = np.stack([(1 - t) * r + t * mean for r in refs])
        scores.append(score_identities(refs, gens))
    mixing = [s.mixing for s in scores]
    ms = [s.multi_sim for s in scores]
    assert mixing[0] < mixing[1] < mixing[2]
    assert ms[0] > ms[1] > ms[2]
    # the same identity similarity with and without mixing: only the independence term differs
    a, b = orthonormal(3, seed=4)[:2]
    c = orthonormal(3, seed=4)[2]
    distinct = [blend(a, c, 0.3), blend(b, -c, 0.3)]  # both 0.3 off their reference, away from each other
    mixed = [blend(a, c, 0.3), blend(b, c, 0.3)]  # both pulled the same way: they look alike
    s_distinct, s_mixed = score_identities([a, b], distinct), score_identities([a, b], mixed)
    assert s_distinct.identity == pytest.approx(s_mixed.identity)
    assert s_mixed.mixing > s_distinct.mixing
    assert s_mixed.multi_sim < s_distinct.multi_sim


def test_the_same_face_pasted_twice_is_punished():
    a, b = orthonormal(2)
    # a generated image with A's face twice: B is "preserved" at 0, and the two faces are identical
    s = score_identities([a, b], [a, a])
    assert s.identity == pytest.approx(0.5)
    assert s.mixing == pytest.approx(1.0)
    assert s.multi_sim == pytest.approx(0.5)


def test_missing_faces_score_zero():
    a, b, c = orthonormal(3)
    one_missing = score_identities([a, b], [a])
    assert one_missing.num_missing == 1
    assert one_missing.matched.tolist() == pytest.approx([1.0, 0.0])
    assert one_missing.multi_sim == pytest.approx(0.5)  # A's identity share; B and the pair give 0
    assert np.isnan(one_missing.confusion[:, 1]).all()
    none = score_identities([a, b], np.zeros((0, 16)))
    assert none.identity == 0.0 and none.multi_sim == pytest.approx(0.0)
    single_missing = score_identities([a], [])
    assert single_missing.identity == 0.0 and single_missing.multi_sim is None
    # three references, one missing: the two present faces keep their shares
    s = score_identities([a, b, c], [b, a])
    assert s.identity == pytest.approx(2 / 3)
    assert s.multi_sim == pytest.approx(2 / 3 + (1 - (0 + 1 + 1) / 3))
    # every complete image beats the same image with a face removed
    full = score_identities([a, b, c], [a, b, blend(c, a, 0.5)])
    assert full.multi_sim > s.multi_sim


def test_extra_generated_faces_are_ignored():
    a, b, c = orthonormal(3)
    s = score_identities([a, b], [c, b, a])
    assert s.multi_sim == pytest.approx(2.0)
    assert s.assignment.tolist() == [2, 1]


def test_clamp_follows_fastcomposer():
    a, b = orthonormal(2)
    s_clamped = score_identities([a, b], [-a, b])
    s_raw = score_identities([a, b], [-a, b], clamp=False)
    assert s_clamped.matched.tolist() == pytest.approx([0.0, 1.0])
    assert s_raw.matched.tolist() == pytest.approx([-1.0, 1.0])
    # the literal eq. (11) with the raw similarities
    assert s_raw.multi_sim == pytest.approx(multi_sim_pair(-1.0, 1.0, single_sim(-a, b)))
    assert s_clamped.confusion[0, 0] == pytest.approx(-1.0)  # the matrix shows raw cosines


def test_confusion_matrix_rows_are_references_columns_their_generated_faces():
    refs = orthonormal(3, seed=5)
    gens = np.stack([blend(refs[0], refs[1], 0.4), refs[2], refs[1]])  # face 0 leaks identity 1
    s = score_identities(refs, gens)
    assert s.confusion.shape == (3, 3)
    assert s.assignment.tolist() == [0, 2, 1]
    assert s.confusion[1, 0] > 0.3  # identity 1 shows up in the face generated for 0
    assert s.confusion[0, 1] == pytest.approx(0.0, abs=1e-12)
    assert s.confusion[1, 1] == pytest.approx(1.0)


def test_n_ids_up_to_sixteen_and_input_errors():
    refs = orthonormal(16, d=32)
    for n in (1, 2, 4, 16):
        s = score_identities(refs[:n], refs[:n][::-1])
        assert s.identity == pytest.approx(1.0)
        if n > 1:
            assert s.multi_sim == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same encoder"):
        cosine_matrix(np.ones((2, 4)), np.ones((2, 5)))
    with pytest.raises(ValueError, match="at least two"):
        multi_sim([refs[0]], [refs[0]])
    with pytest.raises(ValueError, match="no reference"):
        score_identities(np.zeros((0, 4)), np.ones((1, 4)))


def test_as_dict_is_json_ready():
    import json

    a, b = orthonormal(2)
    d = score_identities([a, b], [a]).as_dict()
    text = json.dumps(d)
    assert '"num_missing": 1' in text and "null" in text  # NaN confusion cells become null
    assert list(itertools.chain(*d["confusion"]))[0] == pytest.approx(1.0)


def test_confusion_heatmap_draws_values_missing_cells_and_labels():
    from instantfamily_core.evaluation.heatmap import _MISSING, colour, render_confusion

    m = np.array([[1.0, 0.2], [np.nan, 0.6]])
    img = render_confusion(m, ["ref A", "ref B"], ["gen A", "gen B"], title="t")
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    pixels = {tuple(p) for p in img.reshape(-1, 3)}
    assert colour(1.0) in pixels and colour(0.0) in pixels and _MISSING in pixels  # max, min, missing cells
    assert colour((0.6 - 0.2) / 0.8) in pixels  # colours span the finite values' range
    fixed = render_confusion(m, ["a", "b"], ["c", "d"], vmin=0.0, vmax=1.0)
    assert colour(0.2) in {tuple(p) for p in fixed.reshape(-1, 3)}
    with pytest.raises(ValueError, match="labels"):
        render_confusion(m, ["a"], ["c", "d"])
