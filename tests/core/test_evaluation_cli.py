"""The evaluation CLI on a small generated folder (real dlib recognizer, tiny CLIP for TextSim)."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from eval_fixtures import astronaut, build_tiny_clip, face_region, grace_hopper, group_photo, paste
from PIL import Image

from instantfamily_core.evaluation.fastcomposer import Manifest, evaluate_folder, summary_table

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def save(image, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path)


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory, dlib_encoder):
    """references/<id>/ photos, generated/ stand-ins, manifest.json: 2 cases x 2 prompts x 2 instances."""
    root = tmp_path_factory.mktemp("evalset")
    ast, gh, group = astronaut(), grace_hopper(), group_photo()
    r_ast = face_region(ast, dlib_encoder.encode(ast)[0].box)
    r_gh = face_region(gh, dlib_encoder.encode(gh)[0].box)
    r_stranger = face_region(group, dlib_encoder.encode(group)[3].box)
    save(ast, f"{root}/references/astronaut/00.png")
    save(gh, f"{root}/references/hopper/00.jpg")
    save(np.zeros((64, 64, 3), np.uint8), f"{root}/references/hopper/01.png")  # not the first: unused
    generated = {
        (0, 0, 0): paste([r_ast, r_gh]),  # right
        (0, 0, 1): paste([r_gh, r_ast]),  # right, other positions
        (0, 1, 0): paste([r_ast, r_stranger]),  # hopper's face is a stranger's
        (0, 1, 1): paste([r_ast]),  # hopper missing
        (1, 0, 0): paste([r_ast]),  # single ID, right
        (1, 0, 1): paste([r_stranger]),  # single ID, wrong
        (1, 1, 0): paste([r_gh, r_ast]),  # single ID among extra people
        (1, 1, 1): np.full((300, 300, 3), 200, np.uint8),  # no face at all
    }
    for (c, p, i), image in generated.items():
        ext = "png" if i else "jpg"
        save(image, f"{root}/generated/subject_{c:04d}_prompt_{p:04d}_instance_{i:04d}.{ext}")
    manifest = {
        "instances": 2,
        "seeds": [42, 43],
        "cases": [
            {
                "identities": ["astronaut", "hopper"],
                "prompts": ["a photo of a woman and a woman together", "a watercolor painting of two women"],
            },
            {"identities": ["astronaut"], "prompts": ["a photo of a woman", "a woman on the beach"]},
        ],
    }
    with open(f"{root}/manifest.json", "w") as f:
        json.dump(manifest, f)
    return root


@pytest.mark.slow
def test_cli_writes_the_report_files(eval_set, tmp_path):
    clip = build_tiny_clip(str(tmp_path / "clip"))
    out = tmp_path / "report"
    cmd = [
        sys.executable,
        "-m",
        "train.evaluate",
        "--manifest",
        f"{eval_set}/manifest.json",
        "--references",
        f"{eval_set}/references",
        "--generated",
        f"{eval_set}/generated",
        "--out",
        str(out),
        "--encoder",
        "dlib",
        "--clip",
        clip,
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MultiSim" in done.stdout and "wrote" in done.stdout
    assert "evaluating" in done.stderr and "8/8" in done.stderr  # the tqdm progress bar
    assert sorted(os.listdir(out)) == ["per_image.csv", "report.json", "summary.txt"]

    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["encoder"] == "dlib" and report["settings"]["text_sim"] is True
    rows = {(r["case"], r["prompt_index"], r["instance"]): r for r in report["images"]}
    assert len(rows) == 8
    right, swapped, wrong, missing = rows[0, 0, 0], rows[0, 0, 1], rows[0, 1, 0], rows[0, 1, 1]
    assert right["multi_sim"] > wrong["multi_sim"] > missing["multi_sim"]
    assert swapped["multi_sim"] == pytest.approx(right["multi_sim"], abs=0.02)
    assert right["num_missing"] == 0 and missing["num_missing"] == 1 and missing["matched"][1] == 0.0
    assert rows[1, 0, 0]["identity"] > 0.95 > rows[1, 0, 1]["identity"]
    assert rows[1, 0, 0]["multi_sim"] is None  # single ID: SingleSim only
    assert rows[1, 1, 0]["identity"] > 0.95 and rows[1, 1, 0]["num_faces"] == 2  # extra person ignored
    assert rows[1, 1, 1]["identity"] == 0.0 and rows[1, 1, 1]["num_faces"] == 0
    for r in rows.values():
        assert -1.0 <= r["text_sim"] <= 1.0
    summary = {s["num_ids"]: s for s in report["summary"]}
    assert set(summary) == {"1", "2", "all"}
    assert summary["2"]["images"] == 4 and summary["2"]["missing_face_rate"] == pytest.approx(1 / 8)
    expected = np.mean([rows[k]["multi_sim"] for k in rows if k[0] == 0])
    assert summary["2"]["multi_sim"]["mean"] == pytest.approx(expected)
    assert summary["1"]["multi_sim"]["n"] == 0
    confusion = report["case_confusion"][0]["confusion"]
    assert confusion[0][0] > 0.95 and confusion[1][1] > 0.9 and confusion[0][1] < 0.93

    with open(out / "per_image.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 8
    assert float(csv_rows[0]["multi_sim"]) == pytest.approx(right["multi_sim"])
    assert csv_rows[-1]["multi_sim"] == ""  # None -> empty cell
    table = (out / "summary.txt").read_text()
    assert table.splitlines()[1].split()[:3] == ["IDs", "images", "SingleSim/identity"]
    assert f"{summary['2']['multi_sim']['mean']:.3f} ±" in table


def test_missing_generated_images_fail_or_are_skipped(eval_set, dlib_encoder, tmp_path):
    manifest = Manifest.load(f"{eval_set}/manifest.json")
    manifest.instances = 3  # instance 2 was never generated
    with pytest.raises(ValueError, match="4 generated images are missing"):
        evaluate_folder(manifest, f"{eval_set}/references", f"{eval_set}/generated", dlib_encoder)
    report = evaluate_folder(
        manifest, f"{eval_set}/references", f"{eval_set}/generated", dlib_encoder, skip_missing=True
    )
    assert len(report.rows) == 8 and len(report.settings["missing_files"]) == 4
    assert "TextSim" in summary_table(report)


def test_bad_layouts_give_clear_errors(eval_set, dlib_encoder, tmp_path):
    with pytest.raises(ValueError, match="non-empty 'cases'"):
        Manifest.from_dict({"cases": []})
    with pytest.raises(ValueError, match="case 0 needs"):
        Manifest.from_dict({"cases": [{"identities": ["a"]}]})
    manifest = Manifest.from_dict({"cases": [{"identities": ["nobody"], "prompts": ["x"]}], "instances": 2})
    with pytest.raises(ValueError, match="reference identity 'nobody'"):
        evaluate_folder(manifest, f"{eval_set}/references", f"{eval_set}/generated", dlib_encoder)
    blank = tmp_path / "refs" / "blank"
    blank.mkdir(parents=True)
    Image.new("RGB", (120, 120), (128, 128, 128)).save(blank / "0.png")
    manifest = Manifest.from_dict({"cases": [{"identities": ["blank"], "prompts": ["x"]}], "instances": 2})
    with pytest.raises(ValueError, match="no face found in the reference image .*0.png"):
        evaluate_folder(manifest, str(tmp_path / "refs"), f"{eval_set}/generated", dlib_encoder)


def test_cli_without_clip_skips_textsim(eval_set, tmp_path):
    from train.evaluate import main

    args = [
        "--manifest",
        f"{eval_set}/manifest.json",
        "--references",
        f"{eval_set}/references",
        "--generated",
        f"{eval_set}/generated",
        "--no-progress",
        "--no-clamp",
    ]
    out = tmp_path / "r"
    assert main(args + ["--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["text_sim"] is False and report["settings"]["clamp"] is False
    assert all(r["text_sim"] is None for r in report["images"])
    rows = {(r["case"], r["prompt_index"], r["instance"]): r for r in report["images"]}
    summary = {s["num_ids"]: s for s in report["summary"]}
    # count accuracy: right, swapped, wrong have 2 faces; missing 1; single-ID rows 1, 1, 2 (extra), 0
    assert summary["2"]["count_accuracy"] == pytest.approx(3 / 4)
    assert summary["1"]["count_accuracy"] == pytest.approx(2 / 4)
    assert rows[1, 1, 1]["id_conf"] == 0.0 and rows[1, 0, 0]["id_conf"] == pytest.approx(100.0)  # one face
    assert 0.0 < rows[0, 0, 0]["id_conf"] < 100.0
    assert "count accuracy" in (out / "summary.txt").read_text()
    # "mean" uses every reference photo: hopper's folder also holds a blank image, named in the error
    with pytest.raises(ValueError, match="hopper/01.png"):
        main(args + ["--out", str(tmp_path / "r2"), "--reference-mode", "mean"])
