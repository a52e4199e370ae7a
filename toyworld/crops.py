"""Face crops of toy identities for training the identity encoder and the judge.

A *view* of an identity is either a portrait (reference-photo style, 16-64 px) or the identity's
face inside a random scene (neighbours' hair and bodies around it, 32 px scenes). Both come with
ground-truth face keypoints, so crops are made exactly as the pack crops detected faces:
insightface's ArcFace alignment (``norm_crop``) to 112 x 112 for the encoder, and a plain
enlarged-box crop for the judge (a different preprocessing on purpose).
"""

from __future__ import annotations

import numpy as np

from . import world


def align_crop(image: np.ndarray, keypoints: np.ndarray, size: int = 112) -> np.ndarray:
    """ArcFace-aligned (size, size, 3) uint8 crop: the transform the pack's face analyzer uses."""
    from insightface.utils import face_align

    return face_align.norm_crop(image, landmark=np.asarray(keypoints, np.float32), image_size=size)


def box_crop(image: np.ndarray, box: np.ndarray, size: int = 32, enlarge: float = 1.3) -> np.ndarray:
    """Square crop around ``box`` (x1, y1, x2, y2 px) enlarged by ``enlarge``, resized to ``size``."""
    import cv2

    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = max(x2 - x1, y2 - y1) * enlarge / 2
    scale = size / (2 * half)
    matrix = np.array([[scale, 0, size / 2 - cx * scale], [0, scale, size / 2 - cy * scale]], np.float32)
    return cv2.warpAffine(
        image,
        matrix,
        (size, size),
        flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def identity_view(
    identity: int, rng: np.random.Generator, pool: tuple[int, ...], world_seed: int = 0, scene_size: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, keypoints (5, 2), box (4,)) of one random view of ``identity``.

    Half the views are portraits at a random resolution, half are the identity in a scene with
    up to five other identities drawn from ``pool``.
    """
    params = world.identity_params(identity, world_seed)
    if rng.random() < 0.5:
        size = int(rng.choice([16, 24, 32, 48, 64]))
        portrait = world.render_portrait(params, size, rng)
        return portrait.image, portrait.geometry.keypoints, portrait.geometry.box
    count = int(rng.integers(1, 7))
    others = [int(i) for i in rng.choice(pool, size=count, replace=False) if i != identity][: count - 1]
    identities = others + [identity]
    order = rng.permutation(len(identities))
    identities = [identities[i] for i in order]
    scene = world.make_scene(identities, rng, size=scene_size, world_seed=world_seed)
    person = scene.people[identities.index(identity)]
    return scene.image, person.keypoints, person.face_box


def view_batch(
    identities: list[int],
    views: int,
    rng: np.random.Generator,
    pool: tuple[int, ...],
    crop: str = "align",
    size: int = 112,
    world_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(crops (len(identities) * views, size, size, 3) uint8, labels) with ``views`` views per identity."""
    crops, labels = [], []
    for identity in identities:
        for _ in range(views):
            image, keypoints, box = identity_view(identity, rng, pool, world_seed)
            crops.append(align_crop(image, keypoints, size) if crop == "align" else box_crop(image, box, size))
            labels.append(identity)
    return np.stack(crops), np.asarray(labels, np.int64)
