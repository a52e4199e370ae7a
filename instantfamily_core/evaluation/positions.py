"""Position-aware identity scores: is the right person in the right place?

Hungarian matching (``metrics.match_faces``) pairs generated faces with references by similarity
alone, so a picture where A stands where B should and B where A should scores as if both were
right. The pack knows where each identity was meant to be (slot n's region, from Face Mask), so
here every generated face is given to the slot whose region holds its centre, and each slot is
judged on its own face:

* ``own``: cosine of slot n's face with reference n (0 when the slot has no face);
* ``best_other`` / ``mean_other``: its highest / mean cosine with the other references;
* verdict: ``ok`` (reference n is its best match), ``swapped`` (it looks most like m and slot m's
  face looks most like n), ``duplicate`` (it looks most like m, who is also the best match of
  another slot), ``wrong`` (it looks most like m, who is nowhere else), ``missing`` (no face);
* ``slot_accuracy``: the share of slots whose verdict is ``ok``; ``swaps``: the pairs swapped;
* ``extra``: faces outside every region, or a second face in a region (the one nearer the slot's
  centre is kept).

The confusion matrix by slot has references as rows and slots as columns (NaN = no face).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import cosine_matrix

VERDICTS = ("ok", "swapped", "duplicate", "wrong", "missing")


def faces_in_slots(face_boxes, image_size: tuple[int, int], region_masks, centres) -> np.ndarray:
    """(M,) slot index of each face (-1: outside every region, or a second face in a region).

    face_boxes: (M, 4) x1, y1, x2, y2 px of a (height, width) = ``image_size`` image.
    region_masks: (N, h, w) slot regions in normalised image space (any resolution; > 0.5 = inside).
    centres: (N, 2) normalised (x, y) slot centres; they break ties between overlapping regions and
    between two faces in one region (the nearer one is kept).
    """
    boxes = np.asarray(face_boxes, np.float64).reshape(-1, 4)
    masks = np.asarray(region_masks, np.float64)
    centres = np.asarray(centres, np.float64).reshape(-1, 2)
    if masks.ndim != 3 or masks.shape[0] != centres.shape[0]:
        raise ValueError(f"region masks {masks.shape} and centres {centres.shape} must describe the same N slots")
    height, width = image_size
    n, h, w = masks.shape
    face_xy = np.stack([(boxes[:, 0] + boxes[:, 2]) / (2 * width), (boxes[:, 1] + boxes[:, 3]) / (2 * height)], 1)
    slot = np.full(len(boxes), -1, np.int64)
    distance = np.full(len(boxes), np.inf)
    for f, (x, y) in enumerate(face_xy):
        row, col = int(np.clip(y * h, 0, h - 1)), int(np.clip(x * w, 0, w - 1))
        inside = np.flatnonzero(masks[:, row, col] > 0.5)
        if inside.size:
            d = np.linalg.norm(centres[inside] - (x, y), axis=1)
            slot[f], distance[f] = inside[int(np.argmin(d))], float(d.min())
    for s in range(n):  # one face per slot: the nearest to its centre
        holders = np.flatnonzero(slot == s)
        if holders.size > 1:
            keep = holders[int(np.argmin(distance[holders]))]
            slot[holders[holders != keep]] = -1
    return slot


@dataclass
class SlotScores:
    """Position-aware scores of one generated image (see the module docstring)."""

    similarity: np.ndarray  # (N, M) cosine, references x generated faces
    face_of_slot: np.ndarray  # (N,) generated face index in slot n, -1 = missing
    own: np.ndarray  # (N,) cosine with the slot's own reference, 0 if missing
    best_other: np.ndarray  # (N,) highest cosine with another reference (NaN: missing or N = 1)
    mean_other: np.ndarray  # (N,) mean cosine with the other references (NaN: missing or N = 1)
    best_match: np.ndarray  # (N,) reference most similar to slot n's face, -1 = missing
    verdicts: list[str]  # (N,) one of VERDICTS
    extra: int  # faces in no slot
    confusion: np.ndarray  # (N, N) references x slots, NaN = missing

    @property
    def num_slots(self) -> int:
        return len(self.verdicts)

    @property
    def num_missing(self) -> int:
        return self.verdicts.count("missing")

    @property
    def slot_accuracy(self) -> float:
        return self.verdicts.count("ok") / self.num_slots

    @property
    def swaps(self) -> list[tuple[int, int]]:
        """Pairs (n, m), n < m, whose faces stand in each other's place."""
        b = self.best_match
        return [(n, int(b[n])) for n in range(self.num_slots) if b[n] > n and b[int(b[n])] == n]

    def as_dict(self) -> dict:
        def floats(values):
            return [None if not np.isfinite(v) else float(v) for v in values]

        return {
            "slots": self.num_slots,
            "slot_accuracy": self.slot_accuracy,
            "swaps": len(self.swaps),
            "swapped_pairs": [list(p) for p in self.swaps],
            "missing": self.num_missing,
            "extra": self.extra,
            "verdicts": list(self.verdicts),
            "own": floats(self.own),
            "best_other": floats(self.best_other),
            "mean_other": floats(self.mean_other),
            "best_match": self.best_match.tolist(),
            "confusion_by_slot": [floats(row) for row in self.confusion],
        }


def _verdict(n: int, best: np.ndarray) -> str:
    b = int(best[n])
    if b < 0:
        return "missing"
    if b == n:
        return "ok"
    if best[b] == n:
        return "swapped"
    if any(best[k] == b for k in range(len(best)) if k != n):
        return "duplicate"
    return "wrong"


def score_slots(references, generated, face_slots) -> SlotScores:
    """Score N reference embeddings (N, d) against M generated faces (M, d) placed in slots.

    face_slots: (M,) slot of each generated face, -1 = in no slot (``faces_in_slots``).
    """
    refs = np.asarray(references, np.float64)
    n = refs.shape[0]
    if n == 0:
        raise ValueError("score_slots: no reference identities given")
    gens = np.asarray(generated, np.float64).reshape(-1, refs.shape[1])
    face_slots = np.asarray(face_slots, np.int64).reshape(-1)
    if face_slots.shape[0] != gens.shape[0]:
        raise ValueError(f"score_slots: {gens.shape[0]} generated faces but {face_slots.shape[0]} slot indices")
    if (face_slots >= n).any() or len(set(face_slots[face_slots >= 0].tolist())) != int((face_slots >= 0).sum()):
        raise ValueError(f"score_slots: slot indices {face_slots.tolist()} must be distinct and below {n} (or -1)")
    similarity = cosine_matrix(refs, gens)  # (N, M)
    face_of_slot = np.full(n, -1, np.int64)
    face_of_slot[face_slots[face_slots >= 0]] = np.flatnonzero(face_slots >= 0)
    present = face_of_slot >= 0
    confusion = np.full((n, n), np.nan)
    confusion[:, present] = similarity[:, face_of_slot[present]]
    own = np.where(present, np.nan_to_num(np.diag(confusion)), 0.0)
    off = confusion.copy()
    np.fill_diagonal(off, np.nan)
    best_other = np.full(n, np.nan)
    mean_other = np.full(n, np.nan)
    if n > 1:
        best_other[present] = np.nanmax(off[:, present], axis=0)
        mean_other[present] = np.nanmean(off[:, present], axis=0)
    best_match = np.where(present, np.nanargmax(np.where(present[None], confusion, -np.inf), axis=0), -1)
    verdicts = [_verdict(s, best_match) for s in range(n)]
    extra = int((face_slots < 0).sum())
    return SlotScores(similarity, face_of_slot, own, best_other, mean_other, best_match, verdicts, extra, confusion)
