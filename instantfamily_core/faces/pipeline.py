"""Load Faces end to end: images -> detections (all images) -> identity slots, preview, crops."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..identity import DetectedFace, Faces
from ..images import to_rgb_uint8
from .analyzer import FaceAnalyzer, retry_sizes
from .grouping import COMBINE_RULES, FACE_ORDERS, FACE_SELECTION_MODES, build_faces
from .preview import draw_preview


@dataclass
class LoadedFaces:
    faces: Faces
    previews: list[np.ndarray]  # per image, (H, W, 3) uint8
    crops: np.ndarray  # (K, S, S, 3) uint8: the aligned crops of every face used, in slot order
    detections: list[list[DetectedFace]]  # every face found, per image


def no_face_message(index: int, shape: tuple[int, ...], det_size: int) -> str:
    sizes = ", ".join(str(s) for s in retry_sizes(det_size))
    return (
        f"no face found in image {index} ({shape[1]}x{shape[0]} px), even after retrying detection at sizes "
        f"{sizes} and with a padded border: crop the image tighter around the face, or use a photo in which "
        "the face is larger (at least ~64 px across) and seen from the front"
    )


def detect_all(
    analyzer: FaceAnalyzer, images: Sequence, progress: Callable[[int, int], None] | None = None
) -> tuple[list[np.ndarray], list[list[DetectedFace]]]:
    """RGB uint8 images and the faces of each; raises ValueError for an image without a face."""
    rgbs, detections = [], []
    for index, image in enumerate(images):
        rgb = to_rgb_uint8(image, f"image {index}")
        faces = analyzer.analyze(rgb, index)
        if not faces:
            raise ValueError(no_face_message(index, rgb.shape, analyzer.det_size))
        rgbs.append(rgb)
        detections.append(faces)
        if progress is not None:
            progress(index + 1, len(images))
    return rgbs, detections


def load_faces(
    analyzer: FaceAnalyzer,
    images: Sequence,
    mode: str = FACE_SELECTION_MODES[0],
    order: str = FACE_ORDERS[0],
    indices: str = "",
    combine: str = COMBINE_RULES[0],
    progress: Callable[[int, int], None] | None = None,
) -> LoadedFaces:
    if len(images) == 0:
        raise ValueError("Load Faces got no images")
    rgbs, detections = detect_all(analyzer, images, progress)
    faces = build_faces(detections, analyzer.info, mode, order, indices, combine)
    slots = {id(source): slot for slot, identity in enumerate(faces.identities) for source in identity.sources}
    previews = [draw_preview(rgb, found, slots) for rgb, found in zip(rgbs, detections)]
    crops = np.stack([_crop(source) for identity in faces.identities for source in identity.sources])
    return LoadedFaces(faces, previews, crops, detections)


def _crop(face) -> np.ndarray:
    if face.crop is None:
        raise RuntimeError("a detected face has no aligned crop; the analyzer must keep crops for Load Faces")
    return face.crop
