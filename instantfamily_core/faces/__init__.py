"""Face detection and identity features (DESIGN §2 "Faces")."""

from .align import align_crop
from .analyzer import FaceAnalyzer, retry_sizes
from .images import to_rgb_uint8
from .loader import load_face_analyzer
from .model_pack import ModelPack, find_model_pack, list_model_packs
from .providers import CHOICES as PROVIDER_CHOICES
from .recognizer import OnePassRecognizer, find_feature_map

__all__ = [
    "PROVIDER_CHOICES",
    "FaceAnalyzer",
    "ModelPack",
    "OnePassRecognizer",
    "align_crop",
    "find_feature_map",
    "find_model_pack",
    "list_model_packs",
    "load_face_analyzer",
    "retry_sizes",
    "to_rgb_uint8",
]
