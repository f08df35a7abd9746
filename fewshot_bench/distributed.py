"""Sharding with torchrun: ``torchrun --nproc-per-node N -m fewshot_bench run ...``.

Each rank runs every ``world_size``-th work unit into its own store shard (``<store>.rank<r>``);
rank 0 merges the shards into the run's store at the end (``fewshot-bench merge`` does it by hand).
gloo on CPU, nccl on GPU; ``LOCAL_RANK`` picks the GPU.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional


def world() -> tuple:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shard_path(store: str, rank: int) -> str:
    return f"{store}.rank{rank}"


def run_distributed_or_local(config) -> Optional[str]:
    """Run locally, or as one rank of a torchrun job; returns the merged store path on rank 0, else None."""
    from .runner import run

    rank, world_size = world()
    if world_size == 1:
        return run(config)
    import torch
    import torch.distributed as dist

    from .backbone import resolve_device
    from .store import ResultsStore

    device = resolve_device(config.device)
    if device.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        config = dataclasses.replace(config, device=f"cuda:{local_rank}")
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        shard = shard_path(config.store, rank)
        Path(shard).unlink(missing_ok=True)
        run(config, rank=rank, world_size=world_size, store_path=shard, barrier=dist.barrier)
        dist.barrier()
        if rank != 0:
            return None
        ResultsStore(config.store).merge_from([shard_path(config.store, r) for r in range(world_size)])
        return config.store
    finally:
        dist.destroy_process_group()
