"""Toy training data: a bank of scenes, and WebDataset shards in the trainer's own sample format.

The shards are what ``python -m train.prepare`` writes for real photos (``train/sample_format.py``:
image, caption, faces.npz, pose.json), except that faces come from the scene's ground truth
(boxes and five keypoints, score 1) instead of a detector, and pose.json carries the 18 body points
plus 68 face points per person (the DWPose layout; ``world.head_landmarks``). Their features are computed through
the pack's real code path: ArcFace alignment and features (``faces.from_keypoints``) and the one-pass
recognizer session (``faces.recognizer.OnePassRecognizer``) on the exported toy encoder.
Images are stored upscaled x8 (nearest) so the trainer's "pixels" are exactly 8x the latent.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import base_model, world

logger = logging.getLogger(__name__)


@dataclass
class SceneBank:
    """N scenes: images (N, S, S, 3) uint8 plus per-scene metadata."""

    images: np.ndarray
    captions: list[str]
    people: list[list[dict]]  # identity, face_box (4,), keypoints (5, 2), body (18, 3)

    def __len__(self) -> int:
        return len(self.captions)

    def scene(self, index: int) -> tuple[np.ndarray, str, list[dict]]:
        return self.images[index], self.captions[index], self.people[index]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"captions": self.captions, "people": self.people})
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, images=self.images, meta=np.frombuffer(meta.encode(), np.uint8))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> SceneBank:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            return cls(npz["images"], meta["captions"], meta["people"])


def person_dict(person: world.Person) -> dict:
    return {
        "identity": person.identity,
        "face_box": person.face_box.tolist(),
        "keypoints": person.keypoints.tolist(),
        "body": person.body.tolist(),
    }


def generate_scenes(count: int, pool, seed: int, size: int = 32, counts=(1, 2, 3, 4, 5, 6)) -> SceneBank:
    """``count`` random scenes of identities from ``pool``."""
    rng = np.random.default_rng(seed)
    images, captions, people = [], [], []
    for index in range(count):
        scene = world.random_scene(tuple(pool), rng, size=size, counts=counts)
        images.append(scene.image)
        captions.append(scene.caption)
        people.append([person_dict(p) for p in scene.people])
        if (index + 1) % 500 == 0:
            logger.info("scenes: %d/%d", index + 1, count)
    return SceneBank(np.stack(images), captions, people)


class ToyFaceFeatures:
    """Global + local features of ground-truth faces through the pack's recognizer code path."""

    def __init__(self, onnx_path: str | Path, pack: str = "toyface"):
        import onnxruntime

        from instantfamily_core.faces.recognizer import OnePassRecognizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.recognizer = OnePassRecognizer(
            str(onnx_path), providers=["CPUExecutionProvider"], sess_options=options, pack=pack
        )

    @property
    def info(self):
        return self.recognizer.info

    def features(self, image: np.ndarray, keypoints) -> tuple[np.ndarray, np.ndarray]:
        """(global (N, 512), local (N, 512, 7, 7)) of the faces with these keypoints."""
        from instantfamily_core.faces.from_keypoints import aligned_features

        _, global_features, local_features = aligned_features(self.recognizer, image, keypoints)
        return global_features, local_features


def detected_faces(features: ToyFaceFeatures, image: np.ndarray, people: list[dict], scale: float = 1.0):
    """``DetectedFace`` per person (ground-truth box and keypoints, score 1), box/keypoints x scale."""
    from instantfamily_core.faces.from_keypoints import faces_from_keypoints

    keypoints = [np.asarray(p["keypoints"], np.float32) for p in people]
    boxes = [np.asarray(p["face_box"], np.float32) for p in people]
    faces = faces_from_keypoints(features.recognizer, image, keypoints, boxes)
    size = (image.shape[0] * int(scale), image.shape[1] * int(scale))
    return [  # in pixels of the image upscaled by ``scale``; features and crop from the scene itself
        replace(face, box=face.box * scale, keypoints=face.keypoints * scale, image_size=size) for face in faces
    ]


def shard_members(image: np.ndarray, caption: str, people: list[dict], faces) -> dict[str, bytes]:
    """One sample in the trainer's format: the scene upscaled x8 (nearest: exact after the toy VAE), its
    caption, the faces (``DetectedFace`` list, in pixels of the upscaled image) and the POSE_KEYPOINT."""
    from PIL import Image

    from instantfamily_core.pose import encode_pose_keypoint
    from train.sample_format import encode_faces

    factor = base_model.VAE_FACTOR
    big = np.kron(image, np.ones((factor, factor, 1), np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="PNG")
    landmarks = [world.head_landmarks(p["face_box"], p["keypoints"], image.shape[1]) for p in people]
    pose = encode_pose_keypoint([np.asarray(p["body"]) for p in people], big.shape[1], big.shape[0], landmarks)
    return {
        "png": buffer.getvalue(),
        "txt": caption.encode(),
        "faces.npz": encode_faces(faces, big.shape[:2]),
        "pose.json": json.dumps(pose).encode(),
    }


def write_shards(bank: SceneBank, features: ToyFaceFeatures, out_dir: str | Path, per_shard: int = 500) -> dict:
    """The trainer's shard format from a scene bank (+ manifest.json with the recognizer info)."""
    from train.manifest import shard_name, stats_path, write_manifest
    from train.shards import ShardWriter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    factor = base_model.VAE_FACTOR
    for start in range(0, len(bank), per_shard):
        number = start // per_shard
        shard = out / shard_name(number)
        if stats_path(shard).is_file():
            continue  # finished by an earlier run
        writer = ShardWriter(shard)
        faces_total = 0
        for index in range(start, min(start + per_shard, len(bank))):
            image, caption, people = bank.scene(index)
            faces = detected_faces(features, image, people, scale=factor)
            faces_total += len(faces)
            writer.write(f"{index:07d}", shard_members(image, caption, people, faces))
        writer.close()
        count = writer.count
        stats = {
            "shard": shard.name,
            "images": count,
            "samples": count,
            "faces": faces_total,
            "skipped": {},
            "no_caption": 0,
        }
        stats_path(shard).write_text(json.dumps(stats))
        logger.info("wrote %s (%d samples, %d faces)", shard.name, count, faces_total)
    return write_manifest(
        out, features.info, {"source": "toy world", "scene_size": int(bank.images.shape[1]), "pixel_factor": factor}
    )
