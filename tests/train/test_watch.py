"""Watching a run: images/s, gradient norm, loss per timestep bucket, held-out identity validation, wandb."""

import importlib.machinery
import io
import json
import math
import sys
import types
from pathlib import Path

import diffusers  # noqa: F401  (imported before the fake wandb below: diffusers probes for wandb at import)
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from train_fixtures import PACK, train_args

from train.options import parse
from train.run_log import LogWindow, bucket_edges, bucket_sums
from train.shards import ShardReader
from train.train import Trainer, train


def test_loss_per_timestep_bucket_matches_a_plain_loop():
    edges = bucket_edges(1000, 4)
    assert edges == [0, 250, 500, 750, 1000]
    timesteps = torch.tensor([0, 249, 250, 999, 998, 10])
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 6.0, 0.5])
    sums = bucket_sums(losses, timesteps, edges).numpy()
    expected = np.zeros(8)
    for loss, t in zip(losses.tolist(), timesteps.tolist()):
        expected[int(t) // 250] += loss
        expected[4 + int(t) // 250] += 1
    np.testing.assert_allclose(sums, expected)
    window = LogWindow(edges)
    window.add(2.0, 0.5, 8, 2.0, sums)
    scalars = window.scalars()
    assert scalars["train/images_per_s"] == 4.0 and scalars["loss_t/0000-0249"] == pytest.approx(3.5 / 3)
    assert scalars["loss_t/0750-0999"] == 5.0 and "loss_t/0500-0749" not in scalars  # no sample there


class FakeWandb(types.ModuleType):
    """Records what the trainer sends (wandb itself is optional and not installed for the tests)."""

    def __init__(self):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.inits, self.logged, self.finished = [], [], 0
        self.Image = lambda picture: ("image", np.asarray(picture).shape)

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        self.finished += 1


def test_run_logs_throughput_gradient_norm_and_buckets_to_jsonl_and_wandb(prepared, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = tmp_path / "watched"
    train(
        parse(
            train_args(
                prepared,
                run,
                "--max-steps",
                "4",
                "--log-every",
                "2",
                "--wandb-project",
                "if-test",
                "--max-grad-norm",
                "0",
                "--validate-every",
                "4",
                "--validation-steps",
                "1",
            )
        )
    )
    records = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["grad_norm"] > 0 and math.isfinite(r["grad_norm"]) and r["images_per_s"] > 0 for r in records)
    assert fake.inits[0]["project"] == "if-test" and fake.inits[0]["config"]["max_steps"] == 4 and fake.finished == 1
    dashboards = [values for step, values in fake.logged if "train/loss" in values]
    assert [step for step, values in fake.logged if "train/loss" in values] == [2, 4]
    for values in dashboards:
        buckets = [k for k in values if k.startswith("loss_t/")]
        assert buckets and all(math.isfinite(values[k]) for k in buckets)
        assert values["train/images_per_s"] > 0 and values["train/grad_norm"] > 0
    # the window mean of the logged per-step losses
    assert dashboards[0]["train/loss"] == pytest.approx((records[0]["loss"] + records[1]["loss"]) / 2)
    assert any("validation" in values and values["validation"][0] == "image" for _, values in fake.logged)


def test_wandb_asked_for_but_missing_is_a_clear_error(prepared, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(RuntimeError, match="pip install wandb"):
        Trainer(parse(train_args(prepared, tmp_path / "w", "--max-steps", "1", "--wandb-project", "p")))


def test_identity_score_of_a_photo_against_its_own_features(prepared, pack_root):
    """The validation score: the analyzer's faces in an image against the features it was conditioned on."""
    from train.manifest import find_shards
    from train.train import feature_shapes, instantfamily_config
    from train.validate import identity_scores, load_identity_encoder, summarise_scores

    shards, recognizer = find_shards([str(prepared)])
    reader = ShardReader(shards)
    opts = parse(train_args(prepared, Path("unused")))
    config = instantfamily_config(opts, feature_shapes(reader, recognizer), 32)
    encoder = load_identity_encoder(pack_root, "", config)  # the pack named in the manifest
    key, members = reader.read(0)
    source = json.loads(members["meta.json"])["source"]
    features = np.load(io.BytesIO(members["faces.npz"]))["global_features"]
    photo = np.asarray(Image.open(source).convert("RGB"))
    own = identity_scores(encoder, photo, features)
    assert own.num_missing == 0 and own.identity > 0.99
    blank = identity_scores(encoder, np.full_like(photo, 30), features)
    assert blank.num_missing == len(features) and blank.identity == 0.0
    summary = summarise_scores([own, blank])
    assert summary["identity"] == pytest.approx(own.identity / 2) and summary["missing_faces"] == 0.5
    assert summary["scored"] == 2 and (summary["multi_sim"] is None) == (len(features) < 2)


def test_held_out_validation_scores_identity_with_the_ema_weights(prepared, pack_root, tmp_path, monkeypatch):
    import train.validate as validate

    shards = sorted(str(p) for p in Path(prepared).glob("*.tar"))
    run = tmp_path / "held_out"
    trainer = Trainer(
        parse(
            train_args(
                shards[0],
                run,
                "--max-steps",
                "2",
                "--validate-every",
                "2",
                "--validation-steps",
                "1",
                "--validation-samples",
                "2",
                "--validation-data",
                shards[1],
                "--ema-decay",
                "0.5",
                "--validation-insightface-root",
                pack_root,
                "--validation-pack",
                PACK,
            )
        )
    )
    seen = []
    original = validate.sample

    def recording_sample(net, *args, **kwargs):
        seen.append(net.controlnet.controlnet_mid_block.weight.detach().clone())
        return original(net, *args, **kwargs)

    monkeypatch.setattr(validate, "sample", recording_sample)
    trainer.run()
    record = json.loads((run / "validation.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 2 and record["held_out"] and record["ema"] and record["samples"] == 2
    assert record["scored"] == 2 and 0.0 <= record["identity"] <= 1.0 and 0.0 <= record["missing_faces"] <= 1.0
    ema = trainer.ema.shadow["controlnet.controlnet_mid_block.weight"]
    raw = load_file(str(run / "checkpoints" / "step-00000002" / "trainable.safetensors"))
    raw_weight = raw["controlnet.controlnet_mid_block.weight"]
    assert all(torch.equal(w, ema) for w in seen) and not torch.equal(ema, raw_weight)
    net = trainer.accelerator.unwrap_model(trainer.net)  # the raw weights are back after validation
    assert torch.equal(net.controlnet.controlnet_mid_block.weight.detach(), raw_weight)


def test_validation_data_must_be_held_out(tmp_path):
    with pytest.raises(ValueError, match="also training data"):
        parse(["--data", "a", "b", "--validation-data", "b"])


def test_tensorboard_gets_the_same_scalars_and_images(tmp_path, monkeypatch):
    """TensorBoard is optional too (not installed for the tests): a recording SummaryWriter stands in."""
    from train.run_log import RunLog

    calls = []

    class Writer:
        def __init__(self, folder):
            calls.append(("init", folder))

        def add_scalar(self, name, value, step):
            calls.append(("scalar", name, value, step))

        def add_image(self, name, image, step, dataformats):
            calls.append(("image", name, image.shape, step, dataformats))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    log = RunLog(tmp_path, enabled=True, tensorboard=True)
    log.scalars(3, {"train/loss": 0.5, "loss_t/0000-0249": 0.7})
    log.image(3, "validation", Image.new("RGB", (6, 4)))
    log.close()
    assert calls == [
        ("init", str(tmp_path / "logs")),
        ("scalar", "train/loss", 0.5, 3),
        ("scalar", "loss_t/0000-0249", 0.7, 3),
        ("image", "validation", (4, 6, 3), 3, "HWC"),
        ("close",),
    ]
    silent = RunLog(tmp_path / "rank1", enabled=False, tensorboard=True)  # other ranks write nothing
    silent.scalars(1, {"train/loss": 1.0})
    assert len(calls) == 5 and not (tmp_path / "rank1").exists()
