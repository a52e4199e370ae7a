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
from pathlib import Path


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


class ShardReader:
    """Random access to samples of several shards; file handles are opened lazily per process."""

    def __init__(self, shards: list[str | os.PathLike]):
        if not shards:
            raise ValueError("no training shards given; run `python -m train.prepare` first or pass --data")
        self.shards = [str(s) for s in shards]
        self.entries: list[tuple[int, dict]] = []
        for number, shard in enumerate(self.shards):
            self.entries.extend((number, entry) for entry in load_or_build_index(shard))
        self._files: dict[int, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.entries)

    def _file(self, number: int):
        if self._pid != os.getpid():  # forked DataLoader worker: never share a file position
            self._files, self._pid = {}, os.getpid()
        if number not in self._files:
            self._files[number] = open(self.shards[number], "rb")
        return self._files[number]

    def read(self, index: int) -> tuple[str, dict[str, bytes]]:
        """(key, {ext: bytes}) of sample ``index``."""
        number, entry = self.entries[index]
        f = self._file(number)
        members = {}
        for ext, (offset, size) in entry["members"].items():
            f.seek(offset)
            members[ext] = f.read(size)
        return entry["key"], members

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = {}
        return state
