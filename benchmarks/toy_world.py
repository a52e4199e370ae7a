"""Toy-world benchmark: zero-shot multi-identity generation trained and measured on a CPU.

    python benchmarks/toy_world.py                 # default size (builds what is missing first)
    python benchmarks/toy_world.py --smoke         # every stage at toy size, < 2 min (CI)
    python benchmarks/toy_world.py --variants hard paper nomask --seeds 0 1 --per-count 8
    python benchmarks/toy_world.py --merge a/toy_world.json b/toy_world.json --out c   # seeds run apart

For N = 1..8 identities (trained with at most 4) on held-out identities (never seen by the encoder,
the generator or the judge): per-region identity similarity (judge cosine, region n vs identity n), MultiSim (N-ID
form), mixing rate (regions whose best match in the stack is another identity), slot accuracy
(regions whose best match is their own identity) and swapped pairs per image (two regions that
each look most like the other's identity; ``instantfamily_core.evaluation.positions``), background
accuracy (generated background has the caption's colour). Ablations, each trained the same way
by the real trainer: hard mask, paper-literal mask, no mask (every face visible everywhere), and
attn1 isolation (inference-time switch on the hard model). Reference rows: the oracle (the real
rendering of the same identities in the same layout) and the base model without faces.

Generated images depend on how well the tiny base model samples; two diagnostics on the noise
prediction do not: the identity gain (head-box error with other people's features / with their
own - 1) and influence locality (swap one person's features: how much the prediction changes on
the OTHER heads and on the background, relative to that person's own head).
Mean +- std over training seeds. The issue's targets are checked as ratios, each with a paired
bootstrap interval over cases and a verdict (met / not met / undecided at this sample size).
Writes <out>/toy_world.json and <out>/toy_world.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

logger = logging.getLogger("toy_world")
COUNTS = (1, 2, 3, 4, 5, 6, 7, 8)  # trained with at most 4 IDs per image (toy_world.toml max_faces)
METRICS = ("similarity", "multisim", "mixing", "slot_accuracy", "swaps", "background_ok")


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(records: list[dict]) -> dict:
    """records: one per (seed, case) with 'seed', 'n' and METRICS -> {n: {metric: (mean, std)}}.

    Means over cases within a seed, then mean and std over seeds.
    """
    out = {}
    for n in sorted({r["n"] for r in records}):
        out[n] = {}
        for metric in METRICS:
            per_seed = [
                _mean(r.get(metric) for r in records if r["n"] == n and r["seed"] == s)
                for s in sorted({r["seed"] for r in records})
            ]
            per_seed = [v for v in per_seed if v is not None]
            out[n][metric] = None if not per_seed else (float(np.mean(per_seed)), float(np.std(per_seed)))
    return out


def evaluate_rows(
    toy_dir: Path,
    variants,
    seeds,
    per_count: int,
    case_seed: int,
    steps: int,
    guidance: float,
    batch: int,
    include_train_ids: bool = True,
    device: str = "cpu",
):
    """Every benchmark row: name -> list of per-case records (plus a few images for the grid)."""
    from toyworld import evaluation, world
    from toyworld.build import Paths
    from toyworld.data import ToyFaceFeatures
    from toyworld.judge import Judge
    from toyworld.toy_training import FULL_IMAGE_MASK_VARIANTS

    paths = Paths(toy_dir)
    split = world.split_identities()
    judge = Judge.load(paths.judge)
    features = ToyFaceFeatures(paths.recognizer)
    pools = {"heldout": split.heldout}
    if include_train_ids:
        pools["train"] = split.train
    cases = {name: evaluation.make_cases(pool, COUNTS, per_count, case_seed) for name, pool in pools.items()}
    galleries = {name: [evaluation.gallery(judge, c.identities, case_seed) for c in cs] for name, cs in cases.items()}
    rows: dict[str, list[dict]] = {}
    pictures: dict[str, list[np.ndarray]] = {}
    diagnostics: dict[str, list[dict]] = {}

    def record(row: str, seed: int, images, pool: str) -> None:
        for case, refs, image in zip(cases[pool], galleries[pool], images):
            rows.setdefault(row, []).append({"seed": seed, **evaluation.score(judge, image, case, refs)})
        pictures.setdefault(row, list(images))

    record("oracle (real rendering)", 0, [c.oracle for c in cases["heldout"]], "heldout")
    for variant in variants:
        for seed in seeds:
            start = time.time()
            net, toy = evaluation.load_net(paths.base, paths.checkpoint(variant, seed), device)
            full = variant in FULL_IMAGE_MASK_VARIANTS
            runs = [(variant, "heldout", True, False)]
            if variant == "hard":
                runs.append(("hard + attn1 isolation", "heldout", True, True))
                runs.append(("base model, no faces", "heldout", False, False))
                if include_train_ids:
                    runs.append(("hard, training IDs", "train", True, False))
            for row, pool, with_faces, isolate in runs:
                evaluation.set_attn1_isolation(net, isolate)
                examples = [evaluation.case_example(c, net.config, features, full) for c in cases[pool]]
                if with_faces:
                    diagnostics.setdefault(row, []).append(
                        {
                            "identity_gain": evaluation.identity_gain(net, toy, examples, cases[pool], seed=seed)[
                                "gain"
                            ],
                            **evaluation.influence_locality(net, toy, examples, cases[pool], seed=seed),
                        }
                    )
                if "control image" not in pictures:
                    pictures["control image"] = [e["control_uint8"][::8, ::8] for e in examples]
                images = []
                for i in range(0, len(examples), batch):
                    images.extend(
                        evaluation.sample(
                            net,
                            toy,
                            examples[i : i + batch],
                            steps,
                            guidance,
                            seed=1000 * seed + i,
                            with_faces=with_faces,
                        )
                    )
                record(row, seed, images, pool)
            logger.info("%s seed %d: evaluated in %.0f s", variant, seed, time.time() - start)
    return rows, pictures, diagnostics


def format_table(summary: dict) -> str:
    def cell(value, digits=3):
        if value is None:
            return "-"
        mean, std = value
        return f"{mean:.{digits}f}±{std:.{digits}f}" if std else f"{mean:.{digits}f}"

    lines = [
        "| row | N | similarity | MultiSim | mixing | slot accuracy | swapped pairs per image | background |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, per_n in summary.items():
        for n, metrics in per_n.items():
            lines.append(
                f"| {row} | {n} | {cell(metrics['similarity'])} | {cell(metrics['multisim'])} | "
                f"{cell(metrics['mixing'], 2)} | {cell(metrics.get('slot_accuracy'), 2)} | "
                f"{cell(metrics.get('swaps'), 2)} | {cell(metrics['background_ok'], 2)} |"
            )
    return "\n".join(lines)


DIAGNOSTICS = ("identity_gain", "other_faces", "background")


def format_diagnostics(diagnostics: dict[str, list[dict]]) -> str:
    """Noise-prediction diagnostics per row, mean +- std over seeds: identity gain
    (``evaluation.identity_gain``) and where one person's features act (``influence_locality``)."""
    lines = [
        "| row | identity gain | change on other heads / own head | change on background / own head |",
        "|---|---|---|---|",
    ]
    for row, per_seed in diagnostics.items():
        values = {k: [d[k] for d in per_seed] for k in DIAGNOSTICS}
        cells = [f"{np.mean(v):.3f}±{np.std(v):.3f}" for v in values.values()]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SHORT_NAMES = {
    "control image": "control",
    "oracle (real rendering)": "oracle",
    "hard + attn1 isolation": "hard+attn1",
    "base model, no faces": "no faces",
    "hard, training IDs": "hard/train IDs",
}


def picture_grid(pictures: dict, path: Path, examples_per_count: int = 1, per_count: int = 1) -> Path:
    """Rows: one case per N = 1..8 (held-out identities); columns: control image, oracle (the real
    rendering), then every row's generation (first training seed). "hard/train IDs" shows other cases."""
    from PIL import Image, ImageDraw

    scale = 4
    names = sorted(pictures, key=lambda name: name != "control image")
    chosen = [i for i in range(len(next(iter(pictures.values())))) if i % per_count < examples_per_count]
    tiles = [
        np.concatenate([np.kron(pictures[name][i], np.ones((scale, scale, 1), np.uint8)) for name in names], axis=1)
        for i in chosen
    ]
    body = np.concatenate(tiles, axis=0)
    header = Image.new("RGB", (body.shape[1], 14), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    width = body.shape[1] // len(names)
    for k, name in enumerate(names):
        draw.text((k * width + 3, 2), SHORT_NAMES.get(name, name)[:20], fill=(0, 0, 0))
    Image.fromarray(np.concatenate([np.asarray(header), body], axis=0)).save(path)
    return path


def _mean_over(summary: dict, row: str, metric: str, counts) -> float | None:
    values = [summary.get(row, {}).get(n, {}).get(metric) for n in counts]
    values = [v[0] for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _ratio(a, b) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


# The image-level comparisons: name -> (ratio of row means, target bound, "<=" or ">=").
MANY = (2, 3, 4, 5, 6, 7, 8)
IMAGE_CHECKS = {
    "mixing hard / nomask": (("hard", "mixing", MANY), ("nomask", "mixing", MANY), "<=", 0.5),
    "similarity held-out / training IDs": (
        ("hard", "similarity", COUNTS),
        ("hard, training IDs", "similarity", COUNTS),
        ">=",
        0.9,
    ),
    "similarity N=5-8 / N=4": (("hard", "similarity", (5, 6, 7, 8)), ("hard", "similarity", (4,)), ">=", 0.9),
}


def image_checks(summary: dict) -> dict[str, float | None]:
    """Each IMAGE_CHECKS ratio (None where a row was not run)."""
    return {
        name: _ratio(_mean_over(summary, *top), _mean_over(summary, *bottom))
        for name, (top, bottom, _, _) in IMAGE_CHECKS.items()
    }


def resample_cases(rows: dict[str, list[dict]], rng: np.random.Generator) -> dict[str, list[dict]]:
    """One paired bootstrap draw: within each N the cases are drawn with replacement, and the same
    draw is used for every row and training seed, so a ratio of two rows that score the same cases
    (every held-out row does, in the same order) keeps its pairing."""
    picks: dict[tuple[int, int], np.ndarray] = {}
    out = {}
    for row, records in rows.items():
        groups: dict[tuple[int, int], list[dict]] = {}
        for record in records:
            groups.setdefault((record["seed"], record["n"]), []).append(record)
        out[row] = []
        for (_, n), group in groups.items():
            pick = picks.setdefault((n, len(group)), rng.integers(0, len(group), len(group)))
            out[row] += [group[i] for i in pick]
    return out


def check_intervals(
    rows: dict[str, list[dict]], draws: int = 300, level: float = 0.9, seed: int = 0
) -> dict[str, tuple[float, float] | None]:
    """Bootstrap interval (over cases) of each image check: with a few cases per N and judge
    similarities near 0.1, a ratio can move a lot from one case more or less."""
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {name: [] for name in IMAGE_CHECKS}
    for _ in range(draws):
        summary = {row: summarise(records) for row, records in resample_cases(rows, rng).items()}
        for name, value in image_checks(summary).items():
            if value is not None:
                samples[name].append(value)
    tail = (1 - level) / 2
    return {
        name: (float(np.quantile(v, tail)), float(np.quantile(v, 1 - tail))) if len(v) > draws // 2 else None
        for name, v in samples.items()
    }


def verdict(interval: tuple[float, float] | None, sense: str, bound: float) -> str:
    """'met' / 'not met' when the whole interval is on one side of the target, else 'undecided'."""
    if interval is None:
        return "-"
    low, high = interval
    inside = (lambda v: v <= bound) if sense == "<=" else (lambda v: v >= bound)
    if inside(low) and inside(high):
        return "met"
    if not inside(low) and not inside(high):
        return "not met"
    return "undecided at this sample size"


def target_checks(
    summary: dict, diagnostics: dict[str, list[dict]], rows: dict[str, list[dict]] | None = None, level: float = 0.9
) -> dict:
    """The issue's comparisons: image-level ratios (with a bootstrap interval and a verdict when the
    per-case ``rows`` are given) and the diagnostics' leak ratios."""

    def diagnostic(row, key):
        return float(np.mean([d[key] for d in diagnostics[row]])) if row in diagnostics else None

    intervals = check_intervals(rows, level=level) if rows else {}
    checks = {}
    for name, value in image_checks(summary).items():
        _, _, sense, bound = IMAGE_CHECKS[name]
        interval = intervals.get(name)
        checks[name] = {
            "value": value,
            "target": f"{sense} {bound}",
            "interval": interval,
            "level": level,
            "verdict": verdict(interval, sense, bound) if rows else None,
        }
    for name, top in (
        ("change on other heads, paper / hard (leak)", "paper"),
        ("change on other heads, nomask / hard", "nomask"),
    ):
        checks[name] = {"value": _ratio(diagnostic(top, "other_faces"), diagnostic("hard", "other_faces"))}
    return checks


def format_checks(checks: dict) -> str:
    lines = []
    for name, check in checks.items():
        value = "-" if check["value"] is None else f"{check['value']:.2f}"
        line = f"- {name}: {value}"
        if "target" in check:
            line += f" (target {check['target']})"
        if check.get("interval"):
            low, high = check["interval"]
            line += f", {round(100 * check['level'])}% bootstrap interval over cases {low:.2f}-{high:.2f}: {check['verdict']}"
        lines.append(line)
    return "\n".join(lines)


def report(rows: dict, diagnostics: dict, settings: dict, seconds: float, out: Path) -> dict:
    """Summary, tables and checks -> <out>/toy_world.json; returns the result."""
    summary = {row: summarise(records) for row, records in rows.items()}
    checks = target_checks(summary, diagnostics, rows)
    table = format_table(summary) + "\n\n" + format_diagnostics(diagnostics) + "\n\n" + format_checks(checks)
    print(table)
    result = {
        "settings": settings,
        "seconds": seconds,
        "summary": {row: {str(n): m for n, m in per_n.items()} for row, per_n in summary.items()},
        "records": rows,
        "diagnostics": diagnostics,
        "checks": checks,
        "table_markdown": table,
    }
    (out / "toy_world.json").write_text(json.dumps(result, indent=2))
    return result


def merge(files: list[str], out: Path) -> dict:
    """One report from runs over different training seeds (e.g. run in parallel): records and
    diagnostics are concatenated; the seed-independent oracle row is taken from the first file."""
    rows: dict[str, list[dict]] = {}
    diagnostics: dict[str, list[dict]] = {}
    for k, file in enumerate(files):
        part = json.loads(Path(file).read_text())
        for row, records in part["records"].items():
            if row.startswith("oracle") and k:
                continue
            rows.setdefault(row, []).extend(records)
        for row, values in part["diagnostics"].items():
            diagnostics.setdefault(row, []).extend(values)
    out.mkdir(parents=True, exist_ok=True)
    return report(rows, diagnostics, {"merged": list(files)}, 0.0, out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes everywhere (CI): < 2 min")
    parser.add_argument("--toy-dir", default=str(REPO / "output" / "toyworld"), help="built artifacts (resumable)")
    parser.add_argument(
        "--size",
        default="default",
        choices=("smoke", "default", "full"),
        help="size of whatever must still be built (encoder, judge, base, trainings)",
    )
    parser.add_argument("--out", default=None, help="where to write toy_world.json / .png (default: --toy-dir)")
    parser.add_argument("--variants", nargs="+", default=["hard", "paper", "nomask"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--per-count", type=int, default=8, help="cases per N")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu or cuda[:n]")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="only combine toy_world.json files of runs over different seeds into --out",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.merge:
        merge(args.merge, Path(args.out or "."))
        return 0
    import torch

    torch.set_num_threads(1)
    start = time.time()
    temporary = None
    if args.smoke:
        temporary = tempfile.TemporaryDirectory(prefix="toy_world_smoke_")
        toy_dir = Path(args.out or temporary.name)
        args.seeds, args.per_count, args.steps, args.batch = [0], 1, 1, 6
    else:
        toy_dir = Path(args.toy_dir)
    out = Path(args.out) if args.out else toy_dir
    out.mkdir(parents=True, exist_ok=True)
    from toyworld.build import build, resolve_device

    device = resolve_device(args.device)
    build(toy_dir, "smoke" if args.smoke else args.size, tuple(args.variants), tuple(args.seeds), str(device))
    rows, pictures, diagnostics = evaluate_rows(
        toy_dir,
        args.variants,
        args.seeds,
        args.per_count,
        case_seed=2024,
        steps=args.steps,
        guidance=args.guidance,
        batch=args.batch,
        include_train_ids=not args.smoke,
        device=str(device),
    )
    report(rows, diagnostics, dict(vars(args)), time.time() - start, out)
    picture_grid(pictures, out / "toy_world.png", per_count=args.per_count)
    print(f"wrote {out / 'toy_world.json'} and {out / 'toy_world.png'} in {time.time() - start:.0f} s")
    if temporary is not None and not args.out:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
