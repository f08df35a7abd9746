"""Sharding with torchrun: ``torchrun --nproc-per-node N -m fewshot_bench run ...``.

Each rank runs every ``world_size``-th work unit into its own store shard (``<store>.rank<r>``,
:mod:`fewshot_bench.store.shards`); rank 0 merges the shards into the run's store at the end and deletes each
shard whose episodes are all in it (``fewshot-bench merge`` does it by hand, for shards on other machines).
gloo on CPU, nccl on GPU; ``LOCAL_RANK`` picks the GPU.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import torch
import torch.distributed as dist

from ..methods.backbone import resolve_device
from ..store.results import ResultsStore
from ..store.shards import existing_shards, shard_path, world
from .run_config import RunConfig
from .runner import run


def run_distributed_or_local(config: RunConfig) -> Optional[str]:
    """Run locally, or as one rank of a torchrun job; returns the merged store path on rank 0, else None."""
    rank, world_size = world()
    if world_size == 1:
        shards = existing_shards(config.store)
        if shards:  # a sharded job was killed: keep its episodes, run only what is missing
            with ResultsStore(config.store) as store:
                store.merge_from(shards, remove_merged=True)
        return run(config)
    device = resolve_device(config.device)
    if device.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        config = dataclasses.replace(config, device=f"cuda:{local_rank}")
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        # a shard left by a killed job is kept: its episodes count as done and are merged at the end
        run(config, rank=rank, world_size=world_size, store_path=shard_path(config.store, rank), barrier=dist.barrier)
        dist.barrier()
        if rank != 0:
            return None
        with ResultsStore(config.store) as store:
            store.merge_from(existing_shards(config.store), remove_merged=True)
        return config.store
    finally:
        dist.destroy_process_group()
