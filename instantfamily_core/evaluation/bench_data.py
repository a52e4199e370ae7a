"""Benchmark folders read into one list of samples: MultiID-Bench's layout or FastComposer's.

MultiID-Bench (WithAnyone's ``MultiID-Bench/README.md``; ``hf2bench.py`` writes it)::

    root/<sample>/ori.jpg        the ground-truth group photo (where the people stand, who they are)
    root/<sample>/ref_1.jpg ...  one reference photo per person, ref_1 .. ref_K (.jpg / .png / .webp)
    root/<sample>/meta.json      {"prompt": "..."}
    root/<sample>/out.jpg        the generated image (written by the benchmark; evaluated if present)

FastComposer (``fastcomposer.Manifest``): a manifest, ``references/<identity>/`` and one sample per
(case, prompt, instance); no ground-truth photo, so people stand side by side.

A sample that cannot be used (no meta.json, no prompt, no ref_1) is skipped and reported with its
reason, as MultiID-Bench does silently; a folder with no usable sample is an error.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from .fastcomposer import Manifest, reference_files
from .fastcomposer import find_generated as find_image

log = logging.getLogger("InstantFamily")

LAYOUTS = ("multiid", "fastcomposer")
MAX_REFERENCES = 16


@dataclass
class BenchSample:
    key: str  # folder name (MultiID-Bench) or subject_..._prompt_..._instance_... (FastComposer)
    prompt: str
    references: list[str]  # one photo per identity, in slot order
    ground_truth: str | None = None  # ori.jpg (MultiID-Bench only)
    labels: list[str] = field(default_factory=list)
    seed_offset: int = 0  # FastComposer's instance index

    @property
    def num_ids(self) -> int:
        return len(self.references)


@dataclass
class BenchSet:
    layout: str
    root: str
    samples: list[BenchSample]
    skipped: list[dict]  # {"sample": key, "reason": ...}


def read_multiid(root: str) -> BenchSet:
    """Every <root>/<sample>/ folder in sorted order (see the module docstring)."""
    if not os.path.isdir(root):
        raise ValueError(f"MultiID-Bench folder {root!r} does not exist")
    samples, skipped = [], []
    for key in sorted(os.listdir(root)):
        folder = os.path.join(root, key)
        if not os.path.isdir(folder):
            continue
        reason, sample = _read_multiid_sample(folder, key)
        if sample is None:
            skipped.append({"sample": key, "reason": reason})
            log.warning("MultiID-Bench sample %s skipped: %s", key, reason)
        else:
            samples.append(sample)
    if not samples:
        raise ValueError(
            f"{root!r} holds no usable MultiID-Bench sample (<sample>/ori.jpg, ref_1.jpg .. ref_K.jpg, "
            f"meta.json with a 'prompt'); problems: {skipped[:3]}"
        )
    return BenchSet("multiid", root, samples, skipped)


def _read_multiid_sample(folder: str, key: str) -> tuple[str, BenchSample | None]:
    meta_path = os.path.join(folder, "meta.json")
    if not os.path.isfile(meta_path):
        return "no meta.json", None
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        return f"meta.json unreadable ({e})", None
    prompt = meta.get("prompt") if isinstance(meta, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        return "meta.json has no 'prompt' text", None
    refs = []
    for k in range(1, MAX_REFERENCES + 1):
        path = find_image(folder, f"ref_{k}")
        if path is None:
            break
        refs.append(path)
    if not refs:
        return "no ref_1 image", None
    ground_truth = find_image(folder, "ori")
    if ground_truth is None:
        return "no ori image (the ground-truth photo places the people)", None
    names = meta.get("names") if isinstance(meta.get("names"), list) else None
    labels = (
        [str(x) for x in names][: len(refs)]
        if names and len(names) >= len(refs)
        else [f"ref_{k + 1}" for k in range(len(refs))]
    )
    return "", BenchSample(key, prompt.strip(), refs, ground_truth, labels)


def read_fastcomposer(manifest_path: str, references_dir: str) -> BenchSet:
    """One sample per (case, prompt, instance) of a FastComposer manifest."""
    manifest = Manifest.load(manifest_path)
    samples = []
    for c, p, i in manifest.items():
        case = manifest.cases[c]
        refs = [reference_files(references_dir, ident)[0] for ident in case.identities]
        key = manifest.file_pattern.format(case=c, prompt=p, instance=i)
        samples.append(BenchSample(key, case.prompts[p], refs, None, list(case.identities), seed_offset=i))
    return BenchSet("fastcomposer", references_dir, samples, [])
