"""The members of one prepared sample: image, caption, faces (npz) and pose (POSE_KEYPOINT json).

faces.npz (no pickles): boxes (N, 4) x1 y1 x2 y2 px, keypoints (N, 5, 2) px, scores (N,),
global_features (N, d_gf), local_features (N, d_lf, L, L) (float16 by default), image_size (2,) H, W.
pose.json: a ComfyUI ``POSE_KEYPOINT`` value (a list with one frame) for the same image.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np

from instantfamily_core.identity import DetectedFace
from instantfamily_core.pose import encode_pose_keypoint

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def encode_faces(faces: Sequence[DetectedFace], image_size: tuple[int, int], dtype=np.float16) -> bytes:
    n = len(faces)
    globals_ = np.stack([f.global_feature for f in faces]) if n else np.zeros((0, 512), np.float32)
    locals_ = np.stack([f.local_feature for f in faces]) if n else np.zeros((0, 512, 7, 7), np.float32)
    arrays = {
        "boxes": np.array([f.box for f in faces], np.float32).reshape(n, 4),
        "keypoints": np.array([f.keypoints for f in faces], np.float32).reshape(n, 5, 2),
        "scores": np.array([f.score for f in faces], np.float32).reshape(n),
        "global_features": globals_.astype(dtype),
        "local_features": locals_.astype(dtype),
        "image_size": np.array(image_size, np.int64),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def decode_faces(data: bytes) -> dict[str, np.ndarray]:
    """faces.npz bytes -> dict of float32 arrays (+ int image_size)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        out = {name: npz[name] for name in npz.files}
    for name in ("boxes", "keypoints", "scores", "global_features", "local_features"):
        out[name] = out[name].astype(np.float32)
    return out


def encode_pose(people: Sequence[np.ndarray], width: int, height: int) -> bytes:
    """POSE_KEYPOINT json of people given as (18, 3) arrays of normalised x, y, confidence."""
    return json.dumps(encode_pose_keypoint([np.asarray(p) for p in people], width, height)).encode()


def image_member(members: dict[str, bytes]) -> tuple[str, bytes] | None:
    for ext in IMAGE_EXTS:
        if ext in members:
            return ext, members[ext]
    return None
