"""Toy identities: the parameters that make a person, the caption vocabulary, per-image variation.

An identity is a set of parameters drawn from a seeded generator (head shape, skin / hair / eye
colours, hair style, feature geometry, a texture pattern); an image of it varies by scale, small
rotation, lighting, colour cast and pixel noise (``Variation``), so that identity != pixels.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

SUPERSAMPLE = 4
NUM_HAIR_STYLES = 5  # 0 bald, 1 cap, 2 tall, 3 long, 4 side parting
NUM_TEXTURES = 3  # 0 none, 1 freckles, 2 stripes

COUNT_WORDS = ("one", "two", "three", "four", "five", "six")
BACKGROUND_COLOURS = {
    "red": (196, 64, 58),
    "orange": (228, 140, 48),
    "yellow": (226, 206, 72),
    "green": (72, 160, 72),
    "teal": (44, 150, 150),
    "blue": (58, 92, 196),
    "purple": (132, 70, 170),
    "grey": (128, 128, 128),
}
# Low-frequency styles only: the toy base model is tiny and trained for minutes, and fine patterns
# (stripes, dots) cost it more capacity than the people do.
BACKGROUND_STYLES = ("plain", "gradient", "split", "vignette")


# ---------------------------------------------------------------------------------------------
# identities


@dataclass(frozen=True)
class IdentityParams:
    """Everything that makes one identity; colours are RGB floats in [0, 1]."""

    identity: int
    head_power: float  # superellipse exponent: 2 = ellipse, larger = squarer
    head_aspect: float  # head height / width
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_style: int
    hair_volume: float  # how far the hair reaches (fraction of the head radius)
    eye: tuple[float, float, float]
    eye_dx: float  # half distance between the eyes, in head radii
    eye_y: float  # eye height (negative = above the centre), in head radii
    eye_size: float
    mouth_y: float
    mouth_half_width: float
    mouth: tuple[float, float, float]
    texture: int
    texture_seed: int
    texture_scale: float


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def identity_params(identity: int, world_seed: int = 0) -> IdentityParams:
    """The parameters of identity ``identity`` (a pure function of the two integers)."""
    rng = np.random.default_rng([world_seed, 7919, int(identity)])
    skin = _hsv(rng.uniform(), rng.uniform(0.15, 0.75), rng.uniform(0.45, 1.0))
    hair = _hsv(rng.uniform(), rng.uniform(0.1, 1.0), rng.uniform(0.1, 0.95))
    eye = _hsv(rng.uniform(), rng.uniform(0.3, 1.0), rng.uniform(0.1, 0.9))
    mouth = _hsv(rng.uniform(-0.08, 0.08), rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.8))
    return IdentityParams(
        identity=int(identity),
        head_power=float(rng.uniform(1.7, 4.5)),
        head_aspect=float(rng.uniform(0.95, 1.4)),
        skin=skin,
        hair=hair,
        hair_style=int(rng.integers(NUM_HAIR_STYLES)),
        hair_volume=float(rng.uniform(0.15, 0.45)),
        eye=eye,
        eye_dx=float(rng.uniform(0.3, 0.5)),
        eye_y=float(rng.uniform(-0.3, -0.05)),
        eye_size=float(rng.uniform(0.1, 0.2)),
        mouth_y=float(rng.uniform(0.38, 0.62)),
        mouth_half_width=float(rng.uniform(0.18, 0.42)),
        mouth=mouth,
        texture=int(rng.integers(NUM_TEXTURES)),
        texture_seed=int(rng.integers(2**31)),
        texture_scale=float(rng.uniform(3.0, 7.0)),
    )


@dataclass(frozen=True)
class IdentitySplit:
    """Disjoint identity pools: the generator trains on ``train``, is evaluated on ``heldout``;
    the judge trains on ``judge`` only (neither the generator's nor the evaluation identities)."""

    train: tuple[int, ...]
    heldout: tuple[int, ...]
    judge: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"train": list(self.train), "heldout": list(self.heldout), "judge": list(self.judge)}


def split_identities(num_train: int = 3000, num_heldout: int = 500, num_judge: int = 1500) -> IdentitySplit:
    """Consecutive blocks of identity numbers (identities are i.i.d., so blocks are random splits)."""
    train = tuple(range(num_train))
    heldout = tuple(range(num_train, num_train + num_heldout))
    judge = tuple(range(num_train + num_heldout, num_train + num_heldout + num_judge))
    return IdentitySplit(train, heldout, judge)


# ---------------------------------------------------------------------------------------------
# per-image variation


@dataclass(frozen=True)
class Variation:
    """How one image of an identity differs from another (identity-independent)."""

    scale: float = 1.0
    rotation: float = 0.0  # radians
    brightness: float = 1.0
    light: tuple[float, float] = (0.0, 0.0)  # linear shading gradient across the head (x, y)
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)  # colour cast
    noise: float = 0.0  # std of Gaussian pixel noise (in [0, 1] units)
    offset: tuple[float, float] = (0.0, 0.0)  # in head radii


def sample_variation(rng: np.random.Generator, strength: float = 1.0) -> Variation:
    s = float(strength)
    return Variation(
        scale=float(np.exp(rng.uniform(-0.15, 0.15) * s)),
        rotation=float(rng.uniform(-0.25, 0.25) * s),
        brightness=float(np.exp(rng.uniform(-0.2, 0.15) * s)),
        light=tuple(float(v) for v in rng.uniform(-0.25, 0.25, 2) * s),
        cast=tuple(float(v) for v in np.exp(rng.uniform(-0.06, 0.06, 3) * s)),
        noise=float(rng.uniform(0.0, 0.04) * s),
        offset=tuple(float(v) for v in rng.uniform(-0.08, 0.08, 2) * s),
    )
