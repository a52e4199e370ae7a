"""Synthetic training data for the trainer tests: disc "faces" the tiny pack detects, poses, captions.

Images are 640x640 PNGs with bright discs at stride-32 anchor points (what the faces engineer's
toy SCRFD detector finds, with 160 px boxes), a POSE_KEYPOINT sidecar with one skeleton per disc
plus optional extra people without a face, and a caption for most images.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import dwpose_fixtures  # tests/core is on pytest's pythonpath (pyproject.toml)
import numpy as np
from PIL import Image

from instantfamily_dev import face_fixtures
from instantfamily_dev.face_fixtures import TINY_PACK

SIZE = 640
PACK = TINY_PACK
LATENT_RESOLUTION = 64  # px of the latents prepare caches


def person(cx: float, cy: float, size: float = 160.0) -> np.ndarray:
    """(18, 3) COCO-18 keypoints (normalised x, y, confidence) of a person whose face is at (cx, cy) px."""
    u = size / 4
    points = {
        0: (0, 0),
        1: (0, 2 * u),
        2: (-1.5 * u, 2 * u),
        3: (-2 * u, 3.5 * u),
        4: (-2 * u, 5 * u),
        5: (1.5 * u, 2 * u),
        6: (2 * u, 3.5 * u),
        7: (2 * u, 5 * u),
        8: (-u, 5 * u),
        11: (u, 5 * u),
        14: (-0.4 * u, -0.3 * u),
        15: (0.4 * u, -0.3 * u),
        16: (-0.9 * u, 0),
        17: (0.9 * u, 0),
    }
    body = np.zeros((18, 3), np.float32)
    for index, (dx, dy) in points.items():
        x, y = (cx + dx) / SIZE, (cy + dy) / SIZE
        if 0 <= x < 1 and 0 <= y < 1:
            body[index] = (x, y, 1.0)
    return body


def pose_json(people: list[np.ndarray]) -> str:
    frame = {
        "people": [{"pose_keypoints_2d": p.reshape(-1).tolist()} for p in people],
        "canvas_width": SIZE,
        "canvas_height": SIZE,
    }
    return json.dumps([frame])


# name: (face centres px, extra people without a face, caption or None, write pose sidecar)
IMAGES = {
    "a_two": (((160, 320), (480, 320)), ((320, 576),), "two people at a party", True),
    "b_three": (((96, 224), (256, 224), (416, 224)), (), "three friends", True),
    "c_one": (((320, 320),), (), None, True),
    "d_five": (((96, 160), (256, 160), (416, 160), (576, 160), (256, 480)), ((576, 480),), "a family of five", True),
    "e_four": (((96, 480), (256, 480), (416, 480), (576, 480)), (), "four people outdoors", True),
    "f_two": (((160, 160), (480, 480)), (), "two people", True),
    "g_none": ((), (), "an empty room", True),
    "h_nopose": (((320, 320),), (), "no pose sidecar", False),
}
VALID = ("a_two", "b_three", "c_one", "d_five", "e_four", "f_two")


def write_raw_folder(folder: Path) -> Path:
    """The synthetic images + sidecars, plus one corrupt .jpg."""
    fixtures = face_fixtures
    folder.mkdir(parents=True, exist_ok=True)
    for name, (centres, extra, caption, with_pose) in IMAGES.items():
        image = (
            fixtures.disc_image((SIZE, SIZE), centres=centres) if centres else np.full((SIZE, SIZE, 3), 30, np.uint8)
        )
        Image.fromarray(image).save(folder / f"{name}.png")
        if caption is not None:
            (folder / f"{name}.txt").write_text(caption)
        if with_pose:
            people = [person(x, y) for x, y in list(centres) + list(extra)]
            (folder / f"{name}.pose.json").write_text(pose_json(people))
    (folder / "z_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (folder / "z_corrupt.pose.json").write_text(pose_json([]))
    return folder


def write_webdataset_tar(path: Path, names: tuple[str, ...]) -> Path:
    """An input WebDataset shard (png, txt, pose.json) holding the given synthetic images."""
    import tarfile

    fixtures = face_fixtures
    with tarfile.open(path, "w") as tar:
        for name in names:
            centres, extra, caption, _ = IMAGES[name]
            buffer = io.BytesIO()
            Image.fromarray(fixtures.disc_image((SIZE, SIZE), centres=centres)).save(buffer, format="PNG")
            members = {"png": buffer.getvalue(), "pose.json": pose_json([person(x, y) for x, y in centres]).encode()}
            if caption:
                members["txt"] = caption.encode()
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{name}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def prepare_args(inputs: list[Path], output: Path, pack_root: str, pack: str, *extra: str) -> list[str]:
    return [
        "--input",
        *map(str, inputs),
        "--output",
        str(output),
        "--insightface-root",
        pack_root,
        "--pack",
        pack,
        "--provider",
        "CPU",
        "--shard-size",
        "4",
        "--no-progress",
        "--allow-empty-captions",
        *extra,
    ]


def full_prepare_args(
    inputs: list[Path], output: Path, pack_root: str, models: dict, *extra: str, pack: str = PACK
) -> list[str]:
    """prepare_args with every stage on: DWPose stand-ins, the tiny captioner, float32 latents (``models``:
    ``build_prepare_models``)."""
    return prepare_args(
        inputs,
        output,
        pack_root,
        pack,
        "--dwpose",
        models["dwpose"],
        "--captioner",
        str(models["captioner"]),
        "--caption-max-tokens",
        "6",
        "--pretrained",
        "",
        "--model-config",
        "tiny",
        "--latent-resolution",
        str(LATENT_RESOLUTION),
        "--latent-dtype",
        "float32",
        "--batch-size",
        "2",
        *extra,
    )


def train_args(data: Path, output: Path, *extra: str) -> list[str]:
    """CLI arguments of a tiny CPU training run (random-init tiny SD, 64 px, batch 2)."""
    return [
        "--data",
        str(data),
        "--output-dir",
        str(output),
        "--model-config",
        "tiny",
        "--resolution",
        "64",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--learning-rate",
        "1e-3",
        "--projector-learning-rate",
        "1e-3",
        "--projector-hidden",
        "32",
        "--tensorboard",
        "false",
        "--checkpoint-every",
        "3",
        *extra,
    ]


def image_bytes(centres, fmt: str = "PNG", size=(SIZE, SIZE)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(face_fixtures.disc_image(size, centres=centres)).save(buffer, format=fmt)
    return buffer.getvalue()


def write_photo_folder(folder: Path, names=("a_two", "b_three", "e_four", "g_none")) -> Path:
    """Raw photos only: no captions, no pose files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.png").write_bytes(
            image_bytes(IMAGES[name][0]) if IMAGES[name][0] else image_bytes((), size=(SIZE, SIZE))
        )
    return folder


def build_tiny_captioner(folder: Path) -> Path:
    """A random tiny BLIP captioner (BERT word-piece vocabulary of a few words) saved as safetensors."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *"a photo of two people at party friends".split()]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]"),
    )
    torch.manual_seed(0)
    tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = BlipConfig(
        vision_config=dict(**tiny, image_size=32, patch_size=16),
        projection_dim=16,
        text_config=dict(
            **tiny,
            vocab_size=len(words),
            encoder_hidden_size=16,
            bos_token_id=5,
            pad_token_id=0,
            sep_token_id=3,
            eos_token_id=3,
            max_position_embeddings=32,
        ),
    )
    BlipForConditionalGeneration(config).save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def build_prepare_models(root: Path) -> dict:
    """DWPose ONNX stand-ins and a tiny random BLIP captioner under ``root``, for the prepare pipeline."""
    return {
        "dwpose": dwpose_fixtures.build_dwpose_folder(str(root / "dwpose")),
        "captioner": build_tiny_captioner(root / "blip"),
    }


def write_tar(path: Path, samples: dict[str, dict[str, bytes]]) -> Path:
    import tarfile

    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_img2dataset(folder: Path, names=("a_two", "b_three", "e_four", "f_two")) -> Path:
    """img2dataset output: 00000.tar (key.jpg, key.json, key.txt except for the last) + 00000.parquet
    (every caption, and one row whose download failed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    samples, rows = {}, []
    for number, name in enumerate(names):
        key = f"{number:09d}"
        caption = f"photo {name}"
        samples[key] = {
            "jpg": image_bytes(IMAGES[name][0], "JPEG"),
            "json": json.dumps({"key": key, "url": f"http://example.invalid/{name}.jpg"}).encode(),
        }
        if number < len(names) - 1:
            samples[key]["txt"] = caption.encode()
        rows.append({"key": key, "caption": caption, "status": "success", "url": f"http://example.invalid/{name}"})
    rows.append({"key": "000000099", "caption": "gone", "status": "failed_to_download", "url": "http://x.invalid/y"})
    write_tar(folder / "00000.tar", samples)
    pq.write_table(pa.Table.from_pylist(rows), folder / "00000.parquet")
    return folder


def cached_and_live_losses(trainer, cached, live, items) -> list[float]:
    """The trainer's loss of the same items from datasets with cached latents and with live-encoded
    pixels (the same posterior draw, noise and timesteps); checks that only the latents differ."""
    import torch

    from train.data import collate

    with_latents, without = collate([cached[i] for i in items]), collate([live[i] for i in items])
    assert "latent_mean" in with_latents and "latent_mean" not in without
    torch.testing.assert_close(with_latents["control"], without["control"])
    losses = []
    for batch in (with_latents, without):
        torch.manual_seed(7)
        losses.append(trainer.loss(batch).item())
    return losses
