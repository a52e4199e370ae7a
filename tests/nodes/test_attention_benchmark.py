"""benchmarks/attention_overhead.py --family sdxl keeps working: at the smallest size, on the test host,
its patched SDXL step runs and the faces change the output (figures come from real-size runs)."""

import argparse
import runpy
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "attention_overhead.py"


def test_sdxl_benchmark_step_runs_patched_and_unpatched(comfy_host):
    bench = argparse.Namespace(**runpy.run_path(str(SCRIPT)))  # the script's globals; main() does not run
    name, width, _ = bench.FAMILIES["sdxl"]
    base = comfy_host.tiny_sd15_model(seed=0, context_dim=width, model_channels=32, family=name)
    assert type(base.model.model_config).__name__ == "SDXL"
    args = argparse.Namespace(size=64, family="sdxl", mode="hard", kernel="auto")
    plain = bench._patched_step(comfy_host, base, 0, args)()
    with_faces = bench._patched_step(comfy_host, base, 4, args)()
    assert plain.shape == with_faces.shape == (2, 4, 8, 8)
    assert torch.isfinite(with_faces).all()
    assert (with_faces - plain).abs().max() > 1e-4  # the 4 IDs' tokens reached the SDXL attn2 layers
    torch.testing.assert_close(bench._patched_step(comfy_host, base, 0, args)(), plain)  # unpatched: unchanged
