"""benchmarks/toy_world.py --smoke: every stage of the toy world runs (the real trainer included).

Figures come from the default-size run; this keeps the pipeline working in CI: encoder -> ONNX ->
pack recognizer features -> shards -> the real trainer for each ablation -> exported checkpoints
-> generation -> judge scores, table, JSON and picture grid.
"""

import json

import numpy as np
import pytest

from benchmarks import toy_world


def _records(mixing_per_case, seeds=(0,), counts=(2, 3, 4, 5, 6)):
    """Per-case records with a given mixing rate per case index (similarity 0.5 everywhere)."""
    return [
        {"seed": s, "n": n, "case": i, "similarity": 0.5, "multisim": 1.0, "mixing": m, "background_ok": 1.0}
        for s in seeds
        for n in counts
        for i, m in enumerate(mixing_per_case)
    ]


def test_bootstrap_draw_picks_the_same_cases_in_every_row():
    rows = {"hard": _records([0.0] * 5, seeds=(0, 1)), "nomask": _records([1.0] * 5)}
    drawn = toy_world.resample_cases(rows, np.random.default_rng(3))
    for n in (2, 6):
        hard = [r["case"] for r in drawn["hard"] if r["n"] == n and r["seed"] == 0]
        assert hard == [r["case"] for r in drawn["hard"] if r["n"] == n and r["seed"] == 1]
        assert hard == [r["case"] for r in drawn["nomask"] if r["n"] == n]
        assert len(hard) == 5 and len(set(hard)) < 5  # drawn with replacement (this seed repeats a case)


def test_target_verdicts_follow_the_bootstrap_interval():
    nomask = _records([0.8] * 8)
    clear = {"hard": _records([0.1, 0.2, 0.1, 0.3, 0.2, 0.1, 0.2, 0.2]), "nomask": nomask}
    summary = {row: toy_world.summarise(records) for row, records in clear.items()}
    check = toy_world.target_checks(summary, {}, clear)["mixing hard / nomask"]
    assert check["value"] == pytest.approx(0.175 / 0.8)
    assert check["interval"][0] <= check["value"] <= check["interval"][1] < 0.5
    assert check["verdict"] == "met"

    noisy = {"hard": _records([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.2]), "nomask": nomask}
    summary = {row: toy_world.summarise(records) for row, records in noisy.items()}
    check = toy_world.target_checks(summary, {}, noisy)["mixing hard / nomask"]
    assert check["interval"][0] < 0.5 < check["interval"][1]
    assert check["verdict"] == "undecided at this sample size"
    assert toy_world.verdict((0.6, 0.9), "<=", 0.5) == "not met"
    assert toy_world.verdict((0.6, 0.85), ">=", 0.9) == "not met"
    assert toy_world.verdict((0.95, 1.3), ">=", 0.9) == "met"
    assert toy_world.verdict(None, ">=", 0.9) == "-"


@pytest.mark.slow
def test_toy_world_smoke(tmp_path):
    assert toy_world.main(["--smoke", "--out", str(tmp_path)]) == 0

    result = json.loads((tmp_path / "toy_world.json").read_text())
    summary = result["summary"]
    expected_rows = {
        "oracle (real rendering)",
        "hard",
        "paper",
        "nomask",
        "hard + attn1 isolation",
        "base model, no faces",
    }
    assert expected_rows <= set(summary)
    for row in expected_rows:
        assert sorted(summary[row], key=int) == ["1", "2", "3", "4", "5", "6", "7", "8"]  # trained with <= 4
        for n, metrics in summary[row].items():
            mean, _ = metrics["similarity"]
            assert -1.0 <= mean <= 1.0
            if int(n) > 1:
                assert 0.0 <= metrics["mixing"][0] <= 1.0
                assert metrics["multisim"] is not None
                # region n judged as slot n: accurate exactly where not mixed; a swap is two mixed regions
                assert metrics["slot_accuracy"][0] == pytest.approx(1.0 - metrics["mixing"][0])
                assert 0.0 <= metrics["swaps"][0] <= int(n) // 2
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
    mixing = result["checks"]["mixing hard / nomask"]
    assert mixing["target"] == "<= 0.5" and mixing["verdict"] in (
        "met",
        "not met",
        "undecided at this sample size",
        "-",
    )
