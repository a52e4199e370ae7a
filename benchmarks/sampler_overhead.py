"""A real sampler step with InstantFamily vs the same graph with ComfyUI's stock ControlNet.

Full-size SD1.5-shaped UNet and ControlNet (random init) on a real ComfyUI host; both graphs
sample through ``comfy.sample.sample`` (what KSampler calls), CFG on:

* stock: the plain MODEL + ``ControlNetApplyAdvanced`` (ComfyUI's ControlNet Apply (Advanced));
* InstantFamily: Apply InstantFamily with N IDs + the Pose+Circle ControlNet (same control weights).

The two are timed in turns, round after round, and the ratio is per round (so drift hits both
alike); the script prints the median and the spread of the per-round ratios, and the UNet and
ControlNet calls per step with their batch sizes:

    python benchmarks/sampler_overhead.py --size 256 --steps 2 --rounds 5
    INSTANTFAMILY_COMFY_HOST=2024 python benchmarks/sampler_overhead.py   # the 2024 host

The test harness starts ComfyUI in CPU mode; the GPU figure (512 px, fp16, it/s and peak memory)
needs a CUDA host and has not been measured yet (no GPU was lent to this project).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as a file: the packages it imports live at the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.attention_overhead import controlnet_state, face_boxes, start_host  # noqa: E402


def build_graphs(host, base, args):
    """(stock, instantfamily): each a function that samples ``args.steps`` steps."""
    import comfy.controlnet
    import comfy.model_management
    import torch

    import nodes as comfy_nodes

    masks_mod = host.pack_import("instantfamily_core.masks")
    checkpoint = host.pack_import("instantfamily_core.checkpoint")
    config_mod = host.pack_import("instantfamily_core.config")
    stack_mod = host.pack_import("instantfamily_core.stack")
    controlnet_node = host.node_class("InstantFamilyPoseCircleControlNet")()
    apply_node = host.node_class("InstantFamilyApply")()

    gen = torch.Generator().manual_seed(0)
    size, latent = args.size, args.size // 8
    positive = [[torch.randn(1, 77, 768, generator=gen), {}]]
    negative = [[torch.randn(1, 77, 768, generator=gen), {}]]
    hint = torch.rand(1, size, size, 3, generator=gen)  # IMAGE (B, H, W, 3)
    ifmodel = checkpoint.InstantFamilyModel(config_mod.InstantFamilyConfig(), None, controlnet_state(host, base))
    control = host.pack_import("nodes.controlnet").build_control_model(base, ifmodel, "benchmark")

    stock_net = comfy.controlnet.ControlNet(
        control.control_model, load_device=comfy.model_management.get_torch_device()
    )
    stock_pos, stock_neg = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
        positive, negative, stock_net, hint, 1.0, 0.0, 1.0
    )[:2]

    stack = stack_mod.EmbeddingStack(torch.randn(args.ids, 50, 768, generator=gen))
    masks = masks_mod.masks_from_boxes(torch.tensor(face_boxes(args.ids, size)), (size, size))
    (patched,) = apply_node.apply(base, ifmodel, stack, masks, 1.0, 0.0, 1.0, "hard", "both")
    ours_pos, ours_neg = controlnet_node.apply(positive, negative, patched, ifmodel, stack, masks, hint, 1.0, 0.0, 1.0)
    empty = torch.zeros(1, 4, latent, latent)

    def sampler(model, pos, neg):
        return lambda: host.sample(model, pos, neg, empty, seed=0, steps=args.steps, cfg=5.0)

    return sampler(base, stock_pos, stock_neg), sampler(patched, ours_pos, ours_neg)


def count_calls(run) -> list[tuple[str, int]]:
    """(network, batch) of every UNet / ControlNet forward while ``run()`` samples."""
    import comfy.cldm.cldm
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import torch

    calls = []
    original = torch.nn.Module.__call__

    def counting(self, *a, **kw):
        if isinstance(self, comfy.cldm.cldm.ControlNet):
            calls.append(("ControlNet", (a[0] if a else kw["x"]).shape[0]))
        elif isinstance(self, openaimodel.UNetModel):
            calls.append(("UNet", (a[0] if a else kw["x"]).shape[0]))
        return original(self, *a, **kw)

    torch.nn.Module.__call__ = counting
    try:
        run()
    finally:
        torch.nn.Module.__call__ = original
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (latent = size/8)")
    parser.add_argument("--ids", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="sampler steps per timed run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    host, base = start_host(args.threads)
    stock, ours = build_graphs(host, base, args)
    for name, run in (("stock ControlNet", stock), ("InstantFamily", ours)):
        calls = count_calls(run)  # also the warm-up
        per_step = sorted(set(calls))
        print(
            f"{name}: {len(calls) / args.steps:.0f} forwards per step: "
            + ", ".join(f"{calls.count(c) // args.steps} x {c[0]} batch {c[1]}" for c in per_step)
        )
    seconds = {"stock": [], "instantfamily": []}
    ratios = []
    for round_ in range(args.rounds):
        order = [("stock", stock), ("instantfamily", ours)]
        for name, run in order if round_ % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            run()
            seconds[name].append((time.perf_counter() - start) / args.steps)
        ratios.append(seconds["instantfamily"][-1] / seconds["stock"][-1])
    stock_s, ours_s = statistics.median(seconds["stock"]), statistics.median(seconds["instantfamily"])
    print(
        f"SD1.5-shaped UNet + ControlNet, random init, CPU x{args.threads}, {args.size} px, CFG (cond + uncond), "
        f"{args.ids} IDs, {args.rounds} rounds of {args.steps} steps"
    )
    print(
        f"s/step: stock {stock_s:.3f}, InstantFamily {ours_s:.3f}; it/s: stock {1 / stock_s:.3f}, "
        f"InstantFamily {1 / ours_s:.3f}"
    )
    print(
        f"ratio InstantFamily / stock: median {statistics.median(ratios):.3f} "
        f"(rounds {min(ratios):.3f}-{max(ratios):.3f})"
    )
    print("JSON " + json.dumps({"seconds_per_step": seconds, "ratios": ratios, "args": vars(args)}))


if __name__ == "__main__":
    main()
