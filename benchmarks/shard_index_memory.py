"""Memory of the training shard index per million samples: the compact arrays vs the Python objects
the reader used to keep (a list of (shard, {"key", "members": {ext: [offset, size]}}) per sample).

    python benchmarks/shard_index_memory.py [--samples 200000] [--per-shard 1000]

Both are built in the same run from the same sidecar JSON (what ``ShardWriter`` writes beside each
shard), with 5 members per sample as ``train.prepare`` writes them (jpg, txt, faces.npz, pose.json,
meta.json), and measured with tracemalloc (what stays allocated once the index is built).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tracemalloc
from pathlib import Path

if not __package__:  # run as a file: the packages it imports live at the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.shards import ShardIndex  # noqa: E402

MEMBERS = ("faces.npz", "jpg", "meta.json", "pose.json", "txt")


def sidecars(samples: int, per_shard: int) -> list[str]:
    """Sidecar index texts of ``samples`` samples in shards of ``per_shard``, offsets as in a real tar."""
    texts = []
    for start in range(0, samples, per_shard):
        entries, offset = [], 512
        for i in range(start, min(start + per_shard, samples)):
            members = {}
            for ext, size in zip(MEMBERS, (180_000, 60_000, 120, 2_400, 90)):
                members[ext] = [offset, size]
                offset += 512 + -(-size // 512) * 512
            entries.append({"key": f"{start // per_shard:06d}_{i - start:06d}", "members": members})
        texts.append(json.dumps(entries))
    return texts


def retained(build) -> tuple[object, int]:
    """(result of build(), bytes it keeps allocated)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    result = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return result, after - before


def measure(samples: int, per_shard: int) -> dict:
    texts = sidecars(samples, per_shard)
    old, old_bytes = retained(lambda: [(n, e) for n, text in enumerate(texts) for e in json.loads(text)])
    del old
    new, new_bytes = retained(lambda: ShardIndex.from_entries(json.loads(text) for text in texts))
    assert len(new) == samples
    per_million = 1e6 / samples
    return {
        "samples": samples,
        "old_mb_per_million": old_bytes * per_million / 1e6,
        "new_mb_per_million": new_bytes * per_million / 1e6,
        "new_array_bytes_per_sample": new.nbytes / samples,
        "ratio": old_bytes / max(new_bytes, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=200_000)
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    r = measure(args.samples, args.per_shard)
    print(
        f"shard index, {r['samples']} samples, {len(MEMBERS)} members each: "
        f"old (Python objects) {r['old_mb_per_million']:.0f} MB per million samples, "
        f"new (arrays) {r['new_mb_per_million']:.0f} MB per million ({r['new_array_bytes_per_sample']:.0f} bytes "
        f"per sample); {r['ratio']:.1f}x smaller; at 2.3M samples: {2.3 * r['old_mb_per_million'] / 1e3:.2f} GB "
        f"-> {2.3 * r['new_mb_per_million'] / 1e3:.2f} GB per process"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
