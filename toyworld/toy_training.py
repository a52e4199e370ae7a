"""Run the REAL InstantFamily trainer (``train.train``) on the toy world.

The trainer loads SD1.5 parts with ``train.models.load_base``; the toy world swaps in its own
base (tiny UNet, caption table, identity VAE), which have the same call signatures
(``tokenizer(captions, ...).input_ids``, ``text_encoder(ids)[0]``,
``vae.encode(x).latent_dist.sample()``, ``vae.config.scaling_factor``). Everything else -- data
loading, face choice and order, circles, masks, masked attention, checkpoints, export -- is the
trainer's own code. The swap is ``base_loader`` below (an adapter on our side; see the report:
a ``base=`` argument on ``Trainer`` would make it unnecessary).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

# Ablations trained the same way: trainer options that differ per variant. "nomask" (every face
# visible everywhere) has no trainer option: its regions are widened to the whole image by
# ``full_image_masks`` below. "frozen_kv" keeps the UNet's attn2 K/V frozen (what train_unet_kv = false
# in an SD1.5 config does); the others train them (train/configs/toy_world.toml).
VARIANTS = {
    "hard": {"mask_mode": "hard"},
    "frozen_kv": {"mask_mode": "hard", "train_unet_kv": False},
    "paper": {"mask_mode": "paper"},
    "nomask": {"mask_mode": "hard"},
}
FULL_IMAGE_MASK_VARIANTS = ("nomask",)


def full_image(masks):
    """The same slots (centres, boxes) with regions covering the whole image."""
    import torch

    from instantfamily_core.masks import FaceMasks

    if masks is None:
        return None
    return FaceMasks(torch.ones_like(masks.masks), masks.centres, masks.boxes)


@contextlib.contextmanager
def full_image_masks(active: bool = True):
    """While active, the trainer's examples carry whole-image face regions (the "no mask" ablation)."""
    if not active:
        yield
        return
    from train.data import TrainDataset

    original = TrainDataset.example

    def example(self, key, members, rng):
        item = original(self, key, members, rng)
        item["masks"] = full_image(item["masks"])
        return item

    TrainDataset.example = example
    try:
        yield
    finally:
        TrainDataset.example = original


@contextlib.contextmanager
def toy_base_loader(base_path: str | Path):
    """While active, ``train.train`` builds its base models from the toy base file."""
    import train.train as trainer_module
    from train.models import BaseModels

    from .base_model import load_toy_base
    from .pretrain import noise_scheduler

    original = trainer_module.load_base

    def load(pretrained="", model_config="", tokenizer="", seed=0):
        toy = load_toy_base(base_path)
        return BaseModels(toy.unet, toy.vae, toy.text_encoder, toy.tokenizer, noise_scheduler())

    trainer_module.load_base = load
    try:
        yield
    finally:
        trainer_module.load_base = original


CONFIG_FILE = Path(__file__).resolve().parents[1] / "train" / "configs" / "toy_world.toml"


def toy_options(
    data_dir: str | Path,
    output_dir: str | Path,
    variant: str,
    seed: int,
    steps: int,
    batch_size: int | None = None,
    **overrides,
):
    """TrainOptions for a toy run: ``train/configs/toy_world.toml`` + the variant + per-run values."""
    from train.options import TrainOptions, read_file

    if variant not in VARIANTS:
        raise ValueError(f"unknown toy variant {variant!r}; choose from {sorted(VARIANTS)}")
    values = read_file(str(CONFIG_FILE))
    values.update(
        data=[str(data_dir)],
        output_dir=str(output_dir),
        pretrained="",
        seed=seed,
        max_steps=steps,
        warmup_steps=min(50, steps // 10),
        checkpoint_every=max(steps, 1),
    )
    if batch_size is not None:
        values["batch_size"] = batch_size
    values.update(VARIANTS[variant])
    values.update(overrides)
    options = TrainOptions(**values)
    options.validate()
    return options


def warm_start(trainer, exported: str | Path) -> None:
    """Start ``trainer`` from an exported toy checkpoint's weights (projector, ControlNet, UNet K/V deltas)
    instead of the fresh initialisation: continued training under new data rules. Optimizer state, step
    count and schedule start fresh."""
    from train.ema import EMA
    from train.export import net_from_export

    net = trainer.accelerator.unwrap_model(trainer.net)
    source = net_from_export(exported, net.unet)
    wanted = {k: v for k, v in source.state_dict().items() if k.startswith(("projector.", "controlnet.", "unet."))}
    missing, unexpected = net.load_state_dict(wanted, strict=False)
    if unexpected or [k for k in missing if k.startswith(("projector.", "controlnet.", "unet."))]:
        raise ValueError(
            f"{exported}: weights do not fit the toy net (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if trainer.ema is not None:
        trainer.ema = EMA(net.trainable_state(), trainer.ema.decay)
    logger.info("warm start from %s", exported)


def train_variant(
    base_path: str | Path,
    data_dir: str | Path,
    output_dir: str | Path,
    variant: str = "hard",
    seed: int = 0,
    steps: int = 300,
    batch_size: int | None = None,
    init_from: str | Path | None = None,
    **overrides,
) -> Path:
    """Train one toy InstantFamily checkpoint with the real trainer; returns the exported file.

    init_from: an exported checkpoint to continue from (``warm_start``), e.g. the shipped demo model."""
    import torch

    from train.train import Trainer

    torch.set_num_threads(int(os.environ.get("TOY_THREADS", "1")))
    output = Path(output_dir)
    exported = output / "instantfamily.safetensors"
    if exported.is_file():
        logger.info("%s exists: skipping training", exported)
        return exported
    options = toy_options(data_dir, output, variant, seed, steps, batch_size, **overrides)
    with toy_base_loader(base_path), full_image_masks(variant in FULL_IMAGE_MASK_VARIANTS):
        trainer = Trainer(options)
        if init_from is not None and trainer.step == 0:
            warm_start(trainer, init_from)
        trainer.run()
    return exported
