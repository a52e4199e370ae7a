"""benchmarks/train_throughput.py keeps working at tiny size on CPU (figures come from GPU runs)."""

import json

import pytest

from benchmarks import shard_index_memory
from benchmarks import train_throughput as module


def test_benchmark_runs_at_tiny_size(tmp_path):
    out = tmp_path / "figures.json"
    assert (
        module.main(
            [
                "--model-config",
                "tiny",
                "--resolution",
                "64",
                "--batch-size",
                "2",
                "--precision",
                "fp32",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    figures = json.loads(out.read_text())
    for name in ("plain", "instantfamily"):
        assert figures["results"][name]["images_per_s"] > 0 and figures["results"][name]["flops_per_step"] > 0
    # the face tokens are extra work: our step counts more FLOPs than the plain one
    assert 0 < figures["summary"]["flop_ratio"] < 1
    # cached latents skip the VAE encode: fewer FLOPs per step, in both kinds of step
    for name in ("plain", "instantfamily"):
        assert figures["results"][name + "_cached"]["flops_per_step"] < figures["results"][name]["flops_per_step"]
    assert 0 < figures["summary"]["vae_flop_share"] < 1
    # the meta-device count (used for full-size estimates without a GPU) agrees with the real run's count
    # (within a few percent: meta and the CPU pick different SDPA backends, counted differently)
    counted = tmp_path / "counted.json"
    assert (
        module.main(
            [
                "--model-config",
                "tiny",
                "--resolution",
                "64",
                "--batch-size",
                "2",
                "--count-only",
                "--json",
                str(counted),
            ]
        )
        == 0
    )
    per_image = json.loads(counted.read_text())["tflop_per_image"]
    for name in ("plain", "plain_cached"):
        assert per_image[name] * 2e12 == pytest.approx(figures["results"][name]["flops_per_step"], rel=0.05)


def test_shard_index_benchmark_measures_both_in_one_run(tmp_path):
    out = tmp_path / "index.json"
    assert shard_index_memory.main(["--samples", "3000", "--per-shard", "500", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["samples"] == 3000 and figures["new_mb_per_million"] > 0
    assert figures["old_mb_per_million"] > 5 * figures["new_mb_per_million"]  # the point of the arrays
