"""The tiny world the example workflows run in during tests (nothing here needs downloaded weights).

- Photos: textured bright discs that the tiny exported face detector finds (instantfamily_dev/face_fixtures.py);
  one table names an image for every file a workflow's LoadImage asks for.
- Models: the tiny insightface pack (``TEST_PACK``) and an InstantFamily checkpoint per family
  (``TEST_CHECKPOINTS``) whose projector fits the tiny recognizer (512 global, 512x7x7 local) and whose
  ControlNet mirrors the fixture pack's tiny SD1.5- or SDXL-shaped UNet (context width ``CONTEXT``);
  a workflow runs on the tiny model of its own family (``FAMILY``).
- ``use_test_models``: an API prompt with its weights-dependent nodes swapped for the fixture pack's
  stand-ins: CheckpointLoaderSimple -> IFTestTinyModel, CLIPTextEncode -> IFTestConditioning,
  VAEDecode -> IFTestDecode, DWPreprocessor -> IFTestPoseKeypoint; the face pack and checkpoint
  widgets point at the test files; latents shrink to 64x64 and sampling to a few steps.
"""

from __future__ import annotations

import copy
import json
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from instantfamily_dev import workflow_api as api
from instantfamily_dev.comfy_host import REPO_ROOT

WORKFLOW_DIR = REPO_ROOT / "example_workflows"
CONTEXT = 32  # the fixture pack's tiny model's cross-attention width
TEST_PACK = "tinypack_workflows"
TEST_CHECKPOINT = "instantfamily_workflows_test.safetensors"
TEST_CHECKPOINTS = {"SD1.5": TEST_CHECKPOINT, "SDXL": "instantfamily_workflows_test_sdxl.safetensors"}
FAMILY = {"sdxl_three_people": "SDXL"}  # the base-model family of each workflow; SD1.5 when not named
POOLED = {"SD1.5": 0, "SDXL": 1280}  # the pooled text width each family's conditioning carries

# Node types a workflow may use although neither the host nor this pack has them: only in the named
# workflows, documented there as optional. Their inputs as recorded from the other pack (for the widget checks),
# in the harness (instantfamily_dev.workflow_api.RECORDED_NODES): the generator derives their sockets from them.
OPTIONAL_NODES = {"DWPreprocessor": "comfyui_controlnet_aux"}
OPTIONAL_WORKFLOWS = {"two_people_dwpose": {"DWPreprocessor"}}
RECORDED_DEFINITIONS = {t: definition for t, (definition, _, _) in api.RECORDED_NODES.items()}


def workflow_names() -> list[str]:
    return sorted(p.stem for p in WORKFLOW_DIR.glob("*.json"))


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOW_DIR / f"{name}.json").read_text())


# -- photos -----------------------------------------------------------------------------------
# Face centres on the tiny detector's stride-32 anchors of a 640x640 image.
ROW = [(96, 320), (256, 320), (416, 320), (576, 320)]
CENTRES = {
    1: [(320, 320)],
    2: [(160, 320), (480, 320)],
    3: [(160, 320), (320, 320), (480, 320)],
    4: ROW,
    7: [(96, 192), (256, 192), (416, 192), (576, 192), (160, 480), (320, 480), (480, 480)],
}
SHIFTED = [(320, 320), (160, 320), (480, 320)]  # several photos of one person: same face, elsewhere


def disc_photo(faces, size: int = 640) -> np.ndarray:
    """(size, size, 3) uint8: a textured disc per (pattern, (cx, cy)); a pattern is one person's face."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    image = np.full((size, size), 20, np.float32)
    for pattern, (cx, cy) in faces:
        dx, dy = xx - cx, yy - cy
        inside = dx**2 + dy**2 <= 20.0**2
        image[inside] = 200 + 40 * np.sin((0.35 + 0.45 * pattern) * dx[inside] + (0.1 + 0.3 * pattern) * dy[inside])
    return np.repeat(np.clip(image, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def pose_image(size: int = 64) -> np.ndarray:
    """A small stand-in for an OpenPose skeleton image (coloured strokes on black)."""
    image = np.zeros((size, size, 3), np.uint8)
    for k, colour in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255))):
        image[8 + 16 * k : 10 + 16 * k, 8 : size - 8] = colour
    return image


def _person(pattern, photo=0):
    return [(pattern, SHIFTED[photo])]


# Every file name the example workflows' LoadImage nodes use -> the test image written under that name.
TEST_IMAGES = {
    "person_a.png": _person(0),
    "person_b.png": _person(1),
    "person_c.png": _person(2),
    "person_5.png": _person(4),
    "person_6.png": _person(5),
    "person_7.png": _person(6),
    **{f"person_a_{k + 1}.png": _person(0, k) for k in range(3)},
    **{f"person_b_{k + 1}.png": _person(1, k) for k in range(2)},
    "group_photo.png": list(zip(range(4), ROW)),
    "family_photo.png": list(zip(range(4), ROW)),
    **{f"pose_template_{n}people.png": [(10 + k, c) for k, c in enumerate(CENTRES[n])] for n in (2, 3, 4, 7)},
    **{f"pose_openpose_{n}people.png": "pose" for n in (2, 3, 4, 7)},
}
# People in each workflow's pose (what the DWPreprocessor stand-in draws).
PEOPLE = {"two_people_dwpose": 2}


def write_image(input_dir, name: str, faces) -> None:
    array = pose_image() if faces == "pose" else disc_photo(faces)
    Image.fromarray(array).save(os.path.join(str(input_dir), name))


def write_test_images(input_dir) -> None:
    for name, faces in TEST_IMAGES.items():
        write_image(input_dir, name, faces)


def images_used(prompt: dict) -> set[str]:
    return {n["inputs"]["image"] for n in prompt.values() if n["class_type"] == "LoadImage"}


# -- models -----------------------------------------------------------------------------------
def tiny_controlnet_state(comfy_host, family: str = "SD1.5") -> dict:
    """A random ControlNet state dict mirroring the fixture pack's tiny UNet of ``family`` (IFTestTinyModel)."""
    import comfy.cldm.cldm
    import comfy.ops

    base = comfy_host.tiny_sd15_model(context_dim=CONTEXT, seed=1, family=family)
    config = dict(base.model.model_config.unet_config, hint_channels=3, operations=comfy.ops.disable_weight_init)
    config.pop("out_channels")
    control = comfy_host.fixtures.tiny_model.fill_weights(comfy.cldm.cldm.ControlNet(**config), seed=4)
    return {k: v.detach().clone() for k, v in control.state_dict().items()}


def build_test_models(comfy_host, models_dir: Path) -> None:
    """Write the tiny face pack and the test checkpoint under ``models_dir`` (a ComfyUI models folder)."""
    from instantfamily_dev import face_fixtures

    pack_dir = face_fixtures.build_tiny_pack(str(models_dir / "insightface"), TEST_PACK)
    config_mod = comfy_host.pack_import("instantfamily_core.config")
    projector_mod = comfy_host.pack_import("instantfamily_core.projector")
    checkpoint_mod = comfy_host.pack_import("instantfamily_core.checkpoint")
    model_pack = comfy_host.pack_import("instantfamily_core.faces.model_pack")
    recognizer = config_mod.RecognizerInfo(
        TEST_PACK, "rec_tiny.onnx", model_pack.file_sha256(os.path.join(pack_dir, "rec_tiny.onnx"))
    )
    (models_dir / "instantfamily").mkdir(parents=True, exist_ok=True)
    for family, name in TEST_CHECKPOINTS.items():
        config = config_mod.InstantFamilyConfig(
            d_K=CONTEXT, projector_hidden=24, recognizer=recognizer, base_model=family
        )
        torch.manual_seed(0)
        projector = projector_mod.Projector(config)
        checkpoint_mod.save_checkpoint(
            models_dir / "instantfamily" / name,
            config,
            projector.state_dict(),
            tiny_controlnet_state(comfy_host, family),
        )


# -- the swap -----------------------------------------------------------------------------------
def _text_seed(text: str) -> int:
    return zlib.crc32(text.encode()) % (2**31)


def optional_stand_in(node: dict, workflow: str) -> dict:
    """The fixture pack's stand-in for a node of another pack (OPTIONAL_NODES)."""
    if node["class_type"] == "DWPreprocessor":
        return {
            "class_type": "IFTestPoseKeypoint",
            "inputs": {"image": node["inputs"]["image"], "people": PEOPLE[workflow]},
        }
    raise ValueError(f"no stand-in for {node['class_type']}")


def without_other_packs(prompt: dict, workflow: str) -> dict:
    """A copy of an API prompt with only the OPTIONAL_NODES swapped for stand-ins."""
    return {
        nid: optional_stand_in(n, workflow) if n["class_type"] in OPTIONAL_NODES else copy.deepcopy(n)
        for nid, n in prompt.items()
    }


def use_test_models(
    prompt: dict, workflow: str | None = None, size: int = 64, steps: int = 2, max_batch: int = 2
) -> dict:
    """A copy of an API prompt that runs on the test models (see the module docstring)."""
    out = copy.deepcopy(prompt)
    family = FAMILY.get(workflow or "", "SD1.5")
    checkpoints = {nid for nid, n in out.items() if n["class_type"] == "CheckpointLoaderSimple"}
    for nid, node in out.items():
        kind, inputs = node["class_type"], node["inputs"]
        linked_to_checkpoint = {
            name: v[1] for name, v in inputs.items() if isinstance(v, list) and len(v) == 2 and v[0] in checkpoints
        }
        if kind == "CheckpointLoaderSimple":
            out[nid] = {
                "class_type": "IFTestTinyModel",
                "inputs": {"seed": 1, "context_dim": CONTEXT, "family": family},
            }
        elif kind == "CLIPTextEncode" and linked_to_checkpoint == {"clip": 1}:
            out[nid] = {
                "class_type": "IFTestConditioning",
                "inputs": {
                    "seed": _text_seed(inputs["text"]),
                    "context_dim": CONTEXT,
                    "tokens": 77,
                    "batch": 1,
                    "pooled": POOLED[family],
                },
            }
        elif kind == "VAEDecode" and linked_to_checkpoint == {"vae": 2}:
            out[nid] = {"class_type": "IFTestDecode", "inputs": {"samples": inputs["samples"]}}
        elif kind in OPTIONAL_NODES:
            out[nid] = optional_stand_in(node, workflow)
        elif linked_to_checkpoint and linked_to_checkpoint != {"model": 0}:
            raise ValueError(
                f"node {nid} ({kind}) uses checkpoint outputs {linked_to_checkpoint}: "
                "teach use_test_models a stand-in for it"
            )
        elif kind == "InstantFamilyLoadFaceAnalyzer":
            inputs["pack"] = TEST_PACK
        elif kind == "InstantFamilyModelLoader":
            inputs["instantfamily_file"] = TEST_CHECKPOINTS[family]
        elif kind == "EmptyLatentImage":
            inputs.update(width=size, height=size, batch_size=min(int(inputs["batch_size"]), max_batch))
        elif kind == "KSampler":
            inputs["steps"] = steps
    return out
