"""Synthetic training data for the trainer tests: disc "faces" the tiny pack detects, poses, captions.

Images are 640x640 PNGs with bright discs at stride-32 anchor points (what the faces engineer's
toy SCRFD detector finds, with 160 px boxes), a POSE_KEYPOINT sidecar with one skeleton per disc
plus optional extra people without a face, and a caption for most images.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CORE_TESTS = Path(__file__).resolve().parent.parent / "core"
SIZE = 640
PACK = "tinypack"


def face_fixtures():
    """tests/core/face_fixtures.py (tiny ONNX detector/recognizer builders), imported by path."""
    if "face_fixtures" in sys.modules:
        return sys.modules["face_fixtures"]
    spec = importlib.util.spec_from_file_location("face_fixtures", CORE_TESTS / "face_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["face_fixtures"] = module
    spec.loader.exec_module(module)
    return module


def person(cx: float, cy: float, size: float = 160.0) -> np.ndarray:
    """(18, 3) COCO-18 keypoints (normalised x, y, confidence) of a person whose face is at (cx, cy) px."""
    u = size / 4
    points = {
        0: (0, 0), 1: (0, 2 * u), 2: (-1.5 * u, 2 * u), 3: (-2 * u, 3.5 * u), 4: (-2 * u, 5 * u),
        5: (1.5 * u, 2 * u), 6: (2 * u, 3.5 * u), 7: (2 * u, 5 * u), 8: (-u, 5 * u), 11: (u, 5 * u),
        14: (-0.4 * u, -0.3 * u), 15: (0.4 * u, -0.3 * u), 16: (-0.9 * u, 0), 17: (0.9 * u, 0),
    }
    body = np.zeros((18, 3), np.float32)
    for index, (dx, dy) in points.items():
        x, y = (cx + dx) / SIZE, (cy + dy) / SIZE
        if 0 <= x < 1 and 0 <= y < 1:
            body[index] = (x, y, 1.0)
    return body


def pose_json(people: list[np.ndarray]) -> str:
    frame = {"people": [{"pose_keypoints_2d": p.reshape(-1).tolist()} for p in people],
             "canvas_width": SIZE, "canvas_height": SIZE}
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
    fixtures = face_fixtures()
    folder.mkdir(parents=True, exist_ok=True)
    for name, (centres, extra, caption, with_pose) in IMAGES.items():
        image = fixtures.disc_image((SIZE, SIZE), centres=centres) if centres else np.full((SIZE, SIZE, 3), 30, np.uint8)
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

    fixtures = face_fixtures()
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
    return ["--input", *map(str, inputs), "--output", str(output), "--insightface-root", pack_root, "--pack", pack,
            "--provider", "CPU", "--shard-size", "4", "--no-progress", "--allow-empty-captions", *extra]


def train_args(data: Path, output: Path, *extra: str) -> list[str]:
    """CLI arguments of a tiny CPU training run (random-init tiny SD, 64 px, batch 2)."""
    return ["--data", str(data), "--output-dir", str(output), "--model-config", "tiny", "--resolution", "64",
            "--batch-size", "2", "--num-workers", "0", "--learning-rate", "1e-3", "--projector-learning-rate", "1e-3",
            "--projector-hidden", "32", "--tensorboard", "false", "--checkpoint-every", "3", *extra]
