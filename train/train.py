"""Train InstantFamily: ControlNet (from the UNet) + face projector (+ optional UNet attn2 K/V).

    accelerate launch -m train.train --config train/configs/example.toml [--name value ...]
    python -m train.train --data prepared/ --pretrained sd15/ --output-dir runs/a --resume latest

Checkpoints go to <output-dir>/checkpoints/step-XXXXXXXX (see train/state.py); the final weights
are exported to <output-dir>/instantfamily.safetensors (the pack's format, see train/export.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from instantfamily_core.config import InstantFamilyConfig, RecognizerInfo
from instantfamily_core.projector import Projector

from . import state as ckpt
from .buckets import training_buckets
from .data import TrainDataset, batch_sampler, collate, sample_rng
from .ema import EMA
from .latents import sample_latents, vae_dtype
from .manifest import find_shards
from .models import build_controlnet, encode_prompts, load_base
from .net import FaceInputs, InstantFamilyNet
from .options import TrainOptions, parse, to_json
from .run_log import LogWindow, RunLog, bucket_edges, bucket_sums
from .sample_format import decode_faces
from .shards import ShardReader
from .speed import compile_modules, configure_tf32, to_channels_last

logger = logging.getLogger("train")
KV_BASE = "unet_kv_base.safetensors"


def feature_shapes(reader: ShardReader, recognizer: RecognizerInfo | None) -> RecognizerInfo:
    """The recognizer info of the manifest, or the feature shapes of the first sample with faces."""
    if recognizer is not None:
        return recognizer
    for index in range(min(len(reader), 64)):
        _, members = reader.read(index)
        if "faces.npz" in members:
            faces = decode_faces(members["faces.npz"])
            if len(faces["boxes"]):
                return RecognizerInfo(
                    global_shape=tuple(faces["global_features"].shape[1:]),
                    local_shape=tuple(faces["local_features"].shape[1:]),
                )
    return RecognizerInfo()


def instantfamily_config(
    opts: TrainOptions, recognizer: RecognizerInfo, d_K: int, base_model: str = "SD1.5"
) -> InstantFamilyConfig:
    d_lf, L, _ = recognizer.local_shape
    config = InstantFamilyConfig(
        d_gf=recognizer.global_shape[0],
        d_lf=d_lf,
        L=L,
        d_K=d_K,
        projector_hidden=opts.projector_hidden,
        mask_mode=opts.mask_mode,
        mask_margin=opts.mask_margin,
        overlap=opts.overlap,
        circle_radius_fraction=opts.circle_radius_fraction,
        max_ids_trained=opts.max_faces,
        recognizer=recognizer,
        base_model=base_model,
    )
    config.validate()
    return config


def unet_kv_parameters(unet: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """attn2 to_k / to_v weights of the UNet (diffusers names)."""
    return {name: p for name, p in unet.named_parameters() if ".attn2.to_k." in name or ".attn2.to_v." in name}


class Trainer:
    """Everything one training process holds; ``run()`` trains until ``max_steps``."""

    def __init__(self, opts: TrainOptions):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.opts = opts
        _allow_new_precision(opts.mixed_precision)
        self.accelerator = Accelerator(
            mixed_precision=opts.mixed_precision,
            cpu=not torch.cuda.is_available(),
            gradient_accumulation_steps=opts.gradient_accumulation,
        )
        acc = self.accelerator
        self.output = Path(opts.output_dir)
        self.checkpoints = self.output / "checkpoints"
        if acc.is_main_process:
            self.output.mkdir(parents=True, exist_ok=True)
            ckpt.remove_partial(self.checkpoints)
            (self.output / "train_options.json").write_text(to_json(opts))
        set_seed(opts.seed)  # identical initialisation on every rank

        shards, recognizer = find_shards(opts.data)
        self.reader = ShardReader(shards)
        self.validation_reader = None
        if opts.validation_data:
            held_out, held_out_recognizer = find_shards(opts.validation_data)
            if recognizer and held_out_recognizer and held_out_recognizer.sha256 != recognizer.sha256:
                raise ValueError(
                    "validation_data was prepared with another face recognizer than data: prepare "
                    "both with the same pack"
                )
            self.validation_reader = ShardReader(held_out)
        base = load_base(opts.pretrained, opts.model_config, opts.tokenizer, seed=opts.seed)
        self.vae, self.text_encoder, self.tokenizer, self.noise_scheduler = (
            base.vae,
            base.text_encoder,
            base.tokenizer,
            base.noise_scheduler,
        )
        self.text_encoders, self.tokenizers = base.text_encoders, base.tokenizers  # SDXL: two of each
        self.config = instantfamily_config(
            opts, feature_shapes(self.reader, recognizer), base.unet.config.cross_attention_dim, base.family
        )
        controlnet = build_controlnet(base.unet, opts.controlnet)
        net = InstantFamilyNet(base.unet, controlnet, Projector(self.config), self.config)
        self._freeze(net)
        self.optimizer = self._optimizer(net)
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(
            opts.lr_scheduler, self.optimizer, num_warmup_steps=opts.warmup_steps, num_training_steps=opts.max_steps
        )
        self.net, self.optimizer = acc.prepare(net, self.optimizer)
        self.ema = EMA(net.trainable_state(), opts.ema_decay) if opts.ema_decay > 0 else None
        self.step, self.batches = 0, 0
        resume = ckpt.resolve_resume(opts.resume, self.checkpoints)
        if resume is not None:
            self._resume(ckpt.load_checkpoint_dir(resume, acc.process_index))  # also restores the RNG states
            logger.info("resumed from %s at step %d", resume, self.step)
        else:
            set_seed(opts.seed + acc.process_index)  # distinct noise per rank
        self.dataset = TrainDataset(
            self.reader,
            self.config,
            opts.resolution,
            opts.max_faces,
            opts.text_dropout,
            opts.face_dropout,
            opts.random_crop,
            opts.seed,
            buckets=training_buckets(opts, base.unet),
        )
        self.sampler = batch_sampler(
            self.reader, self.dataset.buckets, opts, acc.process_index, acc.num_processes, self.batches
        )
        # Its own generator: starting an iterator must not draw from the global RNG (exact resume).
        self.loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            collate_fn=collate,
            num_workers=opts.num_workers,
            persistent_workers=opts.num_workers > 0,
            generator=torch.Generator().manual_seed(opts.seed),
        )
        self.log = RunLog(
            self.output,
            enabled=acc.is_main_process,
            tensorboard=opts.tensorboard,
            wandb_project=opts.wandb_project,
            options=json.loads(to_json(opts)),
        )
        self.identity_encoder = None
        if opts.validation_insightface_root and opts.validate_every and acc.is_main_process:
            from .validate import load_identity_encoder

            self.identity_encoder = load_identity_encoder(
                opts.validation_insightface_root, opts.validation_pack, self.config
            )
        self.losses: list[float] = []

    # --- setup -----------------------------------------------------------------------------
    def _freeze(self, net: InstantFamilyNet) -> None:
        """Frozen parts in the compute dtype on the device; trained parts stay float32."""
        opts, acc = self.opts, self.accelerator
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(opts.mixed_precision, torch.float32)
        self.weight_dtype = dtype
        kv = unet_kv_parameters(net.unet) if opts.train_unet_kv else {}
        kv_base = {name: p.detach().float().clone() for name, p in kv.items()}  # before any rounding
        self.vae_dtype = vae_dtype(self.config.base_model, dtype)
        self.vae.requires_grad_(False).eval().to(acc.device, self.vae_dtype)
        for module in (net.unet, *self.text_encoders):
            module.requires_grad_(False).eval().to(acc.device, dtype)
        net.controlnet.train().requires_grad_(True)
        net.projector.train().requires_grad_(True)
        for name, p in kv.items():
            p.data = kv_base[name].to(acc.device)
            p.requires_grad_(True)
        if kv and acc.is_main_process and not (self.output / KV_BASE).exists():
            from safetensors.torch import save_file

            tmp = self.output / (KV_BASE + ".tmp")
            save_file({n: t.contiguous() for n, t in kv_base.items()}, str(tmp))
            tmp.replace(self.output / KV_BASE)
        if opts.gradient_checkpointing:
            net.unet.enable_gradient_checkpointing()
            net.controlnet.enable_gradient_checkpointing()
        configure_tf32(opts.tf32, acc.device.type == "cuda")
        if opts.channels_last:
            to_channels_last(net.unet, net.controlnet, self.vae)
        if opts.compile:
            compile_modules(net.unet, net.controlnet)

    def _optimizer(self, net: InstantFamilyNet) -> torch.optim.Optimizer:
        opts = self.opts
        projector = [p for p in net.projector.parameters()]
        others = [p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("projector.")]
        groups = [
            {"params": others, "lr": opts.learning_rate},
            {"params": projector, "lr": opts.projector_learning_rate},
        ]
        if opts.adam_8bit:
            try:
                import bitsandbytes as bnb
            except ImportError as error:
                raise RuntimeError("--adam-8bit needs bitsandbytes: pip install bitsandbytes") from error
            return bnb.optim.AdamW8bit(groups, weight_decay=opts.weight_decay)
        return torch.optim.AdamW(groups, weight_decay=opts.weight_decay)

    def _resume(self, loaded: dict) -> None:
        weights, state = loaded["weights"], loaded["state"]
        trainable = self.accelerator.unwrap_model(self.net).trainable_state()
        missing = sorted(set(trainable) - set(weights))
        if missing:
            raise ValueError(f"checkpoint lacks trained weights {missing[:3]}: resume with the same options")
        with torch.no_grad():
            for name, p in trainable.items():
                p.copy_(weights[name])
        if self.ema is not None:
            self.ema.load(weights)
        self.optimizer.load_state_dict(loaded["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.accelerator.scaler is not None and state.get("scaler"):
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.step, self.batches = int(state["step"]), int(state["batches"])
        log = self.output / "losses.jsonl"
        if self.accelerator.is_main_process and log.is_file():  # drop steps of a killed run after this checkpoint
            kept = [line for line in log.read_text().splitlines() if json.loads(line)["step"] <= self.step]
            log.write_text("".join(line + "\n" for line in kept))

    # --- one step ------------------------------------------------------------------------------
    def loss(self, batch: dict) -> torch.Tensor:
        """The batch's mean noise-prediction loss."""
        return self.sample_losses(batch)[0].mean()

    def sample_losses(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) per-sample MSE of the noise prediction and the (B,) timesteps they were drawn at."""
        acc, dtype = self.accelerator, self.weight_dtype
        with torch.no_grad():
            if "latent_mean" in batch:  # cached by train.prepare --latent-resolution: no VAE pass
                latents = sample_latents(
                    batch["latent_mean"].to(acc.device, dtype),
                    batch["latent_std"].to(acc.device, dtype),
                    self.vae.config.scaling_factor,
                )
            else:
                pixels = batch["pixel_values"].to(acc.device, self.vae_dtype)
                latents = (self.vae.encode(pixels).latent_dist.sample() * self.vae.config.scaling_factor).to(dtype)
            text = encode_prompts(self.text_encoders, self.tokenizers, batch["captions"], acc.device)
        # Drawn in the standard layout: the same noise whatever memory format the VAE (or a cache) gave latents.
        noise = torch.randn_like(latents, memory_format=torch.contiguous_format)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), device=latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        faces = FaceInputs(batch["global_features"], batch["local_features"], batch["masks"])
        time_ids = batch.get("time_ids")  # SDXL size / crop conditioning; None: from the latent size, no crop
        prediction = self.net(
            noisy,
            timesteps,
            text.context,
            faces,
            batch["control"].to(acc.device, dtype),
            pooled=text.pooled,
            time_ids=None if time_ids is None or text.pooled is None else time_ids.to(acc.device),
        )
        return F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3)), timesteps

    def run(self) -> list[float]:
        from tqdm.auto import tqdm

        opts, acc = self.opts, self.accelerator
        progress = tqdm(total=opts.max_steps, initial=self.step, disable=not acc.is_local_main_process, desc="train")
        batches = iter(self.loader)
        edges = bucket_edges(self.noise_scheduler.config.num_train_timesteps, opts.loss_buckets)
        window, log_window = [], LogWindow(edges)
        buckets, images = torch.zeros(2 * opts.loss_buckets, device=acc.device), 0
        trained = [p for p in self.net.parameters() if p.requires_grad]
        max_norm = opts.max_grad_norm if opts.max_grad_norm > 0 else math.inf  # inf: measure the norm, never clip
        started = time.perf_counter()
        while self.step < opts.max_steps:
            batch = next(batches)
            self.batches += 1
            if not batch:
                continue
            with acc.accumulate(self.net):
                losses, timesteps = self.sample_losses(batch)
                loss = losses.mean()
                acc.backward(loss)
                grad_norm = acc.clip_grad_norm_(trained, max_norm) if acc.sync_gradients else None
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            window.append(loss.detach().float())
            buckets += bucket_sums(losses, timesteps, edges)
            images += len(batch["captions"])
            if not acc.sync_gradients:
                continue
            self.lr_scheduler.step()
            self.step += 1
            if self.ema is not None:
                self.ema.update(acc.unwrap_model(self.net).trainable_state())
            # one all-gather per step: [mean loss, bucket sums, bucket counts, images] of every rank
            mine = torch.cat([torch.stack(window).mean()[None], buckets, buckets.new_tensor([images])])
            totals = acc.gather(mine[None]).sum(0).cpu().numpy()
            value = float(totals[0]) / acc.num_processes
            seconds = time.perf_counter() - started
            norm = float(grad_norm) if grad_norm is not None else math.nan  # None: the backend clips elsewhere
            log_window.add(value, norm, int(totals[-1]), seconds, totals[1:-1])
            window, images = [], 0
            buckets.zero_()
            self._log(value, norm, float(totals[-1]) / max(seconds, 1e-9), log_window)
            progress.update(1)
            progress.set_postfix(loss=f"{value:.4f}")
            if self.step % opts.checkpoint_every == 0 or self.step == opts.max_steps:
                self.save()
            if opts.validate_every and self.step % opts.validate_every == 0:
                self.validate()
            started = time.perf_counter()  # images/s counts training, not checkpoints or validation
        progress.close()
        if acc.is_main_process:
            from .export import export

            export(
                ckpt.list_checkpoints(self.checkpoints)[-1],
                self.output / "instantfamily.safetensors",
                use_ema=self.ema is not None,
            )
        self.log.close()
        acc.wait_for_everyone()
        return self.losses

    def _log(self, value: float, grad_norm: float, images_per_s: float, window: LogWindow) -> None:
        self.losses.append(value)
        if not self.accelerator.is_main_process:
            return
        lr = self.lr_scheduler.get_last_lr()[0]
        self.log.step(
            {"step": self.step, "loss": value, "lr": lr, "grad_norm": grad_norm, "images_per_s": images_per_s}
        )
        if self.step % self.opts.log_every == 0:
            self.log.scalars(self.step, {**window.scalars(), "train/lr": lr})
            window.reset()
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {self.step}; lower the learning rate or use bf16")

    # --- checkpoints and validation ------------------------------------------------------------
    def save(self) -> Path:
        acc, opts = self.accelerator, self.opts
        net = acc.unwrap_model(self.net)
        weights = dict(net.trainable_state())
        if self.ema is not None:
            weights.update(self.ema.state())
        state = {
            "batches": self.batches,
            "seed": opts.seed,
            "world_size": acc.num_processes,
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
            "options": json.loads(to_json(opts)),
            "instantfamily": json.loads(self.config.to_json()),
            "unet_config": dict(net.unet.config),
            "controlnet_config": dict(net.controlnet.config),
            "unet_kv_base": str((self.output / KV_BASE).resolve()) if opts.train_unet_kv else "",
            "ema": self.ema is not None,
        }
        return ckpt.save_checkpoint_dir(
            self.checkpoints,
            self.step,
            weights=weights,
            optimizer_state=self.optimizer.state_dict(),
            state=state,
            rank=acc.process_index,
            is_main=acc.is_main_process,
            barrier=acc.wait_for_everyone,
            keep=opts.keep_checkpoints,
        )

    def validate(self) -> dict | None:
        """Sample ``validation_samples`` images (EMA weights when EMA is on) of the held-out identities
        (``validation_data``; else training samples), save the grid, score identity when an analyzer is set."""
        if not self.accelerator.is_main_process:
            return None
        from .validate import grid, identity_scores, sample, summarise_scores, to_uint8

        opts, net = self.opts, self.accelerator.unwrap_model(self.net)
        reader = self.validation_reader or self.reader
        plain = TrainDataset(reader, self.config, opts.resolution, opts.max_faces, 0.0, 0.0, False, opts.seed)
        rows, scores = [], []
        weights = self.ema.applied(net.trainable_state()) if self.ema is not None else contextlib.nullcontext()
        net.eval()
        with weights:
            for index in range(min(opts.validation_samples, len(reader))):
                key, members = reader.read(index)
                example = plain.example(key, members, sample_rng(opts.seed, 0, index))
                image = sample(
                    net,
                    self.vae,
                    self.text_encoders,
                    self.tokenizers,
                    self.noise_scheduler.config,
                    example,
                    steps=opts.validation_steps,
                    guidance_scale=opts.guidance_scale,
                    seed=opts.seed,
                    dtype=self.weight_dtype,
                )
                rows.append([to_uint8(example["pixel_values"], -1.0), to_uint8(example["control"], 0.0), image])
                if self.identity_encoder is not None and len(example["global_features"]):
                    scores.append(identity_scores(self.identity_encoder, image, example["global_features"].numpy()))
        net.train()
        net.unet.eval()
        folder = self.output / "validation"
        folder.mkdir(exist_ok=True)
        picture = grid(rows)
        picture.save(folder / f"step-{self.step:08d}.png")
        self.log.image(self.step, "validation", picture)
        record = {
            "step": self.step,
            "held_out": self.validation_reader is not None,
            "ema": self.ema is not None,
            "samples": len(rows),
            **summarise_scores(scores),
        }
        self.log.record("validation", record)
        prefix = "validation_held_out" if record["held_out"] else "validation_train"
        self.log.scalars(
            self.step,
            {
                f"{prefix}/{name}": record[name]
                for name in ("identity", "multi_sim", "missing_faces")
                if record[name] is not None
            },
        )
        logger.info("validation at step %d: %s", self.step, record)
        return record


def _allow_new_precision(mixed_precision: str) -> None:
    """A second Trainer in one process (tests, notebooks) may use another precision."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state()


def train(opts: TrainOptions) -> list[float]:
    """Train with ``opts``; returns this process's loss per optimizer step of this run."""
    return Trainer(opts).run()


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    opts = parse(argv, description=__doc__.split("\n\n")[0])
    train(opts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
