"""The committed demo model (toyworld/assets): what `bash scripts/run_demo.sh` runs on a fresh clone.

Separate from test_demo.py, whose module-wide fixture points the demo nodes at tiny files built
there; here the pack's own asset folders are used as ComfyUI registered them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
BUNDLED = (
    "toy_base.safetensors",
    "instantfamily/toy_instantfamily_demo.safetensors",
    "insightface/models/toyface/toyface_recognizer.onnx",
)


def test_bundled_demo_model_runs_in_comfy(comfy_host):
    demo = comfy_host.pack_import("nodes.demo")
    assets = Path(demo.ASSETS)
    missing = [name for name in BUNDLED if not (assets / name).is_file()]
    assert not missing, f"bundled demo files missing from {assets}: {missing} (python -m toyworld.build --demo)"

    spec = importlib.util.spec_from_file_location("instantfamily_run_demo_bundled", REPO / "scripts" / "run_demo.py")
    run_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_demo)
    caption = "two people on a teal plain background"
    first = comfy_host.run_prompt(run_demo.demo_prompt("3000, 3001", caption, seed=0, steps=3, cfg=3.0))
    second = comfy_host.run_prompt(run_demo.demo_prompt("3200, 3201", caption, seed=0, steps=3, cfg=3.0))
    image = first["decode"][0]
    assert image.shape == (1, 256, 256, 3) and torch.isfinite(image).all()
    assert float(image.std()) > 0.02, "the bundled model generated a flat image"
    assert first["instantfamily"][0].config.training_steps > 0, "the bundled checkpoint is untrained"
    assert not torch.equal(image, second["decode"][0]), "the bundled model ignores the identities"
