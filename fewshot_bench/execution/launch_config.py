"""The options of ``run --launcher submitit`` (:mod:`fewshot_bench.execution.launchers`), apart from the launcher
so that the command line declares its flags from them without loading torch."""
from __future__ import annotations

import dataclasses
from typing import Optional

from ..core.config import option, validate


@dataclasses.dataclass
class SubmititConfig:
    """Where and how the array tasks of ``run --launcher submitit`` run."""
    tasks: int = option(2, help="array tasks (shards); each runs every N-th episode of the run", low=1, high=4096)
    folder: str = option("", help="folder of submitit's job files and logs (default: <store>.submitit)")
    cluster: Optional[str] = option(None, help="submitit cluster: slurm, local (processes on this machine) or "
                                               "debug (in this process); default: slurm where sbatch exists, else "
                                               "local", choices=(None, "slurm", "local", "debug"))
    parallelism: int = option(2, help="array tasks running at once (Slurm's array throttle; a local array "
                                      "starts all)", low=1, high=4096)
    timeout_min: int = option(600, help="time limit of each array task, minutes", low=1, high=525600)
    partition: str = option("", help="Slurm partition (default: the cluster's default partition)")
    gpus_per_task: int = option(0, help="GPUs of each array task", low=0, high=64)
    cpus_per_task: int = option(2, help="CPU cores of each array task", low=1, high=1024)
    mem_gb: int = option(16, help="memory of each array task, GB", low=1, high=4096)

    def __post_init__(self):
        validate(self, "--launcher submitit")
