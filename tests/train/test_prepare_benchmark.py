"""benchmarks/prepare_throughput.py runs the real pipeline at tiny size and reports every stage's rate."""

import json

from train_fixtures import PACK

from benchmarks import prepare_throughput as module


def test_prepare_benchmark_reports_each_stage(tmp_path, pack_root, prepare_models):
    dwpose, captioner = prepare_models["dwpose"], prepare_models["captioner"]
    out = tmp_path / "figures.json"
    assert (
        module.main(
            [
                "--insightface-root",
                pack_root,
                "--pack",
                PACK,
                "--provider",
                "CPU",
                "--dwpose",
                dwpose,
                "--captioner",
                str(captioner),
                "--pretrained",
                "",
                "--model-config",
                "tiny",
                "--resolution",
                "64",
                "--images",
                "4",
                "--batch-size",
                "2",
                "--json",
                str(out),
                "--",
                "--caption-max-tokens",
                "4",
            ]
        )
        == 0
    )
    figures = json.loads(out.read_text())
    assert figures["images"] == 4 and figures["samples"] == 4
    assert set(figures["stages"]) == {"decode", "detect", "pose", "recognize", "caption", "latents", "write"}
    assert all(row["per_s"] > 0 for row in figures["stages"].values())
