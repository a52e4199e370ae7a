"""Data preparation with the pack's real face pipeline (tiny exported insightface pack)."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from train_fixtures import PACK, VALID, prepare_args, write_webdataset_tar

from train.manifest import find_shards
from train.prepare import main
from train.sample_format import decode_faces
from train.shards import ShardReader, index_tar


def test_manifest_counts_and_skips(prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    totals = manifest["totals"]
    assert totals["images"] == 9 and totals["samples"] == len(VALID)
    assert totals["skipped"] == {"corrupt": 1, "no_face": 1, "no_pose": 1}
    assert totals["faces"] == 17 and totals["no_caption"] == 1
    assert manifest["recognizer"]["file_name"] == "rec_tiny.onnx" and manifest["recognizer"]["sha256"]
    assert sorted(p.name for p in prepared.glob("*.tar")) == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]


def test_samples_hold_what_the_analyzer_sees(prepared, pack_root):
    from instantfamily_core.faces import load_face_analyzer

    analyzer = load_face_analyzer(pack_root, PACK, provider="CPU")
    shards, recognizer = find_shards([str(prepared)])
    assert recognizer.file_name == "rec_tiny.onnx"
    reader = ShardReader(shards)
    assert len(reader) == len(VALID)
    for index in range(len(reader)):
        _, members = reader.read(index)
        assert set(members) == {"png", "txt", "faces.npz", "pose.json", "meta.json"}
        meta = json.loads(members["meta.json"])
        rgb = np.asarray(Image.open(os.path.join(meta["source"])).convert("RGB"))
        expected = analyzer.analyze(rgb)
        faces = decode_faces(members["faces.npz"])
        assert len(faces["boxes"]) == len(expected)
        np.testing.assert_allclose(faces["boxes"], [f.box for f in expected], atol=1e-3)
        np.testing.assert_allclose(faces["global_features"], [f.global_feature for f in expected], rtol=2e-3, atol=2e-3)
        assert faces["local_features"].shape == (len(expected), 512, 7, 7)
        pose = json.loads(members["pose.json"])
        assert len(pose[0]["people"]) >= len(expected)


def test_rerun_skips_finished_shards_and_redoes_unfinished(prepared, raw_folder, pack_root, tmp_path):
    output = tmp_path / "copy"
    output.mkdir()
    for path in prepared.iterdir():
        (output / path.name).write_bytes(path.read_bytes())
    before = {p.name: p.stat().st_mtime_ns for p in output.glob("*.tar")}
    (output / "shard-000001.tar.stats.json").unlink()  # as if killed while writing shard 1
    (output / "shard-000001.tar").unlink()
    assert main(prepare_args([raw_folder], output, pack_root, PACK)) == 0
    after = {p.name: p.stat().st_mtime_ns for p in output.glob("*.tar")}
    assert after["shard-000000.tar"] == before["shard-000000.tar"] and "shard-000001.tar" in after
    assert json.loads((output / "manifest.json").read_text())["totals"]["samples"] == len(VALID)
    assert index_tar(output / "shard-000001.tar") == json.loads((output / "shard-000001.tar.index.json").read_text())


def test_webdataset_input(tmp_path, pack_root):
    source = write_webdataset_tar(tmp_path / "in-000.tar", ("a_two", "e_four"))
    output = tmp_path / "out"
    assert main(prepare_args([source], output, pack_root, PACK)) == 0
    reader = ShardReader(find_shards([str(output)])[0])
    counts = sorted(len(decode_faces(reader.read(i)[1]["faces.npz"])["boxes"]) for i in range(len(reader)))
    assert counts == [2, 4]


def test_bad_input_is_named(tmp_path, pack_root):
    with pytest.raises(ValueError, match="expected a folder of images, WebDataset .tar shards"):
        main(prepare_args([tmp_path / "missing"], tmp_path / "out", pack_root, PACK))
