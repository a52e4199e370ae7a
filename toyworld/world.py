"""A procedural identity world: face-like sprites with identity parameters, composed into scenes.

An *identity* is a set of parameters drawn from a seeded generator (head shape, skin / hair /
eye colours, hair style, feature geometry, a texture pattern). An *image* of that identity
varies by scale, small rotation, lighting, colour cast and pixel noise, so that identity !=
pixels. A *scene* puts 1-8 people (training uses 1-6) (head sprite + stick body) at template positions on a
background described by a caption ("three people on a teal gradient background"); each person
carries COCO-18 body keypoints, a face box and the five face keypoints ArcFace alignment uses.

Everything is numpy, deterministic given the seeds, and rendered with supersampling (drawn at
``SUPERSAMPLE`` x the size, then area-averaged) so that small sprites are anti-aliased.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .identities import (  # noqa: F401  (the world's public names live here too)
    BACKGROUND_COLOURS,
    BACKGROUND_STYLES,
    COUNT_WORDS,
    SUPERSAMPLE,
    IdentityParams,
    IdentitySplit,
    Variation,
    _hsv,
    identity_params,
    sample_variation,
    split_identities,
)
from .sprites import (  # noqa: F401
    FaceGeometry,
    Portrait,
    _grid,
    _paint,
    _segment_distance,
    add_noise,
    downsample,
    draw_head,
    render_portrait,
)

# ---------------------------------------------------------------------------------------------
# scenes


@dataclass
class Person:
    identity: int
    face_box: np.ndarray  # (4,) pixels
    keypoints: np.ndarray  # (5, 2) pixels
    body: np.ndarray  # (18, 3) normalised x, y, confidence (COCO-18)


@dataclass
class Scene:
    image: np.ndarray  # (S, S, 3) uint8
    caption: str
    people: list[Person]
    colour: str
    style: str
    background_mask: np.ndarray = field(repr=False, default=None)  # (S, S) bool: no person drawn there

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def face_boxes(self) -> np.ndarray:
        return np.stack([p.face_box for p in self.people]) if self.people else np.zeros((0, 4))

    def bodies(self) -> list[np.ndarray]:
        return [p.body for p in self.people]


MAX_PEOPLE = 8  # training scenes hold 1-6 (``random_scene``'s counts); 7 and 8 test N beyond them


def layout(count: int) -> list[tuple[float, float, float]]:
    """Template (x, y, head radius) of ``count`` people, normalised to the scene width."""
    if not 1 <= count <= MAX_PEOPLE:
        raise ValueError(f"a scene holds 1 to {MAX_PEOPLE} people, got {count}")
    rows = {1: [1], 2: [2], 3: [3], 4: [2, 2], 5: [3, 2], 6: [3, 3], 7: [4, 3], 8: [4, 4]}[count]
    radius = {1: 0.19, 2: 0.16, 3: 0.13, 4: 0.13, 5: 0.12, 6: 0.12, 7: 0.1, 8: 0.1}[count]
    ys = [0.34] if len(rows) == 1 else [0.2, 0.64]
    out = []
    for y, n in zip(ys, rows):
        out += [((i + 0.5) / n, y, radius) for i in range(n)]
    return out


def caption_for(count: int, colour: str, style: str) -> str:
    """The caption; the toy vocabulary counts to six, so 7 and 8 people are captioned "six people"."""
    noun = "person" if count == 1 else "people"
    return f"{COUNT_WORDS[min(count, len(COUNT_WORDS)) - 1]} {noun} on a {colour} {style} background"


def _background(size: int, colour: str, style: str, rng: np.random.Generator) -> np.ndarray:
    base = np.asarray(BACKGROUND_COLOURS[colour], np.float32) / 255.0
    base = np.clip(base * np.exp(rng.uniform(-0.08, 0.08, 3)), 0, 1)
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = base
    xs, ys = _grid(size, size)
    xs, ys = xs / size, ys / size
    if style == "gradient":  # light at the top, dark at the bottom
        canvas *= (1.25 - 0.5 * ys)[..., None]
    elif style == "split":  # the left half darker
        canvas[xs < 0.5] *= 0.7
    elif style == "vignette":  # dark corners
        canvas *= (1.15 - 0.9 * ((xs - 0.5) ** 2 + (ys - 0.5) ** 2))[..., None]
    return np.clip(canvas, 0, 1)


def _body_keypoints(cx: float, cy: float, r: float, aspect: float, rng: np.random.Generator) -> np.ndarray:
    """(18, 2) COCO-18 keypoints in pixels for a standing person whose head is at (cx, cy)."""
    hy = r * aspect
    arm = rng.uniform(-0.5, 0.5, 2)  # how far each arm swings out
    points = {
        0: (cx, cy + 0.15 * hy),  # nose
        1: (cx, cy + 1.35 * hy),  # neck
        2: (cx - 1.1 * r, cy + 1.5 * hy),  # right shoulder (image left)
        3: (cx - (1.5 + arm[0]) * r, cy + 2.6 * hy),
        4: (cx - (1.6 + 1.4 * arm[0]) * r, cy + 3.6 * hy),
        5: (cx + 1.1 * r, cy + 1.5 * hy),
        6: (cx + (1.5 + arm[1]) * r, cy + 2.6 * hy),
        7: (cx + (1.6 + 1.4 * arm[1]) * r, cy + 3.6 * hy),
        8: (cx - 0.6 * r, cy + 3.5 * hy),  # right hip
        9: (cx - 0.7 * r, cy + 4.9 * hy),
        10: (cx - 0.75 * r, cy + 6.2 * hy),
        11: (cx + 0.6 * r, cy + 3.5 * hy),
        12: (cx + 0.7 * r, cy + 4.9 * hy),
        13: (cx + 0.75 * r, cy + 6.2 * hy),
        14: (cx - 0.4 * r, cy - 0.15 * hy),  # right eye
        15: (cx + 0.4 * r, cy - 0.15 * hy),
        16: (cx - 0.95 * r, cy),  # right ear
        17: (cx + 0.95 * r, cy),
    }
    return np.array([points[i] for i in range(18)], np.float64)


LEG_STARTS = (8, 9, 11, 12)
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (1, 11), (8, 9), (9, 10), (11, 12), (12, 13))


def _draw_body(canvas: np.ndarray, points: np.ndarray, r: float, shirt, trousers) -> np.ndarray:
    """Stick body with a filled torso; returns the (H, W) mask of what was painted."""
    height, width = canvas.shape[:2]
    painted = np.zeros((height, width), bool)
    pad = r
    x0, y0 = (max(int(v - pad), 0) for v in points.min(axis=0))
    x1, y1 = (int(v + pad) + 1 for v in points.max(axis=0))
    x1, y1 = min(x1, width), min(y1, height)
    if x0 >= x1 or y0 >= y1:
        return painted
    region, mask_region = canvas[y0:y1, x0:x1], painted[y0:y1, x0:x1]
    xs, ys = _grid(y1 - y0, x1 - x0)
    xs, ys = xs + x0, ys + y0
    torso = np.array([points[2], points[5], points[11], points[8]])
    inside = np.ones(xs.shape, bool)  # convex quad: on the same side of all four edges
    for k in range(4):
        (ax, ay), (bx, by) = torso[k], torso[(k + 1) % 4]
        inside &= (bx - ax) * (ys - ay) - (by - ay) * (xs - ax) >= 0
    _paint(region, inside, shirt)
    mask_region |= inside
    for a, b in LIMBS:
        mask = _segment_distance(xs, ys, points[a], points[b]) < 0.32 * r
        _paint(region, mask, trousers if a in LEG_STARTS else shirt)
        mask_region |= mask
    return painted


def make_scene(
    identities: list[int],
    rng: np.random.Generator,
    size: int = 32,
    world_seed: int = 0,
    colour: str | None = None,
    style: str | None = None,
    variation_strength: float = 1.0,
) -> Scene:
    """A scene with one person per identity, in the given order (left to right, top row first)."""
    count = len(identities)
    colour = colour or str(rng.choice(list(BACKGROUND_COLOURS)))
    style = style or str(rng.choice(BACKGROUND_STYLES))
    ss = SUPERSAMPLE
    big = size * ss
    canvas = _background(big, colour, style, rng)
    person_mask = np.zeros((big, big), bool)
    slots = layout(count)
    people = []
    jitter = rng.uniform(-0.025, 0.025, (count, 2)) * variation_strength
    geometries = []
    for (x, y, radius), identity, (jx, jy) in zip(slots, identities, jitter):
        params = identity_params(identity, world_seed)
        r = radius * big * float(np.exp(rng.uniform(-0.08, 0.08) * variation_strength))
        cx, cy = (x + jx) * big, (y + jy) * big
        points = _body_keypoints(cx, cy, r, params.head_aspect, rng)
        shirt = _hsv(rng.uniform(), rng.uniform(0.2, 0.9), rng.uniform(0.3, 0.9))
        trousers = _hsv(rng.uniform(), rng.uniform(0.1, 0.6), rng.uniform(0.15, 0.6))
        person_mask |= _draw_body(canvas, points, r, shirt, trousers)
        variation = sample_variation(rng, variation_strength)
        variation = Variation(
            variation.scale,
            variation.rotation,
            variation.brightness,
            variation.light,
            variation.cast,
            variation.noise,
            (0.0, 0.0),
        )
        before = canvas.copy()
        geometry = draw_head(canvas, params, (cx, cy), r, variation, ss)
        person_mask |= np.any(canvas != before, axis=2)
        geometries.append((identity, geometry, points, variation.noise))
    image = downsample(canvas, ss)
    for identity, geometry, points, _ in geometries:
        body = np.zeros((18, 3), np.float32)
        body[:, :2] = points / big
        inside = (body[:, 0] >= 0) & (body[:, 0] < 1) & (body[:, 1] >= 0) & (body[:, 1] < 1)
        body[:, 2] = inside.astype(np.float32)
        body[~inside, :2] = 0
        box = np.clip(geometry.box, 0, size)
        people.append(
            Person(
                identity=int(identity),
                face_box=box.astype(np.float32),
                keypoints=geometry.keypoints.astype(np.float32),
                body=body,
            )
        )
    coverage = person_mask.reshape(size, ss, size, ss).mean(axis=(1, 3))
    return Scene(
        image=image,
        caption=caption_for(count, colour, style),
        people=people,
        colour=colour,
        style=style,
        background_mask=coverage == 0,
    )


def face_landmarks(scene: Scene) -> list[np.ndarray]:
    """Per person (68, 3) normalised face points for a POSE_KEYPOINT (see :func:`head_landmarks`)."""
    size = scene.image.shape[1]
    return [head_landmarks(person.face_box, person.keypoints, size) for person in scene.people]


def head_landmarks(face_box, keypoints, size: int) -> np.ndarray:
    """(68, 3) normalised face points of one head: 64 on the outline of its box (corners included, so
    the box read back from the pose is exactly the ground-truth head box) and the two eyes, nose and a
    mouth corner. face_box (4,) and keypoints (5, 2) in pixels of a ``size`` x ``size`` scene."""
    t = np.linspace(0, 1, 17)[:-1]
    x1, y1, x2, y2 = (float(v) / size for v in face_box)
    outline = np.concatenate(
        [
            np.stack([x1 + (x2 - x1) * t, np.full_like(t, y1)], 1),
            np.stack([np.full_like(t, x2), y1 + (y2 - y1) * t], 1),
            np.stack([x2 - (x2 - x1) * t, np.full_like(t, y2)], 1),
            np.stack([np.full_like(t, x1), y2 - (y2 - y1) * t], 1),
        ]
    )  # (64, 2)
    points = np.concatenate([outline, np.asarray(keypoints, np.float64)[:4] / size])  # (68, 2)
    return np.concatenate([points, np.ones((68, 1))], axis=1)


def random_scene(
    pool: tuple[int, ...] | list[int],
    rng: np.random.Generator,
    size: int = 32,
    counts: tuple[int, ...] = (1, 2, 3, 4, 5, 6),
    world_seed: int = 0,
) -> Scene:
    """A scene of a random number of distinct identities drawn from ``pool``."""
    count = int(rng.choice(counts))
    identities = [int(i) for i in rng.choice(pool, size=count, replace=False)]
    return make_scene(identities, rng, size=size, world_seed=world_seed)
