"""Identity metrics other papers report, as their code defines them, so our figures sit beside theirs.

**MultiID-Bench** (WithAnyone; ``MultiID-Bench/eval.py`` and ``metrics/arcface_metric.py`` of its
repository, read for these definitions):

* *Sim(Ref)* / *Sim(GT)*: the cosine matrix between every face found in the output and the
  references (one face per reference image) / the faces of the ground-truth photo; Hungarian
  assignment on it (rectangular: min(M, K) pairs); the sample's score is the mean matched cosine.
  A missing face is simply not matched (the mean runs over the faces that were found); a sample
  with no face at all is dropped.
* *non_matched* (leakage): the mean cosine over every entry of that matrix *off* the assignment;
  only reported with >= 2 references.
* *Copy-paste* CP = (θ(g,t) − θ(g,r)) / θ(t,r), θ = arccos of the dot product of unit embeddings
  (cosine clipped to [-1, 1]), 0 when θ(t,r) < 1e-6: positive when the output g is nearer the
  reference photo r than the person's ground-truth photo t, i.e. it copies the reference rather
  than showing the person. g is paired with t and with r by two separate Hungarian assignments;
  the sample is dropped unless output, ground truth and references hold the same number of faces.
  Their unit vectors are x / (|x| + 1e-6), so two unit embeddings of (almost) the same direction
  are ~2e-3 rad apart, not 0: the guard only fires for huge norms, and when t ≈ r CP is squeezed
  towards 0 (reproduced as their code has it).
* Summary: per metric, values outside [Q1 − 1.5 IQR, Q3 + 1.5 IQR] over the samples are removed
  before the mean (if that removes more than half, the median is reported instead).

``their_way`` reproduces all of that and counts what it dropped; ``nothing_dropped`` keeps every
sample and every reference: a missing face scores 0 in the Hungarian mean over the references.

**MultiHuman-Testbench**: *count accuracy*, the share of images whose number of detected faces
equals the number of people asked for; and that Hungarian mean with missing people at 0.

**UMO** *ID-Conf*: per reference, with s1 ≥ s2 its two highest cosines with the generated faces,
min(1, (s1 − s2) / s1) × 100 (how clearly one face is that person). Edge cases (ours): one
generated face gives s2 = 0; s1 ≤ 0 or no face gives 0.
"""

from __future__ import annotations

import numpy as np

from .metrics import cosine_matrix, match_faces

COPY_PASTE_EPS = 1e-6
IQR_FACTOR = 1.5


def hungarian_similarity(faces, others) -> tuple[np.ndarray, float | None]:
    """MultiID-Bench's matching: (matched cosines (min(M, K),), mean off-assignment cosine or None)."""
    sim = cosine_matrix(faces, others)  # (M, K)
    if sim.size == 0:
        return np.zeros(0), None
    assignment = match_faces(sim)  # (M,) column per row, -1 = unmatched row
    rows = np.flatnonzero(assignment >= 0)
    off = np.ones_like(sim, bool)
    off[rows, assignment[rows]] = False
    return sim[rows, assignment[rows]], (float(sim[off].mean()) if off.any() else None)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x) + COPY_PASTE_EPS)


def copy_paste(generated, target, reference) -> float:
    """CP of one face: (θ(g,t) − θ(g,r)) / θ(t,r); 0 when θ(t,r) < 1e-6 (see the module docstring)."""
    g, t, r = (_unit(np.asarray(v, np.float64).reshape(-1)) for v in (generated, target, reference))

    def angle(a, b):
        return float(np.arccos(np.clip(a @ b, -1.0, 1.0)))

    theta_tr = angle(t, r)
    if theta_tr < COPY_PASTE_EPS:
        return 0.0
    return (angle(g, t) - angle(g, r)) / theta_tr


def copy_paste_sample(generated, targets, references) -> np.ndarray | None:
    """CP per generated face as MultiID-Bench pairs them; None when the three face counts differ."""
    gens = np.asarray(generated, np.float64)
    tars, refs = np.asarray(targets, np.float64), np.asarray(references, np.float64)
    if len(gens) == 0 or not len(gens) == len(tars) == len(refs):
        return None
    to_target = match_faces(cosine_matrix(gens, tars))  # (M,) matched ground-truth face per generated face
    to_reference = match_faces(cosine_matrix(gens, refs))
    return np.array([copy_paste(gens[i], tars[to_target[i]], refs[to_reference[i]]) for i in range(len(gens))])


def id_conf(references, generated) -> np.ndarray:
    """UMO's ID-Conf per reference (N,), in 0..100."""
    sim = cosine_matrix(references, generated)  # (N, M)
    out = np.zeros(sim.shape[0])
    if sim.shape[1] == 0:
        return out
    top = -np.sort(-sim, axis=1)
    s1 = top[:, 0]
    s2 = top[:, 1] if sim.shape[1] > 1 else np.zeros_like(s1)
    ok = s1 > 0
    out[ok] = np.minimum(1.0, (s1[ok] - s2[ok]) / s1[ok]) * 100.0
    return out


def iqr_filter(values) -> tuple[np.ndarray, int]:
    """MultiID-Bench's outlier rule: (values inside Q1 − 1.5 IQR .. Q3 + 1.5 IQR, how many were removed)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return v, 0
    q1, q3 = np.percentile(v, 25), np.percentile(v, 75)
    keep = (v >= q1 - IQR_FACTOR * (q3 - q1)) & (v <= q3 + IQR_FACTOR * (q3 - q1))
    return v[keep], int((~keep).sum())


def their_mean(values) -> dict:
    """MultiID-Bench's summary of per-sample values: IQR-trimmed mean (median if > half would go)."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return {"mean": None, "n": 0, "outliers_removed": 0}
    kept, removed = iqr_filter(v)
    if kept.size < 0.5 * v.size:
        return {"mean": float(np.median(v)), "n": int(v.size), "outliers_removed": 0, "median_fallback": True}
    return {"mean": float(kept.mean()), "n": int(kept.size), "outliers_removed": removed}


def plain_mean(values) -> dict:
    v = np.asarray([x for x in values if x is not None], np.float64)
    return {"mean": float(v.mean()) if v.size else None, "n": int(v.size)}


def field_scores(references, generated, targets=None) -> dict:
    """Every per-sample figure of this module for one output image.

    references (N, d), generated (M, d) faces found in the output, targets (T, d) faces of the
    ground-truth photo (None: no ground truth, Sim(GT) and CP are None).
    """
    refs = np.asarray(references, np.float64)
    gens = np.asarray(generated, np.float64).reshape(-1, refs.shape[1])
    n, m = len(refs), len(gens)
    matched, off = hungarian_similarity(gens, refs)
    sim_ref_all = float(np.pad(matched, (0, max(0, n - matched.size))).mean()) if n else None
    out = {
        "faces": m,
        "people": n,
        "count_ok": m == n,
        "sim_ref": float(matched.mean()) if m else None,  # their way: None = sample dropped (no face)
        "sim_ref_all": sim_ref_all,  # nothing dropped: missing people score 0
        "non_matched": off if n >= 2 and m else None,
        "id_conf": float(id_conf(refs, gens).mean()),
        "sim_gt": None,
        "sim_gt_all": None,
        "copy_paste": None,
        "copy_paste_all": None,
    }
    if targets is not None and len(targets):
        tars = np.asarray(targets, np.float64).reshape(-1, refs.shape[1])
        matched_gt, _ = hungarian_similarity(gens, tars)
        out["sim_gt"] = float(matched_gt.mean()) if m else None
        out["sim_gt_all"] = float(np.pad(matched_gt, (0, max(0, len(tars) - matched_gt.size))).mean())
        cp = copy_paste_sample(gens, tars, refs)
        out["copy_paste"] = None if cp is None else float(cp.mean())
        out["copy_paste_all"] = _copy_paste_every_face(gens, tars, refs)
    return out


def _copy_paste_every_face(gens: np.ndarray, tars: np.ndarray, refs: np.ndarray) -> float | None:
    """CP without the count rule: each reference's matched output face vs its ground-truth face
    (reference and ground truth paired by Hungarian assignment); faces that are not there add nothing."""
    if not len(gens):
        return None
    gen_of_ref = match_faces(cosine_matrix(refs, gens))  # (N,)
    tar_of_ref = match_faces(cosine_matrix(refs, tars))
    values = [
        copy_paste(gens[g], tars[t], refs[k])
        for k, (g, t) in enumerate(zip(gen_of_ref, tar_of_ref))
        if g >= 0 and t >= 0
    ]
    return float(np.mean(values)) if values else None
