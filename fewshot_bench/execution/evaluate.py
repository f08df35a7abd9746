"""The one episode loop under every entry point: units of a run configuration, one meta-training per cell, typed
records.

A *unit* is (setting, method spec, episode index, restart). :class:`Executor` turns a run configuration into
cells (one per setting x method spec: the method instance, its leaderboard label and run hash, the episodes
already stored), prepares a cell once (:meth:`Executor.prepare_cell`: the backbone, and for a meta-trained
method its meta-training or its cached state) and evaluates units (:func:`evaluate`), yielding an
:class:`EpisodeRecord` per episode. ``run``, ``reproduce``, ``tune``, the campaign queue and ``bench/`` drive
this loop; the sealed worker (:mod:`fewshot_bench.execution.worker`) plugs in as the executor's ``worker``.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence, Set, Tuple

import torch

from ..core.hashing import config_hash, hash_seed
from ..core.interrupts import is_method_failure
from ..episodes.sampling import Episode, Setting
from ..methods.api import MetaContext, Method
from ..methods.backbone import Backbone, load_backbone
from ..methods.spec import method_from_spec, method_label, parse_spec
from ..store.schema import Figure
from .harness import failure_reason, run_episode
from .meta_cache import load_meta_state, meta_state_path, save_meta_state
from .run_config import RunConfig, method_specs
from .tuned import tuned_overrides
from .worker import SealedWorker

log = logging.getLogger(__name__)


def episode_seed(seed: int, setting: Setting, index: int, restart: int = 0) -> int:
    """Training seed of one episode and restart: the same for every method, so head inits match; restart 0 is
    the seed of a run without restarts."""
    return hash_seed(json.dumps([seed, setting.label, index] + ([restart] if restart else [])))


def autocast_dtype(device: str, bf16: bool = True) -> Optional[torch.dtype]:
    """torch.bfloat16 on a CUDA device that supports it when ``bf16``, else None (no autocast)."""
    return torch.bfloat16 if (bf16 and device.startswith("cuda") and torch.cuda.is_bf16_supported()) else None


def restart_hash(run_hash: str, restart: int) -> str:
    """The store key of a restart: the run hash itself for restart 0 (stores without restarts stay resumable),
    a hash of (run hash, restart) otherwise."""
    return run_hash if restart == 0 else config_hash({"run": run_hash, "restart": restart})


DEFAULT_EPISODE_TIMEOUT = 3600.0  # seconds, when --episode-timeout is unset and no estimate gives one


def sealed_worker(config: RunConfig, device: str, deny: Sequence[str] = ()) -> Optional[SealedWorker]:
    """The sealed worker the methods of ``config`` run in (None: ``isolation`` in-process), with the config's
    isolation level and episode timeout (unset: :data:`DEFAULT_EPISODE_TIMEOUT`, until
    :attr:`Executor.timeouts` gives a cell's) and torch's current threads; it may not read ``deny`` (stores) nor
    the meta-training cache."""
    if config.isolation == "in-process":
        return None
    timeout = DEFAULT_EPISODE_TIMEOUT if config.episode_timeout is None else config.episode_timeout
    return SealedWorker(config.backbone, device=device, threads=torch.get_num_threads(), isolation=config.isolation,
                        timeout=timeout, deny=[*deny, str(meta_state_path("x").parent)])


def cell_identity(config: RunConfig, spec: str, overrides: Dict[str, object], setting: Setting,
                  tuned: Optional[dict] = None, worker: Optional[SealedWorker] = None) -> Tuple[Method, str, str]:
    """(method instance, leaderboard label, run hash) of the run's method ``spec`` (with its ``overrides``, from
    :func:`method_specs`) on ``setting``. Its episodes are stored under (:func:`restart_hash` of the run hash,
    label, backbone, task, setting label): :meth:`Executor.cell` and ``fewshot-bench campaign`` both key on this."""
    name = parse_spec(spec)[0]
    chosen = tuned_overrides(tuned, config.tuned, setting.label, name) if tuned is not None else None
    values = {**(chosen or {}), **overrides}
    # with a worker, a method file is imported (and its code run) only there; the stub has the same name and config
    method = worker.describe(name, values) if worker is not None else method_from_spec(name, values)
    label = method_label(method.name, overrides) + ("[tuned]" if chosen is not None else "")
    run_hash = config_hash({"method": method.name, "config": method.config_dict(), "seed": config.seed,
                            "backbone": config.backbone, "source_task": setting.source_task})
    return method, label, run_hash


def episode_record(method: Method, episode: Episode, backbone: Optional[Backbone], *, seed: int,
                   autocast: Optional[torch.dtype], source_episodes: Optional[Callable[[int], Episode]],
                   worker: Optional[SealedWorker] = None) -> dict:
    """One episode as every unit is evaluated (``bench/bench.py`` and the dry-run calibration time this function):
    :func:`~fewshot_bench.execution.harness.run_episode` under the run's autocast, the frozen-embedding cache
    fill it triggered kept out of ``wall_seconds`` (a one-off cost of the run) and reported as
    ``embedding_cache_seconds``."""
    cache_before = backbone.embedding_cache_seconds if worker is None else 0.0
    record = run_episode(method, episode, backbone, seed=seed, autocast_dtype=autocast, source_episodes=source_episodes,
                         worker=worker)
    record.pop("diverged", None)
    if worker is None:  # a worker measures its own cache fill
        record["embedding_cache_seconds"] = backbone.embedding_cache_seconds - cache_before
    record["wall_seconds"] -= record["embedding_cache_seconds"]
    return record


def meta_context(backbone: Backbone, seed: int, setting: Setting, source_episodes: Callable[[int], Episode],
                 autocast: Optional[torch.dtype]) -> MetaContext:
    """The context of a method's meta-training on ``setting``: its source-pool episodes and its validation-pool
    episodes (for early stopping), under the run's autocast. The one place a MetaContext is built in this
    process (the sealed worker builds the same from what the harness sends it)."""
    return MetaContext(backbone, seed, source_episodes, autocast_dtype=autocast,
                       validation_episodes=setting.validation_episodes(seed))


@dataclass(frozen=True)
class Unit:
    """One episode to evaluate: episode ``index`` of ``setting`` for method ``spec``, training restart ``restart``."""
    setting: Setting
    spec: str
    index: int
    restart: int = 0


@dataclass
class Cell:
    """One (setting, method spec) of a run: the method instance and the executor's bookkeeping for it."""
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


@dataclass
class EpisodeRecord:
    """One evaluated episode: its unit, its cell's label and store key, ``values``: the store's episode row
    without the run id (status, error, predictions, the harness's scores and timings, the episode's key and
    fingerprint, and ``figures``: {name: value} of the method's reported figures), and ``declarations``: the
    method's :class:`~fewshot_bench.store.schema.Figure` s (what ``ResultsStore.write_episode`` stores with it)."""
    unit: Unit
    label: str
    config_hash: str
    values: Dict[str, object]
    declarations: Tuple[Figure, ...] = ()

    @property
    def status(self) -> str:
        return str(self.values["status"])

    @property
    def figures(self) -> Dict[str, float]:
        """The method's figures of this episode (empty when it failed or reported none)."""
        return dict(self.values.get("figures") or {})

    @property
    def accuracy(self) -> Optional[float]:
        """Query accuracy; None when the episode failed."""
        return self.values.get("accuracy") if self.status != "failed" else None


class Hooks:
    """Callbacks of :func:`evaluate` (each a no-op here; override what you need)."""

    def skipped(self, unit: Unit) -> None:
        """``unit`` was already stored (or ``skip`` said so) and is not evaluated."""

    def started(self, unit: Unit, cell: Cell) -> None:
        """``unit`` is about to be evaluated (its cell is prepared first)."""


class Executor:
    """Cells of a run configuration, prepared once each, and the evaluation of their units.

    ``done_in``: stores (objects with ``done_indices``, e.g. :class:`~fewshot_bench.store.results.ResultsStore`)
    whose finished episodes count as done. ``backbones``: loaded backbones by (attention implementation, name),
    shared with the caller. ``worker``: the sealed worker the methods' code runs in (None: this process).
    ``timeouts``: the worker's episode timeout per (setting label, method spec), set before each of its units (the
    run's ``--episode-timeout`` otherwise).
    """

    def __init__(self, config: RunConfig, device: str, backbones: Optional[Dict[Tuple[str, str], Backbone]] = None,
                 done_in: Sequence = (), tuned: Optional[dict] = None, worker: Optional[SealedWorker] = None):
        self.config = config
        self.device = device
        self.autocast = autocast_dtype(device, config.bf16)
        self.backbones = {} if backbones is None else backbones
        self.done_in = list(done_in)
        self.tuned = tuned
        self.worker = worker
        self.timeouts: Dict[Tuple[str, str], float] = {}
        self.specs = method_specs(config)
        self.cells: Dict[tuple, Cell] = {}

    def cell(self, setting: Setting, spec: str, overrides: Optional[Dict[str, object]] = None) -> Cell:
        """The cell of (setting, spec), created once with the episodes already stored in ``done_in``.
        ``overrides`` (default: the run's for ``spec``) are the method config values, e.g. a tuning trial's."""
        overrides = self.specs[spec] if overrides is None else overrides
        key = (setting, spec, tuple(sorted((k, repr(v)) for k, v in overrides.items())))
        if key not in self.cells:
            config = self.config
            method, label, run_hash = cell_identity(config, spec, overrides, setting, self.tuned, self.worker)
            done = {(index, restart) for restart in range(config.restarts) for store in self.done_in
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

    def release(self, cell: Cell) -> None:
        """Forget ``cell`` (its method instance and state); asking for it again builds it anew."""
        self.cells = {key: kept for key, kept in self.cells.items() if kept is not cell}

    def backbone_for(self, method: Method) -> Optional[Backbone]:
        """The backbone ``method`` runs on in this process (None with a worker: the worker holds the backbone)."""
        if self.worker is not None:
            return None
        key = (method.attn_implementation, self.config.backbone)
        if key not in self.backbones:
            self.backbones[key] = load_backbone(self.config.backbone, device=self.device,
                                                attn_implementation=method.attn_implementation)
        return self.backbones[key]

    def prepare_cell(self, cell: Cell) -> Optional[Backbone]:
        """The cell's backbone, loaded; a meta-trained method meta-trained (or its cached state loaded) once. A
        failure of the method's code is kept in ``cell.meta_error`` (its episodes fail with it); a real Ctrl-C
        propagates."""
        backbone = self.backbone_for(cell.method)
        if cell.method.protocol == "meta-trained" and not cell.meta_trained:
            cell.meta_trained = True
            try:
                self._meta_train(cell, backbone)
            except BaseException as exc:
                if not is_method_failure(exc):
                    raise
                cell.meta_error = "meta_train failed: " + failure_reason(exc)
                log.warning("%s on %s: %s", cell.label, cell.setting.label, cell.meta_error.splitlines()[0])
        return backbone

    def _meta_train(self, cell: Cell, backbone: Optional[Backbone]) -> None:
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
            method.meta_train(meta_context(backbone, seed, cell.setting, cell.source_episodes, self.autocast))
            state = method.state_dict()
        cell.meta_train_seconds = time.perf_counter() - started
        log.info("meta-trained %s for %s: %.1f s", cell.label, cell.setting.label, cell.meta_train_seconds)
        if state is not None:
            save_meta_state(path, state, payload,
                            {"label": cell.label, "meta_train_seconds": repr(cell.meta_train_seconds)})

    def evaluate_unit(self, cell: Cell, unit: Unit) -> EpisodeRecord:
        """Run ``unit`` (a unit of ``cell``) and return its record."""
        config, setting = self.config, cell.setting
        backbone = self.prepare_cell(cell)
        episode = setting.target_episode(config.seed, unit.index)
        if cell.meta_error is not None:
            values = {"status": "failed", "error": cell.meta_error, "trainable_params": 0, "predictions": None,
                      "figures": {}}
        else:
            if self.worker is not None and (setting.label, unit.spec) in self.timeouts:
                self.worker.timeout = self.timeouts[(setting.label, unit.spec)]
            values = episode_record(cell.method, episode, backbone,
                                    seed=episode_seed(config.seed, setting, unit.index, unit.restart),
                                    autocast=self.autocast, source_episodes=cell.source_episodes, worker=self.worker)
        values["meta_train_seconds"] = cell.meta_train_seconds
        protocol = cell.method.protocol if cell.source_episodes is not None else "target-only"
        values["same_class_source"] = None if protocol == "target-only" else int(cell.same_class_source)
        k_shot = "-".join(map(str, setting.k_shot)) if isinstance(setting.k_shot, tuple) else str(setting.k_shot)
        key = restart_hash(cell.run_hash, unit.restart)
        values.update({
            "config_hash": key, "method": cell.label, "protocol": protocol, "backbone": config.backbone,
            "task": setting.task, "setting": setting.label, "n_way": episode.n_way, "k_shot": k_shot,
            "q_query": setting.q_query, "fold": setting.fold, "seed": config.seed, "episode_index": unit.index,
            "fingerprint": episode.fingerprint, "restart": unit.restart,
            "extra": {"source_task": setting.source_task, "classes": list(episode.classes),
                      "query_labels": list(episode.query_labels)},
        })
        if values["status"] != "ok":
            log.warning("%s on %s episode %d: %s", cell.label, setting.label, unit.index,
                        (values["error"] or "").splitlines()[0])
        return EpisodeRecord(unit, cell.label, key, values, tuple(cell.method.figures))


def evaluate(executor: Executor, units: Iterable[Unit], *, skip: Optional[Callable[[Unit], bool]] = None,
             hooks: Optional[Hooks] = None,
             overrides: Optional[Dict[str, object]] = None) -> Iterator[EpisodeRecord]:
    """Evaluate ``units`` in order, yielding one :class:`EpisodeRecord` each; a unit already stored in the
    executor's ``done_in`` stores, or for which ``skip(unit)`` is true, is skipped (``hooks.skipped``).
    ``overrides``: method config values for every unit's cell (default: the run's for each spec). Each cell is
    prepared (meta-trained) once, before its first unit that is evaluated."""
    hooks = hooks or Hooks()
    for unit in units:
        cell = executor.cell(unit.setting, unit.spec, overrides)
        if (unit.index, unit.restart) in cell.done or (skip is not None and skip(unit)):
            hooks.skipped(unit)
            continue
        hooks.started(unit, cell)
        yield executor.evaluate_unit(cell, unit)
