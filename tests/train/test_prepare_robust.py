"""MultiID-2M-style input (faces from reference photos, positions from the group photo), and
failures that are counted per sample instead of stopping a shard."""

import json

import numpy as np
from PIL import Image
from train_fixtures import PACK, face_fixtures, image_bytes, prepare_args, write_photo_folder, write_tar

from train.manifest import find_shards
from train.prepare import main
from train.sample_format import decode_faces
from train.shards import ShardReader


def write_multiid(root):
    """train tar (group photos + json labels + a pickled .npy that must never be read) and ref/<name>/."""
    crop = [10, 0, 650, 640]  # labels are in the uncropped photo's pixels

    def label(cx, cy):
        return [cx - 60 + crop[0], cy - 60, cx + 60 + crop[0], cy + 60]

    group = {
        "jpg": image_bytes(((160, 320), (480, 320)), "JPEG"),
        "npy": b"\x93NUMPY pickled, never read",
        "json": json.dumps(
            {
                "name": ["alice", "bob", "none"],
                "crop": crop,
                "caption_en": "two friends",
                "bboxes": [label(160, 320), label(480, 320), label(320, 96)],
            }
        ).encode(),
    }
    stranger = {
        "jpg": image_bytes(((320, 320),), "JPEG"),
        "json": json.dumps({"name": ["dave"], "bboxes": [label(320, 320)], "caption_en": "x"}).encode(),
    }
    write_tar(root / "re_000000.tar", {"g0": group, "g1": stranger})
    refs = root / "ref"
    (refs / "alice").mkdir(parents=True)
    (refs / "bob").mkdir()
    fixtures = face_fixtures
    Image.fromarray(fixtures.disc_image(centres=((96, 96), (320, 320)))).save(refs / "alice" / "0001.png")
    (refs / "alice" / "0001.json").write_text(json.dumps({"bboxes": [[260, 260, 380, 380]]}))
    Image.fromarray(fixtures.disc_image(centres=((256, 224),))).save(refs / "bob" / "0001.png")
    return root / "re_000000.tar", refs


def test_multiid_faces_come_from_references_and_positions_from_the_group(tmp_path, pack_root):
    from instantfamily_core.faces import load_face_analyzer

    tar, refs = write_multiid(tmp_path)
    output = tmp_path / "out"
    assert main(prepare_args([tar], output, pack_root, PACK, "--references", str(refs), "--allow-missing-pose")) == 0
    totals = json.loads((output / "manifest.json").read_text())["totals"]
    assert totals["samples"] == 1 and totals["skipped"] == {"no_reference": 1}
    reader = ShardReader(find_shards([str(output)])[0])
    _, members = reader.read(0)
    faces = decode_faces(members["faces.npz"])
    meta = json.loads(members["meta.json"])
    assert members["txt"].decode() == "two friends" and sorted(meta["references"]) == ["alice", "bob"]
    centres = (faces["boxes"][:, :2] + faces["boxes"][:, 2:]) / 2
    np.testing.assert_allclose(centres, [[160, 320], [480, 320]], atol=2)  # where they stand in the group photo
    analyzer = load_face_analyzer(pack_root, PACK, provider="CPU")
    alice = [
        f
        for f in analyzer.analyze(np.asarray(Image.open(refs / "alice" / "0001.png").convert("RGB")))
        if abs(f.box[0] + f.box[2] - 640) < 8
    ]  # the labelled face of the reference, not the other one
    bob = analyzer.analyze(np.asarray(Image.open(refs / "bob" / "0001.png").convert("RGB")))
    expected = np.stack([alice[0].global_feature, bob[0].global_feature])
    np.testing.assert_allclose(faces["global_features"], expected, rtol=2e-3, atol=2e-3)
    group = analyzer.analyze(np.asarray(Image.open(__import__("io").BytesIO(members["jpg"])).convert("RGB")))
    assert not np.allclose(faces["global_features"][0], group[0].global_feature, atol=1e-2)  # not the group crop


class Exploding:
    """A pose estimator that fails on images with many bright pixels (stands for any per-image crash)."""

    def __call__(self, rgb, boxes=None):
        if (rgb > 150).mean() > 0.01:
            raise RuntimeError("onnxruntime: out of memory")
        from instantfamily_core.dwpose import WholeBody

        return WholeBody(np.zeros((0, 134, 3), np.float32), rgb.shape[1], rgb.shape[0])


def test_a_failing_sample_is_counted_and_the_shard_finishes(tmp_path, pack_root, monkeypatch):
    import train.prepare as prepare

    photos = write_photo_folder(tmp_path / "p", names=("a_two", "d_five", "c_one"))
    Image.fromarray(np.zeros((100, 300, 3), np.uint8)).save(photos / "small.png")
    original = prepare.PoseSource.__init__
    monkeypatch.setattr(
        prepare.PoseSource,
        "__init__",
        lambda self, estimator=None, allow_missing=False, **kw: original(self, Exploding(), allow_missing, **kw),
    )
    output = tmp_path / "out"
    assert main(prepare_args([photos], output, pack_root, PACK, "--min-side", "200", "--shard-size", "10")) == 0
    totals = json.loads((output / "manifest.json").read_text())["totals"]
    assert totals["skipped"] == {"error": 1, "too_small": 1} and totals["samples"] == 2
    assert totals["calls"]["detect"] == 3  # the small image never reached the detector


def test_face_less_images_cost_one_detector_pass(pack_root):
    from instantfamily_core.faces import load_face_analyzer

    analyzer = load_face_analyzer(pack_root, PACK, provider="CPU")
    calls = []
    detect = analyzer.detector.detect
    analyzer.detector.detect = lambda *a, **k: calls.append(1) or detect(*a, **k)
    empty = np.full((640, 640, 3), 30, np.uint8)
    assert len(analyzer.detect(empty, retry=False)[0]) == 0 and len(calls) == 1
    calls.clear()
    assert len(analyzer.detect(empty)[0]) == 0 and len(calls) == 8  # the node's retries, for bulk data: off
    with_face = face_fixtures.disc_image(centres=((320, 320),))
    boxes, keypoints, scores = analyzer.detect(with_face, retry=False)
    faces = analyzer.recognize(with_face, boxes, keypoints, scores)
    np.testing.assert_allclose(faces[0].global_feature, analyzer.analyze(with_face)[0].global_feature, rtol=1e-5)
