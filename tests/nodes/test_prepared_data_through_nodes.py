"""Raw photos (no captions, no pose files) and an img2dataset shard -> prepare (DWPose, captioner, faces,
latents) -> train 2 steps -> export -> the pack's nodes on a real ComfyUI: loader, face analyzer, Load Faces,
Build Embedding Stack, Face Mask, Pose+Circle Image, Apply InstantFamily, Pose+Circle ControlNet, 2 sampler steps
on the trainer's base UNet. The same tiny stand-in models as tests/train (train_fixtures, face_fixtures)."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from train_fixtures import (
    build_prepare_models,
    face_fixtures,
    full_prepare_args,
    train_args,
    write_img2dataset,
    write_photo_folder,
)
from trained_models import comfy_model_from

PACK = "tinypack_prepared"
CHECKPOINT = "prepared.safetensors"
PHOTO = "a_two"  # two faces


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core box (see tests/train/conftest.py)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(comfy_host, tmp_path_factory, one_thread):
    """Prepare photos + an img2dataset shard into one dataset, train 2 steps, put the export in models/."""
    from train.options import parse
    from train.prepare import main as prepare
    from train.train import Trainer

    root = tmp_path_factory.mktemp("prepared_through_nodes")
    insightface_root = comfy_host.models_dir / "insightface"  # where Load Face Analyzer looks
    face_fixtures.build_tiny_pack(str(insightface_root), PACK)
    photos = write_photo_folder(root / "photos", names=(PHOTO, "b_three"))
    shard = write_img2dataset(root / "laion", names=("e_four", "f_two"))
    args = full_prepare_args(
        [photos, shard], root / "prepared", str(insightface_root), build_prepare_models(root / "models"), pack=PACK
    )
    assert prepare([a for a in args if a != "--allow-empty-captions"]) == 0
    trainer = Trainer(parse(train_args(root / "prepared", root / "run", "--max-steps", "2")))
    losses = trainer.run()
    shutil.copy(root / "run" / "instantfamily.safetensors", comfy_host.models_dir / "instantfamily" / CHECKPOINT)
    comfy_host.folder_paths.filename_list_cache.clear()
    unet = trainer.accelerator.unwrap_model(trainer.net).unet  # frozen: the base the checkpoint was trained on
    return {
        "prepared": root / "prepared",
        "photos": photos,
        "losses": losses,
        "unet": unet,
        "text_encoder": trainer.text_encoder,
        "tokenizer": trainer.tokenizer,
    }


def photo_sample(prepared, name):
    """members of the prepared sample made from photos/<name>.png."""
    from train.manifest import find_shards
    from train.shards import ShardReader

    reader = ShardReader(find_shards([str(prepared)])[0])
    for index in range(len(reader)):
        _, members = reader.read(index)
        if json.loads(members["meta.json"])["source"].endswith(f"{name}.png"):
            return members
    raise AssertionError(f"no prepared sample of {name}.png")


def test_both_sources_are_prepared_and_trained(trained):
    totals = json.loads((trained["prepared"] / "manifest.json").read_text())["totals"]
    assert totals["samples"] == 4 and totals["skipped"] == {}  # 2 photos + 2 img2dataset rows
    assert totals["captioned"] == 2  # the photos; the img2dataset rows keep their captions
    assert totals["calls"]["pose"] == 4 and totals["calls"]["latents"] == 4
    assert len(trained["losses"]) == 2 and all(np.isfinite(trained["losses"]))


def test_exported_checkpoint_samples_through_the_nodes(comfy_host, trained):
    from train.models import encode_text
    from train.sample_format import decode_faces

    node = comfy_host.node_class
    (instantfamily,) = node("InstantFamilyModelLoader")().load(CHECKPOINT)
    assert instantfamily.controlnet_state and not instantfamily.unet_deltas  # UNet frozen: the trainer's is the base
    (analyzer,) = node("InstantFamilyLoadFaceAnalyzer")().load(PACK, "CPU", 640, 0.5)
    rgb = np.asarray(Image.open(trained["photos"] / f"{PHOTO}.png").convert("RGB"))
    image = torch.from_numpy(rgb.astype(np.float32) / 255.0)[None]  # (1, H, W, 3) IMAGE
    faces, _, _ = node("InstantFamilyLoadFaces")().load(analyzer, image, "every face", "left to right", "separate", "")

    # the checkpoint's recognizer is the one the nodes analyse with, and gives the features it trained on
    trained_with, used = instantfamily.config.recognizer, faces.recognizer
    assert trained_with.sha256 and trained_with.pack == PACK
    assert (trained_with.sha256, trained_with.file_name) == (used.sha256, used.file_name)
    members = photo_sample(trained["prepared"], PHOTO)
    stored = decode_faces(members["faces.npz"])
    assert len(faces) == len(stored["boxes"]) == 2
    for identity in faces.identities:  # the shard's face at the same box has the same features
        box = np.asarray(identity.sources[0].box, np.float32)
        match = int(np.abs(stored["boxes"] - box).sum(axis=1).argmin())
        np.testing.assert_allclose(stored["boxes"][match], box, atol=1.0)
        for name, feature in (("global_features", identity.global_feature), ("local_features", identity.local_feature)):
            scale = np.abs(feature).max()
            np.testing.assert_allclose(stored[name][match], feature, atol=2e-3 * scale, err_msg=name)

    (stack,) = node("InstantFamilyBuildEmbeddingStack")().build(instantfamily, faces)
    face_masks, _ = node("InstantFamilyFaceMask")().build(
        0.25, "", "both", faces=faces, template=image, analyzer=analyzer, instantfamily=instantfamily
    )
    pose = json.loads(members["pose.json"])  # prepare's DWPose output is ComfyUI's POSE_KEYPOINT
    (control_image,) = node("InstantFamilyPoseCircleImage")().draw(
        pose_keypoint=pose, face_masks=face_masks, instantfamily=instantfamily
    )

    base = comfy_model_from(trained["unet"])
    with torch.no_grad():
        text = encode_text(trained["text_encoder"], trained["tokenizer"], [members["txt"].decode(), ""], "cpu")
    positive, negative = [[text[:1], {}]], [[text[1:], {}]]
    latent = torch.zeros(1, 4, 8, 8)  # 64 px, the training resolution
    results = {}
    for weight, strength in ((1.0, 1.0), (0.0, 1.0), (1.0, 0.0)):
        (patched,) = node("InstantFamilyApply")().apply(
            base, instantfamily, stack, face_masks, weight, 0.0, 1.0, "as trained", "both"
        )
        pos, neg = node("InstantFamilyPoseCircleControlNet")().apply(
            positive, negative, patched, instantfamily, stack, face_masks, control_image, strength, 0.0, 1.0
        )
        results[weight, strength] = comfy_host.sample(patched, pos, neg, latent, seed=3, steps=2)
    assert all(torch.isfinite(r).all() for r in results.values())
    assert (results[1.0, 1.0] - results[0.0, 1.0]).abs().max() > 1e-4  # the faces take part in the result
    assert (results[1.0, 1.0] - results[1.0, 0.0]).abs().max() > 1e-4  # and so does the trained ControlNet
