"""The Identity Report node's work: generated images scored against the identities of a FACES value.

With the ID regions (``face_masks``) every slot is judged where it was meant to be
(``positions``): a verdict per slot (OK / swapped / duplicate / wrong / missing) drawn on the
image, slot accuracy and swaps in the text, and the confusion matrix by slot. Without them the
faces are matched to the identities by similarity (``metrics``), which cannot see a swap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .encoders import FaceEncoder
from .heatmap import render_confusion
from .metrics import IdentityScores, score_identities
from .positions import SlotScores, faces_in_slots, score_slots

VERDICT_TEXT = {"ok": "OK", "swapped": "SWAPPED", "duplicate": "DUPLICATE", "wrong": "WRONG", "missing": "MISSING"}


def identity_labels(faces) -> list[str]:
    return [ident.label or f"ID {n + 1}" for n, ident in enumerate(faces.identities)]


def references_from_faces(faces, encoder: FaceEncoder) -> np.ndarray:
    """(N, d) reference embeddings of a ``Faces`` value under ``encoder``.

    The pack's own recognizer uses the identities' global features as they are (what the model
    was conditioned on); any other encoder embeds the aligned crops the identities came from.
    """
    if len(faces) == 0:
        raise ValueError("FACES holds no identity to evaluate against")
    analyzer_info = getattr(getattr(encoder, "analyzer", None), "info", None)
    if encoder.name == "insightface" and analyzer_info is not None:
        same = (
            not faces.recognizer.sha256 or not analyzer_info.sha256 or faces.recognizer.sha256 == analyzer_info.sha256
        )
        if same:
            return faces.global_features()
    refs = []
    for n, ident in enumerate(faces.identities):
        crops = [s.crop for s in ident.sources if getattr(s, "crop", None) is not None]
        if not crops:
            raise ValueError(
                f"identity {n + 1} ('{identity_labels(faces)[n]}') carries no face crop to embed with "
                f"the {encoder.name} encoder: build FACES with Load Faces, or use the insightface encoder"
            )
        e = np.stack([encoder.embed_crop(c) for c in crops])  # (K, d)
        e = e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
        refs.append(e.mean(0))
    return np.stack(refs)


@dataclass
class ImageReport:
    """Scores of one generated image: Hungarian (``identity``) and, with regions, by slot (``slots``)."""

    identity: IdentityScores
    slots: SlotScores
    face_boxes: np.ndarray  # (M, 4) px
    embeddings: np.ndarray  # (M, d) the generated faces
    by_position: bool  # slots come from the ID regions (False: from the Hungarian matching)


def score_image(
    encoder: FaceEncoder, refs: np.ndarray, image: np.ndarray, face_masks=None, clamp: bool = True
) -> ImageReport:
    """Encode the faces of one (H, W, 3) image and score them against ``refs`` (N, d)."""
    found = encoder.encode(image)
    gens = np.stack([f.embedding for f in found]) if found else np.zeros((0, refs.shape[1]))
    boxes = np.stack([f.box for f in found]).astype(np.float64) if found else np.zeros((0, 4))
    identity = score_identities(refs, gens, clamp=clamp)
    if face_masks is not None:
        if len(face_masks) != len(refs):
            raise ValueError(
                f"face_masks hold {len(face_masks)} regions but FACES has {len(refs)} identities: "
                "connect the Face Mask node that was built for these faces"
            )
        face_slots = faces_in_slots(boxes, image.shape[:2], _numpy(face_masks.masks), _numpy(face_masks.centres))
    else:  # slot n = the face the Hungarian matching gave to identity n
        face_slots = np.full(len(found), -1, np.int64)
        present = identity.assignment >= 0
        face_slots[identity.assignment[present]] = np.flatnonzero(present)
    return ImageReport(identity, score_slots(refs, gens, face_slots), boxes, gens, face_masks is not None)


def _numpy(values) -> np.ndarray:
    """A torch tensor (any device) or array as float64 numpy."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, np.float64)


def slot_boxes_px(report: ImageReport, image_size: tuple[int, int], region_boxes=None) -> list[np.ndarray | None]:
    """(4,) px box per slot: its face, else its region's box (normalised ``region_boxes``), else None."""
    height, width = image_size
    out = []
    for n, f in enumerate(report.slots.face_of_slot):
        if f >= 0:
            out.append(report.face_boxes[f])
        elif region_boxes is not None:
            out.append(np.asarray(region_boxes[n], np.float64) * [width, height, width, height])
        else:
            out.append(None)
    return out


def verdict_labels(slots: SlotScores, labels: list[str]) -> list[str]:
    """'<name> 0.81 OK' / '<name> 0.42 SWAPPED' / '<name> MISSING' per slot."""
    out = []
    for n, verdict in enumerate(slots.verdicts):
        if verdict == "missing":
            out.append(f"{labels[n]} MISSING")
        else:
            out.append(f"{labels[n]} {slots.own[n]:.2f} {VERDICT_TEXT[verdict]}")
    return out


def draw_verdicts(image: np.ndarray, report: ImageReport, labels: list[str], region_boxes=None) -> np.ndarray:
    """The image with each slot's box in its slot colour and its verdict, extra faces in grey (the
    pack's one preview drawing)."""
    from ..faces.preview import draw_preview

    boxes = slot_boxes_px(report, image.shape[:2], region_boxes)
    texts = verdict_labels(report.slots, labels)
    marks = [_Box(b) for b in boxes if b is not None]
    slot_of = {id(m): n for m, n in zip(marks, [n for n, b in enumerate(boxes) if b is not None])}
    text_of = {id(m): texts[slot_of[id(m)]] for m in marks}
    in_slots = set(report.slots.face_of_slot.tolist())
    extras = [_Box(b) for f, b in enumerate(report.face_boxes) if f not in in_slots]
    return draw_preview(image, marks + extras, slot_of, labels=text_of)


class _Box:
    """What ``draw_preview`` needs of a face: its box."""

    def __init__(self, box):
        self.box = np.asarray(box, np.float64)


def _slot_lines(report: ImageReport, labels: list[str], clamp: bool) -> list[str]:
    s = report.slots
    lines = []
    for n, label in enumerate(labels):
        f = int(s.face_of_slot[n])
        if f < 0:
            lines.append(f"  {label}: {0.0:.3f} (no face) {VERDICT_TEXT['missing']}")
            continue
        x1, _, x2, _ = report.face_boxes[f]
        own = max(0.0, float(s.own[n])) if clamp else float(s.own[n])
        line = f"  {label}: {own:.3f} (face at x={int(x1)}..{int(x2)}) {VERDICT_TEXT[s.verdicts[n]]}"
        if s.verdicts[n] != "ok":
            line += f", looks most like {labels[int(s.best_match[n])]} ({s.similarity[s.best_match[n], f]:.3f})"
        lines.append(line)
    return lines


def identity_report(encoder: FaceEncoder, faces, images: list[np.ndarray], clamp: bool = True, face_masks=None):
    """(report text, one confusion heatmap per image, one verdict image per image, [ImageReport])."""
    labels = identity_labels(faces)
    refs = references_from_faces(faces, encoder)
    n = len(labels)
    region_boxes = None
    if face_masks is not None:
        from ..face_regions import slot_boxes

        region_boxes = slot_boxes(face_masks)
    how = "by position (face_masks)" if face_masks is not None else "by similarity (no face_masks: swaps are invisible)"
    lines = [
        f"InstantFamily identity report: encoder {encoder.name}, {n} identities, {len(images)} images"
        + ("" if clamp else " (similarities not clamped)")
        + f"; slots {how}"
    ]
    reports, heatmaps, drawn = [], [], []
    for b, image in enumerate(images):
        r = score_image(encoder, refs, image, face_masks, clamp)
        reports.append(r)
        s, ident = r.slots, r.identity
        head = (
            f"image {b}: {len(r.face_boxes)} faces found, {ident.num_missing} missing | identity {ident.identity:.3f}"
        )
        if ident.multi_sim is not None:
            head += f" | mixing {ident.mixing:.3f} | MultiSim {ident.multi_sim:.3f}"
        lines.append(head)
        lines.append(
            f"  slots: accuracy {s.slot_accuracy:.2f}, {len(s.swaps)} swapped pairs, {s.num_missing} "
            f"missing, {s.extra} extra faces"
        )
        lines.extend(_slot_lines(r, labels, clamp))
        title = f"image {b}: references x slots ({encoder.name})"
        heatmaps.append(
            render_confusion(s.confusion, [f"ref {x}" for x in labels], [f"slot {x}" for x in labels], title=title)
        )
        drawn.append(draw_verdicts(image, r, labels, region_boxes))
    if len(images) > 1:
        identities = np.array([r.identity.identity for r in reports])
        lines.append(f"mean identity {identities.mean():.3f} ± {identities.std():.3f}")
        accuracy = np.array([r.slots.slot_accuracy for r in reports])
        lines.append(
            f"mean slot accuracy {accuracy.mean():.3f}; swapped pairs in all {sum(len(r.slots.swaps) for r in reports)}"
        )
        if n > 1:
            ms = np.array([r.identity.multi_sim for r in reports])
            lines.append(f"mean MultiSim {ms.mean():.3f} ± {ms.std():.3f}")
    return "\n".join(lines), heatmaps, drawn, reports
