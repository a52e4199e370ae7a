"""The built-in demo: the pack's real nodes in a real, headless ComfyUI prompt, on the toy model.

    python scripts/run_demo.py [--identities "3000, 3001, 3002"] [--caption "..."] [--seed 0] [--out output/demo]

No SD1.5 or InstantFamily weights can be downloaded here, so the demo runs the toy world
(``toyworld``): a tiny SD1.5-family base model, toy identities recognised by a toy ArcFace
through the pack's real recognizer code, and a toy InstantFamily checkpoint trained by the
pack's trainer. The prompt: Toy Base Model, Toy Faces -> Load InstantFamily Model -> Build
Embedding Stack -> Face Mask -> Pose + Circle Image -> Apply InstantFamily -> Pose+Circle
ControlNet -> stock EmptyLatentImage + KSampler -> Toy Decode; in the same prompt the same seed
again with the first two identities swapped in the stack, and with the base model alone. It
writes ``demo.png`` to --out: the references, the control image, the three generations and, under
each person, the toy judge's verdict (who landed where, similarity); and each image on its own.

ComfyUI: ``COMFYUI_PATH`` (your own ComfyUI) or the copy ``scripts/setup_env.sh`` unpacked under
``.hosts/`` (``INSTANTFAMILY_COMFY_HOST`` = 2024 | 2025 picks which).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "toyworld" / "assets"
TOY_CHECKPOINT = "toy_instantfamily_demo.safetensors"
TOY_BASE = "toy_base.safetensors"
JUDGE = "judge.safetensors"  # the toy world's judge (toyworld/judge.py): the demo's verdicts

REAL_WEIGHTS = """\
This demo used the TOY model (32 x 32 synthetic scenes, toy identities), not Stable Diffusion.
For real photos, put the real weights where ComfyUI looks for them:
  ComfyUI/models/checkpoints/            an SD1.5 checkpoint (.safetensors)
  ComfyUI/models/instantfamily/          an InstantFamily checkpoint (train one: python -m train.train)
  ComfyUI/models/insightface/models/antelopev2/   scrfd_10g_bnkps.onnx + glintr100.onnx
then open example_workflows/ in ComfyUI."""


def load_comfy_host():
    """The development harness's host driver (``instantfamily_dev.comfy_host``)."""
    if str(REPO) not in sys.path:  # a script's sys.path starts at scripts/; the harness lives at the root
        sys.path.insert(0, str(REPO))
    from instantfamily_dev import comfy_host

    return comfy_host


def swap_first_two(identities: str) -> str:
    """ "3000, 3001, 3002" -> "3001, 3000, 3002": the stack with its first two identities swapped."""
    ids = [part.strip() for part in identities.replace(";", ",").split(",") if part.strip()]
    if len(ids) < 2:
        raise SystemExit(f"--identities {identities!r}: give at least two identities (the demo swaps the first two)")
    return ", ".join([ids[1], ids[0], *ids[2:]])


def _branch(suffix: str, faces: str, pose: list, seed: int, steps: int, cfg: float) -> dict:
    """Stack -> Face Mask -> Apply InstantFamily + Pose+Circle ControlNet -> KSampler -> Toy Decode for one stack
    on the given pose; the control image is drawn from this branch's own face masks."""
    n = suffix
    return {
        f"stack{n}": {
            "class_type": "InstantFamilyBuildEmbeddingStack",
            "inputs": {"instantfamily": ["instantfamily", 0], "faces": [faces, 0]},
        },
        f"mask{n}": {
            "class_type": "InstantFamilyFaceMask",
            "inputs": {
                "margin": 0.25,
                "order": "",
                "overlap": "both",
                "faces": [faces, 0],
                "pose_keypoint": pose,
                "instantfamily": ["instantfamily", 0],
            },
        },
        f"control{n}": {
            "class_type": "InstantFamilyPoseCircleImage",
            "inputs": {"pose_keypoint": pose, "face_masks": [f"mask{n}", 0], "instantfamily": ["instantfamily", 0]},
        },
        f"apply{n}": {
            "class_type": "InstantFamilyApply",
            "inputs": {
                "model": ["base", 0],
                "instantfamily": ["instantfamily", 0],
                "stack": [f"stack{n}", 0],
                "face_masks": [f"mask{n}", 0],
                "weight": 1.0,
                "start_at": 0.0,
                "end_at": 1.0,
                "mask_mode": "as trained",
                "overlap": "both",
            },
        },
        f"controlnet{n}": {
            "class_type": "InstantFamilyPoseCircleControlNet",
            "inputs": {
                "positive": ["base", 1],
                "negative": ["base", 2],
                "model": [f"apply{n}", 0],
                "instantfamily": ["instantfamily", 0],
                "stack": [f"stack{n}", 0],
                "face_masks": [f"mask{n}", 0],
                "control_image": [f"control{n}", 0],
                "strength": 1.0,
                "start_percent": 0.0,
                "end_percent": 1.0,
            },
        },
        f"sampler{n}": {
            "class_type": "KSampler",
            "inputs": {
                "model": [f"apply{n}", 0],
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": [f"controlnet{n}", 0],
                "negative": [f"controlnet{n}", 1],
                "latent_image": ["latent", 0],
                "denoise": 1.0,
            },
        },
        f"decode{n}": {"class_type": "InstantFamilyToyDecode", "inputs": {"samples": [f"sampler{n}", 0], "scale": 8}},
        f"show_generated{n}": {"class_type": "PreviewImage", "inputs": {"images": [f"decode{n}", 0]}},
    }


def demo_prompt(identities: str, caption: str, seed: int, steps: int, cfg: float, compare: bool = True) -> dict:
    """The demo as an API-format ComfyUI prompt (node id -> class_type + inputs).

    With ``compare``: the same seed twice more, once with the first two identities swapped in the stack
    (on the first stack's pose: they must swap places), once with the base model alone (no faces)."""
    prompt = {
        "base": {"class_type": "InstantFamilyToyBaseModel", "inputs": {"base_file": TOY_BASE, "caption": caption}},
        "faces": {
            "class_type": "InstantFamilyToyFaces",
            "inputs": {"identities": identities, "seed": seed, "recognizer_pack": "toyface"},
        },
        "instantfamily": {"class_type": "InstantFamilyModelLoader", "inputs": {"instantfamily_file": TOY_CHECKPOINT}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        **_branch("", "faces", ["faces", 2], seed, steps, cfg),
        # ComfyUI runs only what feeds an output node.
        "show_control": {"class_type": "PreviewImage", "inputs": {"images": ["control", 0]}},
        "show_mask": {"class_type": "PreviewImage", "inputs": {"images": ["mask", 1]}},
        "show_references": {"class_type": "PreviewImage", "inputs": {"images": ["faces", 1]}},
    }
    if compare:
        prompt["faces_swapped"] = {
            "class_type": "InstantFamilyToyFaces",
            "inputs": {"identities": swap_first_two(identities), "seed": seed, "recognizer_pack": "toyface"},
        }
        prompt.update(_branch("_swapped", "faces_swapped", ["faces", 2], seed, steps, cfg))
        prompt["sampler_plain"] = {
            "class_type": "KSampler",
            "inputs": {
                "model": ["base", 0],
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["base", 1],
                "negative": ["base", 2],
                "latent_image": ["latent", 0],
                "denoise": 1.0,
            },
        }
        prompt["decode_plain"] = {
            "class_type": "InstantFamilyToyDecode",
            "inputs": {"samples": ["sampler_plain", 0], "scale": 8},
        }
        prompt["show_plain"] = {"class_type": "PreviewImage", "inputs": {"images": ["decode_plain", 0]}}
    return prompt


def save_images(batch, path: Path) -> list[Path]:
    """ComfyUI IMAGE (B, H, W, 3) -> PNG file(s)."""
    from PIL import Image

    from instantfamily_core.images import images_to_uint8

    arrays = images_to_uint8(batch)
    paths = (
        [path] if len(arrays) == 1 else [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(len(arrays))]
    )
    for array, target in zip(arrays, paths):
        Image.fromarray(array).save(target)
    return paths


def demo_sheet(outputs, identities: str):
    """The one picture (``scripts/demo_sheet.py``) and the judge's verdicts per panel."""
    for folder in (REPO, REPO / "scripts"):  # the trainer's toy world (judge) and the sheet module
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    import demo_sheet as sheet_module
    import numpy as np

    from instantfamily_core.images import image_to_uint8, images_to_uint8
    from toyworld.evaluation import gallery
    from toyworld.judge import Judge

    ids = [int(v) for v in identities.replace(";", ",").split(",") if v.strip()]
    swapped = [int(v) for v in swap_first_two(identities).split(",")]
    judge = Judge.load(ASSETS / JUDGE)
    references = gallery(judge, ids, seed=0)  # (K, d) fresh portraits: not the ones the stack was built from
    boxes = outputs["mask"][0].boxes.numpy()  # (N, 4) normalised head boxes, slot n = place n (left to right)
    scenes = {
        "generated": image_to_uint8(outputs["decode"][0]),
        "same seed, first two IDs swapped": image_to_uint8(outputs["decode_swapped"][0]),
        "same seed, no faces": image_to_uint8(outputs["decode_plain"][0]),
    }
    expected = {"generated": ids, "same seed, first two IDs swapped": swapped, "same seed, no faces": None}
    verdicts = {
        title: sheet_module.judge_scene(judge, image[::8, ::8], boxes, ids, references, expected[title])
        for title, image in scenes.items()
    }
    panels = {"control image": image_to_uint8(outputs["control"][0]), **scenes}
    portraits = np.stack(images_to_uint8(outputs["faces"][1]))  # (N, 64, 64, 3)
    note = (
        f"judge: cosine similarity of each head to fresh portraits of {', '.join(map(str, ids))}; "
        "green = the identity its slot holds is the best match there"
    )
    return sheet_module.compose(portraits, ids, swapped, panels, boxes, verdicts, note), verdicts


def check_assets() -> None:
    missing = [
        p
        for p in (
            ASSETS / TOY_BASE,
            ASSETS / JUDGE,
            ASSETS / "instantfamily" / TOY_CHECKPOINT,
            ASSETS / "insightface" / "models" / "toyface",
        )
        if not p.exists()
    ]
    if missing:
        raise SystemExit(
            f"the toy demo model is missing ({', '.join(map(str, missing))}); build it with "
            "`python -m toyworld.build --demo` (trains the toy world on this CPU)"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--identities",
        default="3000, 3001, 3002",
        help="toy identity numbers (3000-3499 are held out: never seen in training)",
    )
    parser.add_argument("--caption", default="three people on a teal gradient background")
    parser.add_argument("--seed", type=int, default=1, help="seed 1: see the README (seeds 0-3 compared)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument("--out", default=str(REPO / "output" / "demo"))
    args = parser.parse_args(argv)
    check_assets()
    start = time.time()
    comfy_host = load_comfy_host()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="instantfamily_demo_") as session:
        host = comfy_host.start_host(Path(session))
        print(f"ComfyUI {host.comfyui_version or host.version} at {host.root}")
        outputs = host.run_prompt(demo_prompt(args.identities, args.caption, args.seed, args.steps, args.cfg))
        written = {
            "control image": save_images(outputs["control"][0], out / "control_image.png"),
            "mask preview": save_images(outputs["mask"][1], out / "mask_preview.png"),
            "references": save_images(outputs["faces"][1], out / "references.png"),
            "generated": save_images(outputs["decode"][0], out / "generated.png"),
            "swapped stack": save_images(outputs["decode_swapped"][0], out / "generated_swapped.png"),
            "no faces": save_images(outputs["decode_plain"][0], out / "generated_no_faces.png"),
        }
        sheet, verdicts = demo_sheet(outputs, args.identities)
    sheet.save(out / "demo.png", optimize=True)
    for title, per_place in verdicts.items():
        print(f"{title}: " + "; ".join(f"place {v.position}: {v.text()}" for v in per_place))
    for name, paths in written.items():
        print(f"{name}: {', '.join(str(p) for p in paths)}")
    print(f"the demo picture: {out / 'demo.png'}")
    print(f"done in {time.time() - start:.0f} s (identities {args.identities}; caption {args.caption!r})")
    print(REAL_WEIGHTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
