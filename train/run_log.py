"""What a training run reports: ``losses.jsonl``, TensorBoard and (when asked and installed) wandb.

Per optimizer step ``losses.jsonl`` gets the loss, learning rate, gradient norm and images/s; every
``log_every`` steps the dashboards get the same figures averaged over the window, plus the loss per
timestep bucket (high-noise and low-noise steps learn at different rates, and a mean hides it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


def bucket_edges(num_train_timesteps: int, buckets: int) -> list[int]:
    """``buckets`` + 1 integer edges splitting [0, num_train_timesteps) evenly."""
    if buckets < 1:
        raise ValueError(f"loss_buckets must be at least 1, got {buckets}")
    return [round(i * num_train_timesteps / buckets) for i in range(buckets + 1)]


def bucket_sums(losses: torch.Tensor, timesteps: torch.Tensor, edges: list[int]) -> torch.Tensor:
    """(2K,) per-bucket loss sums then per-bucket counts of per-sample ``losses`` (B,) at ``timesteps`` (B,)."""
    inner = torch.tensor(edges[1:-1], device=timesteps.device)
    index = torch.bucketize(timesteps, inner, right=True)  # (B,) bucket of each sample
    k = len(edges) - 1
    sums = torch.zeros(k, device=losses.device).index_add_(0, index, losses.detach().float())
    counts = torch.zeros(k, device=losses.device).index_add_(0, index, torch.ones_like(losses, dtype=torch.float32))
    return torch.cat([sums, counts])


class LogWindow:
    """Running totals between two dashboard writes."""

    def __init__(self, edges: list[int]):
        self.edges = edges
        self.reset()

    def reset(self) -> None:
        self.losses, self.grad_norms, self.images, self.seconds = [], [], 0, 0.0
        self.buckets = np.zeros(2 * (len(self.edges) - 1))

    def add(self, loss: float, grad_norm: float, images: int, seconds: float, buckets: np.ndarray) -> None:
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        self.images += images
        self.seconds += seconds
        self.buckets += buckets

    def scalars(self) -> dict[str, float]:
        """Window means: loss, grad norm, images/s, and ``loss_t/<lo>-<hi>`` for each bucket that had samples."""
        values = {
            "train/loss": float(np.mean(self.losses)),
            "train/grad_norm": float(np.mean(self.grad_norms)),
            "train/images_per_s": self.images / max(self.seconds, 1e-9),
        }
        k = len(self.edges) - 1
        for i in range(k):
            if self.buckets[k + i] > 0:
                values[f"loss_t/{self.edges[i]:04d}-{self.edges[i + 1] - 1:04d}"] = float(
                    self.buckets[i] / self.buckets[k + i]
                )
        return values


class RunLog:
    """The main process's writers; every method is a no-op on other ranks."""

    def __init__(
        self, output: Path, *, enabled: bool, tensorboard: bool, wandb_project: str = "", options: dict | None = None
    ):
        self.output, self.enabled = Path(output), enabled
        self.tensorboard = self.wandb = None
        if not enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(self.output / "logs"))
            except ImportError:
                logger.info("TensorBoard is not installed: logging to losses.jsonl only (pip install tensorboard)")
        if wandb_project:
            try:
                import wandb
            except ImportError as error:
                raise RuntimeError(
                    f"wandb_project = {wandb_project!r} but wandb is not installed: pip install wandb, "
                    "or leave wandb_project empty (TensorBoard and losses.jsonl still log)"
                ) from error
            self.wandb = wandb.init(
                project=wandb_project, dir=str(self.output), name=self.output.name, config=options or {}, resume="allow"
            )

    def step(self, record: dict) -> None:
        """One optimizer step's figures (``record["step"]`` included) -> ``losses.jsonl``."""
        if self.enabled:
            with open(self.output / "losses.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(name, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def image(self, step: int, name: str, picture) -> None:
        """A PIL image (the validation grid)."""
        if not self.enabled:
            return
        if self.tensorboard is not None:
            self.tensorboard.add_image(name, np.asarray(picture), step, dataformats="HWC")
        if self.wandb is not None:
            import wandb

            self.wandb.log({name: wandb.Image(picture)}, step=step)

    def record(self, name: str, record: dict) -> None:
        """Append ``record`` to ``<output>/<name>.jsonl`` (validation results)."""
        if self.enabled:
            with open(self.output / f"{name}.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
