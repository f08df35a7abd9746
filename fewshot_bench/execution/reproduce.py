"""``fewshot-bench reproduce``: re-run a seeded sample of a store's episodes in this environment and report whether
the stored results come out again.

Contracts:
  * Sample: per method (leaderboard name), ``--sample`` of its ok episodes that have stored predictions, drawn
    without replacement by a numpy Generator seeded with ``derived_seed(seed, method)`` from its episodes in
    (task, setting, backbone, episode index, config hash) order; the same store and seed give the same sample.
  * An episode is rebuilt from its stored run config (``runs.config_json``): the setting with that label, the method
    spec whose leaderboard name is the stored one, and for a tuned run its tuned file: the stored path, else each
    ``--tuned`` file, then each tuned-config YAML in the store's folder and its subfolders (e.g. the committed
    ``leaderboard/tuning/``), in turn. It is used only when the rebuilt method's run hash equals the stored
    ``config_hash``, so a re-run is the stored configuration or is not made (reported as not re-run, never guessed).
  * The episode runs through the one episode loop (:class:`fewshot_bench.execution.evaluate.Executor`: same
    episode, training seed, source pool and protocol as ``run``) on ``--device``, in the sealed worker of the stored
    run's isolation (``in-process`` runs in this process); the given store is only read, and a worker may not read it.
    Meta-trained state comes from the meta-training cache when this machine holds it, as in a resumed run
    (``FEWSHOT_BENCH_CACHE=<empty folder>`` forces meta-training again).
  * Per method: share of identical query predictions, share of episodes with identical predictions, paired
    Δ accuracy (re-run minus stored) with a seeded percentile-bootstrap 95% CI, and the environment fields that
    differ between the stored runs and this process. A re-run that fails or diverges counts as accuracy 0 with no
    identical prediction.
  * An episode **drifts** when its stored fingerprint differs from the regenerated episode's, when more than
    ``--tolerance`` of its queries are predicted differently or its accuracy moves by more than ``--tolerance``, or
    when the re-run fails; each such episode is one ``drifted:`` line. A method drifts when one of its episodes
    does or |mean Δ accuracy| > ``--tolerance``. Exit 1 when a method drifts or has an episode that could not be
    re-run, else 0 ("ok": everything re-run came out again within the tolerance).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..methods.backbone import resolve_device
from ..core.config import from_mapping
from ..store.environment import NOT_RECORDED, differences, fingerprint, of_run
from ..core.errors import UserError
from ..core.hashing import derived_seed
from ..core.progress import Progress
from ..core.registry import did_you_mean
from ..core.threads import set_threads
from .run_config import RunConfig, settings_of
from .evaluate import Executor, Unit, restart_hash, sealed_worker
from ..analysis.stats import bootstrap_ci
from ..store.results import ResultsStore
from .tuned import load_tuned
from .worker import SealedWorker


@dataclass
class Agreement:
    """One method's re-run episodes against the stored ones."""
    method: str
    same_queries: int = 0
    queries: int = 0
    same_episodes: int = 0
    deltas: List[float] = field(default_factory=list)
    not_rerun: List[str] = field(default_factory=list)  # why, per episode that could not be rebuilt
    drifted: List[str] = field(default_factory=list)  # per re-run episode that did not come out again: which, why
    environment_changes: Dict[str, str] = field(default_factory=dict)  # field: "stored -> here"
    ci: Optional[tuple] = None  # bootstrap 95% CI of the mean of ``deltas``

    def drifts(self, tolerance: float) -> bool:
        """The mean accuracy moved past ``tolerance``, or an episode did not reproduce (see :func:`_compare`)."""
        return bool(self.drifted) or (bool(self.deltas) and abs(float(np.mean(self.deltas))) > tolerance)


def sample_episodes(records: List[dict], size: int, seed: int, methods: Optional[List[str]] = None) -> Dict[str, List[dict]]:
    """{method: its seeded sample of ok episodes with predictions} (see the module docstring)."""
    by_method: Dict[str, List[dict]] = {}
    for record in records:
        if record["status"] == "ok" and record["predictions"] is not None:
            by_method.setdefault(record["method"], []).append(record)
    if methods:
        unknown = [m for m in methods if m not in by_method]
        if unknown:
            raise UserError(f"--methods: {unknown[0]} has no ok episodes in the store"
                            f"{did_you_mean(unknown[0], sorted(by_method))} (there: {', '.join(sorted(by_method))})")
        by_method = {m: by_method[m] for m in methods}
    sample = {}
    for method, mine in sorted(by_method.items()):
        mine.sort(key=lambda r: (r["task"], r["setting"], r["backbone"], r["episode_index"], r["config_hash"]))
        rng = np.random.default_rng(derived_seed(seed, method))
        chosen = sorted(rng.choice(len(mine), size=min(size, len(mine)), replace=False))
        sample[method] = [mine[i] for i in chosen]
    return sample


class Rebuilder:
    """Stored runs rebuilt as :class:`Executor` objects, found per stored episode."""

    def __init__(self, runs: Dict[str, dict], device: str, tuned_files: List[str], deny: Sequence[str] = ()):
        self.runs, self.device, self.tuned_files, self.deny = runs, device, tuned_files, list(deny)
        self.backbones: dict = {}
        self.built: Dict[str, tuple] = {}  # run_id: (its config, [(Executor, {setting label: Setting})])
        self.workers: Dict[tuple, Optional[SealedWorker]] = {}  # (backbone, isolation, timeout): one per kind

    def worker(self, config: RunConfig) -> Optional[SealedWorker]:
        """The sealed worker a stored run's methods ran in, started once per (backbone, isolation, timeout)."""
        key = (config.backbone, config.isolation, config.episode_timeout)
        if key not in self.workers:
            self.workers[key] = sealed_worker(config, self.device, self.deny)
        return self.workers[key]

    def close(self) -> None:
        for worker in self.workers.values():
            if worker is not None:
                worker.close()

    def _candidates(self, run_id: str) -> tuple:
        """(stored run config, an Executor per tuned file to try: the stored one if present, then --tuned's)."""
        if run_id not in self.built:
            config = from_mapping(RunConfig, _run_options(self.runs[run_id]), f"stored run {run_id}")
            settings = {s.label: s for s in settings_of(config)}
            tuned = [None] if not config.tuned else [t for t in map(_tuned_or_none, [config.tuned, *self.tuned_files])
                                                     if t is not None]
            self.built[run_id] = config, [(Executor(config, self.device, self.backbones, tuned=t,
                                                    worker=self.worker(config)), settings) for t in tuned]
        return self.built[run_id]

    def cell(self, record: dict):
        """(executor, cell, method spec) that wrote ``record`` (same name, and run hash under its restart's key), or
        the reason there is none."""
        if record["run_id"] not in self.runs:
            return None, "its run is not in the store's runs table"
        config, candidates = self._candidates(record["run_id"])
        for execution, settings in candidates:
            setting = settings.get(record["setting"])
            if setting is None:
                return None, f"setting {record['setting']} is not in its run config"
            for spec in execution.specs:
                try:
                    cell = execution.cell(setting, spec)
                except UserError:  # this tuned file has no entry for the method on the setting: try the next one
                    continue
                if cell.label == record["method"] and restart_hash(cell.run_hash, record.get("restart") or 0) \
                        == record["config_hash"]:
                    return (execution, cell, spec), None
        if config.tuned and not Path(config.tuned).is_file():
            return None, (f"its tuned file {config.tuned} is missing and no --tuned file (nor a YAML beside the store) "
                          f"gives its run hash; pass that file (or a copy) with --tuned")
        return None, "no method config of its run has its run hash"


def _tuned_or_none(path) -> Optional[dict]:
    """The tuned configs of ``path``; None when it is missing or not a tuned-config file."""
    try:
        return load_tuned(str(path)) if Path(path).is_file() else None
    except UserError:
        return None


def tuned_files_beside(store_path) -> List[Path]:
    """YAML files in the store's folder and its subfolders: candidate tuned-config files for moved tuned runs."""
    folder = Path(store_path).parent
    return sorted(folder.glob("*.yaml")) + sorted(folder.glob("*/*.yaml"))


def _run_options(run: dict) -> dict:
    """The stored run config's RunConfig fields (a field it lacks keeps its default; one this version lacks is
    dropped)."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    return {k: v for k, v in json.loads(run["config_json"] or "{}").items() if k in known}


def reproduce(store_path, size: int, seed: int = 0, device: str = "auto", tuned_files=(), methods=None,
              bootstrap: int = 10000, tolerance: float = 0.01, threads: int = 0,
              on_method: Optional[Callable[[Agreement], None]] = None) -> List[Agreement]:
    """Re-run the sample and compare (see the module docstring); one :class:`Agreement` per sampled method, each
    passed to ``on_method`` as soon as its episodes are done. Only the sampled episodes run (with their cells'
    meta-training or cached state); progress (episodes done, ETA) is logged per episode. ``threads``: torch's CPU
    threads (0: ``run``'s default, :func:`~fewshot_bench.core.threads.set_threads`)."""
    with ResultsStore(store_path, create=False) as store:
        records, runs = store.episodes(), {run["run_id"]: run for run in store.runs()}
    sample = sample_episodes(records, size, seed, methods)
    if not sample:
        raise UserError(f"no ok episodes with predictions in {store_path}; nothing to reproduce")
    device = resolve_device(device)
    set_threads(threads)  # before a backbone is loaded, as run does
    results = []
    rebuilder = Rebuilder(runs, device, [*tuned_files, *tuned_files_beside(store_path)], deny=[str(store_path)])
    with Progress(sum(map(len, sample.values())), "reproduce", every=1, interval=10) as progress, \
            contextlib.closing(rebuilder):
        for method, chosen in sample.items():
            agreement = Agreement(method)
            for record in chosen:
                progress.set_current(f"{method} | {record['setting']} #{record['episode_index']}")
                found, reason = rebuilder.cell(record)
                if found is None:
                    agreement.not_rerun.append(f"{record['setting']} #{record['episode_index']}: {reason}")
                    progress.update(1)
                    continue
                execution, cell, spec = found
                unit = Unit(cell.setting, spec, record["episode_index"], record.get("restart") or 0)
                rerun = execution.evaluate_unit(cell, unit).values
                _compare(agreement, record, rerun, tolerance)
                here = fingerprint(device, execution.autocast)
                for key, stored, now in differences(of_run(runs[record["run_id"]]), here):
                    agreement.environment_changes[key] = f"{stored} -> {now}"
                progress.update(1)
            agreement.ci = bootstrap_ci(agreement.deltas, bootstrap, seed) if agreement.deltas else None
            results.append(agreement)
            if on_method is not None:
                on_method(agreement)
    return results


def _compare(agreement: Agreement, stored: dict, rerun: dict, tolerance: float = 0.01) -> None:
    """Add one episode: a re-run that failed or diverged has no identical prediction and accuracy 0. The episode
    drifts when its regenerated fingerprint differs from the stored one, when the share of its queries predicted
    differently or its accuracy difference exceeds ``tolerance``, or when the re-run did not finish ok."""
    predictions = rerun["predictions"] or []
    stored_predictions = stored["predictions"] if isinstance(stored["predictions"], list) else []
    same = sum(a == b for a, b in zip(stored_predictions, predictions)) if len(predictions) == len(stored_predictions) else 0
    agreement.same_queries += same
    agreement.queries += len(stored_predictions)
    agreement.same_episodes += same == len(stored_predictions)
    delta = (rerun["accuracy"] if rerun["status"] == "ok" else 0.0) - (stored["accuracy"] or 0.0)
    agreement.deltas.append(delta)
    reasons = []
    if rerun["fingerprint"] != stored["fingerprint"]:
        reasons.append(f"stored fingerprint {str(stored['fingerprint'])[:12]}... differs from the regenerated "
                       f"episode's {rerun['fingerprint'][:12]}...")
    if rerun["status"] != "ok":
        reasons.append(f"the re-run {rerun['status']}")
    differ = len(stored_predictions) - same
    if stored_predictions and differ / len(stored_predictions) > tolerance:
        reasons.append(f"{differ} of {len(stored_predictions)} stored predictions not reproduced")
    if abs(delta) > tolerance:
        reasons.append(f"accuracy {stored['accuracy']} stored, {rerun['accuracy']} re-run")
    if reasons:
        agreement.drifted.append(f"{stored['setting']} ({stored['backbone']}) episode {stored['episode_index']}"
                                 f"{' restart ' + str(stored['restart']) if stored.get('restart') else ''}: "
                                 + "; ".join(reasons))


def environment_text(changes: Dict[str, str]) -> str:
    """``stored -> here`` differences, then the fields the stored runs did not record (older stores)."""
    unrecorded = [k for k, v in changes.items() if v.startswith(NOT_RECORDED + " -> ")]
    differing = [f"{k} {v}" for k, v in changes.items() if k not in unrecorded]
    text = "differs (stored -> here): " + "; ".join(differing) if differing else "no recorded field differs"
    return text + (f"; not recorded in the store: {', '.join(unrecorded)}" if unrecorded else "")
