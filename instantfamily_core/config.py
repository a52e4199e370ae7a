"""The self-describing configuration every InstantFamily checkpoint carries.

One dataclass holds everything needed to rebuild the projector, draw the control image the
way the trainer drew it, and build the attention masks the way they were trained. It travels
as JSON in the checkpoint's safetensors metadata (key ``instantfamily``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

FORMAT_VERSION = 1

MASK_MODES = ("hard", "paper")
OVERLAP_RULES = ("both", "nearest")
DEFAULT_OVERLAP = OVERLAP_RULES[0]  # both faces visible where regions overlap (the paper)
MASK_MARGIN = 0.25  # face box growth about its centre: the paper's 25%

# Circle colours of the identity slots in the control image (RGB, 0-255). None of them is a
# colour OpenPose draws (its 18 saturated joint colours, or the 0.6-scaled limb colours), so a
# circle can never be mistaken for a joint. The checkpoint stores the palette it was trained with;
# this default only matters for new trainings. Its length is the most IDs one image can have:
# a colour is never repeated (see ``InstantFamilyConfig.slot_colours``).
DEFAULT_PALETTE = (
    (255, 255, 255),
    (128, 128, 128),
    (255, 192, 203),
    (128, 64, 0),
    (0, 64, 128),
    (128, 128, 0),
    (0, 128, 128),
    (128, 0, 64),
    (128, 192, 192),
    (192, 128, 192),
    (192, 192, 128),
    (192, 255, 192),
    (128, 128, 255),
    (128, 255, 128),
    (255, 128, 128),
    (64, 64, 64),
    (192, 192, 255),
    (64, 128, 192),
    (64, 192, 128),
    (128, 64, 192),
    (128, 192, 64),
    (128, 255, 255),
    (192, 64, 128),
    (192, 128, 64),
)

# How a training sample's slots get their circle colours (``InstantFamilyConfig.colour_rule``):
# "random": each sample draws distinct palette colours at random, so every palette colour is trained
#   (at any slot, for any N); at inference slot n takes palette[n], a colour the ControlNet has seen.
# "by_slot": slot n always takes palette[n] (checkpoints written before the rule was recorded): only
#   the first max_ids_trained colours were ever trained.
COLOUR_RULES = ("random", "by_slot")
LEGACY_COLOUR_RULE = "by_slot"


@dataclass
class RecognizerInfo:
    """The face recognizer a checkpoint was trained with (identity features are not portable)."""

    pack: str = ""
    file_name: str = ""
    sha256: str = ""
    global_shape: tuple[int, ...] = (512,)
    local_shape: tuple[int, ...] = (512, 7, 7)

    @classmethod
    def from_dict(cls, data: dict) -> RecognizerInfo:
        data = dict(data)
        for key in ("global_shape", "local_shape"):
            if key in data:
                data[key] = tuple(int(v) for v in data[key])
        return cls(**data)


@dataclass
class InstantFamilyConfig:
    """Hyper-parameters of the projector, masks and control image.

    d_gf / d_lf: width of the recognizer's global embedding / local feature map channels.
    L: side of the local feature map (L x L tokens). d_K: cross-attention context width.
    """

    d_gf: int = 512
    d_lf: int = 512
    L: int = 7
    d_K: int = 768
    projector_hidden: int = 1024
    mask_mode: str = "hard"
    mask_margin: float = MASK_MARGIN
    overlap: str = DEFAULT_OVERLAP
    palette: tuple[tuple[int, int, int], ...] = DEFAULT_PALETTE
    # Circle radius = circle_radius_fraction * max(face box width, height) of the (un-enlarged) box.
    circle_radius_fraction: float = 0.25
    max_ids_trained: int = 4
    colour_rule: str = "random"
    base_model: str = "SD1.5"
    recognizer: RecognizerInfo = field(default_factory=RecognizerInfo)
    training_steps: int = 0
    # Constructor kwargs of ComfyUI's comfy.cldm.cldm.ControlNet for the stored ControlNet (written by
    # the trainer's export, instantfamily_core.ldm_convert.ldm_controlnet_kwargs); empty = detect from the weights.
    controlnet: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def tokens_per_face(self) -> int:
        """L*L local tokens plus one global token."""
        return self.L * self.L + 1

    def validate(self) -> None:
        """Raise ValueError naming the first field that makes no sense."""
        for name in ("d_gf", "d_lf", "L", "d_K", "projector_hidden"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"InstantFamily config: '{name}' must be positive, got {getattr(self, name)!r}")
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"InstantFamily config: mask_mode must be one of {MASK_MODES}, got {self.mask_mode!r}")
        if self.overlap not in OVERLAP_RULES:
            raise ValueError(f"InstantFamily config: overlap must be one of {OVERLAP_RULES}, got {self.overlap!r}")
        if not 0.0 <= float(self.mask_margin) <= 4.0:
            raise ValueError(f"InstantFamily config: mask_margin must be in [0, 4], got {self.mask_margin!r}")
        if len(self.palette) == 0 or any(len(c) != 3 for c in self.palette):
            raise ValueError("InstantFamily config: palette must be a non-empty list of RGB triples")
        if self.colour_rule not in COLOUR_RULES:
            raise ValueError(
                f"InstantFamily config: colour_rule must be one of {COLOUR_RULES}, got {self.colour_rule!r}"
            )
        if len(set(self.palette)) != len(self.palette):
            raise ValueError("InstantFamily config: palette colours must be distinct (a circle colour marks one slot)")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"InstantFamily config: format_version {self.format_version} is newer than this pack "
                f"understands ({FORMAT_VERSION}); update the node pack"
            )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> InstantFamilyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"InstantFamily config: unknown keys {unknown}; was it written by a newer pack?")
        data = dict(data)
        data.setdefault("colour_rule", LEGACY_COLOUR_RULE)  # written before the rule was recorded
        if "palette" in data:
            data["palette"] = tuple(tuple(int(c) for c in rgb) for rgb in data["palette"])
        if "recognizer" in data and isinstance(data["recognizer"], dict):
            data["recognizer"] = RecognizerInfo.from_dict(data["recognizer"])
        config = cls(**data)
        config.validate()
        return config

    @classmethod
    def from_json(cls, text: str) -> InstantFamilyConfig:
        return cls.from_dict(json.loads(text))

    def palette_colour(self, slot: int) -> tuple[int, int, int]:
        """RGB colour of identity slot ``slot`` at inference: palette[slot] (never wraps around)."""
        self.check_slot_count(slot + 1)
        red, green, blue = self.palette[slot]
        return (int(red), int(green), int(blue))

    def check_slot_count(self, n_slots: int) -> None:
        """Raise ValueError when ``n_slots`` IDs need more circle colours than the palette has."""
        if n_slots > len(self.palette):
            raise ValueError(
                f"{n_slots} ID slots but this checkpoint's palette has {len(self.palette)} circle colours, so two "
                f"IDs would share a colour: use at most {len(self.palette)} IDs in one image"
            )

    def slot_colours(self, n_slots: int, rng=None) -> list[tuple[int, int, int]]:
        """Circle colours of ``n_slots`` slots: palette[0..n-1]; with ``rng`` (training, rule "random") distinct
        palette colours drawn at random, so that every colour is trained. rng: a numpy Generator."""
        self.check_slot_count(n_slots)
        if rng is None or self.colour_rule != "random":
            return [self.palette_colour(n) for n in range(n_slots)]
        picks = rng.choice(len(self.palette), size=n_slots, replace=False)
        return [self.palette_colour(int(i)) for i in picks]

    def untrained_note(self, n_slots: int) -> str:
        """'' when ``n_slots`` IDs is what this checkpoint was trained for, else a sentence saying what was not
        trained (more IDs per image than any training sample; colours never seen under the "by_slot" rule)."""
        if n_slots <= self.max_ids_trained:
            return ""
        note = (
            f"{n_slots} IDs: this checkpoint was trained with at most {self.max_ids_trained} per image "
            "(works, not trained)"
        )
        if self.colour_rule == "by_slot":
            note += f"; slots {self.max_ids_trained}-{n_slots - 1} get circle colours its ControlNet never saw"
        return note
