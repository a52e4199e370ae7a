"""Input of ``train.prepare``: image folders, WebDataset tars, img2dataset output and MultiID-2M.

Every source becomes ``Job``s (one output shard each) that yield ``Item``s:

- a folder of images (+ same-name ``.txt`` caption and ``.pose.json`` POSE_KEYPOINT sidecars),
  cut into jobs of ``shard_size`` images;
- WebDataset ``.tar`` shards, given as paths, globs or brace patterns (``laion/{00000..00099}.tar``);
  members ``jpg|jpeg|png|webp``, ``txt``, ``pose.json``, ``json``;
- the img2dataset layout: ``NNNNN.tar`` beside ``NNNNN.parquet``; the parquet (read with pyarrow
  when installed) gives captions missing in the tar and counts failed downloads;
- MultiID-2M (``--references REF_DIR``): group photos in tars whose ``json`` names the people
  (``name``/``names``) and boxes them (``bboxes``, relative to the uncropped photo when ``crop``
  is given); ``REF_DIR/<name>/*.jpg`` (+ ``.json`` with the reference's ``bboxes``) are photos of
  the same people taken elsewhere. Training features come from a reference photo, positions from
  the group photo, as at inference. The pickled ``.npy`` members are never read.

A tar that ends early (truncated download) yields the samples before the damage and reports it.
"""

from __future__ import annotations

import glob
import itertools
import json
import logging
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .sample_format import image_member
from .shards import split_member

logger = logging.getLogger(__name__)
FOLDER_EXTS = (".jpg", ".jpeg", ".png", ".webp")
BRACE = re.compile(r"\{([^{}]*)\}")


@dataclass
class Person:
    """A person of a group photo (MultiID-2M): box in the photo's pixels and reference photo files."""

    box: np.ndarray
    name: str
    references: list[Path]


@dataclass
class Item:
    """One input image: its bytes, names to look its caption up by, and optional sidecars."""

    source: str
    image: bytes | None
    caption: str | None = None
    pose: bytes | None = None
    names: tuple[str, ...] = ()
    people: list[Person] | None = None  # MultiID-2M: who is where (None: faces come from the photo)
    meta: dict = field(default_factory=dict)  # a tar sample's json (img2dataset / MultiID-2M labels)


@dataclass
class Job:
    """One output shard: a chunk of folder images or one input tar."""

    number: int
    files: list[Path] = field(default_factory=list)
    root: Path | None = None
    tar: Path | None = None
    parquet: Path | None = None

    @property
    def size(self) -> int | None:
        return len(self.files) if self.tar is None else None

    def items(self, on_error: Callable[[str, str], None], references: Path | None = None) -> Iterator[Item]:
        """The job's items; ``on_error(reason, detail)`` hears of a damaged tar or parquet."""
        if self.tar is None:
            yield from folder_items(self.files, self.root)
            return
        extra = parquet_captions(self.parquet, on_error) if self.parquet else {}
        for item in tar_items(self.tar, on_error):
            if item.caption is None:
                item.caption = next((extra[n] for n in item.names if n in extra), None)
            if references is not None:
                item.people = multiid_people(item, references)
            yield item


def folder_items(files: list[Path], root: Path | None) -> Iterator[Item]:
    for path in files:
        stem = path.with_suffix("")
        caption = stem.with_suffix(".txt")
        pose = Path(str(stem) + ".pose.json")
        relative = str(path.relative_to(root)) if root else path.name
        yield Item(
            str(path),
            _read(path),
            caption.read_text().strip() if caption.is_file() else None,
            pose.read_bytes() if pose.is_file() else None,
            names=(relative, str(Path(relative).with_suffix("")), path.name, path.stem),
        )


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def tar_items(path: Path, on_error: Callable[[str, str], None]) -> Iterator[Item]:
    """Samples of a WebDataset shard, grouped by key (members of a key are consecutive)."""
    current, members = None, {}
    try:
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
    except (tarfile.TarError, EOFError, OSError) as error:  # truncated or damaged: keep what came before
        on_error("truncated_tar", f"{path}: {error}")
        logger.warning("%s is damaged after %s (%s); its earlier samples are kept", path, current, error)
        return
    if current is not None:
        yield _tar_item(path, current, members)


def _tar_item(path: Path, key: str, members: dict[str, bytes]) -> Item:
    found = image_member(members)
    caption = members["txt"].decode("utf-8", "replace").strip() if "txt" in members else None
    meta = _json(members.get("json"))
    if caption is None and isinstance(meta.get("caption_en") or meta.get("caption"), str):
        caption = (meta.get("caption_en") or meta.get("caption")).strip()
    return Item(
        f"{path.name}:{key}",
        found[1] if found else None,
        caption,
        members.get("pose.json"),
        names=(f"{path.name}:{key}", key, Path(key).name),
        meta=meta,
    )


def _json(data: bytes | None) -> dict:
    if not data:
        return {}
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def parquet_captions(path: Path, on_error: Callable[[str, str], None]) -> dict[str, str]:
    """key -> caption of an img2dataset parquet; rows whose download failed are counted."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        logger.warning("%s: pyarrow is not installed (pip install pyarrow); using the tar's own captions", path)
        return {}
    try:
        table = pq.read_table(path).to_pylist()
    except Exception as error:  # a damaged parquet only loses the fallback captions
        on_error("bad_parquet", f"{path}: {error}")
        return {}
    captions = {}
    for row in table:
        if row.get("status") not in (None, "success"):
            on_error("download_failed", str(row.get("url", "")))
            continue
        if row.get("key") is not None and isinstance(row.get("caption"), str):
            captions[str(row["key"])] = row["caption"].strip()
    return captions


def multiid_people(item: Item, references: Path) -> list[Person]:
    """The named people of a MultiID-2M group photo with their reference photos (may be empty)."""
    meta = item.meta
    boxes = np.asarray(meta.get("bboxes") or [], np.float32).reshape(-1, 4)
    names = meta.get("name") or meta.get("names") or []
    names = [names] if isinstance(names, str) else list(names)
    origin = np.asarray((meta.get("crop") or [0, 0])[:2], np.float32)
    people = []
    for box, name in zip(boxes, names):
        if not name or str(name).lower() == "none":
            continue
        files = sorted(p for p in (references / str(name)).glob("*") if p.suffix.lower() in FOLDER_EXTS)
        if files:
            people.append(Person(box - np.tile(origin, 2), str(name), files))
    return people


def expand_braces(pattern: str) -> list[str]:
    """'a/{000..002}.tar' -> a/000.tar a/001.tar a/002.tar; '{x,y}' lists; several groups multiply."""
    parts, last = [], 0
    for match in BRACE.finditer(pattern):
        parts.append([pattern[last : match.start()]])
        body = match.group(1)
        numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        if numeric:
            low, high = numeric.groups()
            width = len(low) if low.startswith("0") or len(low) == len(high) else 0
            parts.append([str(n).zfill(width) for n in range(int(low), int(high) + 1)])
        else:
            parts.append(body.split(","))
        last = match.end()
    parts.append([pattern[last:]])
    return ["".join(p) for p in itertools.product(*parts)]


def plan_jobs(inputs: list[str], shard_size: int) -> list[Job]:
    """Jobs of every input, in a fixed order (every rank plans the same list)."""
    jobs: list[Job] = []
    tars: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in FOLDER_EXTS)
            tars.extend(sorted(path.glob("*.tar")))
            for start in range(0, len(files), shard_size):
                jobs.append(Job(len(jobs), files=files[start : start + shard_size], root=path))
            continue
        matches = sorted({m for p in expand_braces(item) for m in glob.glob(p)})
        found = [Path(m) for m in matches if m.endswith(".tar") and Path(m).is_file()]
        if not found:
            raise ValueError(
                f"--input {item}: expected a folder of images, WebDataset .tar shards (paths, globs or "
                "brace patterns such as data/{00000..00009}.tar) or an img2dataset output folder"
            )
        tars.extend(found)
    for tar in sorted(dict.fromkeys(tars)):
        parquet = tar.with_suffix(".parquet")
        jobs.append(Job(len(jobs), tar=tar, parquet=parquet if parquet.is_file() else None))
    return jobs
