"""Training options: one dataclass, a TOML/YAML file, and ``--name value`` overrides for every field."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from instantfamily_core.config import InstantFamilyConfig

# option -> the InstantFamilyConfig field it sets in the exported checkpoint; its default IS that field's default
CONFIG_FIELDS = {
    "max_faces": "max_ids_trained",
    "mask_mode": "mask_mode",
    "mask_margin": "mask_margin",
    "overlap": "overlap",
    "circle_radius_fraction": "circle_radius_fraction",
    "projector_hidden": "projector_hidden",
}


def config_default(option: str):
    """The default of ``option``: the default of the InstantFamilyConfig field it sets (one source)."""
    return {f.name: f.default for f in dataclasses.fields(InstantFamilyConfig)}[CONFIG_FIELDS[option]]


@dataclass
class TrainOptions:
    # data and models
    data: list[str] = field(default_factory=list)  # prepared folders (with manifest.json) or .tar shards
    output_dir: str = "output/instantfamily"
    pretrained: str = ""  # diffusers SD1.5 folder or single-file .safetensors; "" = random init (tests)
    model_config: str = "sd15"  # shipped config set under train/configs, or a folder
    tokenizer: str = ""  # CLIP tokenizer folder (needed for single-file checkpoints)
    # start from an SD1.5 ControlNet instead of the UNet copy: a single-file .safetensors (ComfyUI's
    # models/controlnet/control_v11p_sd15_openpose*.safetensors) or a diffusers ControlNet folder
    controlnet: str = ""
    # InstantFamily method
    resolution: int = 512
    max_faces: int = config_default("max_faces")
    text_dropout: float = 0.05
    face_dropout: float = 0.05
    random_crop: bool = True
    mask_mode: str = config_default("mask_mode")
    mask_margin: float = config_default("mask_margin")
    overlap: str = config_default("overlap")
    circle_radius_fraction: float = config_default("circle_radius_fraction")
    projector_hidden: int = config_default("projector_hidden")
    train_unet_kv: bool = False  # also train attn2 to_k / to_v of the UNet (exported as deltas)
    # optimisation
    batch_size: int = 8  # per process
    gradient_accumulation: int = 1
    max_steps: int = 10000
    learning_rate: float = 1e-5
    projector_learning_rate: float = 1e-4
    lr_scheduler: str = "constant_with_warmup"
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    adam_8bit: bool = False
    ema_decay: float = 0.0  # 0 = no EMA
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False  # recompute UNet/ControlNet activations: less memory, ~25% more FLOPs
    tf32: bool = True  # TF32 matmuls and convolutions on CUDA (Ampere and newer); no effect on the CPU
    channels_last: bool = True  # NHWC memory format for the UNet, ControlNet and VAE (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the UNet and ControlNet (slow first steps, then faster)
    seed: int = 0
    num_workers: int = 4
    # checkpoints, logging, validation
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    resume: str = ""  # "" | "latest" | a checkpoint folder
    log_every: int = 10
    tensorboard: bool = True
    wandb_project: str = ""  # also log to this wandb project (needs `pip install wandb`); "" = off
    loss_buckets: int = 4  # the loss is also logged per timestep bucket (this many equal ranges)
    validate_every: int = 0  # 0 = never
    validation_steps: int = 20
    guidance_scale: float = 5.0
    validation_samples: int = 2
    # held-out identities: prepared folders/shards of people who are NOT in `data`; "" = training samples
    validation_data: list[str] = field(default_factory=list)
    # score validation images with the pack's face analyzer: the folder holding models/<pack>/ (ComfyUI's
    # models/insightface); the pack is the one the data was prepared with unless validation_pack names another
    validation_insightface_root: str = ""
    validation_pack: str = ""
    # aspect-ratio buckets (train/buckets.py) of about resolution^2 pixels, sides multiples of bucket_granularity:
    # "auto" = on for SDXL-family UNets (they take size/crop conditioning), off for SD1.5 (square crops)
    aspect_buckets: str = "auto"  # auto | on | off
    bucket_granularity: int = 64

    def validate(self) -> None:
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, got {self.resolution}")
        if self.max_faces < 1:
            raise ValueError("max_faces must be at least 1")
        for name in ("text_dropout", "face_dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.loss_buckets < 1:
            raise ValueError(f"loss_buckets must be at least 1, got {self.loss_buckets}")
        if self.aspect_buckets not in ("auto", "on", "off"):
            raise ValueError(f"aspect_buckets must be auto, on or off, got {self.aspect_buckets!r}")
        if self.bucket_granularity < 8 or self.bucket_granularity % 8:
            raise ValueError(f"bucket_granularity must be a positive multiple of 8, got {self.bucket_granularity}")
        overlap = sorted(set(self.validation_data) & set(self.data))
        if overlap:
            raise ValueError(f"validation_data {overlap} is also training data: hold out other people's photos")


def read_file(path: str) -> dict:
    """A TOML (.toml) or YAML (.yaml/.yml) file of option names -> values."""
    text = Path(path).read_text()
    if path.endswith(".toml"):
        import tomllib

        data = tomllib.loads(text)
    elif path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"config file {path}: use .toml or .yaml")
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"config file {path}: unknown options {unknown}")
    return data


def _parser_type(default):
    if isinstance(default, bool):
        return lambda s: {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[s.lower()]
    if isinstance(default, list):
        return None
    return type(default)


def parse(argv=None, description: str = "") -> TrainOptions:
    """``--config file`` first, then each ``--field value`` (lists: ``--data a b``) overrides it."""
    parser = argparse.ArgumentParser(prog="python -m train.train", description=description)
    parser.add_argument("--config", help="TOML or YAML file with any of the options below")
    for f in dataclasses.fields(TrainOptions):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, list):
            parser.add_argument(flag, dest=f.name, nargs="+", default=None)
        else:
            parser.add_argument(
                flag, dest=f.name, type=_parser_type(default), default=None, help=f"default {default!r}"
            )
    args = parser.parse_args(argv)
    values = read_file(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    options = TrainOptions(**values)
    options.validate()
    return options


def to_json(options: TrainOptions) -> str:
    return json.dumps(dataclasses.asdict(options), indent=2, sort_keys=True)
