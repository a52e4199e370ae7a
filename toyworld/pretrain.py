"""Pre-train the toy base model (text -> toy scenes), the way SD1.5 was trained before InstantFamily.

Plain DDPM epsilon-prediction with SD1.5's noise schedule (``train/configs/sd15/scheduler``), the
toy text table and the identity "VAE"; 10% of captions are dropped so classifier-free guidance
works. No faces, no ControlNet: this is the frozen base that the InstantFamily trainer starts from.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import base_model
from .data import SceneBank

logger = logging.getLogger(__name__)


def noise_scheduler():
    from diffusers import DDPMScheduler

    from train.models import CONFIG_ROOT

    return DDPMScheduler.from_pretrained(str(CONFIG_ROOT / "sd15" / "scheduler"), local_files_only=True)


def scene_latents(images: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> model-space latents (N, 4, S, S): RGB in [-1, 1] and a zero channel."""
    rgb = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 127.5 - 1.0
    return torch.cat([rgb, torch.zeros_like(rgb[:, :1])], dim=1)


def pretrain(
    base: base_model.ToyBase,
    bank: SceneBank,
    steps: int,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    text_dropout: float = 0.1,
    seed: int = 0,
    log_every: int = 50,
    ema_decay: float = 0.995,
    device: str | torch.device = "cpu",
) -> list[float]:
    """Train ``base.unet`` in place on ``device``; at the end its weights (back on the CPU) are the
    exponential moving average (``ema_decay``; 0 = the last weights), which gives far cleaner
    samples from a short run."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    scheduler = noise_scheduler()
    unet = base.unet.to(device).train().requires_grad_(True)
    optimiser = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, learning_rate, total_steps=steps, pct_start=0.05)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()} if ema_decay > 0 else None
    latents_all = scene_latents(bank.images).to(device)
    with torch.no_grad():
        text_all = base.text_encoder.encode(bank.captions).to(device)  # (N, T, d)
        empty = base.text_encoder.encode([""])[0].to(device)
    losses, start = [], time.time()
    for step in range(steps):
        index = torch.from_numpy(rng.choice(len(bank), size=batch_size, replace=False)).to(device)
        latents = latents_all[index]
        text = text_all[index].clone()
        text[torch.from_numpy(rng.random(batch_size) < text_dropout).to(device)] = empty
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=text).sample
        loss = F.mse_loss(prediction, noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if ema is not None:
            decay = min(ema_decay, (1 + step) / (10 + step))  # warm-up: early averages are short
            with torch.no_grad():
                for name, value in unet.state_dict().items():
                    ema[name].mul_(decay).add_(value.detach(), alpha=1 - decay) if value.is_floating_point() else ema[
                        name
                    ].copy_(value)
        losses.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step == steps - 1:
            logger.info(
                "base pre-training step %d/%d: loss %.4f (%.1f s)",
                step + 1,
                steps,
                float(np.mean(losses[-log_every:])),
                time.time() - start,
            )
    if ema is not None:
        unet.load_state_dict(ema)
    unet.eval().requires_grad_(False).to("cpu")
    return losses
