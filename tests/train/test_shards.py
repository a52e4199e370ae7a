"""The compact shard index: every member of every sample read back, in arrays of ~100 bytes per sample."""

import pickle
import tarfile

import numpy as np

from train.shards import ShardIndex, ShardReader, ShardWriter, index_tar


def write(path, samples):
    writer = ShardWriter(path)
    for key, members in samples.items():
        writer.write(key, members)
    writer.close()
    return str(path)


def test_reader_returns_what_was_written_across_shards_with_different_members(tmp_path):
    first = {
        f"000000_{i:06d}": {"jpg": bytes([i]) * (i + 3), "txt": f"caption {i}".encode(), "faces.npz": b"\x00" * (7 * i)}
        for i in range(5)
    }
    second = {
        "000001_000000": {"png": b"png bytes", "pose.json": b"[]", "latents.npz": b"z" * 11},
        "dir/ünïcode_key": {"jpg": b"j", "meta.json": b"{}"},
    }
    shards = [write(tmp_path / "a.tar", first), write(tmp_path / "b.tar", second)]
    reader = ShardReader(shards)
    assert len(reader) == 7
    expected = list(first.items()) + list(second.items())
    for index, (key, members) in enumerate(expected):
        assert reader.read(index) == (key, members)
    with tarfile.open(shards[1]) as tar:  # offsets are the tar's own data offsets
        member = tar.getmember("000001_000000.latents.npz")
        assert tar.extractfile(member).read() == b"z" * 11
    clone = pickle.loads(pickle.dumps(reader))  # what a DataLoader worker (spawn) receives
    assert clone.read(6) == expected[6]


def test_index_is_arrays_of_about_a_hundred_bytes_per_sample(tmp_path):
    samples = {
        f"{3:06d}_{i:06d}": {ext: b"x" * 10 for ext in ("jpg", "txt", "faces.npz", "pose.json", "meta.json")}
        for i in range(200)
    }
    entries = index_tar(write(tmp_path / "c.tar", samples))
    index = ShardIndex.from_entries([entries, entries])
    assert len(index) == 400 and index.offsets.shape == (400, 5) and index.offsets.dtype == np.int64
    assert index.nbytes / len(index) < 110
    assert index.sample(201) == (
        1,
        "000003_000001",
        {ext: tuple(entries[1]["members"][ext]) for ext in entries[1]["members"]},
    )
