"""``run --launcher submitit``: a run as a Slurm job array through submitit (the ``slurm`` extra), one array task
per shard, merged into the run's store when every task has finished.

Task ``r`` of ``N`` runs every ``N``-th work unit of the run into its own shard ``<store>.rank<r>`` (the shards of a
torchrun job, :mod:`fewshot_bench.store.shards`), so a killed or failed array resumes like any run: submit the same
command again and the shards' episodes count as done. Array tasks do not wait for each other: a meta-trained cell
is trained by the first task that needs it and cached on disk (``$FEWSHOT_BENCH_CACHE``: put it on a filesystem
every node sees); a task that needs it before it is written trains it too, with the same result. Without a Slurm
cluster (``cluster="local"``) the tasks are local processes, which is how the tests run it.
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import UserError
from ..store.results import ResultsStore
from ..store.shards import check_no_conflicts, existing_shards, shard_path
from .launch_config import SubmititConfig
from .run_config import RunConfig
from .runner import run


def _submitit():
    try:
        import submitit  # optional extra: only this launcher needs it
    except ImportError:
        raise UserError("--launcher submitit needs submitit: pip install 'fewshot-bench[slurm]'") from None
    return submitit


def check_tasks_import_this_package(cwd: Path) -> None:
    """Array tasks start as ``python -m ...`` in the submitting folder, which then comes first on their import
    path: refuse (one line) when that folder holds a ``fewshot_bench`` package other than the one running here
    (a source checkout next to a non-editable install), since the tasks would run that one instead."""
    local = cwd / "fewshot_bench"
    if (local / "__init__.py").is_file() and local.resolve() != Path(__file__).resolve().parents[1]:
        raise UserError(f"--launcher submitit: the array tasks start in {cwd}, whose fewshot_bench/ is not the "
                        f"installed package ({Path(__file__).resolve().parents[1]}) they must run; submit from "
                        f"another folder, or install this checkout editable (pip install -e .)")


def shard_task(config: RunConfig, rank: int, tasks: int) -> str:
    """One array task: every ``tasks``-th unit of the run from ``rank`` into shard ``rank`` (no barrier)."""
    return run(config, rank=rank, world_size=tasks, store_path=shard_path(config.store, rank), barrier=lambda: None)


def run_submitit(config: RunConfig, launch: SubmititConfig) -> str:
    """Submit the run as ``launch.tasks`` array tasks, wait for them, merge their shards into ``config.store``
    (conflicts refused, merged shards deleted) and return the store path. A failed task's error is raised as a
    UserError naming its log; the shards of the tasks that finished are kept for the next submission."""
    submitit = _submitit()
    check_tasks_import_this_package(Path.cwd())
    folder = Path(launch.folder or f"{config.store}.submitit")
    executor = submitit.AutoExecutor(folder=folder, cluster=launch.cluster)
    executor.update_parameters(name="fewshot-bench", timeout_min=launch.timeout_min, mem_gb=launch.mem_gb,
                               cpus_per_task=launch.cpus_per_task, gpus_per_node=launch.gpus_per_task,
                               slurm_array_parallelism=launch.parallelism,
                               **({"slurm_partition": launch.partition} if launch.partition else {}))
    ranks = list(range(launch.tasks))
    jobs = executor.map_array(shard_task, [config] * launch.tasks, ranks, [launch.tasks] * launch.tasks)
    print(f"submitted {len(jobs)} array task(s) to {executor.cluster} (job {jobs[0].job_id.split('_')[0]}); "
          f"logs in {folder}/")
    failed = []
    for job in jobs:
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 - a task's failure is reported with its log, the others go on
            failed.append(f"task {job.job_id}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc} "
                          f"(log: {job.paths.stderr})")
    shards = existing_shards(config.store)
    if shards:
        check_no_conflicts([config.store, *shards])
        with ResultsStore(config.store) as store:
            store.merge_from(shards, remove_merged=True)
    if failed:
        raise UserError(f"{len(failed)} of {len(jobs)} array task(s) failed: {'; '.join(failed)}; the finished "
                        f"episodes are in {config.store}: submit the same command again to run the rest")
    return config.store
