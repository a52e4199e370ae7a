"""Prepare training data: faces, pose, captions and VAE latents of every image, as WebDataset shards.

    python -m train.prepare --input photos/ --output prepared/ \\
        --insightface-root ComfyUI/models/insightface --pack antelopev2 \\
        --dwpose ComfyUI/custom_nodes/comfyui_controlnet_aux/ckpts/yzd-v/DWPose \\
        --captioner models/blip2-opt-2.7b --pretrained sd15.safetensors --latent-resolution 512

Input (train/ingest.py): image folders, WebDataset tars (paths, globs, brace patterns), img2dataset
output (tar + parquet) and MultiID-2M (``--references``). Per image, in this order, each stage
only for images the earlier ones kept: decode (``--min-side``), face detection (one pass), the
score/size filter, recognition of the kept faces, pose (sidecar or DWPose on ONNX Runtime),
caption (sidecar, ``--captions-file`` or ``--captioner``, batched) and latents (``--latent-resolution``,
batched). A sample that fails any stage is skipped and counted; nothing aborts a shard.
Output: ``shard-NNNNNN.tar`` (+ index and stats sidecars) and ``manifest.json``.

Scaling out: every process takes the shards ``n % world == rank``. Rank and world come from
``--rank/--world-size``, else ``RANK/WORLD_SIZE`` (torchrun, accelerate launch), else SLURM
(``SLURM_PROCID/SLURM_NTASKS``, and array jobs). Each process uses the GPU of its ``LOCAL_RANK``
for ONNX Runtime and torch. There is no barrier: each process merges the finished shards into
``manifest.json`` when it ends (the last one to end writes the complete one), and a re-run skips
finished shards.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from instantfamily_core.pose import parse_pose_keypoint

from .ingest import Item, Job, plan_jobs
from .manifest import shard_name, stats_path, write_manifest
from .sample_format import encode_faces, encode_pose
from .shards import ShardWriter
from .workers import pin_gpu, rank_and_world

logger = logging.getLogger("prepare")
STAGES = ("decode", "detect", "pose", "recognize", "caption", "latents", "write")
MATCH_IOU = 0.3  # a MultiID-2M person box and a detected face are one face above this


@dataclass
class Sample:
    """An image that passed the per-image stages, waiting for the batched ones."""

    item: Item
    rgb: np.ndarray
    data: bytes
    ext: str
    faces: list
    pose: bytes
    caption: str | None
    meta: dict = field(default_factory=dict)
    latent: bytes | None = None


class Stats:
    """Counts and seconds of one shard (written as its .stats.json)."""

    def __init__(self, name: str):
        self.values = {
            "name": name,
            "images": 0,
            "samples": 0,
            "faces": 0,
            "skipped": {},
            "no_caption": 0,
            "captioned": 0,
            "errors": {},
            "seconds": dict.fromkeys(STAGES, 0.0),
            "calls": dict.fromkeys(STAGES, 0),
        }

    def skip(self, reason: str, source: str = "", detail: str = "") -> None:
        self.values["skipped"][reason] = self.values["skipped"].get(reason, 0) + 1
        logger.debug("skip %s (%s) %s", source, reason, detail)

    def error(self, reason: str, detail: str = "") -> None:
        """Damage outside any one sample (a truncated tar, failed downloads in a parquet)."""
        self.values["errors"][reason] = self.values["errors"].get(reason, 0) + 1
        logger.debug("%s: %s", reason, detail)

    @contextmanager
    def timed(self, stage: str, count: int = 1):
        """Add the block's seconds and ``count`` calls to ``stage``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.values["seconds"][stage] += time.perf_counter() - start
            self.values["calls"][stage] += count


class PoseSource:
    """Pose of an image: its POSE_KEYPOINT sidecar, else DWPose, else an empty frame when allowed."""

    def __init__(self, estimator=None, allow_missing: bool = False, boxes_from_faces: bool = False):
        self.estimator, self.allow_missing, self.boxes_from_faces = estimator, allow_missing, boxes_from_faces

    def can_pose(self, item: Item) -> bool:
        """Whether this item will get a pose (checked before any face work)."""
        return item.pose is not None or self.estimator is not None or self.allow_missing

    def __call__(self, item: Item, rgb: np.ndarray, faces: list = ()) -> bytes | None:
        if item.pose is not None:
            parse_pose_keypoint(item.pose.decode())  # validate; raises ValueError on a bad sidecar
            return item.pose
        height, width = rgb.shape[:2]
        if self.estimator is not None:
            boxes = None
            if self.boxes_from_faces:
                from instantfamily_core.dwpose import person_boxes_from_faces

                boxes = person_boxes_from_faces(np.array([f.box for f in faces], np.float32), width, height)
            return json.dumps(self.estimator(rgb, boxes=boxes).pose_keypoint()).encode()
        if self.allow_missing:
            return encode_pose([], width, height)
        return None


class TooSmall(ValueError):
    """An image below ``--min-side``."""


def decode_image(data: bytes | None, max_side: int, min_side: int = 0) -> tuple[np.ndarray, bytes, str]:
    """(RGB array, bytes to store, extension); raises on unreadable or too small data.

    Larger images are downscaled to ``max_side``; images whose shorter side is below ``min_side``
    raise ``TooSmall`` (never upscaled).
    """
    if not data:
        raise ValueError("empty file")
    image = Image.open(io.BytesIO(data))
    image.load()
    if min(image.size) < min_side:
        raise TooSmall(f"{image.width}x{image.height} is below --min-side {min_side}")
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
        image = Image.open(io.BytesIO(data)).convert("RGB")  # the pixels training will read
    return np.asarray(image), data, ext


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of x1, y1, x2, y2 boxes."""
    a, b = np.asarray(a, np.float32).reshape(-1, 4), np.asarray(b, np.float32).reshape(-1, 4)
    x1, y1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


class Preparer:
    """The stages of one process; ``run_job`` writes one shard."""

    def __init__(
        self,
        args: argparse.Namespace,
        analyzer,
        pose: PoseSource,
        captions: dict[str, str] | None = None,
        captioner=None,
        latents=None,
    ):
        self.args, self.analyzer, self.pose = args, analyzer, pose
        self.captions, self.captioner, self.latents = captions or {}, captioner, latents
        self.warned_caption = False

    # --- per-image stages ----------------------------------------------------------------------
    def detect(self, rgb: np.ndarray, stats: Stats):
        """Detected faces that pass the score and size filter: (boxes, keypoints, scores)."""
        with stats.timed("detect"):
            boxes, keypoints, scores = self.analyzer.detect(rgb, retry=self.args.detect_retry)
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep = (scores >= self.args.min_score) & (sides >= self.args.min_face_size)
        return boxes[keep], keypoints[keep], scores[keep]

    def reference_face(self, person, stats: Stats, salt: int):
        """Features of one person from a reference photo (rotating through the person's photos)."""
        files = person.references
        for attempt in range(min(len(files), 3)):
            path = files[(salt + attempt) % len(files)]
            try:
                rgb, _, _ = decode_image(path.read_bytes(), self.args.max_side)
            except Exception:  # a damaged reference: try the next one
                continue
            boxes, keypoints, scores = self.detect(rgb, stats)
            if not len(boxes):
                continue
            labelled = _json_boxes(path.with_suffix(".json"))
            best = (
                int(box_iou(labelled[:1], boxes)[0].argmax())
                if len(labelled)
                else int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
            )
            with stats.timed("recognize"):
                return self.analyzer.recognize(
                    rgb, boxes[best : best + 1], keypoints[best : best + 1], scores[best : best + 1]
                )[0], path
        return None, None

    def faces(self, item: Item, rgb: np.ndarray, stats: Stats) -> tuple[list, dict]:
        """The sample's faces (boxes in the photo) and extra meta; recognition only for kept faces."""
        boxes, keypoints, scores = self.detect(rgb, stats)
        if item.people is None:
            if len(boxes) < self.args.min_faces:
                return [], {}
            with stats.timed("recognize", len(boxes)):
                return self.analyzer.recognize(rgb, boxes, keypoints, scores), {}
        faces, references = [], {}
        if not len(boxes) or not item.people:
            return [], {}
        iou = box_iou(np.stack([p.box for p in item.people]), boxes)  # (people, detections)
        salt = sum(item.source.encode()) if self.args.reference_rotation else 0
        used = set()
        for index, person in enumerate(item.people):
            best = int(iou[index].argmax())
            if iou[index, best] < MATCH_IOU or best in used:
                continue
            used.add(best)
            reference, path = self.reference_face(person, stats, salt)
            if reference is None:
                continue
            # Where the person is (group photo), who they are (reference photo).
            faces.append(
                replace(
                    reference,
                    box=boxes[best],
                    keypoints=keypoints[best],
                    score=float(scores[best]),
                    image_size=rgb.shape[:2],
                )
            )
            references[person.name] = str(path)
        return (faces if len(faces) >= self.args.min_faces else []), {"references": references}

    def caption_of(self, item: Item) -> str | None:
        if item.caption is not None:
            return item.caption
        return next((self.captions[n] for n in item.names if n in self.captions), None)

    def analyse(self, item: Item, stats: Stats) -> Sample | None:
        """decode -> detect -> filter -> recognize -> pose; None (counted) when the image is skipped."""
        try:
            with stats.timed("decode"):
                rgb, data, ext = decode_image(item.image, self.args.max_side, self.args.min_side)
        except TooSmall as error:
            stats.skip("too_small", item.source, str(error))
            return None
        except Exception as error:  # PIL raises many types for damaged files
            stats.skip("corrupt", item.source, str(error))
            return None
        if not self.pose.can_pose(item):
            stats.skip("no_pose", item.source)
            return None
        try:
            faces, meta = self.faces(item, rgb, stats)
            if not faces:
                stats.skip("no_reference" if item.people is not None else "no_face", item.source)
                return None
            with stats.timed("pose"):
                try:
                    pose = self.pose(item, rgb, faces)
                except ValueError as error:  # a sidecar that is no POSE_KEYPOINT
                    stats.skip("bad_pose", item.source, str(error))
                    return None
        except Exception as error:  # one bad sample (a model's crash included) never aborts the shard
            logger.warning("%s: %s: %s", item.source, type(error).__name__, error)
            stats.skip("error", item.source, str(error))
            return None
        if pose is None:
            stats.skip("no_pose", item.source)
            return None
        return Sample(item, rgb, data, ext, faces, pose, self.caption_of(item), meta)

    # --- batched stages ------------------------------------------------------------------------
    def caption(self, samples: list[Sample], stats: Stats) -> list[Sample]:
        """Captions missing after sidecars and the captions file, from the captioner; the rest per policy."""
        missing = [s for s in samples if s.caption is None]
        if missing and self.captioner is not None:
            try:
                with stats.timed("caption", len(missing)):
                    texts = self.captioner([s.rgb for s in missing])
                for sample, text in zip(missing, texts):
                    sample.caption = text or None
                    stats.values["captioned"] += bool(text)
            except Exception as error:
                logger.warning("captioning a batch of %d failed: %s", len(missing), error)
        kept = []
        for sample in samples:
            if sample.caption is None:
                stats.values["no_caption"] += 1
                if not self.args.allow_empty_captions:
                    stats.skip("no_caption", sample.item.source)
                    continue
                if not self.warned_caption:
                    logger.warning(
                        "%s has no caption; it trains with an empty caption (--allow-empty-captions)",
                        sample.item.source,
                    )
                    self.warned_caption = True
            kept.append(sample)
        return kept

    def encode_latents(self, samples: list[Sample], stats: Stats) -> list[Sample]:
        if self.latents is None or not samples:
            return samples
        try:
            with stats.timed("latents", len(samples)):
                encoded = self.latents([Image.fromarray(s.rgb) for s in samples])
        except Exception as error:  # e.g. out of memory on one huge batch: per image, skipping failures
            logger.warning("latents of a batch failed (%s); encoding one by one", error)
            encoded = []
            for sample in samples:
                try:
                    encoded.append(self.latents([Image.fromarray(sample.rgb)])[0])
                except Exception as one:
                    encoded.append(None)
                    stats.skip("latent_error", sample.item.source, str(one))
        for sample, latent in zip(samples, encoded):
            sample.latent = latent
        return [s for s in samples if s.latent is not None]

    # --- one shard -----------------------------------------------------------------------------
    def run_job(self, job: Job, output: Path, progress) -> dict:
        stats = Stats(shard_name(job.number))
        writer = ShardWriter(output / shard_name(job.number))
        references = Path(self.args.references) if self.args.references else None
        try:
            chunk: list[Sample] = []
            for item in job.items(stats.error, references):
                stats.values["images"] += 1
                progress.update(1)
                sample = self.analyse(item, stats)
                if sample is not None:
                    chunk.append(sample)
                if len(chunk) >= self.args.batch_size:
                    self.write(self.encode_latents(self.caption(chunk, stats), stats), writer, job, stats)
                    chunk = []
            self.write(self.encode_latents(self.caption(chunk, stats), stats), writer, job, stats)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        tmp = stats_path(output / shard_name(job.number)).with_suffix(".tmp")
        tmp.write_text(json.dumps(stats.values))
        tmp.replace(stats_path(output / shard_name(job.number)))
        return stats.values

    def write(self, samples: list[Sample], writer: ShardWriter, job: Job, stats: Stats) -> None:
        for sample in samples:
            with stats.timed("write"):
                rgb = sample.rgb
                meta = {"source": sample.item.source, "height": rgb.shape[0], "width": rgb.shape[1], **sample.meta}
                members = {
                    sample.ext: sample.data,
                    "txt": (sample.caption or "").encode(),
                    "pose.json": sample.pose,
                    "faces.npz": encode_faces(sample.faces, rgb.shape[:2], np.dtype(self.args.feature_dtype)),
                    "meta.json": json.dumps(meta).encode(),
                }
                if sample.latent is not None:
                    from .latents import MEMBER

                    members[MEMBER] = sample.latent
                writer.write(f"{job.number:06d}_{stats.values['samples']:06d}", members)
            stats.values["samples"] += 1
            stats.values["faces"] += len(sample.faces)


def _json_boxes(path: Path) -> np.ndarray:
    try:
        return np.asarray(json.loads(path.read_text()).get("bboxes") or [], np.float32).reshape(-1, 4)
    except (OSError, ValueError, AttributeError):
        return np.zeros((0, 4), np.float32)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="image folders, WebDataset .tar shards (paths, globs, brace patterns), img2dataset folders",
    )
    p.add_argument("--output", required=True, help="folder for shard-NNNNNN.tar files and manifest.json")
    p.add_argument(
        "--insightface-root", required=True, help="folder containing models/<pack>/ (ComfyUI's models/insightface)"
    )
    p.add_argument("--pack", default="antelopev2", help="insightface model pack (the one the nodes will use)")
    p.add_argument("--provider", default="auto", help="onnxruntime provider: auto, CPU, CUDA")
    p.add_argument("--det-size", type=int, default=640)
    p.add_argument(
        "--detect-retry",
        action="store_true",
        help="retry face detection at smaller sizes and padded (up to 8 passes on a face-less image)",
    )
    p.add_argument("--min-score", type=float, default=0.5, help="drop faces detected with a lower score")
    p.add_argument("--min-face-size", type=float, default=32, help="drop faces whose box is smaller (px, shorter side)")
    p.add_argument("--min-faces", type=int, default=1, help="skip images with fewer faces left")
    p.add_argument("--min-side", type=int, default=256, help="skip images whose shorter side is smaller (px)")
    p.add_argument("--max-side", type=int, default=1024, help="downscale larger images before analysis and storage")
    p.add_argument(
        "--dwpose", default="", help="folder with yolox_l.onnx + dw-ll_ucoco_384.onnx (for images without .pose.json)"
    )
    p.add_argument(
        "--pose-boxes",
        choices=("detector", "faces"),
        default="detector",
        help="DWPose person boxes: its YOLOX detector, or estimated from the detected faces (much "
        "cheaper; people without a detected face then get no skeleton)",
    )
    p.add_argument("--allow-missing-pose", action="store_true", help="keep images without pose (no skeletons drawn)")
    p.add_argument("--captions-file", default="", help=".jsonl or .csv of file/key -> caption")
    p.add_argument("--captioner", default="", help="local transformers image-to-text model folder (BLIP-2, Florence-2)")
    p.add_argument("--caption-prompt", default="", help="prompt for the captioner (e.g. '<MORE_DETAILED_CAPTION>')")
    p.add_argument("--caption-max-tokens", type=int, default=40)
    p.add_argument("--allow-empty-captions", action="store_true", help="keep images without caption (empty text)")
    p.add_argument(
        "--pretrained",
        default=None,
        help="SD1.5 or SDXL weights whose VAE caches latents (as train.train's --pretrained; '' = random, tests)",
    )
    p.add_argument("--model-config", default="sd15", help="configs for --pretrained (as train.train)")
    p.add_argument("--seed", type=int, default=0, help="seed of a random --pretrained '' (as train.train)")
    p.add_argument("--latent-resolution", type=int, default=0, help="cache VAE latents for this training resolution")
    p.add_argument("--latent-dtype", choices=("float16", "float32"), default="float16", help="stored latent dtype")
    p.add_argument(
        "--aspect-buckets",
        action="store_true",
        help="cache each image's latents at its aspect bucket of about --latent-resolution squared pixels "
        "(train with --aspect-buckets on and the same --resolution and --bucket-granularity)",
    )
    p.add_argument("--bucket-granularity", type=int, default=64, help="bucket sides are multiples of this")
    p.add_argument(
        "--vae-precision",
        choices=("", "float32", "bfloat16", "float16"),
        default="",
        help="dtype of the VAE that caches latents ('' = --precision, but float32 for SDXL where --precision is "
        "float16: the SDXL VAE overflows in float16)",
    )
    p.add_argument(
        "--precision",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="dtype of the captioner, and of the VAE unless --vae-precision names one",
    )
    p.add_argument("--references", default="", help="MultiID-2M reference folder (<name>/*.jpg + .json)")
    p.add_argument("--reference-rotation", type=int, default=1, help="1: vary the reference photo per sample")
    p.add_argument("--batch-size", type=int, default=16, help="images per captioner / VAE batch")
    p.add_argument("--shard-size", type=int, default=1000, help="images per output shard (folder input)")
    p.add_argument("--feature-dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--rank", type=int, default=-1, help="this worker's index (default: torchrun/SLURM variables)")
    p.add_argument("--world-size", type=int, default=-1, help="number of workers (default: torchrun/SLURM variables)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--openpose", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.openpose:
        p.error(
            "--openpose (controlnet_aux's pickled .pth models) is gone: use --dwpose with the ONNX files "
            "yolox_l.onnx and dw-ll_ucoco_384.onnx"
        )
    if args.latent_resolution and args.pretrained is None:
        p.error("--latent-resolution needs --pretrained (the SD1.5 or SDXL weights training will use)")
    return args


def build_preparer(args: argparse.Namespace, device: str):
    """The analyzer and every optional stage of ``args``."""
    from instantfamily_core.faces import load_face_analyzer

    analyzer = load_face_analyzer(args.insightface_root, args.pack, provider=args.provider, det_size=args.det_size)
    estimator = None
    if args.dwpose:
        from instantfamily_core.dwpose import DWPoseEstimator

        estimator = DWPoseEstimator.from_folder(args.dwpose, provider=args.provider)
    captions = {}
    if args.captions_file:
        from .captions import read_captions_file

        captions = read_captions_file(args.captions_file)
    captioner = None
    if args.captioner:
        from .captions import Captioner

        captioner = Captioner(args.captioner, device, args.precision, args.caption_prompt, args.caption_max_tokens)
    latents = None
    if args.latent_resolution:
        from .buckets import bucket_sizes
        from .latents import PRECISIONS, LatentEncoder, load_vae, vae_dtype
        from .models import config_dir, family_of_config

        buckets = bucket_sizes(args.latent_resolution**2, args.bucket_granularity) if args.aspect_buckets else None
        latents = LatentEncoder(
            load_vae(args.pretrained, args.model_config, args.seed),
            args.latent_resolution,
            device,
            args.vae_precision
            or vae_dtype(family_of_config(config_dir(args.model_config)), PRECISIONS[args.precision]),
            args.latent_dtype,
            buckets,
        )
    pose = PoseSource(estimator, args.allow_missing_pose, boxes_from_faces=args.pose_boxes == "faces")
    return Preparer(args, analyzer, pose, captions, captioner, latents)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rank, world, local_rank = rank_and_world(args.rank, args.world_size)
    if world > 1:
        pin_gpu(local_rank)
    import torch
    from tqdm.auto import tqdm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(args.input, args.shard_size)
    mine = [j for j in jobs if j.number % world == rank]
    todo = [j for j in mine if not stats_path(output / shard_name(j.number)).is_file()]
    logger.info(
        "rank %d of %d: %d of %d shards to do (%d already finished)",
        rank,
        world,
        len(todo),
        len(mine),
        len(mine) - len(todo),
    )
    preparer = build_preparer(args, device)
    total = sum(j.size or 0 for j in todo) or None
    with tqdm(total=total, desc=f"prepare[{rank}]", disable=args.no_progress) as progress:
        for job in todo:
            preparer.run_job(job, output, progress)
    skip = ("input", "output", "no_progress", "rank", "world_size", "openpose")
    settings = {k: v for k, v in vars(args).items() if k not in skip}
    manifest = write_manifest(output, preparer.analyzer.info, settings, planned=len(jobs))
    totals = manifest["totals"]
    print(
        f"{output}: {totals['samples']} samples with {totals['faces']} faces from {totals['images']} images "
        f"({len(manifest['shards'])} of {len(jobs)} shards finished); skipped {totals['skipped']}; "
        f"{totals['no_caption']} without caption, {totals['captioned']} captioned by the model; "
        f"damaged input {totals['errors']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
