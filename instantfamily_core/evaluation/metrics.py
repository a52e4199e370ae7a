"""Identity metrics of the paper's §4.4: SingleSim, MultiSim and its N-identity generalisation.

All functions take face embeddings (any encoder: FaceNet, dlib, the pack's ArcFace) and compare
them with cosine similarity, so embeddings need not be normalised.

**SingleSim** (paper eq. 10): ``cos(E_f(A), E_f(A'))``.

**MultiSim** (paper eq. 11), two identities A, B and the faces A', B' generated for them::

    MultiSim(A, B) = (SingleSim(A, A') + SingleSim(B, B')) / 2 + (1 - SingleSim(A', B'))

The first term is identity preservation, the second independence: it drops when the two generated
faces look like each other (identity mixing). Range: up to 2 (and above 2 only if A', B' have a
negative cosine).

**N identities** (no one has published this; the paper only defines N = 2). A generated image
holds M detected faces and nothing says which one was meant to be which reference, so:

1. *Matching.* Generated faces are assigned to references one-to-one by the assignment that
   maximises the total similarity (Hungarian algorithm). A fixed order (left-to-right, by size)
   would punish a correct face in an unexpected position; a greedy per-reference argmax could give
   one generated face to two references. With N = 2 the optimal matching is simply the better of
   the two pairings, so the formula below is eq. (11) whenever both faces are present.
2. *Identity term*: the mean over the N references of the matched similarity, a reference with no
   generated face left for it (M < N) scoring 0, as FastComposer scores an image without a face.
3. *Independence term*: 1 - the mean over all N(N-1)/2 reference pairs of the similarity between
   the two generated faces matched to them. A pair with a missing face counts as similarity 1,
   i.e. it contributes no independence: a face that is not there is neither preserved nor
   distinct. So MultiSim is a sum of per-identity shares and per-pair shares, and a missing face
   zeroes all the shares it takes part in (an image with no face at all scores 0).
   Generated faces matched to no reference (M > N: extra people) do not enter either term.

FastComposer's evaluation code clamps each identity similarity at 0 (``max(sim, 0)``); the paper
states it used that code, so ``clamp=True`` (the default) does the same for the identity term
(otherwise a face with negative cosine would score below a missing one). ``clamp=False`` gives the
literal formulas. The independence term is never clamped (eq. 11 as printed).

The **confusion matrix** (N x N) has references as rows and, as columns, the generated faces in the
order of the references they were matched to: the diagonal is each identity's preservation, row i
off the diagonal shows how much of identity i leaked into the other people's faces. Columns of
missing faces are NaN.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

# Brute-force matching is used only without scipy; 8! = 40320 permutations is still instant.
_MAX_BRUTE_FORCE = 8


def _as_matrix(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected embeddings of shape (n, d), got {a.shape}")
    return a


def cosine_matrix(a, b) -> np.ndarray:
    """(N, d) x (M, d) -> (N, M) cosine similarities (a zero vector has similarity 0 to anything)."""
    a = _as_matrix(a, "a")
    b = _as_matrix(b, "b")
    if a.shape[1] != b.shape[1] and a.shape[0] and b.shape[0]:
        raise ValueError(f"embedding widths differ: {a.shape[1]} vs {b.shape[1]}; were they made by the same encoder?")
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    a = np.divide(a, na, out=np.zeros_like(a), where=na > 0)
    b = np.divide(b, nb, out=np.zeros_like(b), where=nb > 0)
    return a @ b.T


def single_sim(reference, generated) -> float:
    """Paper eq. (10): cosine similarity of two face embeddings."""
    return float(cosine_matrix(reference, generated)[0, 0])


def match_faces(similarity) -> np.ndarray:
    """Assign generated faces (columns) to references (rows) one-to-one, maximising total similarity.

    Returns (N,) int: the generated index matched to each reference, -1 where none is left.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    n, m = sim.shape
    assignment = np.full(n, -1, dtype=np.int64)
    if n == 0 or m == 0:
        return assignment
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # pragma: no cover - scipy ships with scikit-image / insightface
        return _match_brute_force(sim)
    rows, cols = linear_sum_assignment(sim, maximize=True)
    assignment[rows] = cols
    return assignment


def _match_brute_force(sim: np.ndarray) -> np.ndarray:
    n, m = sim.shape
    if min(n, m) > _MAX_BRUTE_FORCE:
        raise RuntimeError(f"matching {n} x {m} faces needs scipy (pip install scipy)")
    best: tuple[int, ...] = ()
    best_total = -np.inf
    if n <= m:
        for cols in itertools.permutations(range(m), n):
            total = sim[np.arange(n), cols].sum()
            if total > best_total:
                best, best_total = cols, total
        return np.array(best, dtype=np.int64)
    assignment = np.full(n, -1, dtype=np.int64)
    for rows in itertools.permutations(range(n), m):
        total = sim[list(rows), np.arange(m)].sum()
        if total > best_total:
            best, best_total = rows, total
    assignment[list(best)] = np.arange(m)
    return assignment


@dataclass
class IdentityScores:
    """Scores of one generated image against N reference identities (see the module docstring)."""

    similarity: np.ndarray  # (N, M) cosine, references x detected generated faces
    assignment: np.ndarray  # (N,) generated face index per reference, -1 = missing
    matched: np.ndarray  # (N,) identity similarity per reference (clamped if asked; 0 if missing)
    pair_similarity: np.ndarray  # (N, N) cosine between the generated faces matched to i and j; 1 if either is missing
    confusion: np.ndarray  # (N, N) cosine, references x generated faces in reference order; NaN = missing

    @property
    def num_references(self) -> int:
        return int(self.assignment.shape[0])

    @property
    def num_missing(self) -> int:
        return int((self.assignment < 0).sum())

    @property
    def identity(self) -> float:
        """Mean matched similarity over the references (SingleSim when N = 1)."""
        return float(self.matched.mean()) if self.matched.size else float("nan")

    @property
    def mixing(self) -> float | None:
        """Mean pairwise similarity among the generated faces matched to the references (None if N < 2)."""
        n = self.num_references
        if n < 2:
            return None
        upper = np.triu_indices(n, k=1)
        return float(self.pair_similarity[upper].mean())

    @property
    def multi_sim(self) -> float | None:
        """identity + (1 - mixing); eq. (11) for N = 2. None for a single identity (use ``identity``)."""
        mixing = self.mixing
        return None if mixing is None else self.identity + (1.0 - mixing)

    def as_dict(self) -> dict:
        return {
            "num_references": self.num_references,
            "num_generated_faces": int(self.similarity.shape[1]),
            "num_missing": self.num_missing,
            "assignment": self.assignment.tolist(),
            "matched": [float(v) for v in self.matched],
            "identity": self.identity,
            "mixing": self.mixing,
            "multi_sim": self.multi_sim,
            "confusion": [[None if np.isnan(v) else float(v) for v in row] for row in self.confusion],
        }


def score_identities(references, generated, clamp: bool = True) -> IdentityScores:
    """Score the faces found in one generated image (M, d) against N reference embeddings (N, d).

    ``clamp``: clamp each identity similarity at 0 as FastComposer's evaluation does.
    """
    refs = _as_matrix(references, "references")
    n = refs.shape[0]
    gens = _as_matrix(generated, "generated") if len(np.asarray(generated)) else np.zeros((0, refs.shape[1]))
    if n == 0:
        raise ValueError("score_identities: no reference identities given")
    similarity = cosine_matrix(refs, gens)  # (N, M)
    assignment = match_faces(similarity)
    present = assignment >= 0

    matched = np.zeros(n)
    matched[present] = similarity[present, assignment[present]]
    if clamp:
        matched = np.maximum(matched, 0.0)

    confusion = np.full((n, n), np.nan)
    confusion[:, present] = similarity[:, assignment[present]]

    pair = np.ones((n, n))
    if present.sum() >= 1:
        chosen = gens[assignment[present]]
        pair[np.ix_(present, present)] = cosine_matrix(chosen, chosen)
    return IdentityScores(similarity, assignment, matched, pair, confusion)


def multi_sim(references, generated, clamp: bool = True) -> float:
    """MultiSim of one generated image against N >= 2 references (eq. 11 generalised)."""
    scores = score_identities(references, generated, clamp=clamp)
    if scores.multi_sim is None:
        raise ValueError("MultiSim needs at least two reference identities; use single_sim / identity for one")
    return scores.multi_sim
