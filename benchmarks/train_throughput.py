"""Training throughput: the InstantFamily step vs a plain ControlNet step, measured in the same run,
each with and without cached latents.

    python benchmarks/train_throughput.py                      # GPU: SD1.5 shapes, 512 px, batch 8, bf16
    python benchmarks/train_throughput.py --model-config tiny  # CPU smoke size (64 px, batch 2, fp32)

All steps use the same randomly initialised SD1.5-shaped models (no weights needed): VAE encode and
text encode (frozen), ControlNet + frozen UNet forward, MSE loss, backward, AdamW step. The plain
step has no faces and diffusers' own SDPA attention; ours adds the projector, ``faces`` IDs per image
(50 tokens each) and the masked cross-attention in all attn2 layers of UNet and ControlNet. "cached"
steps skip the VAE encode and take precomputed latents (what the trainer does with latents stored in
the shards). The trainer's speed settings apply to all (channels-last, TF32 on CUDA; ``--compile``).
Prints images/s, peak memory, FLOPs per step (torch's FlopCounterMode), MFU and the ratios, where the
"FLOP ratio" is the unavoidable part of the slowdown (the extra tokens' work).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from instantfamily_core.config import InstantFamilyConfig  # noqa: E402
from instantfamily_core.masks import masks_from_boxes  # noqa: E402
from instantfamily_core.projector import Projector  # noqa: E402
from train.attention_processor import install_sdpa_processors  # noqa: E402
from train.models import CONFIG_ROOT, build_controlnet, config_dir, encode_prompts, load_base  # noqa: E402
from train.net import FaceInputs, InstantFamilyNet, added_conditioning  # noqa: E402
from train.speed import compile_modules, configure_tf32, to_channels_last  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def peak_tflops(device: torch.device, override: float) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


class Step:
    """One training step of either kind on fixed synthetic inputs."""

    def __init__(self, args, base, with_faces: bool, cached: bool, device, dtype):
        torch.manual_seed(0)
        self.base, self.device, self.dtype, self.with_faces, self.cached = base, device, dtype, with_faces, cached
        unet = base.unet
        controlnet = build_controlnet(unet).to(device, torch.float32)  # trainable weights stay fp32 (as in train.py)
        config = InstantFamilyConfig(d_K=unet.config.cross_attention_dim)
        if with_faces:
            self.net = InstantFamilyNet(unet, controlnet, Projector(config).to(device), config)
            trainable = list(controlnet.parameters()) + list(self.net.projector.parameters())
        else:
            install_sdpa_processors(unet)
            install_sdpa_processors(controlnet)
            self.net = None
            self.controlnet, self.unet = controlnet, unet
            trainable = list(controlnet.parameters())
        controlnet.train()
        if args.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            controlnet.enable_gradient_checkpointing()
        if not args.no_channels_last:
            to_channels_last(unet, controlnet, base.vae)
        if args.compile:
            compile_modules(unet, controlnet)
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-5)
        b, res = args.batch_size, args.resolution
        g = torch.Generator().manual_seed(1)
        self.pixels = (torch.rand(b, 3, res, res, generator=g) * 2 - 1).to(device, dtype)
        self.control = torch.rand(b, 3, res, res, generator=g).to(device, dtype)
        with torch.no_grad(), self.autocast():  # the "cache": latents precomputed once
            self.latents = base.vae.encode(self.pixels).latent_dist.sample() * base.vae.config.scaling_factor
        self.captions = ["a photo of four people at the beach"] * b
        n, width = args.faces, res / max(args.faces, 1)
        boxes = torch.tensor(
            [
                [i * width + width * 0.2, res * 0.3, (i + 1) * width - width * 0.2, res * 0.3 + width * 0.6]
                for i in range(n)
            ]
        )
        self.faces = FaceInputs(
            [torch.randn(n, config.d_gf, generator=g) for _ in range(b)],
            [torch.randn(n, config.d_lf, config.L, config.L, generator=g) for _ in range(b)],
            [masks_from_boxes(boxes, (res, res), 0.25) if n else None for _ in range(b)],
        )

    def autocast(self):
        kind = "cuda" if self.device.type == "cuda" else "cpu"  # "meta" (FLOP counting only) has no autocast
        return torch.autocast(kind, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def __call__(self) -> None:
        base = self.base
        with self.autocast():
            with torch.no_grad():
                if self.cached:
                    latents = self.latents
                else:
                    latents = base.vae.encode(self.pixels).latent_dist.sample() * base.vae.config.scaling_factor
                text = encode_prompts(base.text_encoders, base.tokenizers, self.captions, self.device)
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (latents.shape[0],), device=self.device)
            noisy = base.noise_scheduler.add_noise(latents, noise, t)
            if self.with_faces:
                prediction = self.net(noisy, t, text.context, self.faces, self.control, pooled=text.pooled)
            else:
                added = added_conditioning(self.unet.config, noisy, text.pooled, None)  # SDXL; None for SD1.5
                down, mid = self.controlnet(
                    noisy,
                    t,
                    encoder_hidden_states=text.context,
                    controlnet_cond=self.control,
                    added_cond_kwargs=added,
                    return_dict=False,
                )
                prediction = self.unet(
                    noisy,
                    t,
                    encoder_hidden_states=text.context,
                    down_block_additional_residuals=down,
                    mid_block_additional_residual=mid,
                    added_cond_kwargs=added,
                    return_dict=False,
                )[0]
            loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def random_base(model_config: str):
    """Randomly initialised base models; a config without a tokenizer (sd15) borrows the tiny one (77 tokens
    either way)."""
    tokenizer = "" if (config_dir(model_config) / "tokenizer").is_dir() else str(CONFIG_ROOT / "tiny" / "tokenizer")
    return load_base("", model_config, tokenizer, seed=0)


def count_on_meta(args) -> dict:
    """FLOPs per step of the plain ControlNet step, with and without the VAE encode, on the meta device:
    any size (full SD1.5 at 512 px included) without weights, memory or compute. Our step cannot run on
    meta (its masks decide the attention plan), so its FLOPs come from a real run."""
    device, figures = torch.device("meta"), {}
    for cached in (False, True):
        with device:
            base = random_base(args.model_config)
            for module in (base.unet, base.vae, *base.text_encoders):
                module.requires_grad_(False)
            step = Step(args, base, False, cached, device, torch.float32)
        figures["plain_cached" if cached else "plain"] = count_flops(step)
    return figures


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step: Step, device, steps: int, warmup: int) -> dict:
    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    memory = (
        torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {"seconds_per_step": seconds, "peak_memory_gib": memory / 2**30}


def count_flops(step: Step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-config", default="sd15" if cuda else "tiny")
    p.add_argument("--resolution", type=int, default=512 if cuda else 64)
    p.add_argument("--batch-size", type=int, default=8 if cuda else 2)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16" if cuda else "fp32")
    p.add_argument("--faces", type=int, default=4)
    p.add_argument("--steps", type=int, default=10 if cuda else 3)
    p.add_argument("--warmup", type=int, default=3 if cuda else 1)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--no-channels-last", action="store_true", help="keep NCHW weights (the trainer's channels_last = false)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile UNet and ControlNet (the trainer's compile)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="accelerator peak for MFU (default: known GPUs)")
    p.add_argument(
        "--count-only",
        action="store_true",
        help="only count the plain step's FLOPs on the meta device (no weights, memory or compute)",
    )
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    device = torch.device("cuda" if cuda else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))

    if args.count_only:
        flops = count_on_meta(args)
        per_image = {name: f / args.batch_size / 1e12 for name, f in flops.items()}
        print(
            f"FLOPs counted on the meta device ({args.model_config}, {args.resolution} px): plain ControlNet step "
            f"{per_image['plain']:.3f} TFLOP per image, {per_image['plain_cached']:.3f} with cached latents (VAE "
            f"encode {per_image['plain'] - per_image['plain_cached']:.3f})"
        )
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "tflop_per_image": per_image}, indent=2))
        return 0
    configure_tf32(True, cuda)
    results = {}
    for kind, with_faces in (("plain", False), ("instantfamily", True)):
        base = random_base(args.model_config)  # fresh models per kind (processors differ)
        for module in (base.unet, base.vae, *base.text_encoders):
            module.requires_grad_(False).to(device, dtype if dtype != torch.float16 else torch.float32)
        for cached in (False, True):
            step = Step(args, base, with_faces, cached, device, dtype)
            flops = count_flops(step)
            results[kind + ("_cached" if cached else "")] = {
                **measure(step, device, args.steps, args.warmup),
                "flops_per_step": flops,
            }
            del step
            if cuda:
                torch.cuda.empty_cache()
        del base

    peak = peak_tflops(device, args.peak_tflops)
    print(
        f"device: {torch.cuda.get_device_name(device) if cuda else 'CPU'}; {args.model_config}, {args.resolution} px, "
        f"batch {args.batch_size}, {args.precision}, {args.faces} IDs per image, "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
        f"channels-last {'off' if args.no_channels_last else 'on'}, compile {'on' if args.compile else 'off'}"
    )
    for name, r in results.items():
        r["images_per_s"] = args.batch_size / r["seconds_per_step"]
        r["achieved_tflops"] = r["flops_per_step"] / r["seconds_per_step"] / 1e12
        r["mfu"] = r["achieved_tflops"] / peak if peak else None
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (unknown peak)"
        print(
            f"{name:>20}: {r['images_per_s']:8.2f} images/s  {r['seconds_per_step'] * 1e3:8.1f} ms/step  "
            f"peak mem {r['peak_memory_gib']:6.2f} GiB  {r['flops_per_step'] / 1e12:7.3f} TFLOP/step  "
            f"{r['achieved_tflops']:7.2f} TFLOP/s  MFU {mfu}"
        )
    ours, plain = results["instantfamily"], results["plain"]
    speed = ours["images_per_s"] / plain["images_per_s"]
    flop_ratio = plain["flops_per_step"] / ours["flops_per_step"]
    cached = results["instantfamily_cached"]
    summary = {
        "speed_ratio": speed,
        "flop_ratio": flop_ratio,
        "speed_vs_unavoidable": speed / flop_ratio,
        "memory_ratio": ours["peak_memory_gib"] / plain["peak_memory_gib"],
        "cached_vs_plain": cached["images_per_s"] / plain["images_per_s"],
        "cached_speedup": cached["images_per_s"] / ours["images_per_s"],
        "vae_flop_share": 1 - cached["flops_per_step"] / ours["flops_per_step"],
        "tflop_per_image": ours["flops_per_step"] / args.batch_size / 1e12,
        "tflop_per_image_cached": cached["flops_per_step"] / args.batch_size / 1e12,
    }
    print(
        f"images/s ours / plain = {speed:.3f}x; FLOP ratio (plain / ours, the unavoidable extra tokens) = "
        f"{flop_ratio:.3f}x; speed relative to that = {summary['speed_vs_unavoidable']:.3f}x; "
        f"peak memory ours / plain = {summary['memory_ratio']:.3f}x"
    )
    print(
        f"cached latents: ours cached / plain (VAE every step) = {summary['cached_vs_plain']:.3f}x (target >= 1.0 "
        f"on a GPU); ours cached / ours = {summary['cached_speedup']:.3f}x; the VAE encode is "
        f"{100 * summary['vae_flop_share']:.0f}% of our step's FLOPs; {summary['tflop_per_image']:.4f} TFLOP per "
        f"image ({summary['tflop_per_image_cached']:.4f} cached)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
