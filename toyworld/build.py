"""Build the toy world end to end; every stage is skipped when its output exists (resumable).

    python -m toyworld.build --out output/toyworld [--size smoke|default|full]
        [--variants hard paper nomask] [--seeds 0 1]

Stages: identity encoder (ONNX) -> judge -> scene bank -> toy base model (pre-trained) ->
shards (features through the pack's recognizer code) -> InstantFamily checkpoints trained by the
real trainer, one per (variant, seed): ``<out>/runs/<variant>-s<seed>/instantfamily.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger("toyworld")


@dataclass(frozen=True)
class Size:
    encoder_ids: int
    encoder_steps: int
    judge_ids: int
    judge_steps: int
    scenes: int
    base_steps: int
    base_batch: int
    train_steps: int
    train_batch: int
    views: int = 4  # views per identity for metric learning


SIZES = {
    # CI: every stage runs, nothing is meant to be good.
    "smoke": Size(
        encoder_ids=24,
        encoder_steps=4,
        judge_ids=24,
        judge_steps=4,
        scenes=32,
        base_steps=4,
        base_batch=8,
        train_steps=2,
        train_batch=2,
        views=2,
    ),
    "default": Size(
        encoder_ids=1200,
        encoder_steps=250,
        judge_ids=1200,
        judge_steps=300,
        scenes=3000,
        base_steps=1800,
        base_batch=16,
        train_steps=600,
        train_batch=8,
    ),
    "full": Size(
        encoder_ids=2400,
        encoder_steps=500,
        judge_ids=1500,
        judge_steps=500,
        scenes=8000,
        base_steps=4000,
        base_batch=16,
        train_steps=2000,
        train_batch=8,
    ),
}


@dataclass
class Paths:
    root: Path

    @property
    def recognizer_dir(self) -> Path:  # laid out like ComfyUI's models/insightface/models/<pack>
        from .encoder import PACK_NAME

        return self.root / "insightface" / "models" / PACK_NAME

    @property
    def recognizer(self) -> Path:
        from .encoder import ONNX_NAME

        return self.recognizer_dir / ONNX_NAME

    @property
    def judge(self) -> Path:
        return self.root / "judge.safetensors"

    @property
    def scenes(self) -> Path:
        return self.root / "scenes.npz"

    @property
    def base(self) -> Path:
        return self.root / "toy_base.safetensors"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    def run(self, variant: str, seed: int) -> Path:
        return self.root / "runs" / f"{variant}-s{seed}"

    def checkpoint(self, variant: str, seed: int) -> Path:
        return self.run(variant, seed) / "instantfamily.safetensors"


def _stage(report: dict, name: str, done: bool, action) -> None:
    if done:
        logger.info("%s: present, skipped", name)
        return
    start = time.time()
    result = action()
    report[name] = {"seconds": round(time.time() - start, 1), **(result if isinstance(result, dict) else {})}
    logger.info("%s: done in %.0f s", name, time.time() - start)


def resolve_device(name: str = "auto"):
    """``auto``: the GPU when torch sees one, else the CPU; ``cuda`` without a GPU is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: torch sees no GPU here; use --device cpu (or auto)")
    return device


def build(out: str | Path, size: str = "default", variants=("hard",), seeds=(0,), device: str = "auto") -> dict:
    """Run every missing stage; returns a report of what ran (written to <out>/build.json).

    ``device`` runs the encoder, judge and base pre-training; the InstantFamily trainer picks its
    own (accelerate: the GPU when there is one)."""
    import torch

    from . import base_model, data, encoder, judge, pretrain, toy_training, world

    torch.set_num_threads(int(os.environ.get("TOY_THREADS", "1")))  # 1: parallel builds share the cores
    device = resolve_device(device)
    sizes = SIZES[size]
    paths = Paths(Path(out))
    paths.root.mkdir(parents=True, exist_ok=True)
    split = world.split_identities()
    report: dict = {"size": size, "sizes": asdict(sizes), "device": str(device)}

    _stage(
        report,
        "encoder",
        paths.recognizer.is_file(),
        lambda: encoder.train_encoder(
            paths.recognizer_dir,
            split,
            num_identities=sizes.encoder_ids,
            views=sizes.views,
            steps=sizes.encoder_steps,
            device=device,
        ),
    )
    _stage(
        report,
        "judge",
        paths.judge.is_file(),
        lambda: judge.train_judge(
            paths.root, split, num_identities=sizes.judge_ids, views=sizes.views, steps=sizes.judge_steps, device=device
        ),
    )

    def scenes():
        bank = data.generate_scenes(sizes.scenes, split.train, seed=11)
        bank.save(paths.scenes)
        return {"count": len(bank)}

    _stage(report, "scenes", paths.scenes.is_file(), scenes)

    def base():
        toy = base_model.new_toy_base(seed=5)
        losses = pretrain.pretrain(
            toy, data.SceneBank.load(paths.scenes), sizes.base_steps, sizes.base_batch, device=device
        )
        base_model.save_toy_base(toy, paths.base)
        return {"final_loss": sum(losses[-20:]) / len(losses[-20:])}

    _stage(report, "base", paths.base.is_file(), base)

    def shards():
        manifest = data.write_shards(
            data.SceneBank.load(paths.scenes), data.ToyFaceFeatures(paths.recognizer), paths.shards
        )
        return {"faces": manifest["totals"]["faces"]}

    _stage(report, "shards", (paths.shards / "manifest.json").is_file(), shards)

    for variant in variants:
        for seed in seeds:
            _stage(
                report,
                f"train/{variant}-s{seed}",
                paths.checkpoint(variant, seed).is_file(),
                lambda v=variant, s=seed: {
                    "checkpoint": str(
                        toy_training.train_variant(
                            paths.base, paths.shards, paths.run(v, s), v, s, sizes.train_steps, sizes.train_batch
                        )
                    )
                },
            )
    previous = json.loads((paths.root / "build.json").read_text()) if (paths.root / "build.json").is_file() else {}
    previous.update(report)
    (paths.root / "build.json").write_text(json.dumps(previous, indent=2))
    return previous


ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_CHECKPOINT = "toy_instantfamily_demo.safetensors"


def export_demo_assets(out: str | Path, variant: str = "hard", seed: int = 0, assets: str | Path = ASSETS) -> dict:
    """Copy the demo model into ``toyworld/assets`` (what ``scripts/run_demo.py`` and the demo
    nodes use): the toy base, the InstantFamily checkpoint (ControlNet in fp16), the recognizer and the judge."""
    import shutil

    from train.export import export
    from train.state import list_checkpoints

    from .encoder import ONNX_NAME, PACK_NAME

    paths, assets = Paths(Path(out)), Path(assets)
    (assets / "instantfamily").mkdir(parents=True, exist_ok=True)
    recognizer_dir = assets / "insightface" / "models" / PACK_NAME
    recognizer_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths.base, assets / "toy_base.safetensors")
    shutil.copyfile(paths.judge, assets / "judge.safetensors")  # the demo's verdicts (scripts/demo_sheet.py)
    shutil.copyfile(paths.recognizer, recognizer_dir / ONNX_NAME)
    checkpoint = list_checkpoints(paths.run(variant, seed) / "checkpoints")[-1]
    use_ema = bool(json.loads((checkpoint / "state.json").read_text()).get("ema"))
    export(checkpoint, assets / "instantfamily" / DEMO_CHECKPOINT, use_ema=use_ema, dtype="fp16")
    sizes = {str(p.relative_to(assets)): p.stat().st_size for p in sorted(assets.rglob("*")) if p.is_file()}
    logger.info("demo assets in %s: %s (%.2f MB in all)", assets, sizes, sum(sizes.values()) / 1e6)
    return sizes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toyworld.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="output/toyworld", help="folder for every artifact (resumable)")
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--variants", nargs="+", default=["hard"], help="ablations to train: hard paper nomask")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu or cuda[:n]")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="also copy the hard / seed 0 model into toyworld/assets (the built-in demo)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    variants = tuple(dict.fromkeys(("hard",) + tuple(args.variants))) if args.demo else tuple(args.variants)
    seeds = tuple(dict.fromkeys((0,) + tuple(args.seeds))) if args.demo else tuple(args.seeds)
    report = build(args.out, args.size, variants, seeds, args.device)
    if args.demo:
        report["demo_assets"] = export_demo_assets(args.out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
