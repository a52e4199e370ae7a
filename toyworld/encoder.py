"""The toy world's ArcFace: a small CNN trained once by metric learning, exported to ONNX.

Shape contract (what the pack's recognizer code expects of an ArcFace-style graph):
input ``1 x 3 x 112 x 112`` (RGB, (x - 127.5) / 127.5, done by the caller as for glintr100),
a ``512 x 7 x 7`` feature map, then Flatten -> fully connected -> BatchNorm -> the 512-d
embedding. ``OnePassRecognizer`` finds the map before the Flatten and returns both outputs.

The fully connected layer is MobileFaceNet's "global depthwise" factorisation: weight[o, c*49+s]
= C[o, c] * D[c, s] (a learned 7x7 pooling per channel, then a channel mix C = A @ B of rank 64).
Training computes it factorised; the export multiplies the factors inside the graph and feeds a
plain Gemm, so the ONNX file stays small (no 25088 x 512 initializer, ~1 MB in all) and its
structure is exactly ArcFace's.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import crops as crop_views
from . import world

logger = logging.getLogger(__name__)

EMBEDDING = 512
MAP_CHANNELS = 512
MAP_SIZE = 7
INPUT_SIZE = 112
ONNX_NAME = "toyface_recognizer.onnx"
PACK_NAME = "toyface"


def _conv(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2 if kernel % 2 else 0, bias=False),
        nn.BatchNorm2d(cout),
        nn.PReLU(cout),
    )


class GlobalDepthwiseLinear(nn.Module):
    """Linear map of a flattened (C, S) map with weight C[o, c] * D[c, s]."""

    def __init__(self, channels: int, positions: int, out_features: int, rank: int = 64):
        super().__init__()
        self.depthwise = nn.Parameter(torch.full((channels, positions), 1.0 / positions))  # D (C, S)
        self.mix_out = nn.Parameter(torch.randn(out_features, rank) / math.sqrt(rank))  # A (O, r)
        self.mix_in = nn.Parameter(torch.randn(rank, channels) / math.sqrt(channels))  # B (r, C)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.export_mode = False

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        channels, positions = self.depthwise.shape
        mix = self.mix_out @ self.mix_in  # (O, C)
        if self.export_mode:  # one Gemm fed by the Flatten, as in ArcFace graphs
            weight = (mix[:, :, None] * self.depthwise[None]).reshape(mix.shape[0], channels * positions)
            return F.linear(flat, weight, self.bias)
        pooled = (flat.view(-1, channels, positions) * self.depthwise).sum(-1)  # (B, C)
        return F.linear(pooled, mix, self.bias)


class ToyFaceNet(nn.Module):
    """(B, 3, 112, 112) normalised RGB -> embedding (B, 512); ``features`` also returns the map."""

    def __init__(self, width: int = 24):
        super().__init__()
        self.body = nn.Sequential(
            _conv(3, width, 4, 4),  # (B, w, 28, 28)
            _conv(width, 2 * width, 3, 2),  # (B, 2w, 14, 14)
            _conv(2 * width, 2 * width, 3, 1),
            _conv(2 * width, 4 * width, 3, 2),  # (B, 4w, 7, 7)
            _conv(4 * width, 4 * width, 3, 1),
            nn.Conv2d(4 * width, MAP_CHANNELS, 1, bias=False),
            nn.BatchNorm2d(MAP_CHANNELS),  # (B, 512, 7, 7): the local feature map
        )
        self.flatten = nn.Flatten()
        self.fc = GlobalDepthwiseLinear(MAP_CHANNELS, MAP_SIZE * MAP_SIZE, EMBEDDING)
        self.features_bn = nn.BatchNorm1d(EMBEDDING)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_map = self.body(x)  # (B, 512, 7, 7)
        return self.features_bn(self.fc(self.flatten(feature_map))), feature_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]


def normalise(crops_uint8: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 RGB -> (N, 3, S, S) float in [-1, 1] (ArcFace's preprocessing)."""
    x = torch.from_numpy(np.ascontiguousarray(crops_uint8)).float()
    return ((x - 127.5) / 127.5).permute(0, 3, 1, 2).contiguous()


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` and ``b`` are two views of one identity, all else negatives."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.T / temperature  # (P, P)
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def build_view_bank(identities, views: int, seed: int, pool, crop: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(crops (I, V, S, S, 3) uint8, identities (I,)) generated once."""
    rng = np.random.default_rng(seed)
    images, _ = crop_views.view_batch(list(identities), views, rng, tuple(pool), crop=crop, size=size)
    return images.reshape(len(identities), views, *images.shape[1:]), np.asarray(identities)


def training_bank(pool, num_identities: int, views: int, seed: int, crop: str, size: int, name: str):
    """The view bank (I, V, S, S, 3) of ``num_identities`` random identities of ``pool`` (logs its cost)."""
    start = time.time()
    ids = np.random.default_rng(seed).choice(pool, size=min(num_identities, len(pool)), replace=False)
    bank, _ = build_view_bank(ids, views, seed, pool, crop, size)
    logger.info("%s: %d identities x %d views generated in %.0f s", name, len(ids), views, time.time() - start)
    return bank


def train_metric(
    model: nn.Module,
    bank: np.ndarray,
    steps: int,
    batch_ids: int,
    seed: int,
    learning_rate: float = 2e-3,
    to_input=normalise,
    device: str | torch.device = "cpu",
) -> list[float]:
    """Train ``model`` with InfoNCE on pairs of views drawn from ``bank`` (I, V, ...) on ``device``;
    the trained model is left on the CPU."""
    rng = np.random.default_rng(seed + 1)
    torch.manual_seed(seed)
    model.to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, learning_rate, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    count, views = bank.shape[:2]
    for step in range(steps):
        ids = rng.choice(count, size=min(batch_ids, count), replace=False)
        pick = np.stack([rng.choice(views, 2, replace=False) for _ in ids])  # (P, 2)
        a = to_input(bank[ids, pick[:, 0]]).to(device)
        b = to_input(bank[ids, pick[:, 1]]).to(device)
        embeddings = model(torch.cat([a, b]))
        loss = info_nce(embeddings[: len(ids)], embeddings[len(ids) :])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == steps - 1:
            logger.info("metric learning step %d/%d: loss %.3f", step + 1, steps, losses[-1])
    model.eval().to("cpu")
    return losses


@torch.no_grad()
def verification_accuracy(embed, bank: np.ndarray) -> dict:
    """Same-vs-different identity separation on a view bank (I, V, ...): mean cosines and top-1
    retrieval of view 0 among every identity's view 1."""
    first = F.normalize(embed(bank[:, 0]), dim=-1)
    second = F.normalize(embed(bank[:, 1]), dim=-1)
    sim = first @ second.T  # (I, I)
    same = sim.diagonal()
    different = sim[~torch.eye(len(sim), dtype=torch.bool)]
    return {
        "same": float(same.mean()),
        "different": float(different.mean()),
        "top1": float((sim.argmax(dim=1) == torch.arange(len(sim))).float().mean()),
    }


def export_onnx(model: ToyFaceNet, path: str | Path) -> Path:
    """Write the ONNX graph (fixed 1 x 3 x 112 x 112 input like the insightface recognizers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    model.fc.export_mode = True
    try:
        dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
        tmp = path.with_suffix(".tmp")
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            input_names=["input.1"],
            output_names=["embedding"],
            opset_version=17,
            dynamo=False,
            do_constant_folding=False,
        )
        tmp.replace(path)
    finally:
        model.fc.export_mode = False
    return path


def train_encoder(
    out_dir: str | Path,
    split: world.IdentitySplit,
    num_identities: int = 1200,
    views: int = 4,
    steps: int = 250,
    batch_ids: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """Train the encoder on training identities (on ``device``), export ONNX, report verification figures."""
    start = time.time()
    bank = training_bank(split.train, num_identities, views, seed, "align", INPUT_SIZE, "encoder")
    model = ToyFaceNet()
    losses = train_metric(model, bank, steps, batch_ids, seed, device=device)
    evaluated = min(200, num_identities)
    heldout_bank, _ = build_view_bank(list(split.heldout[:evaluated]), 2, seed + 99, split.heldout, "align", INPUT_SIZE)
    path = export_onnx(model, Path(out_dir) / ONNX_NAME)
    report = {
        "train": verification_accuracy(lambda x: model(normalise(x)), bank[:evaluated]),
        "heldout": verification_accuracy(lambda x: model(normalise(x)), heldout_bank),
        "final_loss": float(np.mean(losses[-20:])),
        "seconds": time.time() - start,
        "onnx": str(path),
        "onnx_bytes": path.stat().st_size,
    }
    logger.info("encoder: %s", report)
    return report
