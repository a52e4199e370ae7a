"""Load Face Analyzer + Load Faces in a real ComfyUI: a tiny exported insightface pack in the host's
models/insightface/models/, faces feeding Build Embedding Stack, Face Mask and Apply in one prompt."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from instantfamily_dev import face_fixtures
from instantfamily_dev.comfy_host import PromptExecutionError
from instantfamily_dev.face_fixtures import TINY_PACK

PACK = TINY_PACK  # host_tiny_pack (tests/nodes/conftest.py)
CONTEXT = 32  # the fixture pack's tiny model's cross-attention width
CENTRES = ((544, 320), (96, 320), (320, 224))  # on the toy detector's stride-32 anchors at 640 px


@pytest.fixture(scope="module")
def fixtures():
    return face_fixtures


@pytest.fixture(scope="module")
def input_images(comfy_host, fixtures, host_tiny_pack):
    input_dir = comfy_host.folder_paths.get_input_directory()
    Image.fromarray(fixtures.disc_image(centres=CENTRES)).save(os.path.join(input_dir, "faces_group.png"))
    Image.fromarray(fixtures.disc_image(centres=((320, 320),))).save(os.path.join(input_dir, "faces_one.png"))
    Image.fromarray(np.zeros((200, 300, 3), np.uint8)).save(os.path.join(input_dir, "faces_none.png"))
    return input_dir


@pytest.fixture(scope="module")
def checkpoint(comfy_host, host_tiny_pack):
    """A checkpoint whose projector takes the tiny recognizer's 512 / 512x7x7 features."""
    config_mod = comfy_host.pack_import("instantfamily_core.config")
    projector_mod = comfy_host.pack_import("instantfamily_core.projector")
    checkpoint_mod = comfy_host.pack_import("instantfamily_core.checkpoint")
    model_pack = comfy_host.pack_import("instantfamily_core.faces.model_pack")
    recognizer = config_mod.RecognizerInfo(
        PACK, "rec_tiny.onnx", model_pack.file_sha256(os.path.join(host_tiny_pack, "rec_tiny.onnx"))
    )
    config = config_mod.InstantFamilyConfig(d_K=CONTEXT, projector_hidden=24, recognizer=recognizer)
    torch.manual_seed(0)
    projector = projector_mod.Projector(config)
    checkpoint_mod.save_checkpoint(
        comfy_host.models_dir / "instantfamily" / "faces_test.safetensors", config, projector.state_dict()
    )
    comfy_host.folder_paths.filename_list_cache.clear()
    return "faces_test.safetensors"


def analyzer_node(pack=PACK):
    return {
        "class_type": "InstantFamilyLoadFaceAnalyzer",
        "inputs": {"pack": pack, "provider": "CPU", "det_size": 640, "det_thresh": 0.5},
    }


def faces_node(images, mode="every face", combine="separate", indices="", analyzer="2", faces=None):
    inputs = {
        "analyzer": [analyzer, 0],
        "images": images,
        "mode": mode,
        "order": "left to right",
        "combine": combine,
        "face_indices": indices,
    }
    if faces is not None:
        inputs["faces"] = faces
    return {"class_type": "InstantFamilyLoadFaces", "inputs": inputs}


def test_nodes_are_registered(comfy_host, host_tiny_pack):
    analyzer = comfy_host.node_class("InstantFamilyLoadFaceAnalyzer")
    faces = comfy_host.node_class("InstantFamilyLoadFaces")
    assert analyzer.RETURN_TYPES == ("INSTANTFAMILY_ANALYZER",) and analyzer.CATEGORY == "InstantFamily/faces"
    assert faces.RETURN_TYPES == ("INSTANTFAMILY_FACES", "IMAGE", "IMAGE") and faces.RETURN_NAMES == (
        "faces",
        "preview",
        "crops",
    )
    packs = analyzer.INPUT_TYPES()["required"]["pack"][0]
    assert PACK in packs and "antelopev2" in packs and "buffalo_l" in packs
    assert analyzer.INPUT_TYPES()["required"]["provider"][0][0] == "auto"
    assert comfy_host.nodes.NODE_DISPLAY_NAME_MAPPINGS["InstantFamilyLoadFaces"] == "Load Faces"


def test_load_faces_feeds_the_stack_masks_and_sampler(comfy_host, input_images, checkpoint):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "faces_group.png"}},
        "2": analyzer_node(),
        "3": faces_node(["1", 0]),
        "4": {"class_type": "InstantFamilyModelLoader", "inputs": {"instantfamily_file": checkpoint}},
        "5": {
            "class_type": "InstantFamilyBuildEmbeddingStack",
            "inputs": {"instantfamily": ["4", 0], "faces": ["3", 0]},
        },
        "6": {
            "class_type": "InstantFamilyFaceMask",
            "inputs": {
                "margin": 0.25,
                "order": "",
                "overlap": "both",
                "faces": ["3", 0],
                "template": ["1", 0],
                "analyzer": ["2", 0],
            },
        },
        "7": {"class_type": "IFTestTinyModel", "inputs": {"seed": 1, "context_dim": CONTEXT}},
        "8": {
            "class_type": "InstantFamilyApply",
            "inputs": {
                "model": ["7", 0],
                "instantfamily": ["4", 0],
                "stack": ["5", 0],
                "face_masks": ["6", 0],
                "weight": 1.0,
                "start_at": 0.0,
                "end_at": 1.0,
                "mask_mode": "as trained",
                "overlap": "both",
            },
        },
        "9": {
            "class_type": "IFTestConditioning",
            "inputs": {"seed": 2, "context_dim": CONTEXT, "tokens": 77, "batch": 1},
        },
        "10": {
            "class_type": "IFTestConditioning",
            "inputs": {"seed": 3, "context_dim": CONTEXT, "tokens": 77, "batch": 1},
        },
        "11": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "12": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["8", 0],
                "positive": ["9", 0],
                "negative": ["10", 0],
                "latent_image": ["11", 0],
                "seed": 7,
                "steps": 2,
                "cfg": 2.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "13": {"class_type": "IFTestLatentProbe", "inputs": {"samples": ["12", 0]}},
        "14": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
        "15": {"class_type": "PreviewImage", "inputs": {"images": ["3", 2]}},
    }
    outputs = comfy_host.run_prompt(prompt)
    faces, preview, crops = outputs["3"]
    assert len(faces) == 3 and faces.recognizer.file_name == "rec_tiny.onnx" and faces.recognizer.pack == PACK
    centres = [float(i.sources[0].box[0] + i.sources[0].box[2]) / 2 for i in faces.identities]
    assert centres == pytest.approx([96, 320, 544], abs=1e-2)  # left to right
    assert faces.local_features().shape == (3, 512, 7, 7) and faces.global_features().shape == (3, 512)
    assert preview.shape == (1, 640, 640, 3) and preview.dtype == torch.float32
    assert crops.shape == (3, 112, 112, 3) and 0.0 <= float(crops.min()) and float(crops.max()) <= 1.0
    assert outputs["5"][0].num_faces == 3
    assert len(outputs["6"][0].masks) == 3
    assert outputs.ui["13"]["latent_shape"] == [[1, 4, 8, 8]]


def test_batch_progress_and_average(comfy_host, input_images):
    import comfy.utils

    calls = []
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview=None, **kw: calls.append((value, total)))
    try:
        prompt = {
            "1": {"class_type": "LoadImage", "inputs": {"image": "faces_one.png"}},
            "2": analyzer_node(),
            "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["1", 0]}},
            "4": {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["1", 0]}},
            "5": faces_node(["4", 0], mode="largest face per image", combine="normalized average"),
            "6": faces_node(["1", 0], faces=["5", 0]),
            "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 1]}},
        }
        outputs = comfy_host.run_prompt(prompt)
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    averaged, preview, crops = outputs["5"]
    assert len(averaged) == 1 and len(averaged.identities[0].sources) == 3 and crops.shape[0] == 3
    assert preview.shape == (3, 640, 640, 3)
    appended = outputs["6"][0]
    assert len(appended) == 2 and appended.identities[0] is averaged.identities[0]
    np.testing.assert_allclose(
        appended.identities[1].global_feature, averaged.identities[0].global_feature, rtol=1e-4, atol=1e-4
    )
    assert (1, 3) in calls and (3, 3) in calls


def test_errors_reach_the_user(comfy_host, input_images):
    missing = {
        "1": analyzer_node("antelopev2"),
        "2": {"class_type": "LoadImage", "inputs": {"image": "faces_one.png"}},
        "3": faces_node(["2", 0], analyzer="1"),
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
    }
    with pytest.raises(PromptExecutionError) as error:
        comfy_host.run_prompt(missing)
    expected_folder = os.path.join(str(comfy_host.models_dir), "insightface", "models", "antelopev2")
    assert error.value.node_type == "InstantFamilyLoadFaceAnalyzer" and expected_folder in error.value.exception_message
    assert "glintr100.onnx" in error.value.exception_message

    no_face = {
        "1": analyzer_node(),
        "2": {"class_type": "LoadImage", "inputs": {"image": "faces_none.png"}},
        "3": faces_node(["2", 0], analyzer="1"),
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
    }
    with pytest.raises(PromptExecutionError) as error:
        comfy_host.run_prompt(no_face)
    assert error.value.node_type == "InstantFamilyLoadFaces"
    assert "no face found in image 0 (300x200 px)" in error.value.exception_message

    bad_index = {
        "1": analyzer_node(),
        "2": {"class_type": "LoadImage", "inputs": {"image": "faces_group.png"}},
        "3": faces_node(["2", 0], indices="0,7", analyzer="1"),
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
    }
    with pytest.raises(PromptExecutionError, match=r"face indices \[7\] do not exist: 3 face\(s\)"):
        comfy_host.run_prompt(bad_index)
