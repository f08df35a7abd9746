"""CPU threads of a run: a default that cannot oversubscribe the machine, set before the backbone is loaded.

torch's default (one thread per core) assumes an idle machine and one process: on a shared 2-core machine at
load ~7 one MiniLM forward took 1007 ms with 2 threads and 116 ms with 1. The default here is
``$OMP_NUM_THREADS`` when set (torchrun sets it), else the cores this process may use that are not already busy
(1-minute load average), split between this job's processes on the machine (torchrun's ``LOCAL_WORLD_SIZE``).
"""
from __future__ import annotations

import logging
import os
from typing import Tuple

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> Tuple[int, str]:
    """(threads, why): ``$OMP_NUM_THREADS`` if set to a positive integer, else max(1, (cores − load) ÷ processes)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores = usable_cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    free = max(1, cores - int(round(min(load, cores))))
    return max(1, free // processes), f"{cores} usable cores, load {load:.1f}, {processes} process(es) on this machine"


def set_threads(requested: int = 0) -> int:
    """Set torch's intra-op threads (and $OMP_NUM_THREADS, for worker processes) to ``requested`` (0: the default
    above); log and return the number."""
    import torch

    threads, why = (requested, "--threads") if requested else default_threads()
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    log.info("torch CPU threads: %d (%s)", threads, why)
    return threads
