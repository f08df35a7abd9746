"""``fewshot-bench run``: methods x settings x episodes into a results store, resumable.

Work units are (setting, method spec, episode index, restart), evaluated by the one episode loop
(:func:`fewshot_bench.execution.evaluate.evaluate`). A unit already in the store (same run hash; restarts > 0 under
their own ``restart_hash``) is skipped, so re-running a command resumes it; each finished episode is one committed
transaction. Under torchrun each rank runs every ``world_size``-th unit into its own shard
(:mod:`fewshot_bench.execution.distributed`). Meta-trained state is cached on disk
(:mod:`fewshot_bench.execution.meta_cache`), keyed by the run hash.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..core.errors import UserError
from ..core.interrupts import watch_sigint
from ..core.outputs import check_outputs, leaderboard_paths
from ..core.progress import Progress
from ..core.threads import set_threads
from ..data.loading import local_folder
from ..data.pinning import data_record
from ..episodes.sampling import Setting
from ..methods.api import Method
from ..methods.backbone import load_backbone, resolve_device
from ..methods.spec import method_from_spec, parse_spec
from ..store import content
from ..store.environment import fingerprint
from ..store.results import ResultsStore
from ..store.shards import existing_shards
from .calibration import cache_file
from .evaluate import Cell, Executor, Hooks, Unit, evaluate, sealed_worker
from .plan import episode_rates
from .run_config import RunConfig, method_specs, settings_of
from .tuned import load_tuned, tuned_overrides
from .worker import SealedWorker


def _check_run(config: RunConfig, settings: List[Setting], tuned: Optional[dict], store_path: str,
               worker: Optional[SealedWorker] = None) -> List[Method]:
    """Everything a run can trip over, checked before the store is created: methods and their configs, settings,
    tuned entries, source pools, the outputs. Returns one instance of each method spec (built in ``worker``)."""
    build = worker.describe if worker is not None else method_from_spec
    checked = [build(parse_spec(spec)[0], overrides) for spec, overrides in method_specs(config).items()]
    meta_trained = [m.name for m in checked if m.protocol == "meta-trained"]
    for setting in settings:
        setting.target_episode(config.seed, 0)
        for spec in method_specs(config) if tuned is not None else ():  # every (setting, method) has a tuned entry
            tuned_overrides(tuned, config.tuned, setting.label, parse_spec(spec)[0])
        if not setting.has_source_pool and meta_trained:  # has_source_pool also loads the source task
            raise UserError(f"method(s) {', '.join(meta_trained)} meta-train on a source pool, but {setting.label} has "
                            f"none; pass --source-task TASK or drop them from --methods")
    check_run_outputs(config, store_path)
    return checked


def run_inputs(config: RunConfig, config_file: Optional[str] = None, tasks_dirs=()) -> List[Tuple[str, str]]:
    """(path, what) of the files a run reads that no output may name: --config, --tuned, method files, the cards
    of --tasks-dir."""
    inputs = [(config_file, "--config"), (config.tuned, "--tuned")]
    inputs += [(parse_spec(spec)[0].rpartition(":")[0], f"the method file of {spec}")
               for spec in method_specs(config) if ":" in parse_spec(spec)[0]]
    inputs += [(str(card), "the task card") for folder in tasks_dirs for card in sorted(Path(folder).glob("*.yaml"))]
    return inputs


def check_run_outputs(config: RunConfig, store_path: Optional[str] = None, config_file: Optional[str] = None,
                      tasks_dirs=()) -> None:
    """The run's store (and this rank's shard) and leaderboard files: writable, distinct, none of them an input."""
    shard = store_path if store_path not in (None, config.store) else None
    check_outputs([(config.store, "--store"), (shard, "--store (this rank's shard)"),
                   *((path, "--out") for path in (leaderboard_paths(config.out) if config.out else ()))],
                  run_inputs(config, config_file, tasks_dirs))


def run(config: RunConfig, *, rank: int = 0, world_size: int = 1, store_path: Optional[str] = None,
        barrier=None, only: Optional[Mapping[Tuple[str, str, int], Optional[Collection[int]]]] = None,
        finished: Sequence = ()) -> str:
    """Execute the run; returns the store path written (a shard path when ``world_size > 1``).

    ``only``: run just these (setting label, method spec, restart) units, each with the episode indices it maps to
    (None: all its episodes); ``only=None``: every unit of the config. ``finished``: more stores, read-only (objects
    with ``done_indices``, e.g. ``campaign.Finished``), whose finished episodes count as done and whose ``content``
    hashes are checked; the caller opens and closes them. Before anything is written, the texts of every episode of this
    rank's units are checked against the content hashes stored (:func:`fewshot_bench.store.content.check_and_record`).

    With several ranks, the meta-trainings (meta-trained method x setting with episodes left) are shared
    out round-robin and cached on disk ($FEWSHOT_BENCH_CACHE: put it on a shared filesystem for multi-node
    jobs); after ``barrier()`` every rank loads them instead of training again.
    """
    set_threads(config.threads)  # before the backbone is loaded: torch's default assumes an idle machine
    settings = settings_of(config)
    tuned = load_tuned(config.tuned) if config.tuned else None
    device = resolve_device(config.device)
    worker = sealed_worker(config, device, [config.store, store_path or config.store])  # it loads the backbone
    try:
        return _run(config, settings, tuned, device, worker, rank=rank, world_size=world_size, store_path=store_path,
                    barrier=barrier, only=only, finished=finished)
    finally:
        if worker is not None:
            worker.close()


def _run(config: RunConfig, settings, tuned, device: str, worker: Optional[SealedWorker], *, rank: int,
         world_size: int, store_path: Optional[str], barrier, only, finished) -> str:
    checked = _check_run(config, settings, tuned, store_path or config.store, worker)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    backbones = {} if worker is not None else {
        (attn, config.backbone): load_backbone(config.backbone, device=device, attn_implementation=attn)
        for attn in sorted({m.attn_implementation for m in checked})}
    n_episodes = min(config.episodes, config.limit) if config.limit else config.episodes
    store = ResultsStore(store_path or config.store)
    # resume: episodes finished in the run's store or in any shard of an earlier (killed) torchrun job
    finished_elsewhere = [ResultsStore(path) for path in [config.store, *existing_shards(config.store)]
                          if Path(path) != store.path and Path(path).is_file()]
    executor = Executor(config, device, backbones, [store, *finished_elsewhere, *finished], tuned, worker)
    rates = estimated_rates(config)
    if worker is not None:
        executor.timeouts = estimated_timeouts(config, rates)
    units = [Unit(s, m, i, r) for s in settings for m in executor.specs for i in range(n_episodes)
             for r in range(config.restarts) if _chosen(only, (s.label, m, r), i)]
    mine = units[rank::world_size]
    episodes = {(u.setting, u.index): None for u in mine}
    content.check_and_record(store.conn, str(store.path), [s.target_episode(config.seed, i) for s, i in episodes],
                             [content.stored(s.conn) for s in finished_elsewhere]
                             + [f.content for f in finished])
    tasks = {t for s in settings for t in (s.task, s.source_task) if t}
    run_id = store.start_run(dataclasses.asdict(config), device, config.seed,
                             environment=fingerprint(device, executor.autocast),
                             data=data_record(tasks, local_folder))
    if world_size > 1:  # meta-training shared out round-robin, cached on disk, then loaded by every rank
        cells = [executor.cell(s, m) for s, m in dict.fromkeys((u.setting, u.spec) for u in units)]
        pending = [c for c in cells if c.method.protocol == "meta-trained"
                   and {(u.index, u.restart) for u in units} - c.done]
        for cell in pending[rank::world_size]:
            executor.prepare_cell(cell)
        barrier()
    cost = unit_costs(rates)
    bar = Progress(len(mine), "episodes", every=config.progress_every, interval=config.progress_seconds,
                   total_cost=sum(map(cost, mine)) if rates else None)
    try:
        with watch_sigint():  # Ctrl-C stops the run (finished episodes are committed); a method's own raise does not
            for record in evaluate(executor, mine, hooks=_ProgressHooks(bar, cost)):
                store.write_episode({**record.values, "run_id": run_id}, record.declarations)
                bar.update(1, cost(record.unit))
        store.end_run(run_id)
    finally:
        bar.close()
        for opened in (store, *finished_elsewhere):
            opened.close()
    return store.path


def _chosen(only, key: Tuple[str, str, int], index: int) -> bool:
    """Whether episode ``index`` of unit ``key`` is one ``run``'s ``only`` selects."""
    return only is None or (key in only and (only[key] is None or index in only[key]))


TIMEOUT_FACTOR, TIMEOUT_FLOOR = 20.0, 600.0


def estimated_rates(config: RunConfig) -> Dict[Tuple[str, str], float]:
    """The dry run's estimate of one episode per (setting label, method spec), for the methods this machine's
    calibration cache holds (measures nothing; empty without a cache file)."""
    return episode_rates(config, calibrate_missing=False) if cache_file().is_file() else {}


def estimated_timeouts(config: RunConfig, rates: Dict[Tuple[str, str], float]) -> Dict[Tuple[str, str], float]:
    """With ``--episode-timeout`` unset: per (setting label, method spec) of ``rates`` ``max(TIMEOUT_FLOOR,
    TIMEOUT_FACTOR x`` its estimate``)``; the others keep
    :data:`~fewshot_bench.execution.evaluate.DEFAULT_EPISODE_TIMEOUT`."""
    if config.episode_timeout is not None:
        return {}
    return {key: max(TIMEOUT_FLOOR, TIMEOUT_FACTOR * seconds) for key, seconds in rates.items()}


def unit_costs(rates: Dict[Tuple[str, str], float]) -> Callable[[Unit], float]:
    """A unit's estimated seconds for the progress ETA: its method and cell's rate, else the mean rate."""
    mean = sum(rates.values()) / len(rates) if rates else 0.0
    return lambda unit: rates.get((unit.setting.label, unit.spec), mean)


class _ProgressHooks(Hooks):
    """The run's progress bar: skipped units count as done (not toward the rate), the current cell is shown."""

    def __init__(self, bar: Progress, cost: Callable[[Unit], float]):
        self.bar, self.cost = bar, cost

    def skipped(self, unit: Unit) -> None:
        self.bar.skip(1, self.cost(unit))

    def started(self, unit: Unit, cell: Cell) -> None:
        self.bar.set_current(f"{cell.label} | {unit.setting.label}")
