"""Data types for detected faces and the identities built from them.

``Faces`` is what flows through ComfyUI's ``INSTANTFAMILY_FACES`` socket: an ordered list of
identity slots (slot n becomes the n-th block of the embedding stack), each carrying the
recognizer's global embedding and its last L x L feature map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import RecognizerInfo


@dataclass
class DetectedFace:
    """One face found by the detector, with both identity features from one recognizer pass."""

    box: np.ndarray  # (4,) x1, y1, x2, y2 in pixels of the source image
    keypoints: np.ndarray  # (5, 2) eyes, nose, mouth corners in pixels
    score: float
    global_feature: np.ndarray  # (d_gf,) float32, the recognizer's raw output
    local_feature: np.ndarray  # (d_lf, L, L) float32, the map before flatten/FC
    image_index: int = 0
    image_size: tuple[int, int] = (0, 0)  # (height, width) of the source image
    crop: np.ndarray | None = None  # (112, 112, 3) uint8 RGB, the aligned crop

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = (float(v) for v in self.box)
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


@dataclass
class Identity:
    """One identity slot of the embedding stack (possibly averaged over several photos)."""

    global_feature: np.ndarray  # (d_gf,) float32
    local_feature: np.ndarray  # (d_lf, L, L) float32
    label: str = ""
    sources: list[DetectedFace] = field(default_factory=list)


@dataclass
class Faces:
    """The value of an ``INSTANTFAMILY_FACES`` socket: identity slots in stack order."""

    identities: list[Identity]
    recognizer: RecognizerInfo = field(default_factory=RecognizerInfo)

    def __len__(self) -> int:
        return len(self.identities)

    def global_features(self) -> np.ndarray:
        """(N, d_gf) float32."""
        if not self.identities:
            return np.zeros((0, self.recognizer.global_shape[-1]), np.float32)
        return np.stack([i.global_feature for i in self.identities]).astype(np.float32)

    def local_features(self) -> np.ndarray:
        """(N, d_lf, L, L) float32."""
        if not self.identities:
            return np.zeros((0, *self.recognizer.local_shape), np.float32)
        return np.stack([i.local_feature for i in self.identities]).astype(np.float32)
