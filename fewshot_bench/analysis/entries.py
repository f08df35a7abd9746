"""A results store read back as comparable entries: one :class:`~fewshot_bench.analysis.compare.Entry` per
(method, protocol, backbone, task, setting), its leaderboard row filled except the comparison columns.

What the leaderboard (``report.leaderboard``), ``compare``, ``power`` and the Python API aggregate from; the
conventions of the row (episodes counted, restarts, failed episodes, the bootstrap CI) are the leaderboard's, in
``report/leaderboard.py``'s docstring.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import compare
from .hierarchical import class_ci, episode_labels
from .restarts import seed_stability
from .stats import bootstrap_ci
from ..core.errors import UserError
from ..episodes.sampling import episode_set_sha256
from ..store.figures import figure_columns
from ..store.results import ResultsStore
from ..store.schema import AGGREGATES, COLUMNS, ISOLATION_LEVELS, LEADERBOARD_SCHEMA_VERSION, Column

log = logging.getLogger(__name__)


def _task_label(task: str, setting: str) -> str:
    """``SOURCE->TASK`` for a cross-dataset setting labelled ``SOURCE->TASK/...``, else ``TASK``; a
    validation-pool setting (``.../validation/...``, hyperparameter choice) gets `` [validation]``."""
    head = setting.split("/", 1)[0]
    label = head if head.endswith("->" + task) else task
    return label + " [validation]" if "/validation/" in setting else label


def planned_episodes(config_json: Optional[str]) -> Optional[int]:
    """Episodes per task x setting a stored run config asked for (``min(episodes, limit)``); None when the
    config does not say or cannot be read."""
    try:
        config = json.loads(config_json or "{}")
        episodes, limit = config.get("episodes"), config.get("limit")
        return min(episodes, limit) if limit else episodes
    except (ValueError, TypeError, AttributeError):
        return None


def _planned_by_run(runs: List[dict]) -> Dict[str, Optional[int]]:
    """{run_id: :func:`planned_episodes` of its config}."""
    return {run["run_id"]: planned_episodes(run["config_json"]) for run in runs}


def store_columns(store: ResultsStore) -> Tuple[Column, ...]:
    """The figure columns of ``store``'s leaderboard, after the core ``COLUMNS``: one per declared figure
    (``store.figures.figure_columns``)."""
    return figure_columns(store.declarations())


def _summarise(key: tuple, runs: Dict[str, List[dict]], planned: Optional[int], bootstrap: int, seed: int,
               stability: tuple, figures: Tuple[Column, ...]) -> dict:
    """The row of one (task, setting, protocol, backbone, method) from its stored runs by fingerprint (one per
    training restart, episode order) and their :func:`seed_stability`; ``figures``: the store's figure columns."""
    task, setting, protocol, backbone, method = key
    first = next(iter(runs.values()))[0]
    ok_runs = [r for rows in runs.values() for r in rows if r["status"] == "ok"]
    accuracy = list(_episode_accuracy(runs).values())
    isolation = {r["isolation"] for rows in runs.values() for r in rows}
    row = dict.fromkeys(COLUMNS + tuple(c.name for c in figures))
    row.update(method=method, protocol=protocol, backbone=backbone, task=_task_label(task, setting), n_way=first["n_way"],
               k_shot=first["k_shot"], q_query=first["q_query"], episodes=len(runs),
               failed_episodes=len(runs) - len(accuracy), episodes_planned=planned,
               episode_set_sha256=episode_set_sha256(list(runs)),
               version=";".join(sorted({r["version"] for rows in runs.values() for r in rows})),
               schema_version=LEADERBOARD_SCHEMA_VERSION, fold=first["fold"], setting=setting,
               isolation=";".join(level for level in ISOLATION_LEVELS if level in isolation) or None)
    if accuracy:
        low, high = bootstrap_ci(accuracy, bootstrap, seed)
        row.update(acc_mean=round(float(np.mean(accuracy)), 4), acc_ci95_low=round(low, 4),
                   acc_ci95_high=round(high, 4))
    for column in AGGREGATES + figures:  # a harness metric is a store column, a method figure in ``figures``
        values = [r[column.source] if column in AGGREGATES else r["figures"].get(column.source) for r in ok_runs]
        values = [v for v in values if v is not None]
        reduce = np.sum if column.aggregate == "sum" else np.mean
        value = round(float(reduce(values)), column.decimals) if values else None
        row[column.name] = int(value) if value is not None and column.decimals == 0 else value
    restarts, seed_sd, failed_share, _ = stability
    row.update(restarts=restarts, seed_sd=None if seed_sd is None else round(seed_sd, 4),
               failed_run_share=None if failed_share is None else round(failed_share, 4))
    return row


def _episode_accuracy(runs: Dict[str, List[dict]]) -> Dict[str, float]:
    """{fingerprint: mean accuracy over its ok restarts} of the episodes with one or more."""
    means = {}
    for fingerprint, rows in runs.items():
        accuracy = [r["accuracy"] for r in rows if r["status"] == "ok" and r["accuracy"] is not None]
        if accuracy:
            means[fingerprint] = float(np.mean(accuracy))
    return means


def load_entries(store_path, bootstrap: int = 10000, seed: int = 0, class_level: bool = True) -> List[compare.Entry]:
    """One ``compare.Entry`` per leaderboard row (rows without the comparison columns filled). ``class_level``:
    recover the episodes' classes (``hierarchical.episode_labels``) for the class-level CIs; settings whose
    classes are neither stored nor local are left without them, with one logged note."""
    path = Path(store_path)
    if not path.is_file():
        raise UserError(f"results store '{path}' does not exist; run `fewshot-bench run` first or pass --store")
    if bootstrap < 1:
        raise UserError(f"--bootstrap must be >= 1, got {bootstrap}")
    with ResultsStore(path, create=False) as store:
        records, planned_by_run, figures = store.episodes(), _planned_by_run(store.runs()), store_columns(store)
    groups: Dict[tuple, Dict[tuple, dict]] = {}
    for record in sorted(records, key=lambda r: r["created_at"]):  # stable sort: later rows overwrite earlier
        key = (record["task"], record["setting"], record["protocol"], record["backbone"], record["method"])
        groups.setdefault(key, {})[(record["fingerprint"], record["restart"] or 0)] = record
    by_setting: Dict[tuple, List[dict]] = {}
    for key, stored in groups.items():
        by_setting.setdefault(key[:2], []).extend(stored.values())
    labels = {setting: episode_labels(members) if class_level else {} for setting, members in by_setting.items()}
    unknown = [key for key, members in by_setting.items() if any(r["fingerprint"] not in labels[key] for r in members)]
    if class_level and unknown:
        log.warning("class-level CIs left empty for rows of %d of %d settings (tasks %s): their episodes' classes "
                    "are neither in the store nor regenerable from local task rows; set --data-dir DIR to fill them",
                    len(unknown), len(labels), ", ".join(sorted({task for task, _ in unknown})))
    entries = []
    for key, stored in groups.items():
        # episode order, not write order (ranks, resumes): the bootstrap CI is a function of the episode set
        runs: Dict[str, List[dict]] = {}
        for record in sorted(stored.values(), key=lambda e: (e["episode_index"], e["fingerprint"], e["restart"] or 0)):
            runs.setdefault(record["fingerprint"], []).append(record)
        restarts = {r["restart"] or 0 for r in stored.values()}
        if len({(r["restart"] or 0, r["config_hash"]) for r in stored.values()}) > len(restarts):
            log.warning("%s: episodes from several run configs are pooled (latest row per episode)", "/".join(key))
        plans = [planned_by_run.get(r["run_id"]) for r in stored.values()]
        planned = max((p for p in plans if p is not None), default=None)
        accuracy, stability = _episode_accuracy(runs), seed_stability(runs, next(iter(runs.values()))[0]["n_way"])
        predictions = {f: next(r["predictions"] for r in runs[f] if r["status"] == "ok" and r["accuracy"] is not None)
                       for f in accuracy}  # the first ok restart's
        row = _summarise(key, runs, planned, bootstrap, seed, stability, figures)
        entry = compare.Entry(cell=(key[0], key[1], key[3]), row=row,
                              accuracy=accuracy, predictions=predictions, fingerprints=frozenset(runs),
                              same_class_source=any(r.get("same_class_source") == 1 for r in stored.values()),
                              seed_sd=stability[3], labels=labels[key[:2]])
        entry.row["acc_class_ci95_low"], entry.row["acc_class_ci95_high"] = class_ci(entry, list(accuracy),
                                                                                     entry.labels, seed=seed)
        entries.append(entry)
    return entries
