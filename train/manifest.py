"""The manifest of a prepared dataset folder, and finding training shards from ``--data``."""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path

from instantfamily_core.config import RecognizerInfo

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "instantfamily-shards-1"


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


def stats_path(shard: Path) -> Path:
    """Per-shard counts, written after the shard itself (its presence marks the shard finished)."""
    return Path(str(shard) + ".stats.json")


def write_manifest(folder: Path, recognizer: RecognizerInfo | None, settings: dict, planned: int | None = None) -> dict:
    """Merge every finished shard's stats into ``manifest.json`` (atomic; safe while other workers write)."""
    shards, totals = (
        [],
        {
            "images": 0,
            "samples": 0,
            "faces": 0,
            "no_caption": 0,
            "captioned": 0,
            "skipped": {},
            "errors": {},
            "seconds": {},
            "calls": {},
        },
    )
    for stats_file in sorted(folder.glob("shard-*.tar.stats.json")):
        stats = json.loads(stats_file.read_text())
        shards.append(stats)
        for name in ("images", "samples", "faces", "no_caption", "captioned"):
            totals[name] += stats.get(name, 0)
        for group in ("skipped", "errors", "seconds", "calls"):
            for reason, count in stats.get(group, {}).items():
                totals[group][reason] = totals[group].get(reason, 0) + count
    manifest = {
        "format": FORMAT,
        "recognizer": recognizer.__dict__ if recognizer else None,
        "settings": settings,
        "planned_shards": planned,
        "complete": planned is not None and len(shards) == planned,
        "totals": totals,
        "shards": shards,
    }
    tmp = folder / f"{MANIFEST}.{os.getpid()}.tmp"  # one per writer: workers end at different times
    tmp.write_text(json.dumps(manifest, indent=2, default=list))
    tmp.replace(folder / MANIFEST)
    return manifest


def find_shards(data: list[str]) -> tuple[list[str], RecognizerInfo | None]:
    """Shard paths from folders (their shard-*.tar), files or globs; plus the recognizer of the manifests."""
    shards, recognizers = [], []
    for item in data:
        path = Path(item)
        if path.is_dir():
            shards.extend(sorted(str(p) for p in path.glob("*.tar")))
            if (path / MANIFEST).is_file():
                info = json.loads((path / MANIFEST).read_text()).get("recognizer")
                if info:
                    recognizers.append(RecognizerInfo.from_dict(info))
        else:
            matches = sorted(glob.glob(item))
            if not matches:
                raise ValueError(f"--data {item}: no such folder or shard")
            shards.extend(matches)
    distinct = {(r.sha256, r.file_name) for r in recognizers}
    if len(distinct) > 1:
        raise ValueError(f"--data mixes shards prepared with different face recognizers: {sorted(distinct)}")
    if not recognizers:
        logger.warning("no manifest.json with recognizer info in --data; the checkpoint will not name its recognizer")
    return shards, (recognizers[0] if recognizers else None)
