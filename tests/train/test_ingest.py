"""Input formats of train.prepare: brace patterns, img2dataset (tar + parquet), truncated tars, and
the worker split (rank/world from flags, torchrun or SLURM; one GPU per local rank)."""

import json
import shutil

import pytest
from train_fixtures import PACK, prepare_args, write_img2dataset

from train.ingest import expand_braces, plan_jobs
from train.manifest import find_shards
from train.prepare import main
from train.shards import ShardReader
from train.workers import pin_gpu, rank_and_world


def test_brace_patterns_expand_like_webdataset():
    assert expand_braces("d/{000..002}.tar") == ["d/000.tar", "d/001.tar", "d/002.tar"]
    assert expand_braces("{a,b}-{8..10}") == ["a-8", "a-9", "a-10", "b-8", "b-9", "b-10"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_jobs_from_globs_and_braces(tmp_path):
    for n in range(3):
        (tmp_path / f"{n:05d}.tar").write_bytes(b"")
    jobs = plan_jobs([str(tmp_path / "{00000..00001}.tar"), str(tmp_path / "0000[2].tar")], 10)
    assert [j.tar.name for j in jobs] == ["00000.tar", "00001.tar", "00002.tar"]
    assert [j.number for j in jobs] == [0, 1, 2]
    with pytest.raises(ValueError, match="brace patterns"):
        plan_jobs([str(tmp_path / "{7..8}.tar")], 10)


def test_rank_and_world_from_flags_torchrun_and_slurm():
    assert rank_and_world(2, 4, {}) == (2, 4, 0)
    assert rank_and_world(env={"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == (5, 8, 1)
    assert rank_and_world(env={"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "3"}) == (3, 4, 3)
    array = {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "6"}
    assert rank_and_world(env=array) == (1, 6, 0)
    assert rank_and_world(env={}) == (0, 1, 0)
    with pytest.raises(ValueError, match="--rank"):
        rank_and_world(4, 4, {})


def test_each_local_rank_gets_its_own_gpu():
    env = {}
    assert pin_gpu(3, env) == "3" and env["CUDA_VISIBLE_DEVICES"] == "3"
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    assert pin_gpu(1, env) == "5" and env["CUDA_VISIBLE_DEVICES"] == "5"
    env = {"CUDA_VISIBLE_DEVICES": "2"}  # the scheduler already gave this process one GPU
    assert pin_gpu(1, env) == "2" and env["CUDA_VISIBLE_DEVICES"] == "2"


def test_img2dataset_shard_and_a_truncated_copy(tmp_path, pack_root):
    source = write_img2dataset(tmp_path / "laion")
    data = (source / "00000.tar").read_bytes()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "00001.tar").write_bytes(data[: len(data) * 5 // 8])  # a download cut off mid-member
    output = tmp_path / "out"
    assert main(prepare_args([source, broken / "00001.tar"], output, pack_root, PACK, "--allow-missing-pose")) == 0
    manifest = json.loads((output / "manifest.json").read_text())
    totals = manifest["totals"]
    assert totals["errors"] == {"download_failed": 1, "truncated_tar": 1} and manifest["complete"]
    reader = ShardReader(find_shards([str(output)])[0])
    samples = [reader.read(i)[1] for i in range(len(reader))]
    captions = {json.loads(m["meta.json"])["source"]: m["txt"].decode() for m in samples}
    # the last sample has no .txt in the tar: its caption comes from the parquet
    assert captions["00000.tar:000000003"] == "photo f_two" and captions["00000.tar:000000000"] == "photo a_two"
    from_broken = [k for k in captions if k.startswith("00001.tar:")]
    assert 1 <= len(from_broken) < 4  # the samples before the damage are kept
    assert totals["no_caption"] == 0


def test_workers_split_shards_without_waiting_for_each_other(tmp_path, pack_root, raw_folder):
    output = tmp_path / "out"
    assert main(prepare_args([raw_folder], output, pack_root, PACK, "--rank", "1", "--world-size", "2")) == 0
    first = json.loads((output / "manifest.json").read_text())
    assert [s["name"] for s in first["shards"]] == ["shard-000001.tar"] and not first["complete"]
    assert main(prepare_args([raw_folder], output, pack_root, PACK, "--rank", "0", "--world-size", "2")) == 0
    second = json.loads((output / "manifest.json").read_text())
    assert second["complete"] and len(second["shards"]) == 3
    shutil.rmtree(output)
