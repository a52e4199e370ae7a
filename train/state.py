"""Training checkpoints without pickles: safetensors for tensors, JSON for everything else.

``<output>/checkpoints/step-00001000/`` holds the trainable weights (and EMA), the optimizer state,
the LR schedule, the grad scaler, every rank's RNG states and the data position. It is written to
``step-….tmp`` and renamed when complete, so a run killed at any moment (SIGKILL included) keeps
its previous checkpoints intact and loses at most one checkpoint interval.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step-(\d{8})$")


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(path))


def optimizer_to_files(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors and a JSON-able rest."""
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's python / numpy / torch (CPU and current CUDA device) generator states."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    meta = {"python": [version, list(internal), gauss], "numpy": [np_state[0], *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str, root: str | Path) -> Path | None:
    """'' -> None; 'latest' -> newest complete checkpoint (None if there is none); else that folder."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise ValueError(f"--resume {resume}: not a training checkpoint folder (no state.json)")
    return path


def remove_partial(root: str | Path) -> None:
    """Delete ``step-*.tmp`` folders left by a run killed while saving."""
    root = Path(root)
    if root.is_dir():
        for path in root.glob("step-*.tmp"):
            shutil.rmtree(path, ignore_errors=True)


def save_checkpoint_dir(
    root: str | Path,
    step: int,
    *,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict,
    state: dict,
    rank: int = 0,
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
    keep: int = 3,
) -> Path:
    """Write checkpoint ``step`` atomically; every rank calls this (each saves its RNG states)."""
    root = Path(root)
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    rng_tensors, rng_meta = rng_state()
    _save(rng_tensors, tmp / f"rng-{rank}.safetensors")
    (tmp / f"rng-{rank}.json").write_text(json.dumps(rng_meta))
    barrier()
    if is_main:
        _save(weights, tmp / "trainable.safetensors")
        opt_tensors, opt_meta = optimizer_to_files(optimizer_state)
        _save(opt_tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint_dir(path: str | Path, rank: int = 0) -> dict:
    """{'weights', 'optimizer', 'state'} of a checkpoint; restores this rank's RNG states."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    weights = load_file(str(path / "trainable.safetensors"))
    optimizer = optimizer_from_files(
        load_file(str(path / "optimizer.safetensors")), json.loads((path / "optimizer.json").read_text())
    )
    rng_file = path / f"rng-{rank}.safetensors"
    if rng_file.is_file():
        set_rng_state(load_file(str(rng_file)), json.loads((path / f"rng-{rank}.json").read_text()))
    else:  # resumed with more processes than were saved: derive a distinct seed for this rank
        torch.manual_seed(int(state.get("seed", 0)) * 1000 + rank + int(state["step"]))
    return {"weights": weights, "optimizer": optimizer, "state": state}
