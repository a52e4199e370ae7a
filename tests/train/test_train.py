"""End to end on CPU with tiny models: prepare -> train -> checkpoint -> resume -> export -> load."""

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import train_args

from instantfamily_core.checkpoint import load_checkpoint
from instantfamily_core.ldm_convert import UNET_PREFIX, controlnet_from_ldm, ldm_controlnet_kwargs, unet_from_ldm
from train.export import export, net_from_export
from train.models import load_base
from train.net import FaceInputs
from train.options import parse
from train.train import Trainer, train

REPO = Path(__file__).resolve().parents[2]
# EMA, UNet K/V training and gradient accumulation on: all of their state must survive a resume.
FULL = ("--ema-decay", "0.9", "--train-unet-kv", "true", "--gradient-accumulation", "2")


def trained(run: Path, step: int) -> dict:
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / "trainable.safetensors"))


def test_loss_is_finite_and_decreases_on_a_repeated_batch(prepared, tmp_path):
    trainer = Trainer(
        parse(
            train_args(
                prepared,
                tmp_path / "run",
                "--max-steps",
                "100",
                "--learning-rate",
                "3e-3",
                "--projector-learning-rate",
                "3e-3",
                "--text-dropout",
                "0",
                "--face-dropout",
                "0",
            )
        )
    )
    batch = next(iter(trainer.loader))
    assert sum(len(m) for m in batch["masks"] if m is not None) > 0  # the batch has faces
    losses = []
    for _ in range(15):
        torch.manual_seed(0)  # the same noise, timesteps and latents: exactly the same batch
        loss = trainer.loss(batch)
        trainer.accelerator.backward(loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


def test_resume_continues_exactly_and_export_runs_what_was_trained(prepared, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    losses = train(
        parse(
            train_args(
                prepared, straight, "--max-steps", "6", *FULL, "--validate-every", "6", "--validation-steps", "2"
            )
        )
    )
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    train(parse(train_args(prepared, split, "--max-steps", "3", *FULL)))
    resumed = train(parse(train_args(prepared, split, "--max-steps", "6", *FULL, "--resume", "latest")))
    assert resumed == pytest.approx(losses[3:], rel=1e-6, abs=1e-7)  # the next batches' losses
    a, b = trained(straight, 6), trained(split, 6)
    assert set(a) == set(b) and any(k.startswith("ema.") for k in a) and any(k.startswith("unet.") for k in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
    state = json.loads((split / "checkpoints" / "step-00000006" / "state.json").read_text())
    assert state["batches"] == 12 and state["step"] == 6  # 2 batches per step; 3 batches per epoch

    picture = straight / "validation" / "step-00000006.png"
    from PIL import Image

    image = Image.open(picture)
    assert image.size == (3 * 64, 2 * 64) and len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 10

    # The run exported its EMA weights; export the raw weights too. Both are the pack's format in
    # ComfyUI names, and the raw export computes exactly what the trainer computes.
    auto = load_checkpoint(straight / "instantfamily.safetensors")
    state = json.loads((straight / "checkpoints" / "step-00000006" / "state.json").read_text())
    for name, tensor in controlnet_from_ldm(auto.controlnet_state, state["controlnet_config"]).items():
        assert torch.equal(tensor, a[f"ema.controlnet.{name}"])
    export(straight / "checkpoints" / "latest", tmp_path / "raw.safetensors")
    exported = load_checkpoint(tmp_path / "raw.safetensors")
    assert exported.config.training_steps == 6 and exported.config.recognizer.file_name == "rec_tiny.onnx"
    assert exported.config.controlnet == ldm_controlnet_kwargs(state["controlnet_config"])
    assert all(
        k.startswith(("input_blocks.", "middle_block", "zero_convs.", "input_hint_block.", "time_embed."))
        for k in exported.controlnet_state
    )
    assert exported.unet_deltas and all(
        k.startswith(UNET_PREFIX) and (".attn2.to_k." in k or ".attn2.to_v." in k) for k in exported.unet_deltas
    )
    for name, tensor in controlnet_from_ldm(exported.controlnet_state, state["controlnet_config"]).items():
        assert torch.equal(tensor, a[f"controlnet.{name}"])
    base = load_base("", "tiny", seed=0).unet
    base_kv = dict(base.named_parameters())
    for name, delta in unet_from_ldm(exported.unet_deltas, base.config, prefix=UNET_PREFIX).items():
        torch.testing.assert_close(base_kv[name] + delta, a[f"unet.{name}"], atol=1e-6, rtol=0)

    trainer_net = Trainer(parse(train_args(prepared, straight, "--max-steps", "6", *FULL, "--resume", "latest"))).net
    rebuilt = net_from_export(tmp_path / "raw.safetensors", base)
    from net_fixtures import faces_for, inputs

    latents, t, text, control = inputs()
    faces = faces_for([[[0, 0, 30, 30], [20, 20, 64, 64], [40, 0, 64, 20]], [[10, 10, 50, 50]]], exported.config)
    with torch.no_grad():
        ours = trainer_net.eval()(latents, t, text, faces, control)
        theirs = rebuilt(latents, t, text, faces, control)
    assert (ours - rebuilt(latents, t, text, FaceInputs.empty(2, exported.config), control)).abs().max() > 1e-4
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_sigkill_loses_at_most_one_checkpoint_interval(prepared, tmp_path):
    run = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [
        sys.executable,
        "-m",
        "train.train",
        *train_args(prepared, run, "--max-steps", "1000", "--checkpoint-every", "2"),
    ]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (run / "checkpoints" / "step-00000004").exists():
            assert process.poll() is None, "training exited early"
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        steps_done = len((run / "losses.jsonl").read_text().splitlines())
    finally:
        process.kill()  # SIGKILL: no handler runs, possibly in the middle of writing a checkpoint
        process.wait()
    latest = max(int(p.name[5:]) for p in (run / "checkpoints").glob("step-????????"))
    assert latest >= 4 and steps_done - latest <= 2
    losses = train(
        parse(
            train_args(prepared, run, "--max-steps", str(latest + 1), "--checkpoint-every", "2", "--resume", "latest")
        )
    )
    assert len(losses) == 1 and not list((run / "checkpoints").glob("*.tmp"))
    logged = [json.loads(line)["step"] for line in (run / "losses.jsonl").read_text().splitlines()]
    assert logged == list(range(1, latest + 2))  # the killed run's steps after the checkpoint are gone
    assert (run / "checkpoints" / f"step-{latest + 1:08d}").is_dir()


def test_bf16_gradient_checkpointing_run(prepared, tmp_path):
    losses = train(
        parse(
            train_args(
                prepared,
                tmp_path / "bf16",
                "--max-steps",
                "2",
                "--mixed-precision",
                "bf16",
                "--gradient-checkpointing",
                "true",
            )
        )
    )
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    weights = trained(tmp_path / "bf16", 2)
    assert all(v.dtype == torch.float32 for v in weights.values())  # trained weights stay fp32 under autocast


def test_two_processes_ddp(prepared, tmp_path):
    """torchrun with 2 CPU processes (gloo): DDP, per-rank RNG files, and batches without any face
    (the projector must still join the gradient all-reduce)."""
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "train.train",
        *train_args(
            prepared, run, "--max-steps", "2", "--batch-size", "1", "--checkpoint-every", "2", "--face-dropout", "1.0"
        ),
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = run / "checkpoints" / "step-00000002"
    assert {p.name for p in checkpoint.glob("rng-*.safetensors")} == {"rng-0.safetensors", "rng-1.safetensors"}
    assert json.loads((checkpoint / "state.json").read_text())["world_size"] == 2
    assert load_checkpoint(run / "instantfamily.safetensors").config.training_steps == 2


def test_speed_options_take_effect(prepared, tmp_path):
    default = Trainer(parse(train_args(prepared, tmp_path / "default", "--max-steps", "1")))
    net = default.accelerator.unwrap_model(default.net)
    for weight in (net.unet.conv_in.weight, net.controlnet.conv_in.weight, default.vae.encoder.conv_in.weight):
        assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert not net.unet.is_gradient_checkpointing and not net.controlnet.is_gradient_checkpointing
    assert net.unet._compiled_call_impl is None
    changed = Trainer(
        parse(
            train_args(
                prepared,
                tmp_path / "changed",
                "--max-steps",
                "1",
                "--channels-last",
                "false",
                "--compile",
                "true",
                "--gradient-checkpointing",
                "true",
            )
        )
    )
    net = changed.accelerator.unwrap_model(changed.net)
    assert net.unet.conv_in.weight.is_contiguous() and net.controlnet.conv_in.weight.is_contiguous()
    assert net.unet.is_gradient_checkpointing and net.controlnet.is_gradient_checkpointing
    assert net.unet._compiled_call_impl is not None and net.controlnet._compiled_call_impl is not None
    assert "conv_in.weight" in dict(net.unet.named_parameters())  # compiled in place: checkpoint names unchanged
