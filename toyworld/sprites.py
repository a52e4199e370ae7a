"""Drawing toy heads and portraits: float RGB canvases, supersampled, exact ground-truth geometry."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .identities import SUPERSAMPLE, IdentityParams, Variation, _hsv, sample_variation


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs + 0.5, ys + 0.5


def _paint(canvas: np.ndarray, mask: np.ndarray, colour) -> None:
    canvas[mask] = np.asarray(colour, np.float32)


def _segment_distance(xs, ys, a, b) -> np.ndarray:
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / max(length2, 1e-9), 0.0, 1.0)
    return np.hypot(xs - (ax + t * dx), ys - (ay + t * dy))


def _texture(params: IdentityParams, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1]: the identity's skin pattern in head coordinates (rotates with the head)."""
    if params.texture == 0:
        return np.zeros_like(u)
    rng = np.random.default_rng(params.texture_seed)
    if params.texture == 1:  # freckles: a few fixed dots
        out = np.zeros_like(u)
        for cx, cy in rng.uniform(-0.7, 0.7, (7, 2)):
            out = np.maximum(out, (np.hypot(u - cx, v - cy) < 0.09).astype(np.float32))
        return out
    angle = rng.uniform(0, math.pi)  # stripes
    phase = rng.uniform(0, 2 * math.pi)
    return (np.sin((u * math.cos(angle) + v * math.sin(angle)) * params.texture_scale * 2 + phase) > 0.55).astype(
        np.float32
    )


@dataclass
class FaceGeometry:
    """Where a head was drawn, in pixels of the output image."""

    box: np.ndarray  # (4,) x1, y1, x2, y2 of the head (without hair volume)
    keypoints: np.ndarray  # (5, 2) image-left eye, image-right eye, nose, mouth left, mouth right
    centre: np.ndarray  # (2,)
    radius: float


def draw_head(
    canvas: np.ndarray,
    params: IdentityParams,
    centre: tuple[float, float],
    radius: float,
    variation: Variation,
    supersample: int = 1,
) -> FaceGeometry:
    """Draw one head on a float RGB canvas (supersampled pixels) and return its geometry in
    output pixels (supersampled coordinates divided by ``supersample``)."""
    height, width = canvas.shape[:2]
    r = radius * variation.scale
    cx = centre[0] + variation.offset[0] * r
    cy = centre[1] + variation.offset[1] * r
    cos, sin = math.cos(variation.rotation), math.sin(variation.rotation)
    ry = r * params.head_aspect
    reach = (max(r, ry) * (1.0 + params.hair_volume) + 2) * 1.5
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, width)
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, height)
    xs, ys = _grid(y1 - y0, x1 - x0)
    xs, ys = xs + x0 - cx, ys + y0 - cy
    u = (cos * xs + sin * ys) / r  # head coordinates: u right, v down, unit = radius
    v = (-sin * xs + cos * ys) / r
    vn = v / params.head_aspect
    p = params.head_power
    head = np.abs(u) ** p + np.abs(vn) ** p <= 1.0
    hv = params.hair_volume
    outer = np.abs(u / (1 + hv * 0.5)) ** p + np.abs((vn + hv * 0.3) / (1 + hv)) ** p <= 1.0
    style = params.hair_style
    if style == 0:
        hair = np.zeros_like(head)
    elif style == 1:  # cap
        hair = outer & (vn < -0.35)
    elif style == 2:  # tall
        hair = (np.abs(u / 0.8) ** p + np.abs((vn + 0.55) / (0.5 + hv)) ** p <= 1.0) & (vn < -0.3)
    elif style == 3:  # long: top and sides
        hair = outer & ((vn < -0.4) | (np.abs(u) > 0.72)) & (vn < 0.8)
    else:  # side parting
        hair = outer & ((vn < -0.25 + 0.35 * u) | (vn < -0.5))

    region = canvas[y0:y1, x0:x1]
    behind = hair & ~head
    _paint(region, behind, params.hair)
    skin = np.asarray(params.skin, np.float32)
    pattern = _texture(params, u, vn)
    shade = skin[None, None] * (1.0 - 0.35 * pattern[..., None])  # darker freckles / stripes
    region[head] = shade[head]
    _paint(region, head & hair, params.hair)
    eye_size = params.eye_size
    for side in (-1.0, 1.0):
        eye = np.hypot(u - side * params.eye_dx, vn - params.eye_y) < eye_size
        _paint(region, eye & head, (1.0, 1.0, 1.0))
        pupil = np.hypot(u - side * params.eye_dx, vn - params.eye_y) < eye_size * 0.6
        _paint(region, pupil & head, params.eye)
    mouth = (np.abs(u) < params.mouth_half_width) & (np.abs(vn - params.mouth_y) < 0.07 + 0.03 * (1 - np.abs(u)))
    _paint(region, mouth & head, params.mouth)

    # Lighting is applied to the whole head + hair area, in head coordinates.
    area = head | hair
    light = variation.brightness * (1.0 + variation.light[0] * u + variation.light[1] * vn)
    region[area] = np.clip(region[area] * light[area][:, None] * np.asarray(variation.cast, np.float32), 0, 1)

    def to_image(points_uv: np.ndarray) -> np.ndarray:
        pu, pv = points_uv[:, 0] * r, points_uv[:, 1] * r * params.head_aspect
        px = cx + cos * pu - sin * pv
        py = cy + sin * pu + cos * pv
        return np.stack([px, py], axis=1) / supersample

    nose_y = (params.eye_y + params.mouth_y) / 2
    keypoints = to_image(np.array([
        [-params.eye_dx, params.eye_y], [params.eye_dx, params.eye_y], [0.0, nose_y],
        [-params.mouth_half_width, params.mouth_y], [params.mouth_half_width, params.mouth_y],
    ]))  # fmt: skip
    corners = to_image(np.array([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]))
    box = np.concatenate([corners.min(axis=0), corners.max(axis=0)])
    return FaceGeometry(box=box, keypoints=keypoints, centre=np.array([cx, cy]) / supersample, radius=r / supersample)


def downsample(canvas: np.ndarray, factor: int) -> np.ndarray:
    """Area-average a float canvas by an integer factor -> uint8."""
    if factor > 1:
        h, w = canvas.shape[0] // factor, canvas.shape[1] // factor
        canvas = canvas[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).mean(axis=(1, 3))
    return np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)


def add_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    if std <= 0:
        return image
    noisy = image.astype(np.float32) + rng.normal(0.0, std * 255.0, image.shape)
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# portraits (reference photos)


@dataclass
class Portrait:
    image: np.ndarray  # (S, S, 3) uint8
    geometry: FaceGeometry


def render_portrait(
    params: IdentityParams,
    size: int,
    rng: np.random.Generator,
    variation: Variation | None = None,
    head_fraction: float | None = None,
) -> Portrait:
    """One reference photo: the head alone on a random plain background, ``size`` px square."""
    variation = variation or sample_variation(rng)
    ss = SUPERSAMPLE if size <= 64 else 2
    background = np.asarray(_hsv(rng.uniform(), rng.uniform(0, 0.5), rng.uniform(0.3, 0.9)), np.float32)
    canvas = np.empty((size * ss, size * ss, 3), np.float32)
    canvas[:] = background
    fraction = head_fraction if head_fraction is not None else rng.uniform(0.24, 0.32)
    geometry = draw_head(canvas, params, (size * ss / 2, size * ss * 0.52), size * ss * fraction, variation, ss)
    image = add_noise(downsample(canvas, ss), variation.noise, rng)
    return Portrait(image=image, geometry=geometry)
