"""Cost of InstantFamily's masked cross-attention on a full-size SD1.5 UNet (random init).

Every configuration runs in its own subprocess (so peak memory is that configuration's own),
on a real ComfyUI host, at batch 2 (cond + uncond rows, as under CFG), and prints
median seconds per UNet forward and ratios against the unpatched UNet measured in the same run:

    python benchmarks/attention_overhead.py                 # 256 px, N = 1, 4, 8, 16
    python benchmarks/attention_overhead.py --size 512 --ids 4 16 --controlnet

``--controlnet`` adds ControlNet + UNet with 4 IDs vs plain ControlNet + UNet.
``--kernel dense`` times the single boolean-masked SDPA instead of the region-sparse kernel.
Host: INSTANTFAMILY_COMFY_HOST=2024|2025 or COMFYUI_PATH, as for the tests.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SD15 = dict(context_dim=768, model_channels=320)


def face_boxes(n: int, size: int) -> list[list[float]]:
    """n non-overlapping face boxes on a near-square grid; together they cover a similar area."""
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cell_w, cell_h = size / cols, size / rows
    face = 0.35 * min(cell_w, cell_h)
    return [[(i % cols + 0.5) * cell_w - face / 2, (i // cols + 0.5) * cell_h - face / 2,
             (i % cols + 0.5) * cell_w + face / 2, (i // cols + 0.5) * cell_h + face / 2] for i in range(n)]


def run_one(args) -> dict:
    """Time one configuration in this process (called in a subprocess)."""
    sys.path.insert(0, str(REPO / "tests" / "nodes"))
    import comfy_host

    host = comfy_host.start_host(Path(tempfile.mkdtemp(prefix="if-bench-")))
    import torch

    torch.set_num_threads(args.threads)
    masks_mod = host.pack_import("instantfamily_core.masks")
    patch_mod = host.pack_import("instantfamily_core.comfy_patch")
    stack_mod = host.pack_import("instantfamily_core.stack")
    engine = host.pack_import("nodes.engine")
    controlnet_mod = host.pack_import("nodes.controlnet")

    model = host.tiny_sd15_model(seed=0, **SD15)
    latent = args.size // 8
    x = torch.randn(2, 4, latent, latent)
    sigma = torch.full((2,), 5.0)
    context = torch.randn(2, 77, 768)
    options = {"cond_or_uncond": [0, 1], "sigmas": sigma}
    n = args.ids

    patch = None
    if n > 0:
        torch.manual_seed(1)
        stack = stack_mod.EmbeddingStack(torch.randn(n, 50, 768))
        masks = masks_mod.masks_from_boxes(torch.tensor(face_boxes(n, args.size)), (args.size, args.size))
        patch = patch_mod.InstantFamilyAttentionPatch(stack, masks, engine.host_attention, mode=args.mode)
        patch.face_attention.kernel = args.kernel
        model = model.clone()
        engine.install_patch(model, patch)

    control = None
    if args.controlnet:
        import comfy.cldm.cldm
        import comfy.ops

        config = dict(model.model.model_config.unet_config, hint_channels=3, operations=comfy.ops.disable_weight_init)
        config.pop("out_channels")
        state = host.fixtures.tiny_model.fill_weights(comfy.cldm.cldm.ControlNet(**config), seed=2).state_dict()
        checkpoint = host.pack_import("instantfamily_core.checkpoint")
        config_mod = host.pack_import("instantfamily_core.config")
        control = controlnet_mod.build_control_model(
            model, checkpoint.InstantFamilyModel(config_mod.InstantFamilyConfig(), None, state), "benchmark")
        control.face_patch = patch
        control = control.copy().set_cond_hint(torch.rand(1, 3, args.size, args.size), 1.0, (0.0, 1.0))
        control.pre_run(model.model, model.model.model_sampling.percent_to_sigma)

    transformer_options = dict(model.model_options.get("transformer_options", {}), **options)
    control_args = []
    if control is not None:
        import inspect

        import comfy.controlnet

        if "transformer_options" in inspect.signature(comfy.controlnet.ControlNet.get_control).parameters:
            control_args = [transformer_options]  # 0.3.x passes them; ComfyUI of 2024 does not
    diffusion = model.model

    def step():
        with torch.no_grad():
            residuals = None
            if control is not None:
                residuals = control.get_control(x, sigma, {"c_crossattn": context}, 2, *control_args)
            return diffusion.apply_model(x, sigma, c_crossattn=context, control=residuals,
                                         transformer_options=dict(transformer_options))

    step()  # warm-up (plans and masks are built here, once per grid)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"ids": n, "median_s": statistics.median(times), "min_s": min(times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (latent = size/8)")
    parser.add_argument("--ids", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", default="hard", choices=["hard", "paper"])
    parser.add_argument("--kernel", default="auto", choices=["auto", "dense", "region"])
    parser.add_argument("--controlnet", action="store_true", help="also time ControlNet + UNet, 4 IDs vs none")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config, print JSON
    args = parser.parse_args()
    if args.one:
        for key, value in json.loads(args.one).items():
            setattr(args, key, value)
        print("RESULT " + json.dumps(run_one(args)))
        return

    def measure(ids: int, controlnet: bool = False) -> dict:
        config = {"ids": ids, "controlnet": controlnet}
        cmd = [sys.executable, __file__, "--size", str(args.size), "--repeats", str(args.repeats),
               "--threads", str(args.threads), "--mode", args.mode, "--kernel", args.kernel, "--one", json.dumps(config)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"benchmark run {config} failed:\n{out.stderr[-3000:]}")
        return json.loads(line[len("RESULT "):])

    print(f"SD1.5-shaped UNet, random init, CPU x{args.threads}, {args.size} px, batch 2 (cond+uncond), "
          f"mode={args.mode}, kernel={args.kernel}, median of {args.repeats}")
    base = measure(0)
    print(f"{'IDs':>4} {'s/forward':>10} {'ratio':>7} {'peak RSS MB':>12} {'mem ratio':>9}")
    print(f"{0:>4} {base['median_s']:>10.3f} {1.0:>7.3f} {base['peak_rss_mb']:>12.0f} {1.0:>9.3f}")
    results = {"unpatched": base, "patched": []}
    for ids in args.ids:
        r = measure(ids)
        results["patched"].append(r)
        print(f"{ids:>4} {r['median_s']:>10.3f} {r['median_s'] / base['median_s']:>7.3f} "
              f"{r['peak_rss_mb']:>12.0f} {r['peak_rss_mb'] / base['peak_rss_mb']:>9.3f}")
    if args.controlnet:
        plain = measure(0, controlnet=True)
        faces = measure(4, controlnet=True)
        ratio = faces["median_s"] / plain["median_s"]
        print(f"ControlNet+UNet: plain {plain['median_s']:.3f} s, 4 IDs {faces['median_s']:.3f} s, ratio {ratio:.3f}")
        results["controlnet"] = {"plain": plain, "ids4": faces, "ratio": ratio}
    print("JSON " + json.dumps(results))


if __name__ == "__main__":
    main()
