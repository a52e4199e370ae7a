"""Evaluate generated images: identity preservation (SingleSim / MultiSim), mixing, TextSim.

    python -m train.evaluate --manifest eval/manifest.json --references eval/references \\
        --generated eval/generated --out eval/report --encoder dlib [--clip models/clip-vit-large-patch14]

Folder layout and metrics: ``instantfamily_core/evaluation/fastcomposer.py`` and ``instantfamily_core/evaluation/metrics.py``.
The paper's numbers use ``--encoder facenet`` (MTCNN + InceptionResnetV1 VGGFace2, needs
``pip install facenet-pytorch --no-deps`` and ``--facenet-weights``) and CLIP ViT-L/14 for TextSim.
Writes report.json, per_image.csv and summary.txt into --out and prints the summary table.
"""

from __future__ import annotations

import argparse
import logging
import sys

from instantfamily_core.evaluation.encoders import DLIB_DETECTORS, ENCODERS, TextSimilarity, make_encoder
from instantfamily_core.evaluation.fastcomposer import (
    REFERENCE_MODES,
    Manifest,
    evaluate_folder,
    summary_table,
    write_report,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, help="manifest.json: cases (identities + prompts), instances")
    p.add_argument("--references", required=True, help="folder with one sub-folder of photos per identity")
    p.add_argument("--generated", required=True, help="folder of subject_XXXX_prompt_XXXX_instance_XXXX images")
    p.add_argument("--out", required=True, help="folder for report.json, per_image.csv, summary.txt")
    p.add_argument("--encoder", choices=ENCODERS, default="dlib")
    p.add_argument("--facenet-weights", help="InceptionResnetV1 VGGFace2 weights (.safetensors) for --encoder facenet")
    p.add_argument(
        "--insightface-root",
        help="for --encoder insightface: the folder holding models/<pack>/ (ComfyUI's models/insightface)",
    )
    p.add_argument("--insightface-pack", default="antelopev2", help="model pack name under <root>/models/")
    p.add_argument("--dlib-detector", choices=DLIB_DETECTORS, default="hog")
    p.add_argument("--clip", help="local transformers CLIP folder for TextSim (skipped when absent)")
    p.add_argument(
        "--reference-mode",
        choices=REFERENCE_MODES,
        default="first",
        help="first image of each identity folder (FastComposer) or the mean over all of them",
    )
    p.add_argument("--no-clamp", action="store_true", help="do not clamp identity similarities at 0")
    p.add_argument("--skip-missing", action="store_true", help="evaluate what exists instead of failing")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _analyzer(root: str | None, pack: str):
    if not root:
        raise SystemExit("--encoder insightface needs --insightface-root (the folder holding models/<pack>/*.onnx)")
    from instantfamily_core.faces import load_face_analyzer

    return load_face_analyzer([root], pack=pack, provider="auto")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    analyzer = _analyzer(args.insightface_root, args.insightface_pack) if args.encoder == "insightface" else None
    encoder = make_encoder(
        args.encoder,
        analyzer=analyzer,
        facenet_weights=args.facenet_weights,
        device=args.device,
        dlib_detector=args.dlib_detector,
    )
    text_scorer = TextSimilarity(args.clip, device=args.device) if args.clip else None
    if text_scorer is None:
        logging.info("no --clip folder given: TextSim is skipped")

    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = lambda it, total: tqdm(it, total=total, unit="image", desc="evaluating")  # noqa: E731
    report = evaluate_folder(
        Manifest.load(args.manifest),
        args.references,
        args.generated,
        encoder,
        text_scorer=text_scorer,
        clamp=not args.no_clamp,
        reference_mode=args.reference_mode,
        skip_missing=args.skip_missing,
        progress=progress,
    )
    paths = write_report(report, args.out)
    print(summary_table(report))
    print("wrote " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
