"""An independent judge of toy identities, so the generator is not graded by its own encoder.

Independent of the conditioning encoder in every way we control: another architecture (a small
residual CNN with global average pooling, 128-d output), another preprocessing (a plain enlarged
box crop at 32 x 32 instead of ArcFace alignment at 112), another seed, and other training
identities (the world's ``judge`` pool, disjoint from both the generator's training identities
and the held-out evaluation identities). Stored as safetensors (weights) with its config in the
metadata; torch only (the benchmark runs it, the pack never does).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import world
from .crops import box_crop
from .encoder import build_view_bank, info_nce, train_metric, training_bank, verification_accuracy

logger = logging.getLogger(__name__)

CROP = 32
EMBEDDING = 128
FILE_NAME = "judge.safetensors"


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class JudgeNet(nn.Module):
    """(B, 3, 32, 32) in [0, 1] -> (B, 128) embedding."""

    def __init__(self, width: int = 24):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(
            _Residual(width, width, 1),
            _Residual(width, 2 * width, 2),  # (B, 2w, 16, 16)
            _Residual(2 * width, 4 * width, 2),
        )  # (B, 4w, 8, 8)
        self.head = nn.Linear(4 * width, EMBEDDING)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.stages(self.stem(x)).mean(dim=(2, 3))  # (B, 4w)
        return self.head(pooled)


def to_input(crops_uint8: np.ndarray) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 -> (N, 3, 32, 32) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(crops_uint8)).float().permute(0, 3, 1, 2) / 255.0


class Judge:
    """A trained judge: ``embed(image, boxes)`` -> (N, 128) unit vectors."""

    def __init__(self, net: JudgeNet):
        self.net = net.eval()

    @torch.no_grad()
    def embed_crops(self, crops_uint8: np.ndarray) -> np.ndarray:
        return F.normalize(self.net(to_input(crops_uint8)), dim=-1).numpy()

    def embed(self, image: np.ndarray, boxes) -> np.ndarray:
        """Embeddings of the faces of ``image`` inside ``boxes`` (N, 4) px."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if not len(boxes):
            return np.zeros((0, EMBEDDING), np.float32)
        return self.embed_crops(np.stack([box_crop(image, b, CROP) for b in boxes]))

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(path), metadata={"judge": json.dumps({"crop": CROP, "embedding": EMBEDDING})})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Judge:
        from safetensors.torch import load_file

        net = JudgeNet()
        net.load_state_dict(load_file(str(path)))
        return cls(net)


def train_judge(
    out_dir: str | Path,
    split: world.IdentitySplit,
    num_identities: int = 1200,
    views: int = 4,
    steps: int = 300,
    batch_ids: int = 96,
    seed: int = 1234,
    device: str | torch.device = "cpu",
) -> dict:
    """Train on the judge pool (on ``device``), report separation on held-out identities, save the weights."""
    start = time.time()
    bank = training_bank(split.judge, num_identities, views, seed, "box", CROP, "judge")
    net = JudgeNet()
    losses = train_metric(net, bank, steps, batch_ids, seed, learning_rate=3e-3, to_input=to_input, device=device)
    judge = Judge(net)
    evaluated = min(200, num_identities)
    heldout_bank, _ = build_view_bank(list(split.heldout[:evaluated]), 2, seed + 7, split.heldout, "box", CROP)
    train_bank, _ = build_view_bank(list(split.train[:evaluated]), 2, seed + 8, split.train, "box", CROP)
    path = judge.save(Path(out_dir) / FILE_NAME)
    embed = lambda x: judge.net(to_input(x))  # noqa: E731
    report = {
        "heldout": verification_accuracy(embed, heldout_bank),
        "train_ids": verification_accuracy(embed, train_bank),
        "final_loss": float(np.mean(losses[-20:])),
        "seconds": time.time() - start,
        "path": str(path),
    }
    logger.info("judge: %s", report)
    return report


__all__ = ["Judge", "JudgeNet", "train_judge", "info_nce"]
