"""A whole identity benchmark from one command: read, generate through ComfyUI, evaluate, report.

    python -m instantfamily_core.evaluation.benchmark --data MultiID-Bench/ --out bench/run1 \\
        --server http://127.0.0.1:8188 --checkpoint v1-5-pruned-emaonly.safetensors \\
        --instantfamily mine.safetensors --insightface-pack antelopev2 --encoder dlib

    --layout fastcomposer --manifest eval/manifest.json --references eval/references   # FastComposer's
    --evaluate-only        # score <data>/<sample>/out.* (another method's outputs) with the same code
    --toy-base toy_base.safetensors --instantfamily toy_instantfamily_demo.safetensors  # the built-in demo

Per sample (``bench_data``): the references' and the ground-truth photo's faces are found with the
chosen encoder; each reference is paired with its person in the ground-truth photo (Hungarian on
cosine), so slot k's region is where person k stands there (box + 25% margin, the pack's
``masks_from_boxes``); FastComposer samples stand side by side. The pack's real graph (``graph``)
runs on a ComfyUI server over its HTTP API; the output is scored by position (``positions``) and
with the field's metrics (``field_metrics``), by N = number of people. Writes
``<out>/samples/<key>/out.png`` + ``scores.json`` (resumable: both are reused when present),
``benchmark.json``, ``benchmark.md`` and ``grid.png`` (every output with its per-face verdicts);
the encoder's name is in every one of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict

import numpy as np

from ..config import MASK_MARGIN
from .bench_data import LAYOUTS, BenchSample, BenchSet, find_image, read_fastcomposer, read_multiid
from .comfy_client import ComfyClient, mask_frames_bytes, png_bytes
from .encoders import ENCODERS, FaceEncoder, make_encoder
from .fastcomposer import load_image
from .field_metrics import field_scores, plain_mean, their_mean
from .graph import GenerationSettings, add_generation_options, build_prompt, settings_from_args, side_by_side_layout
from .metrics import cosine_matrix, match_faces
from .report import draw_verdicts, score_image

log = logging.getLogger("InstantFamily")

OURS = ("slot_accuracy", "swaps", "missing_rate", "extra", "count_accuracy", "identity", "multi_sim", "id_conf")
THEIRS = ("sim_ref", "sim_gt", "copy_paste", "non_matched")


def _face_masks(boxes_px: np.ndarray, size: tuple[int, int]):
    import torch

    from ..masks import masks_from_boxes

    return masks_from_boxes(torch.as_tensor(boxes_px, dtype=torch.float32), size, MASK_MARGIN)


def place(encoder: FaceEncoder, sample: BenchSample, size: tuple[int, int]):
    """(refs (N, d), ground-truth faces (T, d) or None, FaceMasks at ``size``, bodies or None).

    Raises ValueError naming the sample when its photos cannot be used.
    """
    from ..masks import masks_from_images

    refs = np.stack([encoder.reference_embedding(load_image(p), what=f"reference {p}") for p in sample.references])
    height, width = size
    if sample.ground_truth is None:  # FastComposer: side by side, with skeletons
        bodies, masks = side_by_side_layout(sample.num_ids, width, height, MASK_MARGIN)  # masks (N, H, W) 0/255
        return refs, None, masks_from_images(masks.astype(np.float32) / 255.0), bodies
    photo = load_image(sample.ground_truth)
    found = encoder.encode(photo)
    if len(found) < sample.num_ids:
        raise ValueError(
            f"sample {sample.key}: the ground-truth photo shows {len(found)} faces to the "
            f"{encoder.name} encoder for {sample.num_ids} references; nowhere to place everyone"
        )
    targets = np.stack([f.embedding for f in found])
    person = match_faces(cosine_matrix(refs, targets))  # (N,) ground-truth face of each reference
    scale = np.array([width / photo.shape[1], height / photo.shape[0]] * 2)
    boxes = np.stack([found[j].box for j in person]).astype(np.float64) * scale  # (N, 4) px of the output
    return refs, targets, _face_masks(boxes, size), None


def generate(client, settings: GenerationSettings, sample: BenchSample, face_masks, bodies, seed: int) -> bytes:
    """One image through the pack's graph; returns the saved PNG's bytes."""
    masks = (face_masks.masks.numpy() > 0.5).astype(np.uint8) * 255  # (N, H, W)
    refs = []
    for k, path in enumerate(sample.references):
        refs.append(client.upload(f"{sample.key}_ref{k}.png", png_bytes(load_image(path))))
    mask_file = client.upload(f"{sample.key}_masks.tiff", mask_frames_bytes(masks))
    pose = None
    if bodies is not None:
        from ..control_image import draw_skeletons

        pose = client.upload(
            f"{sample.key}_pose.png", png_bytes(draw_skeletons(list(bodies), (settings.height, settings.width)))
        )
    prompt = build_prompt(settings, refs, mask_file, pose, sample.prompt, seed, sample.key)
    images = client.wait_for_images(client.queue(prompt), "save")
    if len(images) != 1:
        raise RuntimeError(f"sample {sample.key}: ComfyUI returned {len(images)} images, expected 1")
    return images[0]


def score_sample(encoder: FaceEncoder, sample: BenchSample, image: np.ndarray, refs, targets, face_masks):
    """(record of every per-sample figure: by position, Hungarian, and the field's; the ImageReport)."""
    r = score_image(encoder, refs, image, face_masks)
    return r, {
        "sample": sample.key,
        "n": sample.num_ids,
        "prompt": sample.prompt,
        "labels": sample.labels,
        "encoder": encoder.name,
        **r.slots.as_dict(),
        "identity": r.identity.identity,
        "mixing": r.identity.mixing,
        "multi_sim": r.identity.multi_sim,
        "face_boxes": r.face_boxes.tolist(),
        **field_scores(refs, r.embeddings, targets),
    }


def summarise(records: list[dict]) -> dict:
    """{N: figures} for every N present, then "all": ours (plain means), MultiID-Bench their way
    (IQR-trimmed, samples dropped as their code drops them, counted) and nothing dropped."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(str(r["n"]), []).append(r)
    keys = sorted(groups, key=int) + (["all"] if records else [])
    groups["all"] = records
    out = {}
    for key in keys:
        rs = groups[key]
        slots = sum(r["slots"] for r in rs)
        entry = {
            "samples": len(rs),
            "slot_accuracy": plain_mean(r["slot_accuracy"] for r in rs),
            "swaps": plain_mean(r["swaps"] for r in rs),  # swapped pairs per image
            "missing_rate": {"mean": sum(r["missing"] for r in rs) / slots if slots else None, "n": slots},
            "extra": plain_mean(r["extra"] for r in rs),
            "count_accuracy": plain_mean(float(r["count_ok"]) for r in rs),
            "identity": plain_mean(r["identity"] for r in rs),
            "multi_sim": plain_mean(r["multi_sim"] for r in rs),
            "id_conf": plain_mean(r["id_conf"] for r in rs),
        }
        for metric in THEIRS:
            theirs = their_mean(r.get(metric) for r in rs)
            theirs["dropped"] = sum(r.get(metric) is None for r in rs)
            entry[f"{metric} (their way)"] = theirs
        for metric in ("sim_ref", "sim_gt", "copy_paste"):
            entry[f"{metric} (nothing dropped)"] = plain_mean(r.get(f"{metric}_all") for r in rs)
        out[key] = entry
    return out


def _cell(stat: dict | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    text = f"{stat['mean']:.{digits}f}"
    dropped = stat.get("dropped", 0) + stat.get("outliers_removed", 0)
    return text + (
        f" ({stat.get('dropped', 0)} dropped, {stat.get('outliers_removed', 0)} outliers)" if dropped else ""
    )


def markdown(summary: dict, settings: dict) -> str:
    head = (
        f"Identity benchmark ({settings['layout']}), face encoder **{settings['encoder']}**, "
        f"{settings['samples']} samples ({settings['skipped']} skipped)\n\n"
    )
    ours = [
        "| N | samples | slot accuracy | swapped pairs / image | missing faces | extra faces / image | "
        "count accuracy | identity (Hungarian, missing = 0) | MultiSim | ID-Conf |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    field = [
        "| N | Sim(Ref) their way | Sim(Ref) nothing dropped | Sim(GT) their way | Sim(GT) nothing dropped | "
        "CP their way | CP nothing dropped | non_matched |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, e in summary.items():
        ours.append(
            f"| {n} | {e['samples']} | " + " | ".join(_cell(e[k], 1 if k == "id_conf" else 3) for k in OURS) + " |"
        )
        field.append(
            f"| {n} | "
            + " | ".join(
                _cell(e[k])
                for k in (
                    "sim_ref (their way)",
                    "sim_ref (nothing dropped)",
                    "sim_gt (their way)",
                    "sim_gt (nothing dropped)",
                    "copy_paste (their way)",
                    "copy_paste (nothing dropped)",
                    "non_matched (their way)",
                )
            )
            + " |"
        )
    return head + "\n".join(ours) + "\n\n" + "\n".join(field) + "\n"


def grid(tiles: list[tuple[str, np.ndarray]], path: str, title: str, height: int = 256, columns: int = 4) -> str:
    """The outputs with their verdicts drawn, ``columns`` per row, each captioned."""
    from PIL import Image, ImageDraw

    cells = []
    for caption, image in tiles:
        im = Image.fromarray(image)
        im = im.resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.BILINEAR)
        cell = Image.new("RGB", (max(im.width, 200), height + 16), (255, 255, 255))
        cell.paste(im, (0, 16))
        ImageDraw.Draw(cell).text((3, 2), caption[:48], fill=(0, 0, 0))
        cells.append(cell)
    width = max(c.width for c in cells) if cells else 200
    rows = (len(cells) + columns - 1) // columns
    canvas = Image.new("RGB", (width * min(columns, max(1, len(cells))), 20 + rows * (height + 16)), (255, 255, 255))
    ImageDraw.Draw(canvas).text((4, 4), title, fill=(0, 0, 0))
    for i, cell in enumerate(cells):
        canvas.paste(cell, ((i % columns) * width, 20 + (i // columns) * (height + 16)))
    canvas.save(path)
    return path


def _progress(items, total: int, show: bool):
    if not show:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, unit="sample", desc="benchmark")


def run(
    bench: BenchSet,
    encoder: FaceEncoder,
    out: str,
    client=None,
    settings: GenerationSettings | None = None,
    seed: int = 42,
    evaluate_only: bool = False,
    limit: int | None = None,
    progress: bool = True,
    grid_samples: int = 32,
) -> dict:
    """Generate (unless ``evaluate_only``) and score every sample; write the outputs; return benchmark.json's dict.

    client: ``ComfyClient`` or anything with its ``upload`` / ``queue`` / ``wait_for_images``.
    """
    if not evaluate_only and (client is None or settings is None):
        raise ValueError("generation needs a ComfyUI client and the generation settings (or use evaluate_only)")
    samples = bench.samples[:limit] if limit else bench.samples
    size = (settings.height, settings.width) if settings is not None else None
    records: list = []
    skipped = list(bench.skipped)
    tiles: list = []
    for sample in _progress(samples, len(samples), progress):
        folder = os.path.join(out, "samples", sample.key)
        os.makedirs(folder, exist_ok=True)
        scores_path, image_path = os.path.join(folder, "scores.json"), os.path.join(folder, "out.png")
        if evaluate_only:
            source = find_image(os.path.join(bench.root, sample.key), "out")
            if source is None:
                skipped.append({"sample": sample.key, "reason": "no out image to evaluate"})
                continue
            image_path = source
        try:
            image = load_image(image_path) if os.path.isfile(image_path) else None
            if size is not None:
                canvas = size
            elif image is not None:
                canvas = image.shape[:2]
            else:
                raise ValueError(f"{sample.key}: no image and no generation settings to place its people")
            refs, targets, face_masks, bodies = place(encoder, sample, canvas)
        except ValueError as e:
            skipped.append({"sample": sample.key, "reason": str(e)})
            log.warning("%s", e)
            continue
        if image is None:
            assert settings is not None  # checked above: generation has its settings
            data = generate(client, settings, sample, face_masks, bodies, seed + sample.seed_offset)
            with open(image_path, "wb") as f:
                f.write(data)
            image = load_image(image_path)
        record = report = None
        if os.path.isfile(scores_path):
            with open(scores_path, encoding="utf-8") as f:
                record = json.load(f)
            if record.get("encoder") != encoder.name:
                record = None
        if record is None:
            report, record = score_sample(encoder, sample, image, refs, targets, face_masks)
            with open(scores_path, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=1)
        records.append(record)
        if len(tiles) < grid_samples:
            from ..face_regions import slot_boxes

            report = report or score_image(encoder, refs, image, face_masks)
            drawn = draw_verdicts(image, report, sample.labels, slot_boxes(face_masks))
            tiles.append((f"{sample.key} N={sample.num_ids} slots {record['slot_accuracy']:.2f}", drawn))
    if not records:
        raise ValueError(
            f"no sample of {bench.root} could be scored; the first reasons: "
            + "; ".join(f"{s['sample']}: {s['reason']}" for s in skipped[:3])
        )
    summary = summarise(records)
    result: dict = {
        "settings": {
            "layout": bench.layout,
            "data": bench.root,
            "encoder": encoder.name,
            "seed": seed,
            "evaluate_only": evaluate_only,
            "samples": len(records),
            "skipped": len(skipped),
            "generation": asdict(settings) if settings is not None else None,
        },
        "summary": summary,
        "skipped": skipped,
        "samples": records,
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "benchmark.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "benchmark.md"), "w", encoding="utf-8") as f:
        f.write(markdown(summary, result["settings"]))
    grid(tiles, os.path.join(out, "grid.png"), f"{bench.layout}: verdicts per face, encoder {encoder.name}")
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m instantfamily_core.evaluation.benchmark", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--data", help="MultiID-Bench-style folder (one sub-folder per sample)")
    p.add_argument("--layout", choices=LAYOUTS, default="multiid")
    p.add_argument("--manifest", help="FastComposer layout: manifest.json")
    p.add_argument("--references", help="FastComposer layout: one folder of photos per identity")
    p.add_argument("--out", required=True, help="folder for the outputs (resumable)")
    p.add_argument("--evaluate-only", action="store_true", help="score <data>/<sample>/out.* instead of generating")
    p.add_argument("--server", default="http://127.0.0.1:8188", help="a running ComfyUI with this pack")
    add_generation_options(p)
    p.add_argument("--encoder", choices=ENCODERS, default="dlib", help="the face encoder that scores the outputs")
    p.add_argument("--insightface-root", help="--encoder insightface: the folder holding models/<pack>/")
    p.add_argument("--facenet-weights", help="--encoder facenet: InceptionResnetV1 VGGFace2 .safetensors")
    p.add_argument("--limit", type=int, help="only the first N samples")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one image")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def build_encoder(args) -> FaceEncoder:
    analyzer = None
    if args.encoder == "insightface":
        if not args.insightface_root:
            raise SystemExit("--encoder insightface needs --insightface-root (the folder holding models/<pack>/)")
        from ..faces import load_face_analyzer

        analyzer = load_face_analyzer([args.insightface_root], pack=args.insightface_pack, provider="auto")
    return make_encoder(args.encoder, analyzer=analyzer, facenet_weights=args.facenet_weights)


def main(argv=None) -> int:
    try:
        return _main(parse_args(argv))
    except (ValueError, RuntimeError) as e:  # bad input or an unreachable server: the message says what to do
        raise SystemExit(f"error: {e}") from None


def _main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.layout == "fastcomposer":
        if not (args.manifest and args.references):
            raise SystemExit("--layout fastcomposer needs --manifest and --references")
        if args.evaluate_only:
            raise SystemExit(
                "--evaluate-only reads MultiID-Bench folders; score FastComposer folders with python -m train.evaluate"
            )
        bench = read_fastcomposer(args.manifest, args.references)
    else:
        if not args.data:
            raise SystemExit("--layout multiid needs --data (the MultiID-Bench-style folder)")
        bench = read_multiid(args.data)
    settings = client = None
    if not args.evaluate_only:
        settings = settings_from_args(args)
        client = ComfyClient(args.server, timeout=args.timeout)
    result = run(
        bench,
        build_encoder(args),
        args.out,
        client,
        settings,
        seed=args.seed,
        evaluate_only=args.evaluate_only,
        limit=args.limit,
        progress=not args.no_progress,
    )
    print(markdown(result["summary"], result["settings"]))
    print(f"wrote {os.path.join(args.out, 'benchmark.json')}, benchmark.md and grid.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
