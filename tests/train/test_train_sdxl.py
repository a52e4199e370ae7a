"""SDXL through the trainer on CPU with the tiny SDXL config: the pooled text and size conditioning
reach UNet and ControlNet, a few steps train, and the export is an SDXL checkpoint that runs what was trained."""

import pytest
import torch
from train_fixtures import train_args

from instantfamily_core.checkpoint import load_checkpoint
from train.export import export, net_from_export
from train.models import load_base
from train.net import FaceInputs, default_time_ids
from train.options import parse
from train.train import Trainer


@pytest.fixture(scope="module")
def sdxl_run(prepared, tmp_path_factory):
    """A 2-step tiny SDXL run (UNet K/V trained too) and its exported file."""
    run = tmp_path_factory.mktemp("sdxl") / "run"
    args = train_args(prepared, run, "--model-config", "tiny_sdxl", "--max-steps", "2", "--checkpoint-every", "2")
    options = ["--train-unet-kv", "true", "--text-dropout", "0", "--validation-steps", "2", "--validation-samples", "1"]
    trainer = Trainer(parse([*args, *options]))
    losses = trainer.run()
    exported = export(run / "checkpoints" / "latest", run.parent / "raw.safetensors")  # float32: exact comparison
    return trainer, losses, exported


def test_sdxl_trains_and_the_size_conditioning_reaches_the_net(sdxl_run):
    trainer, losses, _ = sdxl_run
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert trainer.config.base_model == "SDXL" and len(trainer.text_encoders) == 2
    batch = next(iter(trainer.loader))
    assert batch["time_ids"][:, 4:].tolist() == [[64, 64]] * len(batch["captions"])  # each sample's own crop
    batch = {name: value for name, value in batch.items() if name != "time_ids"}

    def loss(time_ids=None):
        torch.manual_seed(0)  # the same noise and timesteps each time
        with torch.no_grad():
            return trainer.sample_losses({**batch, "time_ids": time_ids} if time_ids is not None else batch)[0]

    rows = len(batch["captions"])
    latent = 64 // 8
    default = default_time_ids(torch.zeros(rows, 4, latent, latent))
    assert default[0].tolist() == [64, 64, 0, 0, 64, 64]
    plain = loss()
    assert torch.equal(loss(default), plain)  # absent = original and target at the image size, no crop
    cropped = torch.tensor([[96.0, 128.0, 16.0, 32.0, 64.0, 64.0]]).repeat(rows, 1)
    assert (loss(cropped) - plain).abs().max() > 1e-6  # the batch's crop conditioning takes part


def test_sdxl_validation_samples_an_image_with_the_pooled_and_size_conditioning(sdxl_run):
    trainer, _, _ = sdxl_run
    record = trainer.validate()
    assert record["samples"] == 1
    picture = trainer.output / "validation" / f"step-{trainer.step:08d}.png"
    assert picture.is_file() and picture.stat().st_size > 0


def test_sdxl_export_is_an_sdxl_checkpoint_that_predicts_what_was_trained(sdxl_run):
    from net_fixtures import faces_for

    trainer, _, exported = sdxl_run
    model = load_checkpoint(exported)
    assert model.config.base_model == "SDXL" and model.config.d_K == 32
    assert (model.config.controlnet["adm_in_channels"], model.config.controlnet["num_classes"]) == (2816, "sequential")
    assert "label_emb.0.0.weight" in model.controlnet_state
    assert any(".transformer_blocks.1.attn2.to_k." in k for k in model.unet_deltas)  # SDXL's deeper blocks
    net = trainer.accelerator.unwrap_model(trainer.net).eval()
    rebuilt = net_from_export(exported, load_base("", "tiny_sdxl", seed=0).unet)  # the base the run started from
    g = torch.Generator().manual_seed(3)
    latents, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    pooled, control = torch.randn(2, 1280, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    t = torch.tensor([10, 700])
    faces = faces_for([[[0, 0, 30, 30], [20, 20, 64, 64]], [[10, 10, 50, 50]]], model.config)
    with torch.no_grad():
        ours = net(latents, t, text, faces, control, pooled=pooled)
        theirs = rebuilt(latents, t, text, faces, control, pooled=pooled)
        other_pooled = net(latents, t, text, faces, control, pooled=-pooled)
        no_faces = rebuilt(latents, t, text, FaceInputs.empty(2, model.config), control, pooled=pooled)
    assert (ours - other_pooled).abs().max() > 1e-4 and (theirs - no_faces).abs().max() > 1e-4
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pooled"):
        net(latents, t, text, faces, control)


def test_sdxl_bf16_gradient_checkpointing_step(prepared, tmp_path):
    from train.train import train

    args = train_args(prepared, tmp_path / "bf16", "--model-config", "tiny_sdxl", "--max-steps", "1")
    losses = train(parse([*args, "--mixed-precision", "bf16", "--gradient-checkpointing", "true"]))
    assert len(losses) == 1 and all(torch.isfinite(torch.tensor(losses)))


def test_the_sdxl_vae_never_runs_in_float16(sdxl_run):
    from train.latents import vae_dtype

    assert vae_dtype("SDXL", torch.float16) == torch.float32  # it overflows there: NaN latents
    assert vae_dtype("SDXL", torch.bfloat16) == torch.bfloat16
    assert vae_dtype("SD1.5", torch.float16) == torch.float16
    trainer = sdxl_run[0]
    assert trainer.vae.dtype == trainer.vae_dtype == torch.float32
