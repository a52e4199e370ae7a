"""Prepare training data: faces, pose and captions of every image, written as WebDataset shards.

    accelerate launch -m train.prepare --input photos/ --output prepared/ \\
        --insightface-root ComfyUI/models/insightface --pack antelopev2 --openpose ComfyUI/models/openpose

Input: a folder of images (+ same-name ``.txt`` captions and ``.pose.json`` ComfyUI POSE_KEYPOINT
sidecars) or WebDataset ``.tar`` shards (members ``jpg``/``png``/``webp``, ``txt``, ``pose.json``).
Faces come from the pack's own analyzer (detector + one-pass global/local features), filtered by
size and score; pose from the sidecar or from controlnet_aux's OpenposeDetector (local weights).
Output: ``shard-NNNNNN.tar`` (+ index and stats sidecars) and ``manifest.json``. Work is split by
shard over the ranks of ``accelerate launch``; finished shards are skipped when re-run; images
that cannot be read are counted and skipped.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from instantfamily_core.pose import parse_pose_keypoint

from .manifest import shard_name, stats_path, write_manifest
from .sample_format import encode_faces, encode_pose, image_member
from .shards import ShardWriter, split_member

logger = logging.getLogger("prepare")
FOLDER_EXTS = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class Item:
    """One input image: its bytes and optional caption / pose sidecars."""

    source: str
    image: bytes | None
    caption: str | None = None
    pose: bytes | None = None


@dataclass
class Job:
    """One output shard: a chunk of folder images or one input tar."""

    number: int
    files: list[Path] = field(default_factory=list)
    tar: Path | None = None

    def items(self) -> Iterator[Item]:
        if self.tar is not None:
            yield from tar_items(self.tar)
            return
        for path in self.files:
            stem = path.with_suffix("")
            caption = stem.with_suffix(".txt")
            pose = Path(str(stem) + ".pose.json")
            yield Item(str(path), _read(path), caption.read_text().strip() if caption.is_file() else None,
                       pose.read_bytes() if pose.is_file() else None)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def tar_items(path: Path) -> Iterator[Item]:
    """Samples of a WebDataset shard, grouped by key (members of a key are consecutive)."""
    current, members = None, {}
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_member(member.name)
            if key != current and current is not None:
                yield _tar_item(path, current, members)
                members = {}
            current = key
            members[ext.lower()] = tar.extractfile(member).read()
    if current is not None:
        yield _tar_item(path, current, members)


def _tar_item(path: Path, key: str, members: dict[str, bytes]) -> Item:
    found = image_member(members)
    caption = members["txt"].decode("utf-8", "replace").strip() if "txt" in members else None
    return Item(f"{path.name}:{key}", found[1] if found else None, caption, members.get("pose.json"))


def plan_jobs(inputs: list[str], shard_size: int) -> list[Job]:
    files, tars = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in FOLDER_EXTS))
        elif path.suffix == ".tar" and path.is_file():
            tars.append(path)
        else:
            raise ValueError(f"--input {item}: expected a folder of images or a WebDataset .tar shard")
    jobs = [Job(n, files=files[i:i + shard_size]) for n, i in enumerate(range(0, len(files), shard_size))]
    return jobs + [Job(len(jobs) + n, tar=t) for n, t in enumerate(sorted(tars))]


class PoseSource:
    """Pose of an image: its POSE_KEYPOINT sidecar, else OpenPose from a local weights folder."""

    def __init__(self, openpose_dir: str = "", allow_missing: bool = False):
        self.detector = None
        self.allow_missing = allow_missing
        if openpose_dir:
            if not Path(openpose_dir).is_dir():
                raise ValueError(f"--openpose {openpose_dir}: not a folder (it needs body_pose_model.pth, "
                                 "hand_pose_model.pth and facenet.pth from lllyasviel/Annotators)")
            from controlnet_aux import OpenposeDetector

            self.detector = OpenposeDetector.from_pretrained(openpose_dir)

    def __call__(self, item: Item, rgb: np.ndarray) -> bytes | None:
        if item.pose is not None:
            parse_pose_keypoint(item.pose.decode())  # validate; raises ValueError on a bad sidecar
            return item.pose
        height, width = rgb.shape[:2]
        if self.detector is not None:
            people = []
            for pose in self.detector.detect_poses(rgb):
                body = np.zeros((18, 3), np.float32)
                for i, point in enumerate(pose.body.keypoints[:18]):
                    if point is not None:
                        body[i] = (point.x, point.y, getattr(point, "score", 1.0) or 1.0)
                people.append(body)
            return encode_pose(people, width, height)
        if self.allow_missing:
            return encode_pose([], width, height)
        return None


def decode_image(data: bytes | None, max_side: int) -> tuple[np.ndarray, bytes, str]:
    """(RGB array, bytes to store, extension); raises on unreadable data. Large images are downscaled."""
    if not data:
        raise ValueError("empty file")
    image = Image.open(io.BytesIO(data))
    image.load()
    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}.get(image.format or "", "")
    image = image.convert("RGB")
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        ext = ""
    if not ext:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95)
        data, ext = buffer.getvalue(), "jpg"
    return np.asarray(image), data, ext


class Preparer:
    def __init__(self, args: argparse.Namespace, analyzer, pose: PoseSource):
        self.args, self.analyzer, self.pose = args, analyzer, pose
        self.warned_caption = False

    def faces(self, rgb: np.ndarray) -> list:
        args = self.args
        found = self.analyzer.analyze(rgb)
        return [f for f in found if f.score >= args.min_score
                and min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= args.min_face_size]

    def run_job(self, job: Job, output: Path, progress) -> dict:
        stats = {"name": shard_name(job.number), "images": 0, "samples": 0, "faces": 0, "skipped": {}, "no_caption": 0}

        def skip(reason: str, item: Item, detail: str = "") -> None:
            stats["skipped"][reason] = stats["skipped"].get(reason, 0) + 1
            logger.debug("skip %s (%s) %s", item.source, reason, detail)

        writer = ShardWriter(output / shard_name(job.number))
        try:
            for item in job.items():
                stats["images"] += 1
                progress.update(1)
                try:
                    rgb, data, ext = decode_image(item.image, self.args.max_side)
                except Exception as error:  # PIL raises many types for damaged files
                    skip("corrupt", item, str(error))
                    continue
                faces = self.faces(rgb)
                if len(faces) < self.args.min_faces:
                    skip("no_face", item)
                    continue
                try:
                    pose = self.pose(item, rgb)
                except ValueError as error:
                    skip("bad_pose", item, str(error))
                    continue
                if pose is None:
                    skip("no_pose", item)
                    continue
                if item.caption is None:
                    stats["no_caption"] += 1
                    if not self.warned_caption:
                        logger.warning("%s has no caption (.txt); training uses an empty caption for it", item.source)
                        self.warned_caption = True
                members = {ext: data, "txt": (item.caption or "").encode(), "pose.json": pose,
                           "faces.npz": encode_faces(faces, rgb.shape[:2], np.dtype(self.args.feature_dtype)),
                           "meta.json": json.dumps({"source": item.source, "height": rgb.shape[0],
                                                    "width": rgb.shape[1]}).encode()}
                writer.write(f"{job.number:06d}_{stats['samples']:06d}", members)
                stats["samples"] += 1
                stats["faces"] += len(faces)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        tmp = stats_path(output / shard_name(job.number)).with_suffix(".tmp")
        tmp.write_text(json.dumps(stats))
        tmp.replace(stats_path(output / shard_name(job.number)))
        return stats


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help="image folders and/or WebDataset .tar shards")
    p.add_argument("--output", required=True, help="folder for shard-NNNNNN.tar files and manifest.json")
    p.add_argument("--insightface-root", required=True, help="folder containing models/<pack>/ (ComfyUI's models/insightface)")
    p.add_argument("--pack", default="antelopev2", help="insightface model pack (the one the nodes will use)")
    p.add_argument("--provider", default="auto", help="onnxruntime provider: auto, CPU, CUDA")
    p.add_argument("--det-size", type=int, default=640)
    p.add_argument("--min-score", type=float, default=0.5, help="drop faces detected with a lower score")
    p.add_argument("--min-face-size", type=float, default=32, help="drop faces whose box is smaller (px, shorter side)")
    p.add_argument("--min-faces", type=int, default=1, help="skip images with fewer faces left")
    p.add_argument("--openpose", default="", help="controlnet_aux OpenPose weights folder (when an image has no .pose.json)")
    p.add_argument("--allow-missing-pose", action="store_true", help="keep images without pose (no skeletons drawn)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per output shard (folder input)")
    p.add_argument("--max-side", type=int, default=1024, help="downscale larger images before analysis and storage")
    p.add_argument("--feature-dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from instantfamily_core.faces import load_face_analyzer

    import torch

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    state = PartialState(cpu=not torch.cuda.is_available())  # cpu=True: several CPU processes use gloo
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(args.input, args.shard_size)
    mine = [j for j in jobs if j.number % state.num_processes == state.process_index]
    todo = [j for j in mine if not stats_path(output / shard_name(j.number)).is_file()]
    logger.info("rank %d: %d of %d shards to do (%d already finished)", state.process_index, len(todo), len(mine),
                len(mine) - len(todo))
    analyzer = load_face_analyzer(args.insightface_root, args.pack, provider=args.provider, det_size=args.det_size)
    preparer = Preparer(args, analyzer, PoseSource(args.openpose, args.allow_missing_pose))
    total = sum(len(j.files) for j in todo) or None
    with tqdm(total=total, desc=f"prepare[{state.process_index}]", disable=args.no_progress) as progress:
        for job in todo:
            preparer.run_job(job, output, progress)
    state.wait_for_everyone()
    if state.is_main_process:
        settings = {k: v for k, v in vars(args).items() if k not in ("input", "output", "no_progress")}
        manifest = write_manifest(output, analyzer.info, settings)
        totals = manifest["totals"]
        print(f"{output}: {totals['samples']} samples with {totals['faces']} faces from {totals['images']} images; "
              f"skipped {totals['skipped']}; {totals['no_caption']} without caption")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
