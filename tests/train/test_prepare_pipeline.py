"""Raw photos with nothing beside them -> prepare (DWPose, captioner, faces, latents) -> train -> export,
and cached latents train exactly like pixels."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from train_fixtures import (
    LATENT_RESOLUTION,
    PACK,
    SIZE,
    cached_and_live_losses,
    face_fixtures,
    full_prepare_args,
    prepare_args,
    train_args,
    write_photo_folder,
)

from train.captions import Captioner, read_captions_file
from train.data import TrainDataset, sample_rng
from train.latents import MEMBER, decode_latent_member, latent_geometry
from train.manifest import find_shards
from train.options import parse
from train.prepare import main
from train.shards import ShardReader
from train.train import Trainer, train

RES = LATENT_RESOLUTION


@pytest.fixture(scope="module")
def models(prepare_models):
    return prepare_models


@pytest.fixture(scope="module")
def photos_prepared(tmp_path_factory, pack_root, models):
    torch.set_num_threads(1)
    photos = write_photo_folder(tmp_path_factory.mktemp("photos"))
    wide = face_fixtures.disc_image((480, SIZE), centres=((160, 224), (480, 224)))
    Image.fromarray(wide).save(photos / "w_wide.png")  # 640x480: latents of 88x64 px, cropped in cells
    output = tmp_path_factory.mktemp("prepared_photos")
    args = full_prepare_args([photos], output, pack_root, models)
    assert main([a for a in args if a != "--allow-empty-captions"]) == 0
    return photos, output


def test_photos_get_pose_captions_faces_and_latents(photos_prepared, models):
    _, output = photos_prepared
    manifest = json.loads((output / "manifest.json").read_text())
    totals = manifest["totals"]
    assert totals["samples"] == 4 and totals["skipped"] == {"no_face": 1}  # g_none has no face
    assert totals["calls"]["detect"] == 5 and totals["calls"]["recognize"] == totals["faces"]  # one pass each
    assert totals["captioned"] == 4 and totals["calls"]["caption"] == 4 and totals["calls"]["latents"] == 4
    captioner = Captioner(models["captioner"], max_new_tokens=6)
    reader = ShardReader(find_shards([str(output)])[0])
    for index in range(len(reader)):
        _, members = reader.read(index)
        source = json.loads(members["meta.json"])["source"]
        rgb = np.asarray(Image.open(source).convert("RGB"))
        assert members["txt"].decode() == captioner([rgb])[0] != ""
        frame = json.loads(members["pose.json"])[0]
        assert frame["people"] and frame["people"][0]["hand_left_keypoints_2d"]  # DWPose wrote it
        latent = decode_latent_member(members[MEMBER])
        width, height = latent_geometry(rgb.shape[1], rgb.shape[0], RES)
        assert latent["mean"].shape == (4, height // 8, width // 8) and (latent["std"] > 0).all()


def test_photos_train_and_export(photos_prepared, tmp_path):
    from instantfamily_core.checkpoint import load_checkpoint

    _, output = photos_prepared
    losses = train(parse(train_args(output, tmp_path / "run", "--max-steps", "2")))
    assert len(losses) == 2 and all(np.isfinite(losses))
    exported = load_checkpoint(tmp_path / "run" / "instantfamily.safetensors")
    assert exported.controlnet_state and exported.config.recognizer.file_name == "rec_tiny.onnx"


def test_cached_latents_give_the_loss_of_pixels(photos_prepared, tmp_path):
    _, output = photos_prepared
    trainer = Trainer(
        parse(train_args(output, tmp_path / "run", "--max-steps", "1", "--text-dropout", "0", "--face-dropout", "0"))
    )
    cached = TrainDataset(trainer.reader, trainer.config, RES, random_crop=False, text_dropout=0, face_dropout=0)
    pixels = TrainDataset(
        trainer.reader, trainer.config, RES, random_crop=False, text_dropout=0, face_dropout=0, cached_latents=False
    )
    sources = [json.loads(trainer.reader.read(i)[1]["meta.json"])["source"] for i in range(len(trainer.reader))]
    square = [i for i, source in enumerate(sources) if "w_wide" not in source]
    losses = cached_and_live_losses(trainer, cached, pixels, [(0, i) for i in square[:2]])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5), losses  # float32 latents (fixture); float16 halves storage


def test_latent_crops_keep_pixels_boxes_and_pose_together(photos_prepared, pack_root):
    _, output = photos_prepared
    reader = ShardReader(find_shards([str(output)])[0])
    from instantfamily_core.config import InstantFamilyConfig

    index = next(i for i in range(len(reader)) if "w_wide" in json.loads(reader.read(i)[1]["meta.json"])["source"])
    key, members = reader.read(index)
    stored = decode_latent_member(members[MEMBER])
    assert tuple(stored["size"]) == (88, 64)
    dataset = TrainDataset(reader, InstantFamilyConfig(), RES, max_faces=4, text_dropout=0, face_dropout=0)
    offsets = set()
    for seed in range(6):
        example = dataset.example(key, members, sample_rng(seed, 0, index))
        cells = [k for k in range(4) if np.array_equal(stored["mean"][:, :, k : k + 8], example["latent_mean"].numpy())]
        assert len(cells) == 1
        ox = 8 * cells[0]
        offsets.add(ox)
        image = Image.open(json.loads(members["meta.json"])["source"]).convert("RGB").resize((88, 64), Image.BICUBIC)
        expected = np.asarray(image.crop((ox, 0, ox + RES, RES)), np.float32) / 127.5 - 1
        np.testing.assert_allclose(example["pixel_values"].permute(1, 2, 0).numpy(), expected, atol=1e-6)
        centres = RES * example["masks"].centres.numpy() if example["masks"] is not None else np.zeros((0, 2))
        box_centres = [((x * 88 / SIZE) - ox, y * 64 / 480) for x, y in ((160, 224), (480, 224))]
        assert len(centres) >= 1
        for centre in centres:  # every mask sits on a disc, shifted by the same crop
            assert min(np.hypot(*(centre - np.array(c))) for c in box_centres) < 3
    assert len(offsets) > 1  # random crops move in whole latent cells


def test_missing_captions_are_skipped_unless_allowed(tmp_path, pack_root):
    photos = write_photo_folder(tmp_path / "p", names=("a_two", "b_three"))
    (tmp_path / "captions.csv").write_text("file,caption\na_two.png,two at a party\n")
    output = tmp_path / "out"
    args = [
        a
        for a in prepare_args(
            [photos], output, pack_root, PACK, "--allow-missing-pose", "--captions-file", str(tmp_path / "captions.csv")
        )
        if a != "--allow-empty-captions"
    ]
    assert main(args) == 0
    totals = json.loads((output / "manifest.json").read_text())["totals"]
    assert totals["samples"] == 1 and totals["skipped"] == {"no_caption": 1} and totals["no_caption"] == 1
    (tmp_path / "c.jsonl").write_text(json.dumps({"key": "b_three", "text": "three"}) + "\n")
    assert read_captions_file(tmp_path / "c.jsonl") == {"b_three": "three"}
    with pytest.raises(ValueError, match="name column"):
        (tmp_path / "bad.csv").write_text("name,caption\nx,y\n")
        read_captions_file(tmp_path / "bad.csv")


def test_img2dataset_shard_goes_through_prepare_and_training(tmp_path, pack_root, models):
    from train_fixtures import write_img2dataset

    from instantfamily_core.checkpoint import load_checkpoint

    output = tmp_path / "prepared"
    assert main(full_prepare_args([write_img2dataset(tmp_path / "laion")], output, pack_root, models)) == 0
    totals = json.loads((output / "manifest.json").read_text())["totals"]
    assert totals["samples"] == 4 and totals["captioned"] == 0  # img2dataset captions win over the captioner
    assert totals["calls"]["pose"] == 4 and totals["calls"]["latents"] == 4
    losses = train(parse(train_args(output, tmp_path / "run", "--max-steps", "1")))
    assert len(losses) == 1 and np.isfinite(losses[0])
    assert load_checkpoint(tmp_path / "run" / "instantfamily.safetensors").controlnet_state


def test_pose_boxes_from_faces_skip_the_person_detector(tmp_path, pack_root, models):
    photos = write_photo_folder(tmp_path / "p", names=("b_three",))
    people = {}
    for mode in ("detector", "faces"):
        output = tmp_path / mode
        assert (
            main(prepare_args([photos], output, pack_root, PACK, "--dwpose", models["dwpose"], "--pose-boxes", mode))
            == 0
        )
        _, members = ShardReader(find_shards([str(output)])[0]).read(0)
        people[mode] = len(json.loads(members["pose.json"])[0]["people"])
    assert people == {"detector": 1, "faces": 3}  # the stand-in detector knows one person; three faces
