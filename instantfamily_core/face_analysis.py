"""Face analysis entry points used by the nodes (the implementation lives in ``faces/``)."""

from __future__ import annotations

from .faces import FaceAnalyzer, list_model_packs, load_face_analyzer
from .faces.dlib_backend import DlibFaceBackend
from .faces.grouping import COMBINE, MODES, ORDERS, build_faces
from .faces.pipeline import LoadedFaces, load_faces
from .identity import DetectedFace


def analyze_faces(analyzer: FaceAnalyzer, image) -> list[DetectedFace]:
    """Every face of one image (any layout ``faces.images.to_rgb_uint8`` accepts), detector order."""
    return analyzer.analyze(image)


__all__ = [
    "COMBINE",
    "MODES",
    "ORDERS",
    "DlibFaceBackend",
    "FaceAnalyzer",
    "LoadedFaces",
    "analyze_faces",
    "build_faces",
    "list_model_packs",
    "load_face_analyzer",
    "load_faces",
]
