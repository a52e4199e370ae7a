"""Exponential moving average of the trainable weights (kept in float32 on the training device)."""

from __future__ import annotations

import contextlib

import torch


class EMA:
    def __init__(self, parameters: dict[str, torch.Tensor], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = {name: p.detach().float().clone() for name, p in parameters.items()}

    @torch.no_grad()
    def update(self, parameters: dict[str, torch.Tensor]) -> None:
        for name, p in parameters.items():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors to store, named ``ema.<parameter name>``."""
        return {f"ema.{name}": t for name, t in self.shadow.items()}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for name in self.shadow:
            key = f"ema.{name}"
            if key not in tensors:
                raise ValueError(f"checkpoint has no EMA value for {name}; resume with the same ema_decay setting")
            self.shadow[name].copy_(tensors[key])

    @contextlib.contextmanager
    def applied(self, parameters: dict[str, torch.Tensor]):
        """Inside the block ``parameters`` hold the averaged weights; their own values come back on exit."""
        saved = {name: p.detach().clone() for name, p in parameters.items()}
        with torch.no_grad():
            for name, p in parameters.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in parameters.items():
                    p.copy_(saved[name])
