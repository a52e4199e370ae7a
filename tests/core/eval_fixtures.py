"""Test material for the evaluation tests: real photos from installed packages (never copied into
the repo), generated-image stand-ins made by pasting face regions onto a canvas, and a tiny CLIP
saved to a local folder (random weights, real transformers loading path)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def grace_hopper() -> np.ndarray:
    import matplotlib.cbook

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        return np.asarray(im.convert("RGB"))


def group_photo() -> np.ndarray:
    """insightface's t1.jpg: six people."""
    import insightface

    with Image.open(os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")) as im:
        return np.asarray(im.convert("RGB"))


def face_region(image: np.ndarray, box, scale: float = 1.8) -> np.ndarray:
    """The face box enlarged about its centre (a head-and-shoulders crop a detector can find again)."""
    x1, y1, x2, y2 = box
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, scale * max(x2 - x1, y2 - y1) / 2
    h, w = image.shape[:2]
    return image[int(max(0, cy - half)) : int(min(h, cy + half)), int(max(0, cx - half)) : int(min(w, cx + half))]


def paste(regions, size: int = 220, gap: int = 40) -> np.ndarray:
    """A generated-image stand-in: face regions side by side on a plain canvas."""
    canvas = np.full((size + 2 * gap, len(regions) * (size + gap) + gap, 3), 90, np.uint8)
    for k, r in enumerate(regions):
        x = gap + k * (size + gap)
        canvas[gap : gap + size, x : x + size] = np.asarray(Image.fromarray(r).resize((size, size), Image.BICUBIC))
    return canvas


def build_tiny_clip(folder: str) -> str:
    """Save a tiny random CLIP (safetensors), its tokenizer and image processor into ``folder``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(folder)
    return folder
