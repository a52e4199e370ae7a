"""The committed demo model (toyworld/assets): what `bash scripts/run_demo.sh` runs on a fresh clone.

Separate from test_demo.py, whose module-wide fixture points the demo nodes at tiny files built
there; here the pack's own asset folders are used as ComfyUI registered them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from scripts import run_demo

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

    caption = "two people on a teal plain background"
    # The first run of the demo graph (its nodes' lazy imports) must leave the process environment alone.
    # Two libraries the real nodes need edit it when imported (measured): OpenCV (LD_LIBRARY_PATH,
    # QT_QPA_*) and controlnet_aux (KMP_DUPLICATE_LIB_OK); import them first, so what is checked is the
    # pack's own code (the toy world, the trainer's modules: HF_HUB_OFFLINE once).
    import cv2  # noqa: F401
    from controlnet_aux import open_pose  # noqa: F401

    environ = dict(os.environ)
    first = comfy_host.run_prompt(run_demo.demo_prompt("3000, 3001", caption, seed=0, steps=3, cfg=3.0))
    second = comfy_host.run_prompt(run_demo.demo_prompt("3200, 3201", caption, seed=0, steps=3, cfg=3.0))
    changed = {k for k in set(environ) | set(os.environ) if environ.get(k) != os.environ.get(k)}
    assert not changed, f"running the demo graph changed {sorted(changed)}"
    image = first["decode"][0]
    assert image.shape == (1, 256, 256, 3) and torch.isfinite(image).all()
    assert float(image.std()) > 0.02, "the bundled model generated a flat image"
    assert first["instantfamily"][0].config.training_steps > 0, "the bundled checkpoint is untrained"
    assert not torch.equal(image, second["decode"][0]), "the bundled model ignores the identities"


def _listed_names(spec) -> list[str]:
    """The file/pack names a dropdown input offers (its first element, when it is a list)."""
    return [str(name) for name in spec[0]] if isinstance(spec[0], list) else []


def test_toy_files_stay_out_of_the_real_model_lists(comfy_host):
    """The toy checkpoint and recognizer pack are listed by the demo's own nodes only: no real folder
    of folder_paths reaches the demo assets, and no real loader's dropdown offers a toy file."""
    demo = comfy_host.pack_import("nodes.demo")
    folder_paths = comfy_host.folder_paths
    assets = Path(demo.ASSETS).resolve()
    toy_names = {p.name for p in assets.rglob("*") if p.is_file() or p.parent.name == "models"}
    assert {"toy_instantfamily_demo.safetensors", "toyface"} <= toy_names
    demo_folders = {demo.DEMO_INSTANTFAMILY, demo.DEMO_INSIGHTFACE}
    for name, (paths, _) in folder_paths.folder_names_and_paths.items():
        if name in demo_folders:
            continue
        reaching = [p for p in paths if Path(p).resolve().is_relative_to(assets)]
        assert not reaching, f"the real model folder {name!r} lists the demo assets: {reaching}"

    real_loaders = {
        "InstantFamilyModelLoader": "instantfamily_file",
        "InstantFamilyLoadFaceAnalyzer": "pack",
        "CheckpointLoaderSimple": "ckpt_name",
        "ControlNetLoader": "control_net_name",
    }
    for node, widget in real_loaders.items():
        offered = _listed_names(comfy_host.nodes.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["required"][widget])
        assert not {Path(name).name for name in offered} & toy_names, f"{node}.{widget} offers toy files: {offered}"

    toy_loader = comfy_host.pack.NODE_CLASS_MAPPINGS["InstantFamilyToyModelLoader"]
    assert "toy_instantfamily_demo.safetensors" in _listed_names(
        toy_loader.INPUT_TYPES()["required"]["instantfamily_file"]
    )


def test_toy_nodes_are_marked_as_the_demo(comfy_host):
    demo = comfy_host.pack_import("nodes.demo")
    assert set(demo.NODE_CLASS_MAPPINGS) == set(demo.NODE_DISPLAY_NAME_MAPPINGS)
    for node_id, cls in demo.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY == "InstantFamily/Demo (toy)", node_id
        assert demo.NODE_DISPLAY_NAME_MAPPINGS[node_id].endswith("(toy demo)"), node_id
        assert comfy_host.pack.NODE_CLASS_MAPPINGS[node_id] is cls
    real = set(comfy_host.pack.NODE_CLASS_MAPPINGS) - set(demo.NODE_CLASS_MAPPINGS)
    assert not [n for n in real if "demo" in comfy_host.pack.NODE_CLASS_MAPPINGS[n].CATEGORY.lower()]
