"""Turn detected faces into identity slots: one per image, every face of a group photo, or averaged.

Modes
- ``largest face per image``: the largest face of each image is one ID.
- ``every face``: every face of each image (image after image), ordered left to right by box
  centre (or largest first); ``indices`` such as ``"0,2,3"`` picks faces of that ordered list.
Combining (the chosen faces into one ID, as face packs' users know it)
- ``separate``: one ID per chosen face.
- ``average``: the mean of the raw global and local features.
- ``normalized average``: the mean of L2-normalised features, rescaled to the mean norm of the
  inputs, so each photo weighs the same and the features keep the scale the projector was
  trained on.
"""

from __future__ import annotations

import numpy as np

from ..config import RecognizerInfo
from ..identity import DetectedFace, Faces, Identity

# The Load Faces node's widget values (stored in saved workflows: never rename).
FACE_SELECTION_MODES = ("largest face per image", "every face")  # which faces of each photo become IDs
FACE_ORDERS = ("left to right", "largest first")  # the order of one photo's faces
COMBINE_RULES = ("separate", "average", "normalized average")  # one ID per face, or all faces as one ID


def parse_indices(text: str) -> list[int]:
    """``"0, 2,3"`` -> [0, 2, 3]; empty -> []. Raises ValueError naming the bad entry."""
    indices = []
    for part in str(text or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"face indices: {part!r} is not a face number; write e.g. '0,2,3' (counting from 0)")
        if int(part) in indices:
            raise ValueError(
                f"face indices: face {part} is listed twice; each face can be one identity only "
                "(to weight a person more, give several photos and combine them)"
            )
        indices.append(int(part))
    return indices


def order_faces(faces: list[DetectedFace], order: str = FACE_ORDERS[0]) -> list[DetectedFace]:
    """Faces of one image, left to right by box centre x (then y), or by area, largest first."""
    if order not in FACE_ORDERS:
        raise ValueError(f"face order must be one of {list(FACE_ORDERS)}, got {order!r}")
    if order == FACE_ORDERS[1]:
        return sorted(faces, key=lambda f: -f.area)
    return sorted(faces, key=lambda f: (float(f.box[0] + f.box[2]), float(f.box[1] + f.box[3])))


def choose_faces(
    per_image: list[list[DetectedFace]],
    mode: str = FACE_SELECTION_MODES[0],
    order: str = FACE_ORDERS[0],
    indices: str = "",
) -> list[DetectedFace]:
    """The faces that become identities, in slot order (before combining)."""
    if mode not in FACE_SELECTION_MODES:
        raise ValueError(f"face mode must be one of {list(FACE_SELECTION_MODES)}, got {mode!r}")
    if mode == FACE_SELECTION_MODES[0]:
        chosen = [max(faces, key=lambda f: f.area) for faces in per_image if faces]
    else:
        chosen = [face for faces in per_image for face in order_faces(faces, order)]
    picks = parse_indices(indices)
    if picks:
        bad = [i for i in picks if i >= len(chosen)]
        if bad:
            raise ValueError(
                f"face indices {bad} do not exist: {len(chosen)} face(s) were found, numbered 0 to {len(chosen) - 1} "
                "in the preview"
            )
        chosen = [chosen[i] for i in picks]
    return chosen


def _normalised_mean(arrays: np.ndarray) -> np.ndarray:
    flat = arrays.reshape(len(arrays), -1).astype(np.float64)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    unit = flat / np.maximum(norms, 1e-12)
    mean = unit.mean(0)
    mean *= norms.mean() / max(np.linalg.norm(mean), 1e-12)
    return mean.reshape(arrays.shape[1:]).astype(np.float32)


def combine_faces(faces: list[DetectedFace], how: str) -> Identity:
    """One identity from several faces of the same person."""
    if how not in COMBINE_RULES[1:]:
        raise ValueError(f"combine must be one of {list(COMBINE_RULES[1:])} here, got {how!r}")
    globals_ = np.stack([f.global_feature for f in faces])  # (K, D)
    locals_ = np.stack([f.local_feature for f in faces])  # (K, C, L, L)
    if how == "average":
        global_feature, local_feature = globals_.mean(0).astype(np.float32), locals_.mean(0).astype(np.float32)
    else:
        global_feature, local_feature = _normalised_mean(globals_), _normalised_mean(locals_)
    images = sorted({f.image_index for f in faces})
    return Identity(
        global_feature,
        local_feature,
        label=f"{how} of {len(faces)} face(s) from image(s) {images}",
        sources=list(faces),
    )


def build_faces(
    per_image: list[list[DetectedFace]],
    recognizer: RecognizerInfo,
    mode: str = FACE_SELECTION_MODES[0],
    order: str = FACE_ORDERS[0],
    indices: str = "",
    combine: str = COMBINE_RULES[0],
) -> Faces:
    """Identity slots from the faces of each image. Raises ValueError when nothing is chosen."""
    if combine not in COMBINE_RULES:
        raise ValueError(f"combine must be one of {list(COMBINE_RULES)}, got {combine!r}")
    chosen = choose_faces(per_image, mode, order, indices)
    if not chosen:
        raise ValueError("no face was chosen: check the images and the face indices")
    if combine == COMBINE_RULES[0]:
        identities = [
            Identity(f.global_feature, f.local_feature, label=f"image {f.image_index} face {i}", sources=[f])
            for i, f in enumerate(chosen)
        ]
    else:
        identities = [combine_faces(chosen, combine)]
    return Faces(identities=identities, recognizer=recognizer)


def append_faces(first: Faces | None, second: Faces) -> Faces:
    """``first``'s identities followed by ``second``'s; both must come from the same recognizer."""
    if first is None or not len(first):
        return second
    a, b = first.recognizer, second.recognizer
    if (a.sha256 and b.sha256 and a.sha256 != b.sha256) or tuple(a.local_shape) != tuple(b.local_shape):
        raise ValueError(
            f"cannot append faces analysed with recognizer '{b.file_name}' to faces analysed with "
            f"'{a.file_name}': use the same Load Face Analyzer for both"
        )
    return Faces(identities=list(first.identities) + list(second.identities), recognizer=a)
