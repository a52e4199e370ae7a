"""WebDataset tar shards: atomic writing, a random-access index, and reading samples by index.

A sample is the group of tar members sharing a key (``0001.jpg``, ``0001.txt``, ``0001.faces.npz``,
``0001.pose.json``): the key is the path up to the first dot of the file name, as in WebDataset.
Training reads samples by (shard, offset) so that a resumed run can continue at an exact position.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def split_member(name: str) -> tuple[str, str]:
    """'dir/0001.faces.npz' -> ('dir/0001', 'faces.npz')."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, ext if dot else ""


def index_tar(path: str | os.PathLike) -> list[dict]:
    """[{"key": key, "members": {ext: [data offset, size]}}] in tar order (headers only are read)."""
    samples: dict[str, dict] = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_member(member.name)
            entry = samples.setdefault(key, {"key": key, "members": {}})
            entry["members"][ext] = [member.offset_data, member.size]
    return list(samples.values())


def index_path(shard: str | os.PathLike) -> Path:
    return Path(str(shard) + ".index.json")


def load_or_build_index(shard: str | os.PathLike) -> list[dict]:
    """The shard's sidecar index (written by prepare) or a fresh scan of its headers."""
    sidecar = index_path(shard)
    if sidecar.is_file() and sidecar.stat().st_mtime >= Path(shard).stat().st_mtime:
        return json.loads(sidecar.read_text())
    return index_tar(shard)


class ShardWriter:
    """Write one shard to ``path`` atomically: members go to a temp file renamed on close."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.tar = tarfile.open(self.tmp, "w:", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample; ``members`` maps extension ('jpg', 'faces.npz', ...) to bytes."""
        for ext in sorted(members):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(members[ext])
            info.mtime = int(time.time())
            info.mode = 0o644
            self.tar.addfile(info, io.BytesIO(members[ext]))
        self.count += 1

    def close(self) -> None:
        self.tar.close()
        index = index_tar(self.tmp)
        os.replace(self.tmp, self.path)
        tmp_index = index_path(self.path).with_suffix(".tmp")
        tmp_index.write_text(json.dumps(index))
        os.replace(tmp_index, index_path(self.path))

    def abort(self) -> None:
        self.tar.close()
        self.tmp.unlink(missing_ok=True)


class ShardIndex:
    """Where each sample's members lie in its shard, as a few numpy arrays.

    About 100 bytes per sample instead of ~1.2 KB of Python dicts, lists and ints (2.3M samples: ~0.2 GB
    instead of ~2.8 GB per process), and forked DataLoader workers share the arrays' pages instead of
    copying them (reference counts touch every Python object, never the inside of an array).

    keys: (S,) bytes, the samples' keys; shard: (S,) int32 shard number; extensions: member names;
    offsets: (S, E) int64 data offset of member e (-1 = the sample has no such member); sizes: (S, E) int64.
    """

    def __init__(
        self, keys: np.ndarray, shard: np.ndarray, extensions: list[str], offsets: np.ndarray, sizes: np.ndarray
    ):
        self.keys, self.shard, self.extensions, self.offsets, self.sizes = keys, shard, extensions, offsets, sizes

    @classmethod
    def from_entries(cls, shards_entries: Iterable[list[dict]]) -> ShardIndex:
        """From each shard's ``index_tar`` entries (one shard's Python objects alive at a time)."""
        columns: dict[str, int] = {}
        keys, numbers, offsets, sizes = [], [], [], []
        for number, entries in enumerate(shards_entries):
            for entry in entries:
                for ext in entry["members"]:
                    columns.setdefault(ext, len(columns))
            where = np.full((len(entries), len(columns)), -1, np.int64)  # (S_shard, E so far)
            size = np.zeros((len(entries), len(columns)), np.int64)
            for row, entry in enumerate(entries):
                for ext, (offset, length) in entry["members"].items():
                    where[row, columns[ext]], size[row, columns[ext]] = offset, length
            keys.append(np.array([entry["key"].encode() for entry in entries], dtype=bytes))
            numbers.append(np.full(len(entries), number, np.int32))
            offsets.append(where)
            sizes.append(size)
        width = len(columns)

        def padded(parts: list[np.ndarray], fill: int) -> np.ndarray:
            if not parts:
                return np.zeros((0, width), np.int64)
            return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=fill) for p in parts])

        return cls(
            np.concatenate(keys) if keys else np.zeros(0, bytes),
            np.concatenate(numbers) if numbers else np.zeros(0, np.int32),
            list(columns),
            padded(offsets, -1),
            padded(sizes, 0),
        )

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.shard.nbytes + self.offsets.nbytes + self.sizes.nbytes

    def sample(self, index: int) -> tuple[int, str, dict[str, tuple[int, int]]]:
        """(shard number, key, {ext: (offset, size)}) of sample ``index``."""
        members = {
            ext: (int(self.offsets[index, e]), int(self.sizes[index, e]))
            for e, ext in enumerate(self.extensions)
            if self.offsets[index, e] >= 0
        }
        return int(self.shard[index]), self.keys[index].decode(), members


class ShardReader:
    """Random access to samples of several shards; file handles are opened lazily per process."""

    def __init__(self, shards: list[str | os.PathLike]):
        if not shards:
            raise ValueError("no training shards given; run `python -m train.prepare` first or pass --data")
        self.shards = [str(s) for s in shards]
        self.index = ShardIndex.from_entries(load_or_build_index(shard) for shard in self.shards)
        self._files: dict[int, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def _file(self, number: int):
        if self._pid != os.getpid():  # forked DataLoader worker: never share a file position
            self._files, self._pid = {}, os.getpid()
        if number not in self._files:
            self._files[number] = open(self.shards[number], "rb")
        return self._files[number]

    def read(self, index: int) -> tuple[str, dict[str, bytes]]:
        """(key, {ext: bytes}) of sample ``index``."""
        number, key, where = self.index.sample(index)
        f = self._file(number)
        members = {}
        for ext, (offset, size) in where.items():
            f.seek(offset)
            members[ext] = f.read(size)
        return key, members

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = {}
        return state
