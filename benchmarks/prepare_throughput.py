"""Data-preparation rate: images/s of one ``train.prepare`` process, per stage and end to end.

    python benchmarks/prepare_throughput.py --insightface-root ComfyUI/models/insightface --pack antelopev2 \\
        --dwpose .../ckpts/yzd-v/DWPose --captioner models/blip2-opt-2.7b --pretrained sd15.safetensors \\
        --input photos/ --images 200

Runs the real pipeline (``train.prepare.main``) into a temporary folder and reads the seconds and
calls every shard's stats record per stage (decode, detect, pose, recognize, caption, latents,
write). Without ``--input`` it draws synthetic photos (bright discs, the toy detector's "faces"):
real rates need real photos, since face-less images stop after detection. Stages whose model is
not given are skipped. Extra arguments after ``--`` go to train.prepare.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a file: the packages it imports live at the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from train.prepare import STAGES  # noqa: E402
from train.prepare import main as prepare  # noqa: E402


def synthetic_photos(folder: Path, count: int, size: int = 640, seed: int = 0) -> Path:
    """``count`` dark photos with 1-4 bright textured discs on the stride-32 grid."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = np.full((size, size), 20, np.float32)
        for k in range(int(rng.integers(1, 5))):
            cx, cy = (int(rng.integers(2, size // 32 - 2)) * 32 for _ in range(2))
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= 400
            image[inside] = 200 + 40 * np.sin(0.3 * (k + 1) * xx[inside] + 0.2 * yy[inside])
        Image.fromarray(np.repeat(np.clip(image, 0, 255).astype(np.uint8)[:, :, None], 3, 2)).save(
            folder / f"{index:06d}.png"
        )
    return folder


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--insightface-root", required=True)
    p.add_argument("--pack", default="antelopev2")
    p.add_argument("--provider", default="auto")
    p.add_argument("--dwpose", default="", help="folder with yolox_l.onnx + dw-ll_ucoco_384.onnx")
    p.add_argument("--captioner", default="", help="local transformers captioning model folder")
    p.add_argument(
        "--pretrained", default=None, help="SD1.5 weights for latents ('' = random, with --model-config tiny)"
    )
    p.add_argument("--model-config", default="sd15")
    p.add_argument("--resolution", type=int, default=512, help="latent resolution (with --pretrained)")
    p.add_argument("--input", default="", help="a folder of real photos (default: synthetic ones)")
    p.add_argument("--images", type=int, default=32, help="synthetic photos to draw")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", default="", help="also write the figures here")
    args, extra = p.parse_known_args(argv)
    args.extra = [a for a in extra if a != "--"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(args.input) if args.input else synthetic_photos(Path(tmp) / "photos", args.images)
        output = Path(tmp) / "prepared"
        command = [
            "--input",
            str(source),
            "--output",
            str(output),
            "--insightface-root",
            args.insightface_root,
            "--pack",
            args.pack,
            "--provider",
            args.provider,
            "--batch-size",
            str(args.batch_size),
            "--allow-empty-captions",
            "--no-progress",
            "--min-side",
            "0",
        ]
        command += ["--dwpose", args.dwpose] if args.dwpose else ["--allow-missing-pose"]
        command += ["--captioner", args.captioner] if args.captioner else []
        if args.pretrained is not None:
            command += [
                "--pretrained",
                args.pretrained,
                "--model-config",
                args.model_config,
                "--latent-resolution",
                str(args.resolution),
            ]
        start = time.perf_counter()
        prepare(command + args.extra)
        wall = time.perf_counter() - start
        totals = json.loads((output / "manifest.json").read_text())["totals"]
    stages = {}
    for stage in STAGES:
        calls, seconds = totals["calls"].get(stage, 0), totals["seconds"].get(stage, 0.0)
        if calls:
            rate = round(calls / max(seconds, 1e-9), 2)
            stages[stage] = {"calls": calls, "seconds": round(seconds, 4), "per_s": rate}
    figures = {
        "images": totals["images"],
        "samples": totals["samples"],
        "wall_s": round(wall, 2),
        "images_per_s": round(totals["images"] / wall, 3),
        "stages": stages,
        "note": "per_s counts images (faces for recognize) per second of that stage alone; wall_s includes "
        "loading the models",
    }
    print(
        f"{totals['images']} images -> {totals['samples']} samples in {wall:.1f} s "
        f"({figures['images_per_s']} images/s per process, model loading included)"
    )
    for stage, row in stages.items():
        print(f"  {stage:<10} {row['calls']:>6} calls  {row['seconds']:>8.3f} s  {row['per_s']:>9.2f} /s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
