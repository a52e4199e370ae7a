"""Independent prepare workers: which shards are this process's, and which GPU it uses.

Any scheduler works: ``--rank/--world-size`` flags, torchrun / accelerate (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) or SLURM tasks and array jobs. Workers never wait for each other.
"""

from __future__ import annotations

import os


def rank_and_world(rank: int = -1, world: int = -1, env=None) -> tuple[int, int, int]:
    """(rank, world size, local rank): the flags, else torchrun/accelerate, else SLURM (tasks and arrays)."""
    env = os.environ if env is None else env
    local = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", 0)))
    if rank >= 0 or world > 0:
        if not (0 <= rank < world):
            raise ValueError(f"--rank {rank} --world-size {world}: need 0 <= rank < world size (give both)")
        return rank, world, local
    if "WORLD_SIZE" in env:
        return int(env.get("RANK", 0)), int(env["WORLD_SIZE"]), local
    task, tasks = int(env.get("SLURM_PROCID", 0)), int(env.get("SLURM_NTASKS", 1))
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return index * tasks + task, int(env["SLURM_ARRAY_TASK_COUNT"]) * tasks, local
    return task, tasks, local


def pin_gpu(local_rank: int, env=None) -> str | None:
    """Make this process see only its local rank's GPU (torch cuda:0 and ONNX Runtime device 0 are then it).

    Must run before CUDA is initialised. A scheduler that already gives each process one GPU is left alone.
    """
    env = os.environ if env is None else env
    visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if len(visible) == 1:
        return visible[0]
    chosen = visible[local_rank % len(visible)] if visible else str(local_rank)
    env["CUDA_VISIBLE_DEVICES"] = chosen
    return chosen
