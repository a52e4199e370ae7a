"""Evaluate a folder of generated images against reference identities and prompts.

Layout (FastComposer's: identities x prompts x instances/seeds)::

    references/<identity>/*.jpg|jpeg|png|webp      one folder per identity; the first file in sorted
                                                    order is the reference (as FastComposer), or the
                                                    mean over all files with reference_mode="mean"
    generated/subject_0000_prompt_0000_instance_0000.jpg   (case, prompt, instance); .png/.webp too
    manifest.json   {"instances": 4, "seeds": [...optional...],
                     "cases": [{"identities": ["id_a", "id_b"], "prompts": ["a photo of ...", ...]}, ...]}

Case c of the manifest is ``subject_{c:04d}``; its prompt p is ``prompt_{p:04d}``. A case with one
identity is scored with SingleSim (the paper's Table 1), several with MultiSim (Table 2, eq. 11
generalised, see ``metrics``); count accuracy and ID-Conf as ``field_metrics`` defines them. TextSim
needs a local CLIP folder and is skipped without one. Nothing here knows where each person was meant
to stand; ``benchmark`` (FastComposer layout) generates and scores by position.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from .encoders import FaceEncoder, TextSimilarity
from .field_metrics import id_conf
from .metrics import score_identities

log = logging.getLogger("InstantFamily")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
FILE_PATTERN = "subject_{case:04d}_prompt_{prompt:04d}_instance_{instance:04d}"
REFERENCE_MODES = ("first", "mean")


@dataclass
class EvalCase:
    identities: list[str]
    prompts: list[str]


@dataclass
class Manifest:
    cases: list[EvalCase]
    instances: int = 1
    seeds: list[int] = field(default_factory=list)
    file_pattern: str = FILE_PATTERN

    @classmethod
    def from_dict(cls, data: dict, source: str = "manifest") -> Manifest:
        if not isinstance(data, dict) or not isinstance(data.get("cases"), list) or not data["cases"]:
            raise ValueError(f"{source}: expected a JSON object with a non-empty 'cases' list")
        cases = []
        for i, c in enumerate(data["cases"]):
            ids, prompts = c.get("identities"), c.get("prompts")
            if not ids or not isinstance(ids, list) or not prompts or not isinstance(prompts, list):
                raise ValueError(f"{source}: case {i} needs non-empty 'identities' and 'prompts' lists")
            cases.append(EvalCase([str(x) for x in ids], [str(p) for p in prompts]))
        instances = int(data.get("instances", 1))
        if instances < 1:
            raise ValueError(f"{source}: 'instances' must be >= 1, got {instances}")
        return cls(cases, instances, [int(s) for s in data.get("seeds", [])], data.get("file_pattern", FILE_PATTERN))

    @classmethod
    def load(cls, path: str) -> Manifest:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), source=path)

    def to_dict(self) -> dict:
        return {
            "instances": self.instances,
            "seeds": self.seeds,
            "file_pattern": self.file_pattern,
            "cases": [{"identities": c.identities, "prompts": c.prompts} for c in self.cases],
        }

    def items(self) -> list[tuple[int, int, int]]:
        """Every (case, prompt, instance) the generated folder must hold."""
        return [
            (c, p, i)
            for c, case in enumerate(self.cases)
            for p in range(len(case.prompts))
            for i in range(self.instances)
        ]


def load_image(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def find_generated(folder: str, stem: str) -> str | None:
    for ext in IMAGE_EXTENSIONS:
        path = os.path.join(folder, stem + ext)
        if os.path.isfile(path):
            return path
    return None


def reference_files(references_dir: str, identity: str) -> list[str]:
    folder = os.path.join(references_dir, identity)
    if not os.path.isdir(folder):
        raise ValueError(f"reference identity '{identity}': folder {folder} does not exist")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"reference identity '{identity}': no image ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return [os.path.join(folder, f) for f in files]


def reference_embedding(encoder: FaceEncoder, references_dir: str, identity: str, mode: str = "first") -> np.ndarray:
    files = reference_files(references_dir, identity)
    if mode == "first":
        files = files[:1]
    embeddings = [encoder.reference_embedding(load_image(f), what=f"reference image {f}") for f in files]
    e = np.stack(embeddings)
    e = e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
    return e.mean(0)


@dataclass
class EvaluationReport:
    settings: dict
    rows: list[dict]  # one per generated image
    summary: list[dict]  # one per number of identities, then "all"
    case_confusion: list[dict]  # per case: mean confusion matrix over its images


def _mean_std(values) -> tuple[float | None, float | None, int]:
    v = np.array([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return None, None, 0
    return float(v.mean()), float(v.std()), int(v.size)


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r["num_ids"]), []).append(r)
    order = sorted(groups, key=int) + ["all"]
    groups["all"] = rows
    out = []
    for key in order:
        rs = groups[key]
        entry = {"num_ids": key, "images": len(rs)}
        for metric in ("identity", "multi_sim", "mixing", "text_sim", "id_conf"):
            mean, std, n = _mean_std(r[metric] for r in rs)
            entry[metric] = {"mean": mean, "std": std, "n": n}
        refs = sum(r["num_ids"] for r in rs)
        entry["missing_face_rate"] = sum(r["num_missing"] for r in rs) / refs if refs else None
        entry["count_accuracy"] = sum(r["count_ok"] for r in rs) / len(rs) if rs else None
        out.append(entry)
    return out


def evaluate_folder(
    manifest: Manifest,
    references_dir: str,
    generated_dir: str,
    encoder: FaceEncoder,
    text_scorer: TextSimilarity | None = None,
    clamp: bool = True,
    reference_mode: str = "first",
    skip_missing: bool = False,
    progress: Callable[[Iterable, int], Iterable] | None = None,
) -> EvaluationReport:
    """Score every generated image of ``manifest``; ``progress(iterable, total)`` may wrap the loop (tqdm)."""
    if reference_mode not in REFERENCE_MODES:
        raise ValueError(f"reference_mode must be one of {REFERENCE_MODES}, got {reference_mode!r}")
    items, missing = [], []
    for c, p, i in manifest.items():
        stem = manifest.file_pattern.format(case=c, prompt=p, instance=i)
        path = find_generated(generated_dir, stem)
        if path is None:
            missing.append(stem)
        else:
            items.append((c, p, i, path))
    if missing and not skip_missing:
        raise ValueError(
            f"{len(missing)} generated images are missing from {generated_dir} (first: {missing[:3]}); "
            "generate them or pass skip_missing / --skip-missing"
        )

    ref_cache: dict[str, np.ndarray] = {}
    for case in manifest.cases:
        for ident in case.identities:
            if ident not in ref_cache:
                ref_cache[ident] = reference_embedding(encoder, references_dir, ident, reference_mode)

    rows: list = []
    confusions: dict = {}
    iterator = progress(items, len(items)) if progress else items
    for c, p, i, path in iterator:
        case = manifest.cases[c]
        image = load_image(path)
        faces = encoder.encode(image)
        refs = np.stack([ref_cache[x] for x in case.identities])  # (N, d)
        gens = np.stack([f.embedding for f in faces]) if faces else np.zeros((0, refs.shape[1]))  # (M, d)
        scores = score_identities(refs, gens, clamp=clamp)
        text = text_scorer.score(image, case.prompts[p]) if text_scorer is not None else None
        rows.append(
            {
                "case": c,
                "prompt_index": p,
                "instance": i,
                "file": os.path.relpath(path, generated_dir),
                "identities": "|".join(case.identities),
                "prompt": case.prompts[p],
                "num_ids": len(case.identities),
                "num_faces": len(faces),
                "num_missing": scores.num_missing,
                "identity": scores.identity,
                "multi_sim": scores.multi_sim,
                "mixing": scores.mixing,
                "text_sim": text,
                "count_ok": len(faces) == len(case.identities),
                "id_conf": float(id_conf(refs, gens).mean()),
                "matched": [float(v) for v in scores.matched],
            }
        )
        confusions.setdefault(c, []).append(scores.confusion)

    case_confusion = []
    for c, mats in sorted(confusions.items()):
        stack = np.stack(mats)  # (images, N, N)
        present = ~np.isnan(stack)
        mean = np.where(present.any(0), np.nansum(stack, 0) / np.maximum(present.sum(0), 1), np.nan)
        case_confusion.append(
            {
                "case": c,
                "identities": manifest.cases[c].identities,
                "confusion": [[None if np.isnan(v) else float(v) for v in row] for row in mean],
            }
        )
    settings = {
        "encoder": encoder.name,
        "clamp": clamp,
        "reference_mode": reference_mode,
        "text_sim": text_scorer is not None,
        "references_dir": references_dir,
        "generated_dir": generated_dir,
        "missing_files": missing,
        "manifest": manifest.to_dict(),
    }
    return EvaluationReport(settings, rows, summarise(rows), case_confusion)


def _fmt(stat: dict) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def summary_table(report: EvaluationReport) -> str:
    """A plain-text table in the paper's style (mean ± std)."""
    header = [
        "IDs",
        "images",
        "SingleSim/identity",
        "MultiSim",
        "mixing",
        "missing faces",
        "count accuracy",
        "ID-Conf",
        "TextSim",
    ]
    lines = []
    for s in report.summary:
        missing = "-" if s["missing_face_rate"] is None else f"{100 * s['missing_face_rate']:.1f}%"
        count = "-" if s["count_accuracy"] is None else f"{100 * s['count_accuracy']:.1f}%"
        lines.append(
            [
                s["num_ids"],
                str(s["images"]),
                _fmt(s["identity"]),
                _fmt(s["multi_sim"]),
                _fmt(s["mixing"]),
                missing,
                count,
                _fmt(s["id_conf"]),
                _fmt(s["text_sim"]),
            ]
        )
    widths = [max(len(h), *(len(r[k]) for r in lines)) for k, h in enumerate(header)]
    fmt = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()  # noqa: E731
    title = f"encoder: {report.settings['encoder']}  (identity clamped at 0: {report.settings['clamp']})"
    return "\n".join([title, fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines]) + "\n"


CSV_COLUMNS = (
    "case",
    "prompt_index",
    "instance",
    "file",
    "identities",
    "num_ids",
    "num_faces",
    "num_missing",
    "identity",
    "multi_sim",
    "mixing",
    "text_sim",
    "count_ok",
    "id_conf",
    "matched",
    "prompt",
)


def write_report(report: EvaluationReport, out_dir: str) -> dict[str, str]:
    """Write report.json, per_image.csv and summary.txt into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        k: os.path.join(out_dir, f)
        for k, f in (("json", "report.json"), ("csv", "per_image.csv"), ("summary", "summary.txt"))
    }
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(
            {
                "settings": report.settings,
                "summary": report.summary,
                "case_confusion": report.case_confusion,
                "images": report.rows,
            },
            f,
            indent=2,
        )
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in report.rows:
            writer.writerow(
                {
                    k: (" ".join(f"{v:.4f}" for v in r[k]) if k == "matched" else "" if r[k] is None else r[k])
                    for k in CSV_COLUMNS
                }
            )
    with open(paths["summary"], "w", encoding="utf-8") as f:
        f.write(summary_table(report))
    return paths
