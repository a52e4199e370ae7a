"""benchmarks/toy_world.py --smoke: every stage of the toy world runs (the real trainer included).

Figures come from the default-size run; this keeps the pipeline working in CI: encoder -> ONNX ->
pack recognizer features -> shards -> the real trainer for each ablation -> exported checkpoints
-> generation -> judge scores, table, JSON and picture grid.
"""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "toy_world.py"


@pytest.mark.slow
def test_toy_world_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("toy_world_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--smoke", "--out", str(tmp_path)]) == 0

    result = json.loads((tmp_path / "toy_world.json").read_text())
    summary = result["summary"]
    expected_rows = {"oracle (real rendering)", "hard", "paper", "nomask", "hard + attn1 isolation",
                     "base model, no faces"}
    assert expected_rows <= set(summary)
    for row in expected_rows:
        assert sorted(summary[row], key=int) == ["1", "2", "3", "4", "5", "6"]
        for n, metrics in summary[row].items():
            mean, _ = metrics["similarity"]
            assert -1.0 <= mean <= 1.0
            if int(n) > 1:
                assert 0.0 <= metrics["mixing"][0] <= 1.0
                assert metrics["multisim"] is not None
            else:
                assert metrics["mixing"] is None and metrics["multisim"] is None
    # each ablation was trained by the real trainer and exported in the pack's format
    for variant in ("hard", "paper", "nomask"):
        checkpoint = tmp_path / "runs" / f"{variant}-s0" / "instantfamily.safetensors"
        assert checkpoint.is_file()
        options = json.loads((tmp_path / "runs" / f"{variant}-s0" / "train_options.json").read_text())
        assert options["mask_mode"] == ("paper" if variant == "paper" else "hard")
    # noise-prediction diagnostics: identity gain and where one person's features act
    for row in ("hard", "paper", "nomask", "hard + attn1 isolation"):
        (diagnostic,) = result["diagnostics"][row]  # one training seed in the smoke run
        assert diagnostic["own"] > 0, f"{row}: swapping a face changed nothing in its own region"
        assert diagnostic["other_faces"] >= 0 and diagnostic["background"] >= 0
        assert abs(diagnostic["identity_gain"]) < 1.0
    assert "| nomask |" in result["table_markdown"].split("identity gain")[1]
    assert (tmp_path / "toy_world.png").stat().st_size > 1000
    assert "| hard | 4 |" in result["table_markdown"]
