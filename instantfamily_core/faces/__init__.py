"""Face detection and identity features (DESIGN §2 "Faces").

The names below load their submodule on first use: a node that only lists model packs for its
dropdown must not import insightface and OpenCV (OpenCV also edits the process environment).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "align_crop": "align",
    "FaceAnalyzer": "analyzer",
    "retry_sizes": "analyzer",
    "load_face_analyzer": "loader",
    "ModelPack": "model_pack",
    "find_model_pack": "model_pack",
    "list_model_packs": "model_pack",
    "PROVIDER_CHOICES": "providers",
    "OnePassRecognizer": "recognizer",
    "find_feature_map": "recognizer",
}
_RENAMED = {"PROVIDER_CHOICES": "CHOICES"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    return getattr(module, _RENAMED.get(name, name))
