"""The benchmark command's reader, placement, scoring and outputs on a tiny MultiID-Bench-style set
whose "faces" are coloured squares drawn by the test, scored by a colour encoder defined here (the
real encoders are tested in test_face_encoders.py; generation through ComfyUI in
tests/nodes/test_benchmark_command.py)."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from instantfamily_core.evaluation import benchmark
from instantfamily_core.evaluation.bench_data import read_multiid
from instantfamily_core.evaluation.encoders import EncodedFace, FaceEncoder

COLOURS = {"R": (230, 20, 20), "G": (20, 230, 20), "B": (20, 20, 230)}


class ColourEncoder(FaceEncoder):
    """Faces = bright squares on black; embedding = the square's mean colour."""

    name = "colour-squares"

    def encode(self, image):
        labels, count = ndimage.label(np.asarray(image).sum(-1) > 60)
        faces = []
        for k, (ys, xs) in enumerate(ndimage.find_objects(labels), start=1):
            pixels = np.asarray(image)[labels == k].astype(np.float32)
            faces.append(EncodedFace(np.array([xs.start, ys.start, xs.stop, ys.stop], np.float32), pixels.mean(0)))
        return sorted(faces, key=lambda f: f.box[0])


def scene(people, width=120, height=60):
    """Squares of the given colours (None = nobody) at evenly spaced positions, left to right."""
    image = np.zeros((height, width, 3), np.uint8)
    step = width // len(people)
    for k, who in enumerate(people):
        if who is not None:
            x = k * step + step // 2
            image[20:36, x - 8 : x + 8] = COLOURS[who]
    return image


def write_sample(root, key, refs, ori, out, prompt="two people"):
    folder = root / key
    folder.mkdir()
    for k, who in enumerate(refs):
        Image.fromarray(scene([who], 40, 40)).save(folder / f"ref_{k + 1}.png")
    Image.fromarray(scene(ori)).save(folder / "ori.png")
    if out is not None:
        Image.fromarray(scene(out)).save(folder / "out.png")
    if prompt is not None:
        (folder / "meta.json").write_text(json.dumps({"prompt": prompt}))


@pytest.fixture
def bench_dir(tmp_path):
    root = tmp_path / "bench"
    root.mkdir()
    # ref_1 is G, ref_2 is R; in the ground truth R stands left: slot 0 (G) belongs on the right
    write_sample(root, "a_right", ["G", "R"], ["R", "G"], ["R", "G"])
    write_sample(root, "b_swapped", ["G", "R"], ["R", "G"], ["G", "R"])
    write_sample(root, "c_missing", ["G", "R"], ["R", "G"], ["R", None])
    write_sample(root, "d_single", ["B"], ["B"], ["B"], prompt="one person")
    write_sample(root, "e_no_meta", ["B"], ["B"], ["B"], prompt=None)
    return root


def test_reader_takes_every_complete_sample_and_reports_the_rest(bench_dir):
    bench = read_multiid(str(bench_dir))
    assert [s.key for s in bench.samples] == ["a_right", "b_swapped", "c_missing", "d_single"]
    assert [s.num_ids for s in bench.samples] == [2, 2, 2, 1]
    assert bench.skipped == [{"sample": "e_no_meta", "reason": "no meta.json"}]
    assert bench.samples[0].prompt == "two people" and bench.samples[0].labels == ["ref_1", "ref_2"]
    with pytest.raises(ValueError, match="no usable MultiID-Bench sample"):
        read_multiid(str(bench_dir / "e_no_meta"))


def test_people_are_placed_where_the_ground_truth_photo_has_them(bench_dir):
    bench = read_multiid(str(bench_dir))
    refs, targets, face_masks, bodies = benchmark.place(ColourEncoder(), bench.samples[0], (60, 120))
    assert bodies is None and targets.shape == (2, 3)
    # slot 0 is G, whom the ground truth shows on the right
    assert float(face_masks.centres[0, 0]) > 0.5 > float(face_masks.centres[1, 0])
    assert face_masks.masks.shape == (2, 60, 120)


def test_evaluate_only_scores_by_position_and_both_ways_of_the_field(bench_dir, tmp_path):
    out = tmp_path / "out"
    result = benchmark.run(read_multiid(str(bench_dir)), ColourEncoder(), str(out), evaluate_only=True, progress=False)
    by_key = {r["sample"]: r for r in result["samples"]}
    assert by_key["a_right"]["verdicts"] == ["ok", "ok"] and by_key["a_right"]["swaps"] == 0
    assert by_key["b_swapped"]["verdicts"] == ["swapped", "swapped"] and by_key["b_swapped"]["swaps"] == 1
    assert by_key["b_swapped"]["sim_ref"] == pytest.approx(1.0)  # Hungarian: the swap is invisible
    assert by_key["c_missing"]["verdicts"] == ["missing", "ok"] and not by_key["c_missing"]["count_ok"]
    two = result["summary"]["2"]
    assert two["samples"] == 3
    assert two["slot_accuracy"]["mean"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert two["swaps"]["mean"] == pytest.approx(1 / 3)
    assert two["missing_rate"]["mean"] == pytest.approx(1 / 6)
    assert two["count_accuracy"]["mean"] == pytest.approx(2 / 3)
    assert two["copy_paste (their way)"]["dropped"] == 1  # the sample with a missing face
    assert two["sim_ref (their way)"]["mean"] == pytest.approx(1.0)
    assert two["sim_ref (nothing dropped)"]["mean"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert result["summary"]["1"]["non_matched (their way)"]["n"] == 0  # one reference: no leakage figure
    assert result["settings"]["encoder"] == "colour-squares" and result["settings"]["skipped"] == 1
    md = (out / "benchmark.md").read_text()
    assert "colour-squares" in md and "| 2 | 3 |" in md
    assert Image.open(out / "grid.png").size[0] > 200

    # resumable: stored scores are reused, not recomputed
    stored = out / "samples" / "a_right" / "scores.json"
    record = json.loads(stored.read_text())
    record["slot_accuracy"] = 0.25
    stored.write_text(json.dumps(record))
    again = benchmark.run(read_multiid(str(bench_dir)), ColourEncoder(), str(out), evaluate_only=True, progress=False)
    assert again["summary"]["2"]["slot_accuracy"]["mean"] == pytest.approx((0.25 + 0 + 0.5) / 3)


def test_a_ground_truth_with_too_few_faces_skips_the_sample_with_its_reason(tmp_path):
    root = tmp_path / "bench"
    root.mkdir()
    write_sample(root, "short", ["G", "R"], ["R", None], ["R", "G"])
    write_sample(root, "fine", ["R"], ["R"], ["R"])
    result = benchmark.run(
        read_multiid(str(root)), ColourEncoder(), str(tmp_path / "out"), evaluate_only=True, progress=False
    )
    assert [r["sample"] for r in result["samples"]] == ["fine"]
    (skip,) = result["skipped"]
    assert skip["sample"] == "short"
    assert "shows 1 faces to the colour-squares encoder for 2 references" in skip["reason"]


def test_generation_needs_a_client_and_settings(bench_dir, tmp_path):
    with pytest.raises(ValueError, match="needs a ComfyUI client"):
        benchmark.run(read_multiid(str(bench_dir)), ColourEncoder(), str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="exactly one base model"):
        benchmark.GenerationSettings("x.safetensors")


def test_fastcomposer_layout_reads_the_manifest_and_places_people_side_by_side(tmp_path):
    from instantfamily_core.evaluation.bench_data import read_fastcomposer

    for who in ("R", "G"):
        (tmp_path / "refs" / who).mkdir(parents=True)
        Image.fromarray(scene([who], 40, 40)).save(tmp_path / "refs" / who / "0.png")
    manifest = {
        "instances": 2,
        "cases": [
            {"identities": ["R", "G"], "prompts": ["two people", "a painting"]},
            {"identities": ["G"], "prompts": ["one person"]},
        ],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    bench = read_fastcomposer(str(tmp_path / "manifest.json"), str(tmp_path / "refs"))
    assert [s.key for s in bench.samples][:2] == [
        "subject_0000_prompt_0000_instance_0000",
        "subject_0000_prompt_0000_instance_0001",
    ]
    assert len(bench.samples) == 6 and [s.seed_offset for s in bench.samples[:2]] == [0, 1]
    assert bench.samples[0].labels == ["R", "G"] and bench.samples[-1].num_ids == 1
    refs, targets, face_masks, bodies = benchmark.place(ColourEncoder(), bench.samples[0], (64, 128))
    assert targets is None and bodies.shape == (2, 18, 3)
    centres = face_masks.centres.numpy()
    assert centres[0, 0] < 0.5 < centres[1, 0]  # slot 0 on the left, slot 1 on the right
    nose = (bodies[:, 0, :2] * [128, 64]).astype(int)  # each region holds its person's nose
    assert all(face_masks.masks[k, y, x] == 1 for k, (x, y) in enumerate(nose))


def test_unusable_sets_and_unreachable_servers_say_what_to_do(tmp_path):
    from instantfamily_core.evaluation.comfy_client import ComfyClient

    root = tmp_path / "bench"
    root.mkdir()
    write_sample(root, "short", ["G", "R"], ["R", None], ["R", "G"])
    with pytest.raises(ValueError, match="no sample .* could be scored; the first reasons: short: .*shows 1 faces"):
        benchmark.run(
            read_multiid(str(root)), ColourEncoder(), str(tmp_path / "out"), evaluate_only=True, progress=False
        )
    with pytest.raises(RuntimeError, match="cannot reach ComfyUI at http://127.0.0.1:9 .*--server"):
        ComfyClient("http://127.0.0.1:9").queue({})
