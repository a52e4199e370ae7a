"""Checkpoint folders without pickles, and options from TOML/YAML files plus CLI overrides."""

import random

import numpy as np
import pytest
import torch

from train import state as ckpt
from train.options import parse


def test_optimizer_and_rng_round_trip(tmp_path):
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW([{"params": [model.weight], "lr": 1e-3}, {"params": [model.bias], "lr": 1e-2}])
    for _ in range(2):
        model(torch.randn(5, 4)).square().mean().backward()
        optimizer.step()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    saved = ckpt.save_checkpoint_dir(
        tmp_path,
        7,
        weights=dict(model.named_parameters()),
        optimizer_state=optimizer.state_dict(),
        state={"batches": 9, "lr_scheduler": {}},
    )
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    loaded = ckpt.load_checkpoint_dir(saved)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])
    assert loaded["state"]["step"] == 7 and loaded["state"]["batches"] == 9
    fresh = torch.optim.AdamW([{"params": [model.weight], "lr": 5.0}, {"params": [model.bias], "lr": 5.0}])
    fresh.load_state_dict(loaded["optimizer"])
    for a, b in zip(fresh.state_dict()["state"].values(), optimizer.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert [g["lr"] for g in fresh.param_groups] == [1e-3, 1e-2]
    assert not any(p.suffix == ".pt" or p.suffix == ".pkl" for p in saved.iterdir())


def test_partial_checkpoints_are_ignored_and_only_the_last_k_kept(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint_dir(
            tmp_path,
            step,
            weights=dict(model.named_parameters()),
            optimizer_state=optimizer.state_dict(),
            state={"batches": step},
            keep=2,
        )
    (tmp_path / "step-00000005.tmp").mkdir()  # a save killed half way
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    assert ckpt.resolve_resume("latest", tmp_path).name == "step-00000004"
    ckpt.remove_partial(tmp_path)
    assert not (tmp_path / "step-00000005.tmp").exists()
    assert ckpt.resolve_resume("latest", tmp_path / "empty") is None
    with pytest.raises(ValueError, match="not a training checkpoint"):
        ckpt.resolve_resume(str(tmp_path), tmp_path)


@pytest.mark.parametrize("suffix", ["toml", "yaml"])
def test_config_file_then_cli_overrides(tmp_path, suffix):
    text = {
        "toml": 'max_steps = 50\ndata = ["a", "b"]\nmixed_precision = "bf16"\nrandom_crop = false\n',
        "yaml": "max_steps: 50\ndata: [a, b]\nmixed_precision: bf16\nrandom_crop: false\n",
    }[suffix]
    path = tmp_path / f"run.{suffix}"
    path.write_text(text)
    opts = parse(["--config", str(path), "--max-steps", "7", "--learning-rate", "3e-5"])
    assert (opts.max_steps, opts.data, opts.mixed_precision, opts.random_crop, opts.learning_rate) == (
        7,
        ["a", "b"],
        "bf16",
        False,
        3e-5,
    )
    path.write_text(text + ("lerning_rate = 1.0\n" if suffix == "toml" else "lerning_rate: 1.0\n"))
    with pytest.raises(ValueError, match="unknown options .*lerning_rate"):
        parse(["--config", str(path)])
    with pytest.raises(ValueError, match="mixed_precision"):
        parse(["--mixed-precision", "fp8"])


def test_shipped_example_config_parses():
    from train.models import CONFIG_ROOT

    opts = parse(["--config", str(CONFIG_ROOT / "example.toml")])
    assert opts.max_faces == 4 and opts.mask_margin == 0.25 and opts.resume == "latest"


def test_fast_defaults_and_example_config():
    from train.models import CONFIG_ROOT

    defaults = parse([])
    assert (defaults.gradient_checkpointing, defaults.tf32, defaults.channels_last, defaults.compile) == (
        False,
        True,
        True,
        False,
    )
    example = parse(["--config", str(CONFIG_ROOT / "example.toml")])
    assert not example.gradient_checkpointing and example.tf32 and example.channels_last


def test_tf32_switches_cuda_backends_only_on_cuda():
    from train.speed import configure_tf32

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        configure_tf32(True, cuda=False)
        assert not torch.backends.cuda.matmul.allow_tf32
        configure_tf32(True, cuda=True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        configure_tf32(False, cuda=True)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def test_method_options_take_their_defaults_from_the_config():
    """The options that become checkpoint settings have no defaults of their own: each IS the
    InstantFamilyConfig field's default, every same-named field is in the table, and the trainer
    writes each option into its field."""
    import dataclasses

    from instantfamily_core.config import InstantFamilyConfig, RecognizerInfo
    from train.options import CONFIG_FIELDS, TrainOptions
    from train.train import instantfamily_config

    option_fields = {f.name: f for f in dataclasses.fields(TrainOptions)}
    config_fields = {f.name: f for f in dataclasses.fields(InstantFamilyConfig)}
    unrelated = {"controlnet"}  # the option: a ControlNet to start from; the field: the exported ControlNet's shape
    shared = set(option_fields) & set(config_fields) - unrelated
    assert shared <= set(CONFIG_FIELDS), f"options shadowing config fields: {sorted(shared - set(CONFIG_FIELDS))}"
    for option, name in CONFIG_FIELDS.items():
        assert option_fields[option].default is config_fields[name].default, option

    changed = {"max_faces": 7, "mask_mode": "paper", "mask_margin": 0.4, "overlap": "nearest"}
    changed |= {"circle_radius_fraction": 0.3, "projector_hidden": 32}
    assert set(changed) == set(CONFIG_FIELDS)
    config = instantfamily_config(TrainOptions(**changed), RecognizerInfo(), d_K=32)
    assert {option: getattr(config, CONFIG_FIELDS[option]) for option in changed} == changed
