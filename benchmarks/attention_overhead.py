"""Cost of InstantFamily's masked cross-attention on a full-size SD1.5 UNet, or an SDXL-shaped one (random init).

On a real ComfyUI host, at batch 2 (cond + uncond rows, as under CFG). Timing: every
configuration shares one UNet (patched clones share weights) and the configurations are timed
in turns, round after round, so drift on a busy machine hits them alike; medians and ratios are
against the unpatched UNet of the same run. Peak memory: each configuration once more in its
own subprocess (peak RSS of that process):

    python benchmarks/attention_overhead.py                 # 256 px, N = 1, 4, 8, 16
    python benchmarks/attention_overhead.py --size 512 --ids 4 16 --controlnet

``--controlnet`` adds ControlNet + UNet with 4 IDs vs plain ControlNet + UNet.
``--kernel dense`` times the single boolean-masked SDPA instead of the region-sparse kernel.
``--family sdxl``: a real ``comfy.supported_models.SDXL`` UNet with SDXL's widths (320 channels,
2048-wide context, pooled + size ADM input) and levels, but 1 and 2 transformer blocks at its two
attention levels instead of 2 and 10 (a full SDXL UNet does not fit a CPU run's time):

    python benchmarks/attention_overhead.py --family sdxl --size 512 --ids 2 4 16
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
if not __package__:  # run as a file: the packages it imports live at the repo root
    sys.path.insert(0, str(REPO))

from instantfamily_core.attention import KERNELS  # noqa: E402  (light: torch only)
from instantfamily_core.config import MASK_MODES  # noqa: E402

SD15 = dict(context_dim=768, model_channels=320)
FAMILIES = {"sd15": ("SD1.5", 768, None), "sdxl": ("SDXL", 2048, 2816)}  # name, context width, ADM width


def face_boxes(n: int, size: int) -> list[list[float]]:
    """n non-overlapping face boxes on a near-square grid; together they cover a similar area."""
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cell_w, cell_h = size / cols, size / rows
    face = 0.35 * min(cell_w, cell_h)
    return [
        [
            (i % cols + 0.5) * cell_w - face / 2,
            (i // cols + 0.5) * cell_h - face / 2,
            (i % cols + 0.5) * cell_w + face / 2,
            (i // cols + 0.5) * cell_h + face / 2,
        ]
        for i in range(n)
    ]


def _patched_step(host, base, n, args, control_state=None):
    """A closure running one UNet (+ControlNet) forward with n IDs (0: unpatched)."""
    import torch

    masks_mod = host.pack_import("instantfamily_core.masks")
    patch_mod = host.pack_import("instantfamily_core.comfy_patch")
    stack_mod = host.pack_import("instantfamily_core.stack")
    engine = host.pack_import("nodes.engine")
    latent = args.size // 8
    _, width, adm = FAMILIES[args.family]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=gen)
    sigma = torch.full((2,), 5.0)
    context = torch.randn(2, 77, width, generator=gen)
    extra = {} if adm is None else {"y": torch.randn(2, adm, generator=gen)}  # SDXL: pooled text + size ids
    model, patch = base, None
    if n > 0:
        stack = stack_mod.EmbeddingStack(torch.randn(n, 50, width, generator=gen))
        masks = masks_mod.masks_from_boxes(torch.tensor(face_boxes(n, args.size)), (args.size, args.size))
        patch = patch_mod.FacePatch(patch_mod.FaceSettings(stack, masks, mode=args.mode), engine.host_attention)
        patch.face_attention.kernel = args.kernel
        model = base.clone()
        engine.install_patch(model, patch)
    options = dict(model.model_options.get("transformer_options", {}), cond_or_uncond=[0, 1], sigmas=sigma)
    control, control_args = None, []
    if control_state is not None:
        import inspect

        import comfy.controlnet

        checkpoint = host.pack_import("instantfamily_core.checkpoint")
        config_mod = host.pack_import("instantfamily_core.config")
        controlnet_mod = host.pack_import("nodes.controlnet")
        ifmodel = checkpoint.InstantFamilyModel(config_mod.InstantFamilyConfig(), None, control_state)
        control = controlnet_mod.build_control_model(model, ifmodel, "benchmark")
        control.face_patch = patch
        control = control.copy().set_cond_hint(torch.rand(1, 3, args.size, args.size, generator=gen), 1.0, (0.0, 1.0))
        control.pre_run(model.model, model.model.model_sampling.percent_to_sigma)
        if "transformer_options" in inspect.signature(comfy.controlnet.ControlNet.get_control).parameters:
            control_args = [options]  # 0.3.x passes them; ComfyUI of 2024 does not

    def step():
        with torch.no_grad():
            residuals = None
            if control is not None:
                residuals = control.get_control(x, sigma, {"c_crossattn": context, **extra}, 2, *control_args)
            return model.model.apply_model(
                x, sigma, c_crossattn=context, control=residuals, transformer_options=dict(options), **extra
            )

    return step


def start_host(threads: int, family: str = "sd15", model_channels: int = 320):
    """A real ComfyUI host (the test harness's driver) and a full-width UNet of ``family``, random init."""
    import torch

    from instantfamily_dev import comfy_host

    host = comfy_host.start_host(Path(tempfile.mkdtemp(prefix="if-bench-")))
    torch.set_num_threads(threads)
    name, width, _ = FAMILIES[family]
    return host, host.tiny_sd15_model(seed=0, context_dim=width, model_channels=model_channels, family=name)


def _start(args):
    return start_host(args.threads, args.family, args.model_channels)


def controlnet_state(host, base):
    import comfy.cldm.cldm
    import comfy.ops

    config = dict(base.model.model_config.unet_config, hint_channels=3, operations=comfy.ops.disable_weight_init)
    config.pop("out_channels")
    return host.fixtures.tiny_model.fill_weights(comfy.cldm.cldm.ControlNet(**config), seed=2).state_dict()


def time_interleaved(args) -> dict:
    """Median seconds per forward of every configuration, timed in turns."""
    host, base = _start(args)
    steps = {0: _patched_step(host, base, 0, args)}
    for n in args.ids:
        steps[n] = _patched_step(host, base, n, args)
    if args.controlnet:
        state = controlnet_state(host, base)
        steps["cn0"] = _patched_step(host, base, 0, args, state)
        steps["cn4"] = _patched_step(host, base, 4, args, state)
    for step in steps.values():
        step()  # warm-up: plans and masks are built here, once per grid
    times = {name: [] for name in steps}
    names = list(steps)
    for round_ in range(args.repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return {str(name): t for name, t in times.items()}


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(args) -> float:
    """Peak RSS (MB) while one configuration runs forwards (called in a subprocess).

    Building the random UNet has a higher peak than a forward, so the high-water mark is reset
    (Linux: write 5 to /proc/self/clear_refs) after the warm-up and read after two forwards.
    """
    host, base = _start(args)
    state = controlnet_state(host, base) if args.controlnet else None
    step = _patched_step(host, base, args.ids, args, state)
    step()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the peak then includes start-up
    step()
    step()
    return _vm_hwm_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (latent = size/8)")
    parser.add_argument("--ids", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", default=MASK_MODES[0], choices=MASK_MODES)
    parser.add_argument("--kernel", default=KERNELS[0], choices=KERNELS)
    parser.add_argument("--controlnet", action="store_true", help="also time ControlNet + UNet, 4 IDs vs none")
    parser.add_argument("--family", default="sd15", choices=sorted(FAMILIES), help="UNet layout (see above)")
    parser.add_argument("--model-channels", type=int, default=320, help="UNet width (320 = SD1.5's and SDXL's)")
    parser.add_argument(
        "--memory-ids",
        type=int,
        nargs="*",
        default=[4],
        help="ID counts whose peak memory is measured in subprocesses (empty: skip)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: peak memory of one config, as JSON
    args = parser.parse_args()
    if args.one:
        for key, value in json.loads(args.one).items():
            setattr(args, key, value)
        print("RESULT " + json.dumps(peak_memory(args)))
        return

    shape = "SD1.5-shaped" if args.family == "sd15" else "SDXL-shaped (transformer depth 1/2, not 2/10)"
    print(
        f"{shape} UNet ({args.model_channels} ch), random init, CPU x{args.threads}, {args.size} px, "
        "batch 2 (cond+uncond), "
        f"mode={args.mode}, kernel={args.kernel}, median of {args.repeats} interleaved rounds"
    )
    times = time_interleaved(args)
    medians = {name: statistics.median(t) for name, t in times.items()}

    def round_ratios(name, baseline):  # per round: drift within a round hits both alike
        return [a / b for a, b in zip(times[name], times[baseline])]

    print(f"{'IDs':>4} {'s/forward':>10} {'ratio (median of rounds, min-max)':>36}")
    print(f"{0:>4} {medians['0']:>10.3f} {1.0:>10.3f}")
    ratios = {}
    for n in args.ids:
        r = ratios[str(n)] = round_ratios(str(n), "0")
        print(f"{n:>4} {medians[str(n)]:>10.3f} {statistics.median(r):>10.3f} ({min(r):.3f}-{max(r):.3f})")
    results = {"seconds": times, "ratios": {n: statistics.median(r) for n, r in ratios.items()}, "round_ratios": ratios}
    if args.controlnet:
        r = round_ratios("cn4", "cn0")
        print(
            f"ControlNet+UNet: plain {medians['cn0']:.3f} s, 4 IDs {medians['cn4']:.3f} s, ratio "
            f"{statistics.median(r):.3f} ({min(r):.3f}-{max(r):.3f})"
        )
        results["controlnet_ratio"] = statistics.median(r)

    def memory(ids: int) -> float:
        config = {"ids": ids, "controlnet": False}
        cmd = [
            sys.executable,
            __file__,
            "--size",
            str(args.size),
            "--threads",
            str(args.threads),
            "--mode",
            args.mode,
            "--kernel",
            args.kernel,
            "--family",
            args.family,
            "--model-channels",
            str(args.model_channels),
            "--one",
            json.dumps(config),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((row for row in out.stdout.splitlines() if row.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"memory run {config} failed:\n{out.stderr[-3000:]}")
        return json.loads(line[len("RESULT ") :])

    if args.memory_ids:
        plain = memory(0)
        results["peak_rss_mb"] = {"0": plain}
        print(f"peak RSS: unpatched {plain:.0f} MB")
        for n in args.memory_ids:
            peak = memory(n)
            results["peak_rss_mb"][str(n)] = peak
            print(f"peak RSS: {n} IDs {peak:.0f} MB ({peak / plain:.3f}x)")
    print("JSON " + json.dumps(results))


if __name__ == "__main__":
    main()
