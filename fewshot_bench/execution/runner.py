"""``fewshot-bench run`` execution: methods x settings x episodes into a results store, resumable.

Work units are (setting, method spec, episode index, restart). A unit already in the store (same run hash;
restarts > 0 under their own ``restart_hash``) is skipped, so re-running a command resumes it; each finished episode is one committed transaction. Under
torchrun each rank runs every ``world_size``-th unit into its own shard (:mod:`fewshot_bench.execution.distributed`).
Meta-trained state is cached on disk by the framework (:mod:`fewshot_bench.execution.meta_cache`), keyed by the run hash.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch

from ..methods.backbone import Backbone, load_backbone, resolve_device
from ..store.environment import fingerprint
from ..episodes.sampling import Episode, Setting
from ..core.errors import UserError
from .harness import failure_reason, run_episode
from ..core.interrupts import is_method_failure, watch_sigint
from ..core.hashing import config_hash, hash_seed
from .meta_cache import load_meta_state, meta_state_path, save_meta_state
from ..methods.api import MetaContext, Method
from ..core.outputs import check_outputs, leaderboard_paths
from ..core.progress import Progress
from .run_config import RunConfig, method_specs, settings_of
from ..store.shards import existing_shards
from ..methods.spec import method_from_spec, method_label, parse_spec
from ..store.results import ResultsStore
from ..core.threads import set_threads
from .tuned import load_tuned, tuned_overrides
from .worker import SealedWorker

log = logging.getLogger(__name__)


def episode_seed(seed: int, setting: Setting, index: int, restart: int = 0) -> int:
    """Training seed of one episode and restart: the same for every method, so head inits match; restart 0 is
    the seed of a run without restarts."""
    return hash_seed(json.dumps([seed, setting.label, index] + ([restart] if restart else [])))


@dataclass
class Cell:
    """One (setting, method spec) of a run: the method instance and the runner's bookkeeping for it."""
    setting: Setting
    method: Method
    label: str                      # leaderboard name: the spec with its overrides
    run_hash: str                   # identity of (method, config, seed, backbone, source task) in the store
    done: Set[Tuple[int, int]] = field(default_factory=set)   # (episode index, restart) already stored (resume)
    source_episodes: Optional[Callable[[int], Episode]] = None
    meta_trained: bool = False
    meta_train_seconds: Optional[float] = None  # wall time of the meta-training (also when its state was cached)
    same_class_source: bool = False  # the source pool shares classes with the evaluated pool (rows ranked apart)
    meta_error: Optional[str] = None  # why meta-training (or loading its state) failed: every episode fails with it


class Run:
    """The execution state of one ``run()``: device, backbones, the cells, the stores, the tuned configs."""

    def __init__(self, config: RunConfig, device: str, backbones: Dict[Tuple[str, str], Backbone],
                 store: ResultsStore, finished_elsewhere: List[ResultsStore], tuned: Optional[dict] = None,
                 worker: Optional[SealedWorker] = None):
        self.config = config
        self.worker = worker  # None: methods' code runs in this process
        self.device = device
        self.autocast = autocast_dtype(device, config.bf16)
        self.store = store
        self.run_id = store.start_run(dataclasses.asdict(config), device, config.seed,
                                      environment=fingerprint(device, self.autocast))
        self.finished_elsewhere = finished_elsewhere
        self.specs = method_specs(config)
        self.tuned = tuned
        self.backbones = backbones
        self.cells: Dict[Tuple[Setting, str], Cell] = {}

    def cell(self, setting: Setting, spec: str) -> Cell:
        """The cell of (setting, spec), created once with the episodes already stored anywhere."""
        key = (setting, spec)
        if key not in self.cells:
            config = self.config
            method, label, run_hash = cell_identity(config, spec, self.specs[spec], setting, self.tuned, self.worker)
            done = {(index, restart) for restart in range(config.restarts)
                    for store in [self.store, *self.finished_elsewhere]
                    for index in store.done_indices(restart_hash(run_hash, restart), label, config.backbone,
                                                    setting.task, setting.label)}
            source = setting.source_episodes(config.seed)
            shared = setting.shared_source_classes if source is not None and method.protocol != "target-only" else ()
            if shared:
                log.warning("%s on %s: the source pool shares %d class(es) with the evaluated pool (%s): its rows are "
                            "marked same-class-source and ranked apart (not few-shot on those classes)", label,
                            setting.label, len(shared), ", ".join(shared[:5]) + (", ..." if len(shared) > 5 else ""))
            self.cells[key] = Cell(setting, method, label, run_hash, done, source, same_class_source=bool(shared))
        return self.cells[key]

    def backbone_for(self, method: Method) -> Optional[Backbone]:
        if self.worker is not None:  # the worker holds the backbone
            return None
        key = (method.attn_implementation, self.config.backbone)
        if key not in self.backbones:
            self.backbones[key] = load_backbone(self.config.backbone, device=self.device,
                                                attn_implementation=method.attn_implementation)
        return self.backbones[key]

    def prepare(self, cell: Cell) -> Backbone:
        """The cell's backbone, loaded; a meta-trained method meta-trained (or its cached state loaded) once."""
        backbone = self.backbone_for(cell.method)
        if cell.method.protocol == "meta-trained" and not cell.meta_trained:
            cell.meta_trained = True
            try:
                self.meta_train(cell, backbone)
            except BaseException as exc:  # the method's failure fails the cell's episodes; a real Ctrl-C stops the run
                if not is_method_failure(exc):
                    raise
                cell.meta_error = "meta_train failed: " + failure_reason(exc)
                log.warning("%s on %s: %s", cell.label, cell.setting.label, cell.meta_error.splitlines()[0])
        return backbone

    def meta_train(self, cell: Cell, backbone: Backbone) -> None:
        """Load the cell's meta-trained state from the cache (only a file written for this cell, with the tensor
        names and shapes the method expects), or meta-train and cache it."""
        seed, method = self.config.seed, cell.method
        payload = {"run": cell.run_hash, "method": method.name, "config": method.config_dict(),
                   "setting": cell.setting.label, "autocast": str(self.autocast),
                   "source": cell.source_episodes(0).fingerprint}
        path = meta_state_path(config_hash(payload))
        cached = load_meta_state(path, payload, method.state_shapes(backbone) if backbone is not None else None)
        if cached is not None:
            state, metadata = cached
            if self.worker is not None:
                self.worker.load_state(method, state)
            else:
                method.load_state_dict(state)
            seconds = metadata.get("meta_train_seconds")  # wall time of the training that wrote the file
            cell.meta_train_seconds = float(seconds) if seconds else None
            log.info("%s: loaded meta-trained state from %s", cell.label, path)
            return
        log.info("meta-training %s for %s", cell.label, cell.setting.label)
        started = time.perf_counter()
        if self.worker is not None:
            state = self.worker.meta_train(method, seed=seed, source_episodes=cell.source_episodes,
                                           validation_episodes=cell.setting.validation_episodes(seed),
                                           autocast_dtype=self.autocast)
        else:
            method.meta_train(MetaContext(backbone, seed, cell.source_episodes, autocast_dtype=self.autocast,
                                          validation_episodes=cell.setting.validation_episodes(seed)))
            state = method.state_dict()
        cell.meta_train_seconds = time.perf_counter() - started
        log.info("meta-trained %s for %s: %.1f s", cell.label, cell.setting.label, cell.meta_train_seconds)
        if state is not None:
            save_meta_state(path, state, payload,
                            {"label": cell.label, "meta_train_seconds": repr(cell.meta_train_seconds)})

    def evaluate(self, cell: Cell, index: int, restart: int = 0) -> None:
        """Run episode ``index`` of the cell with training restart ``restart`` and write its record to the store."""
        config, setting = self.config, cell.setting
        backbone = self.prepare(cell)
        episode = setting.target_episode(config.seed, index)
        if cell.meta_error is not None:
            record = {"status": "failed", "error": cell.meta_error, "trainable_params": 0, "predictions": None}
        else:
            record = episode_record(cell.method, episode, backbone,
                                    seed=episode_seed(config.seed, setting, index, restart),
                                    autocast=self.autocast, source_episodes=cell.source_episodes,
                                    worker=self.worker)
        record["meta_train_seconds"] = cell.meta_train_seconds
        protocol = cell.method.protocol if cell.source_episodes is not None else "target-only"
        record["same_class_source"] = None if protocol == "target-only" else int(cell.same_class_source)
        k_shot = "-".join(map(str, setting.k_shot)) if isinstance(setting.k_shot, tuple) else str(setting.k_shot)
        self.store.write_episode({
            **record, "run_id": self.run_id, "config_hash": restart_hash(cell.run_hash, restart), "method": cell.label,
            "protocol": protocol,
            "backbone": config.backbone, "task": setting.task, "setting": setting.label, "n_way": episode.n_way,
            "k_shot": k_shot, "q_query": setting.q_query, "fold": setting.fold, "seed": config.seed,
            "episode_index": index, "fingerprint": episode.fingerprint, "extra": {"source_task": setting.source_task,
                                                                           "classes": list(episode.classes),
                                                                           "query_labels": list(episode.query_labels)},
            "restart": restart,
        })
        if record["status"] != "ok":
            log.warning("%s on %s episode %d: %s", cell.label, setting.label, index,
                        (record["error"] or "").splitlines()[0])


def cell_identity(config: RunConfig, spec: str, overrides: Dict[str, str], setting: Setting,
                  tuned: Optional[dict] = None, worker: Optional[SealedWorker] = None) -> Tuple[Method, str, str]:
    """(method instance, leaderboard label, run hash) of the run's method ``spec`` (with its ``overrides``, from
    :func:`method_specs`) on ``setting``. Its episodes are stored under (:func:`restart_hash` of the run hash,
    label, backbone, task, setting label): :meth:`Run.cell` and ``fewshot-bench campaign`` both key on this."""
    name = parse_spec(spec)[0]
    chosen = tuned_overrides(tuned, config.tuned, setting.label, name) if tuned is not None else None
    values = {**(chosen or {}), **overrides}
    # with a worker, a method file is imported (and its code run) only there; the stub has the same name and config
    method = worker.describe(name, values) if worker is not None else method_from_spec(name, values)
    label = method_label(method.name, overrides) + ("[tuned]" if chosen is not None else "")
    run_hash = config_hash({"method": method.name, "config": method.config_dict(), "seed": config.seed,
                            "backbone": config.backbone, "source_task": setting.source_task})
    return method, label, run_hash


def restart_hash(run_hash: str, restart: int) -> str:
    """The store key of a restart: the run hash itself for restart 0 (stores without restarts stay resumable),
    a hash of (run hash, restart) otherwise."""
    return run_hash if restart == 0 else config_hash({"run": run_hash, "restart": restart})


def episode_record(method: Method, episode: Episode, backbone: Optional[Backbone], *, seed: int,
                   autocast: Optional[torch.dtype], source_episodes: Optional[Callable[[int], Episode]],
                   worker: Optional[SealedWorker] = None) -> dict:
    """One episode as ``run`` evaluates it (``bench/bench.py`` times this function): :func:`run_episode` under the
    run's autocast, the frozen-embedding cache fill it triggered kept out of ``wall_seconds`` (a one-off cost of
    the run) and reported as ``embedding_cache_seconds``."""
    cache_before = backbone.embedding_cache_seconds if worker is None else 0.0
    record = run_episode(method, episode, backbone, seed=seed, autocast_dtype=autocast, source_episodes=source_episodes,
                         worker=worker)
    record.pop("diverged", None)
    if worker is None:  # a worker measures its own cache fill
        record["embedding_cache_seconds"] = backbone.embedding_cache_seconds - cache_before
    record["wall_seconds"] -= record["embedding_cache_seconds"]
    return record


def autocast_dtype(device: str, bf16: bool = True) -> Optional[torch.dtype]:
    """torch.bfloat16 on a CUDA device that supports it when ``bf16``, else None (no autocast)."""
    return torch.bfloat16 if (bf16 and device.startswith("cuda") and torch.cuda.is_bf16_supported()) else None


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
        barrier=None, only: Optional[Set[Tuple[str, str, int]]] = None, finished: Sequence = ()) -> str:
    """Execute the run; returns the store path written (a shard path when ``world_size > 1``).

    ``only``: run just these (setting label, method spec, restart) units, each with all its episodes (None: every
    unit of the config). ``finished``: more stores, read-only (objects with ``done_indices``, e.g.
    ``campaign.Finished``), whose finished episodes count as done; the caller opens and closes them.

    With several ranks, the meta-trainings (meta-trained method x setting with episodes left) are shared
    out round-robin and cached on disk ($FEWSHOT_BENCH_CACHE: put it on a shared filesystem for multi-node
    jobs); after ``barrier()`` every rank loads them instead of training again.
    """
    set_threads(config.threads)  # before the backbone is loaded: torch's default assumes an idle machine
    settings = settings_of(config)
    tuned = load_tuned(config.tuned) if config.tuned else None
    device = resolve_device(config.device)
    worker = None
    if config.isolation != "in-process":  # methods' code runs in sealed worker processes, which load the backbone
        worker = SealedWorker(config.backbone, device=device, threads=torch.get_num_threads(),
                              isolation=config.isolation, timeout=config.episode_timeout,
                              deny=[config.store, store_path or config.store, str(meta_state_path("x").parent)])
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
    execution = Run(config, device, backbones, store, [*finished_elsewhere, *finished], tuned, worker)
    units = [(s, m, i, r) for s in settings for m in execution.specs for i in range(n_episodes)
             for r in range(config.restarts) if only is None or (s.label, m, r) in only]
    if world_size > 1:  # meta-training shared out round-robin, cached on disk, then loaded by every rank
        cells = [execution.cell(s, m) for s, m in dict.fromkeys((s, m) for s, m, _, _ in units)]
        pending = [c for c in cells if c.method.protocol == "meta-trained"
                   and {(i, r) for _, _, i, r in units} - c.done]
        for cell in pending[rank::world_size]:
            execution.prepare(cell)
        barrier()
    mine = units[rank::world_size]
    bar = Progress(len(mine), "episodes", every=config.progress_every, interval=config.progress_seconds)
    try:
        with watch_sigint():  # Ctrl-C stops the run (finished episodes are committed); a method's own raise does not
            for setting, spec, index, restart in mine:
                cell = execution.cell(setting, spec)
                if (index, restart) in cell.done:  # resume: stored in this store or a shard of a killed job
                    bar.skip(1)
                    continue
                bar.set_current(f"{cell.label} | {setting.label}")
                execution.evaluate(cell, index, restart)
                bar.update(1)
        store.end_run(execution.run_id)
    finally:
        bar.close()
        for opened in (store, *finished_elsewhere):
            opened.close()
    return store.path
