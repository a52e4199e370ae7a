"""Captions for ``train.prepare``: a captions file, or a local captioning model through transformers.

The paper captioned its data with BLIP-2. Any image-to-text model that transformers loads with
``AutoModelForImageTextToText`` from a local folder of safetensors works (BLIP, BLIP-2,
Florence-2, ...); nothing is downloaded and pickled ``.bin`` weights are refused.

A captions file maps images to captions: ``.jsonl`` lines ``{"file": ..., "caption": ...}`` (the
name may also be under ``key``/``image``/``path``, the caption under ``text``) or a ``.csv`` with a
header naming the same columns. Names are matched by relative path, file name or stem, or tar
``key``.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)
NAME_COLUMNS = ("file", "key", "image", "path", "filename")
CAPTION_COLUMNS = ("caption", "text")


def read_captions_file(path: str | Path) -> dict[str, str]:
    """name -> caption of a ``.jsonl`` or ``.csv`` captions file (later rows win)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--captions-file {path}: no such file")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise ValueError(f"--captions-file {path}: expected a .jsonl or .csv file")
    captions = {}
    for number, row in enumerate(rows, 1):
        name = next((row[c] for c in NAME_COLUMNS if row.get(c) not in (None, "")), None)
        caption = next((row[c] for c in CAPTION_COLUMNS if isinstance(row.get(c), str)), None)
        if name is None or caption is None:
            raise ValueError(
                f"--captions-file {path}, row {number}: needs a name column ({'/'.join(NAME_COLUMNS)}) "
                f"and a caption column ({'/'.join(CAPTION_COLUMNS)})"
            )
        captions[str(name)] = caption.strip()
        captions.setdefault(Path(str(name)).stem, caption.strip())
    return captions


class Captioner:
    """A local image-to-text model; ``__call__`` captions a batch of RGB arrays."""

    def __init__(
        self,
        folder: str | Path,
        device: str = "cpu",
        dtype: str = "float32",
        prompt: str = "",
        max_new_tokens: int = 40,
    ):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = Path(folder)
        if not folder.is_dir() or not (folder / "config.json").is_file():
            raise ValueError(
                f"--captioner {folder}: expected a local transformers model folder (config.json, "
                "model.safetensors, processor files), e.g. a copy of Salesforce/blip2-opt-2.7b"
            )
        if not list(folder.glob("*.safetensors")):
            raise ValueError(f"--captioner {folder}: no .safetensors weights there (pickled .bin files are not read)")
        self.device, self.prompt, self.max_new_tokens = device, prompt, int(max_new_tokens)
        self.dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
        self.processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        self.model = (
            AutoModelForImageTextToText.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True, dtype=self.dtype
            )
            .to(device)
            .eval()
        )
        logger.info("captioner %s (%s) on %s", folder.name, type(self.model).__name__, device)

    def __call__(self, images: list[np.ndarray]) -> list[str]:
        import torch
        from PIL import Image

        if not images:
            return []
        pictures = [Image.fromarray(image) for image in images]
        kwargs = {"text": [self.prompt] * len(pictures)} if self.prompt else {}
        inputs = self.processor(images=pictures, return_tensors="pt", **kwargs).to(self.device)
        inputs = {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        with torch.inference_mode():
            tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        if "input_ids" in inputs and not getattr(self.model.config, "is_encoder_decoder", False):
            tokens = tokens[:, inputs["input_ids"].shape[1] :]  # decoders return the prompt (and image tokens) first
        texts = self.processor.batch_decode(tokens, skip_special_tokens=True)
        return [" ".join(text.split()) for text in texts]
