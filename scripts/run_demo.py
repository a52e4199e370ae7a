"""The built-in demo: the pack's real nodes in a real, headless ComfyUI prompt, on the toy model.

    python scripts/run_demo.py [--identities "3000, 3001, 3002"] [--caption "..."] [--seed 0] [--out output/demo]

No SD1.5 or InstantFamily weights can be downloaded here, so the demo runs the toy world
(``train/toyworld``): a tiny SD1.5-family base model, toy identities recognised by a toy ArcFace
through the pack's real recognizer code, and a toy InstantFamily checkpoint trained by the
pack's trainer. The prompt: Toy Base Model, Toy Faces -> Load InstantFamily Model -> Build
Embedding Stack -> Face Mask -> Pose + Circle Image -> Apply InstantFamily -> Pose+Circle
ControlNet -> stock EmptyLatentImage + KSampler -> Toy Decode. It writes the control image,
the mask preview, the reference portraits and the generated image to --out.

ComfyUI: ``COMFYUI_PATH`` (your own ComfyUI) or the copy ``scripts/setup_env.sh`` unpacked under
``.hosts/`` (``INSTANTFAMILY_COMFY_HOST`` = 2024 | 2025 picks which).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "train" / "toyworld" / "assets"
TOY_CHECKPOINT = "toy_instantfamily_demo.safetensors"
TOY_BASE = "toy_base.safetensors"

REAL_WEIGHTS = """\
This demo used the TOY model (32 x 32 synthetic scenes, toy identities), not Stable Diffusion.
For real photos, put the real weights where ComfyUI looks for them:
  ComfyUI/models/checkpoints/            an SD1.5 checkpoint (.safetensors)
  ComfyUI/models/instantfamily/          an InstantFamily checkpoint (train one: python -m train.train)
  ComfyUI/models/insightface/models/antelopev2/   scrfd_10g_bnkps.onnx + glintr100.onnx
then open example_workflows/ in ComfyUI."""


def load_comfy_host():
    """The test harness's host driver (tests/nodes/comfy_host.py), imported by path."""
    path = REPO / "tests" / "nodes" / "comfy_host.py"
    spec = importlib.util.spec_from_file_location("instantfamily_demo_comfy_host", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def demo_prompt(identities: str, caption: str, seed: int, steps: int, cfg: float) -> dict:
    """The demo as an API-format ComfyUI prompt (node id -> class_type + inputs)."""
    return {
        "base": {"class_type": "InstantFamilyToyBaseModel", "inputs": {"base_file": TOY_BASE, "caption": caption}},
        "faces": {"class_type": "InstantFamilyToyFaces",
                  "inputs": {"identities": identities, "seed": seed, "recognizer_pack": "toyface"}},
        "instantfamily": {"class_type": "InstantFamilyModelLoader", "inputs": {"instantfamily_file": TOY_CHECKPOINT}},
        "stack": {"class_type": "InstantFamilyBuildEmbeddingStack",
                  "inputs": {"instantfamily": ["instantfamily", 0], "faces": ["faces", 0]}},
        "mask": {"class_type": "InstantFamilyFaceMask",
                 "inputs": {"margin": 0.25, "order": "", "overlap": "both", "faces": ["faces", 0],
                            "pose_keypoint": ["faces", 2], "instantfamily": ["instantfamily", 0]}},
        "control": {"class_type": "InstantFamilyPoseCircleImage",
                    "inputs": {"pose_keypoint": ["faces", 2], "face_masks": ["mask", 0],
                               "instantfamily": ["instantfamily", 0]}},
        "apply": {"class_type": "InstantFamilyApply",
                  "inputs": {"model": ["base", 0], "instantfamily": ["instantfamily", 0], "stack": ["stack", 0],
                             "face_masks": ["mask", 0], "weight": 1.0, "start_at": 0.0, "end_at": 1.0,
                             "mask_mode": "as trained", "overlap": "both"}},
        "controlnet": {"class_type": "InstantFamilyPoseCircleControlNet",
                       "inputs": {"positive": ["base", 1], "negative": ["base", 2], "model": ["apply", 0],
                                  "instantfamily": ["instantfamily", 0], "stack": ["stack", 0],
                                  "face_masks": ["mask", 0], "control_image": ["control", 0], "strength": 1.0,
                                  "start_percent": 0.0, "end_percent": 1.0}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        "sampler": {"class_type": "KSampler",
                    "inputs": {"model": ["apply", 0], "seed": seed, "steps": steps, "cfg": cfg,
                               "sampler_name": "euler", "scheduler": "normal", "positive": ["controlnet", 0],
                               "negative": ["controlnet", 1], "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "InstantFamilyToyDecode", "inputs": {"samples": ["sampler", 0], "scale": 8}},
        # ComfyUI runs only what feeds an output node.
        "show_generated": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
        "show_control": {"class_type": "PreviewImage", "inputs": {"images": ["control", 0]}},
        "show_mask": {"class_type": "PreviewImage", "inputs": {"images": ["mask", 1]}},
        "show_references": {"class_type": "PreviewImage", "inputs": {"images": ["faces", 1]}},
    }


def save_images(batch, path: Path) -> list[Path]:
    """ComfyUI IMAGE (B, H, W, 3) -> PNG file(s)."""
    from PIL import Image

    arrays = (batch.clamp(0, 1) * 255).round().byte().cpu().numpy()
    paths = [path] if len(arrays) == 1 else [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(len(arrays))]
    for array, target in zip(arrays, paths):
        Image.fromarray(array).save(target)
    return paths


def check_assets() -> None:
    missing = [p for p in (ASSETS / TOY_BASE, ASSETS / "instantfamily" / TOY_CHECKPOINT,
                           ASSETS / "insightface" / "models" / "toyface") if not p.exists()]
    if missing:
        raise SystemExit(f"the toy demo model is missing ({', '.join(map(str, missing))}); build it with "
                         "`python -m train.toyworld.build --demo` (trains the toy world on this CPU)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", default="3000, 3001, 3002",
                        help="toy identity numbers (3000-3499 are held out: never seen in training)")
    parser.add_argument("--caption", default="three people on a teal gradient background")
    parser.add_argument("--seed", type=int, default=0)
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
        }
    for name, paths in written.items():
        print(f"{name}: {', '.join(str(p) for p in paths)}")
    print(f"done in {time.time() - start:.0f} s (identities {args.identities}; caption {args.caption!r})")
    print(REAL_WEIGHTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
