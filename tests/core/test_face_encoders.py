"""Face encoders on real photos from installed packages (real dlib weights from PyPI), TextSim on a tiny CLIP."""

import json

import numpy as np
import pytest
from eval_fixtures import astronaut, build_tiny_clip, face_region, grace_hopper, group_photo, paste
from PIL import Image

from instantfamily_core.evaluation.encoders import (
    FACENET_WEIGHTS,
    DlibEncoder,
    FacenetEncoder,
    TextSimilarity,
    make_encoder,
)
from instantfamily_core.evaluation.metrics import score_identities, single_sim


@pytest.fixture(scope="module")
def dlib_encoder():
    return DlibEncoder()


@pytest.fixture(scope="module")
def photos(dlib_encoder):
    ast, gh, group = astronaut(), grace_hopper(), group_photo()
    faces = {name: dlib_encoder.encode(img) for name, img in (("ast", ast), ("gh", gh), ("group", group))}
    return {"ast": ast, "gh": gh, "group": group, "faces": faces}


def test_detects_one_face_per_portrait_and_six_in_the_group_left_to_right(photos):
    assert len(photos["faces"]["ast"]) == 1  # the flag patch the upsampled HOG also fires on is filtered out
    assert len(photos["faces"]["gh"]) == 1
    group = photos["faces"]["group"]
    assert len(group) == 6
    centres = [float(f.box[0] + f.box[2]) / 2 for f in group]
    assert centres == sorted(centres)
    for f in group:
        assert f.embedding.shape == (128,) and f.embedding.dtype == np.float32


def test_same_person_scores_higher_than_different_people(dlib_encoder, photos):
    ast = photos["ast"]
    ref = photos["faces"]["ast"][0].embedding
    variants = {
        "flipped": ast[:, ::-1],
        "rescaled": np.asarray(Image.fromarray(ast).resize((320, 320), Image.BICUBIC)),
        "rotated": np.asarray(Image.fromarray(ast).rotate(8, resample=Image.BICUBIC)),
    }
    same = {k: single_sim(ref, dlib_encoder.reference_embedding(v)) for k, v in variants.items()}
    others = [photos["faces"]["gh"][0].embedding] + [f.embedding for f in photos["faces"]["group"]]
    different = [single_sim(ref, o) for o in others]
    assert min(same.values()) > 0.95, same
    assert max(different) < 0.93, different
    assert min(same.values()) - max(different) > 0.05
    # the six people of the group photo are all told apart from each other as well
    group = [f.embedding for f in photos["faces"]["group"]]
    pairwise = [single_sim(a, b) for i, a in enumerate(group) for b in group[i + 1 :]]
    assert max(pairwise) < min(same.values()) - 0.05


def test_pasted_reference_faces_score_high_and_a_wrong_face_scores_low(dlib_encoder, photos):
    ast_face, gh_face = photos["faces"]["ast"][0], photos["faces"]["gh"][0]
    stranger = photos["faces"]["group"][3]
    refs = np.stack([ast_face.embedding, gh_face.embedding])
    r_ast = face_region(photos["ast"], ast_face.box)
    r_gh = face_region(photos["gh"], gh_face.box)
    r_stranger = face_region(photos["group"], stranger.box)

    right = score_identities(refs, [f.embedding for f in dlib_encoder.encode(paste([r_ast, r_gh]))])
    swapped = score_identities(refs, [f.embedding for f in dlib_encoder.encode(paste([r_gh, r_ast]))])
    wrong = score_identities(refs, [f.embedding for f in dlib_encoder.encode(paste([r_ast, r_stranger]))])
    twice = score_identities(refs, [f.embedding for f in dlib_encoder.encode(paste([r_ast, r_ast]))])
    alone = score_identities(refs, [f.embedding for f in dlib_encoder.encode(paste([r_ast]))])

    assert right.num_missing == 0 and right.matched.min() > 0.95
    assert swapped.multi_sim == pytest.approx(right.multi_sim, abs=0.02)  # position does not matter
    assert wrong.matched[0] > 0.95 and wrong.matched[1] < 0.93  # Grace Hopper's slot holds a stranger
    assert wrong.multi_sim < right.multi_sim - 0.04
    assert twice.mixing > 0.95 and twice.multi_sim < wrong.multi_sim  # one face twice = total mixing
    assert alone.num_missing == 1 and alone.matched[1] == 0.0 and alone.multi_sim < 0.55
    # the confusion matrix: diagonal high, off-diagonal at the different-people level
    assert np.diag(right.confusion).min() > 0.95
    assert right.confusion[0, 1] < 0.93 and right.confusion[1, 0] < 0.93


def test_embed_crop_of_a_tight_face_crop_matches_the_photo(dlib_encoder, photos):
    face = photos["faces"]["ast"][0]
    x1, y1, x2, y2 = face.box.astype(int)
    crop = np.asarray(Image.fromarray(photos["ast"][y1:y2, x1:x2]).resize((112, 112), Image.BICUBIC))
    e = dlib_encoder.embed_crop(crop)
    assert single_sim(face.embedding, e) > 0.95
    assert single_sim(photos["faces"]["gh"][0].embedding, e) < 0.93
    with pytest.raises(ValueError, match="no face found in the reference image"):
        dlib_encoder.reference_embedding(np.full((200, 200, 3), 128, np.uint8))


def _recording(detect, seen: list):
    """``detect`` that first records the image it is given."""

    def record(image, *args, **kwargs):
        seen.append(np.array(image))
        return detect(image, *args, **kwargs)

    return record


def test_the_evaluator_and_the_analyzer_see_the_same_pixels(dlib_encoder, tiny_analyzer, monkeypatch):
    """One normaliser (instantfamily_core.images.to_rgb_uint8): same rounding, same alpha rule for every reader."""
    from instantfamily_core.faces import FaceAnalyzer
    from instantfamily_core.images import ALPHA_BACKGROUND

    rng = np.random.default_rng(0)
    halves = (rng.integers(0, 255, (80, 96, 3)) + 0.5) / 255.0  # on the rounding boundary
    floats = halves.astype(np.float32)
    rgba = np.concatenate([rng.integers(0, 256, (80, 96, 3)), rng.integers(0, 256, (80, 96, 1))], -1).astype(np.uint8)
    rgba[0, 0, 3] = 0  # one fully transparent pixel
    analyzer_seen, dlib_seen = [], []
    detector = tiny_analyzer.detector
    monkeypatch.setattr(detector, "detect", _recording(detector.detect, analyzer_seen))
    analyzer = FaceAnalyzer(detector, tiny_analyzer.recognizer, det_size=640)
    monkeypatch.setattr(dlib_encoder, "_detect", _recording(dlib_encoder._detect, dlib_seen))
    for image in (floats, rgba):
        analyzer_seen.clear()
        analyzer.detect(image, retry=False)
        by_analyzer = analyzer_seen[0][:, :, ::-1]  # the detector gets BGR
        analyzer_seen.clear()
        make_encoder("insightface", analyzer=analyzer).encode(image)
        by_insightface_encoder = analyzer_seen[0][:, :, ::-1]
        dlib_seen.clear()
        dlib_encoder.encode(image)
        assert by_analyzer.dtype == np.uint8 and by_analyzer.shape == (80, 96, 3)
        assert np.array_equal(by_insightface_encoder, by_analyzer)
        assert np.array_equal(dlib_seen[0], by_analyzer)
    assert by_analyzer[0, 0].tolist() == [ALPHA_BACKGROUND] * 3  # RGBA is composited, not dropped


def test_missing_weights_and_unknown_encoder_messages(tmp_path):
    with pytest.raises(RuntimeError, match="shape_predictor_5_face_landmarks.dat"):
        DlibEncoder(models_dir=str(tmp_path))
    with pytest.raises(ValueError, match="choose one of"):
        make_encoder("vgg")
    with pytest.raises(ValueError, match="Load Face Analyzer"):
        make_encoder("insightface", analyzer=None)
    with pytest.raises(RuntimeError, match="facenet"):
        FacenetEncoder(str(tmp_path / FACENET_WEIGHTS))
    with pytest.raises(RuntimeError, match="clip-vit-large-patch14"):
        TextSimilarity(str(tmp_path / "clip"))


# -- FaceNet: facenet-pytorch (installed with --no-deps) + weights from a local safetensors file --------
@pytest.fixture(scope="module")
def facenet_weights(tmp_path_factory):
    facenet_pytorch = pytest.importorskip("facenet_pytorch", reason="optional: pip install facenet-pytorch --no-deps")
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = facenet_pytorch.InceptionResnetV1(pretrained=None, classify=False).eval()
    path = tmp_path_factory.mktemp("facenet") / FACENET_WEIGHTS
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["logits.weight"] = torch.zeros(3, 512)  # the released file carries a classifier head: ignored
    save_file(state, str(path))
    return str(path), model


@pytest.mark.slow
def test_facenet_encoder_detects_with_mtcnn_and_embeds_with_the_given_weights(facenet_weights, photos):
    import torch

    path, model = facenet_weights
    enc = FacenetEncoder(path)
    faces = enc.encode(photos["ast"])
    assert len(faces) == 1
    (x1, _, x2, _), dlib_box = faces[0].box, photos["faces"]["ast"][0].box
    assert abs((x1 + x2) / 2 - (dlib_box[0] + dlib_box[2]) / 2) < 25  # the same face as dlib's
    assert faces[0].embedding.shape == (512,)
    assert np.linalg.norm(faces[0].embedding) == pytest.approx(1.0, abs=1e-4)
    # the weights really are the file's: the same crop through the reference model gives the same vector
    crop = np.full((160, 160, 3), 100, np.uint8)
    x = torch.from_numpy((crop.astype(np.float32) - 127.5) / 128.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = model(x)[0].numpy()
    np.testing.assert_allclose(enc.embed_crop(crop), expected, atol=1e-5)


def test_facenet_refuses_pickles(tmp_path):
    pytest.importorskip("facenet_pytorch", reason="optional: pip install facenet-pytorch --no-deps")
    pt = tmp_path / "20180402-114759-vggface2.pt"
    pt.write_bytes(b"not loaded")
    with pytest.raises(RuntimeError, match="only .safetensors"):
        FacenetEncoder(str(pt))


# -- TextSim on a tiny CLIP saved to a local folder ------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return build_tiny_clip(str(tmp_path_factory.mktemp("clip")))


def test_text_similarity_is_the_cosine_of_clips_embeddings(tiny_clip_dir):
    import torch

    ts = TextSimilarity(tiny_clip_dir)
    image = astronaut()
    long_prompt = "a photo of a woman in a space suit " * 20  # longer than CLIP's 77 tokens: truncated
    scores = ts.score_batch([image, image], ["a photo of a woman", long_prompt])
    assert scores.shape == (2,) and np.all(np.abs(scores) <= 1.0 + 1e-6)
    assert scores[0] != pytest.approx(scores[1])
    inputs = ts.processor(text=["a photo of a woman"], images=[Image.fromarray(image)], return_tensors="pt")
    with torch.no_grad():
        out = ts.model(**inputs)
    expected = torch.nn.functional.cosine_similarity(out.text_embeds, out.image_embeds).item()
    assert ts.score(image, "a photo of a woman") == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        ts.score_batch([image, image], ["x"])


def test_text_similarity_refuses_folders_without_safetensors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(RuntimeError, match="no .safetensors"):
        TextSimilarity(str(tmp_path))


# -- the pack's own analyzer (tiny ONNX detector + recognizer built by the face-analysis fixtures) --------
def test_insightface_encoder_returns_the_analyzers_global_features(tmp_path):
    from instantfamily_core.faces import load_face_analyzer
    from instantfamily_dev.face_fixtures import build_tiny_pack, disc_image

    build_tiny_pack(str(tmp_path), "tinypack")
    analyzer = load_face_analyzer([str(tmp_path)], pack="tinypack", provider="CPU")
    enc = make_encoder("insightface", analyzer=analyzer)
    image = disc_image(centres=((480, 320), (160, 320)))
    faces = enc.encode(image)
    detected = analyzer.analyze(image)
    assert len(faces) == len(detected) == 2
    assert faces[0].box[0] < faces[1].box[0]  # left to right
    by_x = sorted(detected, key=lambda f: f.box[0])
    for f, d in zip(faces, by_x):
        np.testing.assert_array_equal(f.embedding, d.global_feature)
        # an aligned crop re-embedded gives the same global feature
        np.testing.assert_allclose(enc.embed_crop(d.crop), d.global_feature, rtol=1e-4, atol=1e-4)
