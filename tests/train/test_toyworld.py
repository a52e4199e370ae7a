"""The toy world's parts: identities, scenes, the encoder's ONNX contract, the toy base model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toyworld import base_model, world
from toyworld.crops import align_crop


def test_identities_are_deterministic_and_distinct():
    a, b = world.identity_params(17), world.identity_params(17)
    assert a == b
    others = [world.identity_params(i) for i in range(50)]
    assert len({(p.skin, p.hair) for p in others}) == 50


def test_split_pools_are_disjoint():
    split = world.split_identities(300, 50, 100)
    pools = [set(split.train), set(split.heldout), set(split.judge)]
    assert sum(map(len, pools)) == 450
    assert not (pools[0] & pools[1]) and not (pools[0] & pools[2]) and not (pools[1] & pools[2])


def test_same_identity_renders_differently_each_time():
    params = world.identity_params(3)
    rng = np.random.default_rng(0)
    first, second = (world.render_portrait(params, 64, rng) for _ in range(2))
    assert np.abs(first.image.astype(int) - second.image.astype(int)).mean() > 3  # identity != pixels


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 6, 7, 8])
def test_scene_geometry(count):
    rng = np.random.default_rng(count)
    scene = world.make_scene(list(range(10, 10 + count)), rng, size=32)
    assert scene.image.shape == (32, 32, 3) and scene.image.dtype == np.uint8
    assert [p.identity for p in scene.people] == list(range(10, 10 + count))
    assert scene.caption.startswith(world.COUNT_WORDS[min(count, 6) - 1])  # the toy vocabulary counts to six
    boxes = scene.face_boxes()
    assert ((boxes[:, 2:] - boxes[:, :2]) > 3).all()  # faces of several pixels
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    for person, centre in zip(scene.people, centres):
        eyes = person.keypoints[:2]
        assert (np.abs(eyes - centre) < (boxes[0, 2] - boxes[0, 0])).all()  # keypoints on the face
        assert person.body.shape == (18, 3) and person.body[0, 2] == 1  # nose present
    assert scene.background_mask.any() and not scene.background_mask.all()


def test_background_colour_follows_caption():
    from toyworld.evaluation import background_colour

    rng = np.random.default_rng(1)
    for colour in world.BACKGROUND_COLOURS:
        scene = world.make_scene([1, 2], rng, size=32, colour=colour, style="plain")
        assert colour in scene.caption
        assert background_colour(scene.image, scene.background_mask) == colour


def test_toy_encoder_onnx_through_the_pack_recognizer(tmp_path):
    """The exported graph is what OnePassRecognizer expects (global 512 + pre-flatten 512x7x7 map in one
    session), and computes the same function as the factorised training-time network."""
    from instantfamily_core.faces.recognizer import OnePassRecognizer
    from toyworld.encoder import ToyFaceNet, export_onnx, normalise

    torch.manual_seed(0)
    net = ToyFaceNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for module in net.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    path = export_onnx(net, tmp_path / "toy.onnx")
    assert path.stat().st_size < 2_000_000  # no 25088 x 512 initializer
    recognizer = OnePassRecognizer(str(path), providers=["CPUExecutionProvider"])
    assert recognizer.info.global_shape == (512,) and recognizer.info.local_shape == (512, 7, 7)
    rng = np.random.default_rng(0)
    portrait = world.render_portrait(world.identity_params(5), 48, rng)
    crops = align_crop(portrait.image, portrait.geometry.keypoints)[None]  # (1, 112, 112, 3)
    global_feature, local_feature = recognizer.features(crops)
    with torch.no_grad():
        expected_global, expected_map = net.eval().features(normalise(crops))
    assert np.allclose(global_feature, expected_global.numpy(), atol=1e-4)
    assert np.allclose(local_feature, expected_map.numpy(), atol=1e-4)


def test_toy_vae_is_the_scene():
    rng = np.random.default_rng(0)
    scene = world.make_scene([1, 2, 3], rng, size=32)
    big = np.kron(scene.image, np.ones((8, 8, 1), np.uint8))  # what the shards store
    pixels = torch.from_numpy(big).float().permute(2, 0, 1)[None] / 127.5 - 1
    vae = base_model.ToyVAE()
    latents = vae.encode(pixels).latent_dist.sample()  # (1, 4, 32, 32)
    assert latents.shape == (1, 4, 32, 32) and latents[:, 3].abs().max() == 0
    model_space = latents * vae.config.scaling_factor
    assert torch.allclose(
        model_space[0, :3], torch.from_numpy(scene.image).float().permute(2, 0, 1) / 127.5 - 1, atol=1e-5
    )
    image = base_model.latent_to_image(latents)
    assert np.abs(image[0].numpy() * 255 - scene.image).max() < 0.01
    assert torch.allclose(base_model.image_to_latent(image), latents, atol=1e-4)


def test_tokenizer_and_text_table():
    tokenizer = base_model.ToyTokenizer()
    ids = tokenizer(["two people on a red split background", ""]).input_ids
    assert ids.shape == (2, base_model.TEXT_TOKENS) and ids[1].sum() == 0
    with pytest.raises(ValueError, match="unknown words"):
        tokenizer(["a photo of a cat"])
    text = base_model.ToyTextEncoder.fresh(0)
    hidden = text(ids)[0]
    assert hidden.shape == (2, base_model.TEXT_TOKENS, base_model.TEXT_WIDTH)
    assert not torch.allclose(hidden[0], hidden[1])
    red = text.encode(["two people on a red split background"])
    blue = text.encode(["two people on a blue split background"])
    assert not torch.allclose(red, blue)


def test_toy_base_round_trip(tmp_path):
    base = base_model.new_toy_base(seed=3)
    path = base_model.save_toy_base(base, tmp_path / "toy_base.safetensors")
    loaded = base_model.load_toy_base(path)
    x, t, c = torch.randn(2, 4, 32, 32), torch.tensor([10, 500]), torch.randn(2, base_model.TEXT_TOKENS, 64)
    with torch.no_grad():
        expected = base.unet.half().float()(x, t, encoder_hidden_states=c).sample  # weights stored in fp16
        got = loaded.unet(x, t, encoder_hidden_states=c).sample
    assert torch.allclose(got, expected, atol=1e-4)
    assert torch.equal(loaded.text_encoder.tokens, base.text_encoder.tokens)


def test_full_image_masks_cover_everything_and_keep_slots():
    from instantfamily_core.masks import masks_from_boxes
    from toyworld.toy_training import full_image

    masks = masks_from_boxes(torch.tensor([[10.0, 10, 30, 30], [40, 10, 60, 30]]), (64, 64), 0.25)
    widened = full_image(masks)
    assert widened.masks.shape == masks.masks.shape and bool(widened.masks.all())
    assert torch.equal(widened.centres, masks.centres)
    assert full_image(None) is None


def test_pose_keypoint_of_a_scene_gives_back_its_face_boxes():
    """The demo's POSE_KEYPOINT: the Face Mask node reads exactly the ground-truth head boxes from it."""
    from instantfamily_core.pose import encode_pose_keypoint, parse_pose_keypoint

    scene = world.make_scene([1, 2, 3, 4, 5], np.random.default_rng(0), size=32)
    frame = parse_pose_keypoint(encode_pose_keypoint(scene.bodies(), 256, 256, world.face_landmarks(scene)))
    boxes = np.stack([person.face_box for person in frame.people])
    assert np.allclose(boxes, scene.face_boxes() / 32, atol=1e-6)
    assert all(person.face_source == "face_keypoints" for person in frame.people)


class _RandomFeatures:
    """Stands in for the toy encoder: fixed random features per call (these tests are about where
    features act, not what they mean)."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def features(self, image, keypoints):
        n = len(keypoints)
        return (
            self.rng.standard_normal((n, 32)).astype(np.float32),
            self.rng.standard_normal((n, 16, 3, 3)).astype(np.float32),
        )


def _random_toy_net(mask_mode: str = "hard"):
    from diffusers import ControlNetModel

    from instantfamily_core.config import InstantFamilyConfig
    from instantfamily_core.projector import Projector
    from train.net import InstantFamilyNet

    toy = base_model.new_toy_base(seed=1)
    config = InstantFamilyConfig(
        d_gf=32, d_lf=16, L=3, d_K=base_model.TEXT_WIDTH, projector_hidden=32, mask_mode=mask_mode
    )
    torch.manual_seed(0)
    controlnet = ControlNetModel.from_unet(toy.unet, conditioning_channels=3)
    return InstantFamilyNet(toy.unet, controlnet, Projector(config), config).eval(), toy


@pytest.fixture(scope="module")
def toy_cases():
    from toyworld import evaluation

    split = world.split_identities()
    return evaluation.make_cases(split.heldout, (2, 3), 2, seed=5)


def test_influence_locality_separates_hard_masks_from_no_masks(toy_cases):
    """Swapping one person's features: with hard masks the prediction changes mostly inside that
    person's head box; with whole-image regions ("no mask") every head changes as much."""
    from toyworld import evaluation

    net, toy = _random_toy_net()
    hard = [evaluation.case_example(c, net.config, _RandomFeatures(i)) for i, c in enumerate(toy_cases)]
    full = [
        evaluation.case_example(c, net.config, _RandomFeatures(i), full_masks=True) for i, c in enumerate(toy_cases)
    ]
    local = evaluation.influence_locality(net, toy, hard, toy_cases, timesteps=(500,))
    everywhere = evaluation.influence_locality(net, toy, full, toy_cases, timesteps=(500,))
    assert local["own"] > 0 and everywhere["own"] > 0
    assert local["other_faces"] < 0.5 * everywhere["other_faces"], (local, everywhere)
    assert everywhere["other_faces"] > 0.3, everywhere


def test_identity_gain_is_zero_when_faces_are_ignored(toy_cases):
    """With the face path cut (projector weights zeroed: every face becomes the same tokens),
    swapping identities cannot change anything -> gain 0; with distinct faces it does."""
    from toyworld import evaluation

    net, toy = _random_toy_net()
    examples = [evaluation.case_example(c, net.config, _RandomFeatures(i)) for i, c in enumerate(toy_cases)]
    assert evaluation.identity_gain(net, toy, examples, toy_cases, timesteps=(500,))["gain"] != 0.0
    with torch.no_grad():
        for p in net.projector.parameters():
            p.zero_()
    gain = evaluation.identity_gain(net, toy, examples, toy_cases, timesteps=(500,))["gain"]
    assert gain == pytest.approx(0.0, abs=1e-9)


def test_device_choice_says_what_to_do_without_a_gpu():
    from toyworld.build import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            resolve_device("cuda")


def test_pretrain_leaves_the_trained_unet_on_the_cpu():
    from toyworld.data import generate_scenes
    from toyworld.pretrain import pretrain

    toy = base_model.new_toy_base(width=32, seed=0)
    before = {k: v.clone() for k, v in toy.unet.state_dict().items()}
    bank = generate_scenes(4, list(range(100, 120)), seed=0)
    losses = pretrain(toy, bank, steps=2, batch_size=2, log_every=1, device="cpu")
    assert len(losses) == 2 and all(np.isfinite(losses))
    after = toy.unet.state_dict()
    assert all(v.device.type == "cpu" for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained


def test_score_counts_slot_accuracy_and_swaps_by_region(toy_cases):
    """Region n is slot n: a scene whose first two people stand in each other's place scores slot
    accuracy 1/3 and one swapped pair (the judge is replaced by fixed embeddings)."""
    from toyworld import evaluation

    case = next(c for c in toy_cases if len(c.identities) == 3)
    references = np.eye(3, 8)

    class FixedJudge:
        def embed(self, image, boxes):
            assert len(boxes) == 3
            return references[[1, 0, 2]]  # regions 0 and 1 show each other's person

    scores = evaluation.score(FixedJudge(), case.oracle, case, references)
    assert scores["slot_accuracy"] == pytest.approx(1 / 3) and scores["swaps"] == 1
    assert scores["mixing"] == pytest.approx(2 / 3)
    assert scores["multisim"] > 1.9  # Hungarian matching does not see the swap
