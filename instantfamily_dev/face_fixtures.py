"""Tiny face models exported to ONNX at test time (never committed) and synthetic face images.

- ``TinyRecognizer``: IResNet-shaped, 1x3x112x112 -> ... -> BN -> 512x7x7 map -> Flatten -> Linear
  -> BatchNorm1d -> 512. insightface routes it as an ArcFace recognizer (square input >= 112,
  divisible by 16, one output).
- ``ToyDetector``: SCRFD-shaped (9 outputs: scores / boxes / keypoints for strides 8, 16, 32 with
  2 anchors each). It "detects" bright discs of radius ~20 px (in detector pixels) centred on its
  stride-32 anchor points: a centre-surround brightness score, a fixed 160 px box and fixed
  keypoints around the anchor. Larger discs are not detected at 640 but are after the analyzer
  retries at a smaller detection size.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

TINY_PACK = "tinypack"  # the tiny pack's folder name under models/ (tests of every layer build it under this name)
TOY_BOX_HALF = 80.0  # detector pixels
TOY_KEYPOINTS = ((-0.8, -0.5), (0.8, -0.5), (0.0, 0.2), (-0.6, 0.9), (0.6, 0.9))  # in stride-32 units


class _Block(nn.Module):
    """IResNet basic block: BN -> conv -> BN -> PReLU -> conv(stride) -> BN, plus a projected shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.body(x) + self.short(x)


class TinyRecognizer(nn.Module):
    def __init__(self, width: int = 8, channels: int = 512):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width))
        self.stages = nn.Sequential(
            _Block(width, 2 * width, 2),  # 56
            _Block(2 * width, 4 * width, 2),  # 28
            _Block(4 * width, 8 * width, 2),  # 14
            _Block(8 * width, channels, 2),  # 7
        )
        self.bn2 = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(channels * 7 * 7, 512)
        self.features = nn.BatchNorm1d(512)

    def forward(self, x):
        x = self.bn2(self.stages(self.stem(x)))  # (B, 512, 7, 7)
        x = self.dropout(torch.flatten(x, 1))  # (B, 512*49)
        return self.features(self.fc(x))


class ToyDetector(nn.Module):
    def __init__(self):
        super().__init__()
        for stride in (8, 16, 32):
            half = TOY_BOX_HALF / stride
            self.register_buffer(f"box_{stride}", torch.full((4,), half))  # distances in strides
            kps = torch.tensor([v * 32.0 / stride for p in TOY_KEYPOINTS for v in p])
            self.register_buffer(f"kps_{stride}", kps)  # (10,) offsets in strides

    def forward(self, x):  # x: (1, 3, H, W), (pixel - 127.5) / 128, H and W multiples of 32
        bright = x.mean(1, keepdim=True) * 0.5 + 0.5  # (1, 1, H, W) in ~[0, 1]
        scores, boxes, points = [], [], []
        for stride in (8, 16, 32):
            cells = F.avg_pool2d(bright, stride, stride)  # (1, 1, H/s, W/s)
            if stride == 32:
                centre = F.avg_pool2d(F.pad(bright, (16, 0, 16, 0)), 32, 32)  # 32 px window on each anchor
                around = F.avg_pool2d(F.pad(bright, (48, 48, 48, 48)), 96, 32)  # 96 px window on each anchor
                around = around[:, :, : centre.shape[2], : centre.shape[3]]
                ring = (around * 9.0 - centre) / 8.0
                logit = 12.0 * (centre - ring - 0.45)
            else:
                logit = cells * 0.0 - 20.0
            score = torch.sigmoid(torch.cat([logit, logit], 1))  # (1, 2 anchors, h, w)
            score = score.permute(0, 2, 3, 1).reshape(-1, 1)  # (h*w*2, 1), anchor-minor like SCRFD
            zero = score * 0.0
            boxes.append(zero + getattr(self, f"box_{stride}"))  # (h*w*2, 4)
            points.append(zero + getattr(self, f"kps_{stride}"))  # (h*w*2, 10)
            scores.append(score)
        return tuple(scores + boxes + points)


def _randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


def _export(model, args, path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about constants / slices
        torch.onnx.export(model, args, path, opset_version=17, dynamo=False, **kwargs)


def export_tiny_recognizer(path: str, seed: int = 0) -> str:
    torch.manual_seed(seed)
    model = TinyRecognizer()
    _randomise_batchnorm(model, torch.Generator().manual_seed(seed))
    model.eval()
    _export(
        model,
        (torch.zeros(1, 3, 112, 112),),
        path,
        input_names=["input.1"],
        output_names=["embedding"],
        dynamic_axes={"input.1": {0: "None"}, "embedding": {0: "None"}},
    )
    return path


def export_toy_detector(path: str) -> str:
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)]
    _export(
        ToyDetector().eval(),
        (torch.zeros(1, 3, 640, 640),),
        path,
        input_names=["input.1"],
        output_names=names,
        dynamic_axes={"input.1": {2: "height", 3: "width"}, **{n: {0: f"n_{n}"} for n in names}},
    )
    return path


def build_tiny_pack(insightface_root: str, pack: str = TINY_PACK) -> str:
    """Write det + rec ONNX into <root>/models/<pack>/ and return that folder."""
    folder = os.path.join(insightface_root, "models", pack)
    os.makedirs(folder, exist_ok=True)
    export_toy_detector(os.path.join(folder, "det_toy.onnx"))
    export_tiny_recognizer(os.path.join(folder, "rec_tiny.onnx"))
    return folder


def disc_image(size=(640, 640), centres=((320, 320),), radius=20.0, background=0, channels=3) -> np.ndarray:
    """(H, W, channels) uint8 image: bright discs ("faces" for ToyDetector) on a dark background."""
    height, width = size
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    image = np.full((height, width), background, np.float32)
    for k, (cx, cy) in enumerate(centres):
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        # a little texture so different discs give different features
        image[inside] = 200 + 40 * np.sin(0.3 * (k + 1) * xx[inside] + 0.2 * yy[inside])
    image = np.clip(image, 0, 255).astype(np.uint8)
    return np.repeat(image[:, :, None], channels, axis=2) if channels > 1 else image


# Real photos, read from installed packages (never copied into the repo).


def group_photo() -> np.ndarray:
    """insightface's t1.jpg (six people), RGB, from the installed package."""
    import cv2
    import insightface

    path = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")
    return np.ascontiguousarray(cv2.imread(path)[:, :, ::-1])


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def grace_hopper() -> np.ndarray:
    import matplotlib.cbook
    from PIL import Image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as stream:
        return np.asarray(Image.open(stream).convert("RGB"))
