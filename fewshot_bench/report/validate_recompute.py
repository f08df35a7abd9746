"""The checks of ``validate`` that recompute: what a results store and its leaderboard CSV say is compared with
what the store's own keys, the data dir and the leaderboard code give again.

Contracts (each problem is one line "FILE:WHERE: column: what (expected ...)"; warnings start "warning:"):
  * Episodes: each stored episode is regenerated once from its key (task, setting, seed, episode index) with
    ``Setting.target_episode`` (the runner's sampler; settings cached, each task's rows loaded once). The stored
    fingerprint must equal the regenerated one, and so must its stored content hash (``episode_content``: the
    texts, :mod:`fewshot_bench.store.content`) where the store has one; the query labels (regenerated, else the ``extra.query_labels`` a
    newer row carries; both must agree when both exist) give accuracy and macro-F1 of the stored predictions
    again (``metrics.query_scores``), which must equal the stored values (1e-6). Tasks whose rows are not local
    (no data dir) are named in one note: their rows get only the checks that need no data.
  * Status: an ok row has predictions and a finite accuracy; a failed or diverged row has its error text.
  * Runs: every row's run_id is in the ``runs`` table; a row's method is one of its run config's methods.
  * Copies: two methods of a cell with identical predictions on every episode are a warning (legit clones exist,
    e.g. an ablation whose term never triggers); rows identical in every stored figure but the method name
    (accuracy, predictions, timings, memory, gradient figures) are a failure: one row set copied under another name.
  * CSV: the leaderboard rows are recomputed from the store with :func:`leaderboard.aggregate` (the CSV's
    ``ref_method``, ``--bootstrap``), then every row and column is compared: missing and extra rows, and each
    cell (floats within one unit of their printed decimals).
"""
from __future__ import annotations

import csv
import json
import math
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..analysis.hierarchical import _setting
from ..core.checks import parse_spec, split_specs
from ..core.errors import UserError
from ..data import loading
from ..episodes.sampling import content_sha256
from ..analysis.entries import store_columns
from ..store.results import ResultsStore
from ..store.schema import LEADERBOARD
from .leaderboard import DEFAULT_REFERENCE, aggregate, neutralise

_SCORE_SLACK = 1e-6
_NOT_COPIED = ("rowid", "run_id", "config_hash", "method", "created_at", "version", "protocol")
_CLASS_COLUMNS = ("acc_class_ci95_low", "acc_class_ci95_high", "delta_class_ci95_low", "delta_class_ci95_high")


def scores(labels, predictions) -> Dict[str, float]:
    """``metrics.query_scores`` (accuracy, macro-F1 over the labels present in either list, zero division 0) in
    numpy: scikit-learn's input validation costs ~13 ms a call, minutes over a store (tests check they agree)."""
    truth, predicted = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    classes = np.union1d(truth, predicted)
    f1 = []
    for c in classes:
        tp = float(np.sum((truth == c) & (predicted == c)))
        denominator = float(np.sum(truth == c) + np.sum(predicted == c))
        f1.append(2 * tp / denominator if denominator else 0.0)
    return {"accuracy": float(np.mean(truth == predicted)), "macro_f1": float(np.mean(f1))}


def _progress(message: str) -> None:
    print(f"validate: {message}", flush=True)


def _decode(text) -> Optional[object]:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return "bad"


def _method_names(config_json) -> Optional[set]:
    """Base names of a stored run config's method specs; None when the config cannot say (file methods, unread)."""
    try:
        methods = json.loads(config_json or "{}").get("methods")
        specs = split_specs(methods) if isinstance(methods, str) else list(methods or [])
        names = {parse_spec(str(spec))[0] for spec in specs}
    except (ValueError, TypeError, AttributeError, UserError):
        return None
    if not names or any(":" in n or "/" in n or n.endswith(".py") for n in names):
        return None
    return names


def _base_name(method: str) -> str:
    return method.split("(", 1)[0].split("[", 1)[0]


class Regenerator:
    """Episodes regenerated from stored keys, one per key; tasks without local rows are remembered."""

    def __init__(self):
        self.cache: Dict[tuple, object] = {}
        self.local: Dict[str, bool] = {}
        self.broken: Dict[str, str] = {}

    def available(self, task: str) -> bool:
        if task not in self.local:
            try:
                self.local[task] = bool(loading.local_copy(task))
            except Exception:  # an unregistered task, an unreadable card: no regeneration
                self.local[task] = False
        return self.local[task] and task not in self.broken

    def episode(self, row: dict):
        """The regenerated episode of ``row`` (None: not regenerable here)."""
        key = (row["task"], row["setting"], row["n_way"], row["k_shot"], row["q_query"], row["fold"], row["seed"],
               row["episode_index"])
        if key in self.cache:
            return self.cache[key]
        episode = None
        if self.available(row["task"]):
            try:
                episode = _setting(row).target_episode(int(row["seed"]), int(row["episode_index"]))
            except (UserError, OSError, ValueError, KeyError, TypeError, IndexError) as exc:
                self.broken.setdefault(row["task"], str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        self.cache[key] = episode
        return episode


def check_episodes(path, rows: List[dict], runs: Dict[str, Optional[str]],
                   contents: Optional[Dict[Tuple[str, str], str]] = None) -> Tuple[List[str], List[str], List[str]]:
    """(problems, warnings, notes) of the recomputing store checks (episodes, status, runs, copies); ``contents``:
    the store's content hashes (:func:`fewshot_bench.store.content.stored`), compared with the regenerated episodes'."""
    contents = contents or {}
    problems: List[str] = []
    regenerator = Regenerator()
    started, last = time.monotonic(), time.monotonic()
    ordered = sorted(rows, key=lambda r: (str(r["task"]), int(r["fold"] or 0), str(r["setting"]), r["seed"] or 0,
                                          r["episode_index"] or 0))
    scored = fingerprinted = 0
    names_of_run = {run_id: _method_names(config) for run_id, config in runs.items()}
    for done, row in enumerate(ordered, start=1):
        if time.monotonic() - last > 15:
            last = time.monotonic()
            _progress(f"episodes {done}/{len(ordered)} ({time.monotonic() - started:.0f} s)")
        where = f"{path}:episodes[{row['rowid']}]"
        what = f"{row['method']}, {row['setting']} episode {row['episode_index']}"
        predictions, extra = _decode(row["predictions"]), _decode(row["extra"])
        # status consistency
        if row["status"] == "ok":
            if not isinstance(predictions, list) or not predictions:
                problems.append(f"{where}: predictions: {'missing' if predictions is None else 'not a list'} for an "
                                f"ok episode ({what}; expected the query predictions)")
            accuracy = row["accuracy"]
            if not isinstance(accuracy, (int, float)) or not math.isfinite(accuracy):
                problems.append(f"{where}: accuracy: {accuracy!r} for an ok episode ({what}; expected a finite value)")
        elif row["status"] in ("failed", "diverged") and not (row["error"] or "").strip():
            problems.append(f"{where}: error: empty for a {row['status']} episode ({what}; expected the error text "
                            "that made it fail or diverge)")
        # runs table
        if row["run_id"] not in runs:
            problems.append(f"{where}: run_id: '{row['run_id']}' is not in the runs table ({what}; expected every "
                            "episode's run recorded)")
        elif names_of_run.get(row["run_id"]) and _base_name(row["method"]) not in names_of_run[row["run_id"]]:
            problems.append(f"{where}: method: '{row['method']}' is not a method of its run {row['run_id'][:12]} "
                            f"(expected one of {', '.join(sorted(names_of_run[row['run_id']]))})")
        # the episode again
        episode = regenerator.episode(row)
        stored_labels = extra.get("query_labels") if isinstance(extra, dict) else None
        labels = None
        if episode is not None:
            fingerprinted += 1
            labels = list(episode.query_labels)
            if episode.fingerprint != row["fingerprint"]:
                problems.append(f"{where}: fingerprint: {str(row['fingerprint'])[:16]}... differs from the regenerated "
                                f"episode's {episode.fingerprint[:16]}... ({what}; expected the episode the seed and "
                                "index give)")
                labels = None
            elif contents.get((row["task"], row["fingerprint"]), None) not in (None, content_sha256(episode)):
                problems.append(f"{where}: episode_content: the stored content sha256 "
                                f"{contents[(row['task'], row['fingerprint'])][:16]}... differs from the regenerated "
                                f"episode's {content_sha256(episode)[:16]}... ({what}; expected the texts the episode "
                                "was stored with: the data dir holds other data)")
            elif stored_labels is not None and list(stored_labels) != labels:
                problems.append(f"{where}: extra: query_labels differ from the regenerated episode's ({what}; "
                                "expected the same labels)")
        elif isinstance(stored_labels, list):
            labels = stored_labels
        if labels is None or row["status"] != "ok" or not isinstance(predictions, list) or not predictions:
            continue
        if len(predictions) != len(labels):
            problems.append(f"{where}: predictions: {len(predictions)} (expected {len(labels)}, one per query; {what})")
            continue
        try:
            recomputed = scores(labels, [int(p) for p in predictions])
        except (TypeError, ValueError):
            problems.append(f"{where}: predictions: not a list of class indices ({what})")
            continue
        scored += 1
        for metric in ("accuracy", "macro_f1"):
            stored = row[metric]
            if isinstance(stored, (int, float)) and abs(stored - recomputed[metric]) > _SCORE_SLACK:
                problems.append(f"{where}: {metric}: stored {stored:.6g}, but its predictions score "
                                f"{recomputed[metric]:.6g} ({what}; expected the score of the stored predictions)")
    notes = []
    missing = sorted({r["task"] for r in rows if not regenerator.available(r["task"])})
    if missing:
        reasons = [f"{t} ({regenerator.broken[t]})" if t in regenerator.broken else t for t in missing]
        notes.append(f"note: not regenerated (no local rows: set --data-dir or $FEWSHOT_BENCH_DATA): episodes of "
                     f"{', '.join(reasons)}; their fingerprints are not checked and only rows storing their query "
                     "labels get accuracy and macro-F1 recomputed")
    _progress(f"{len(rows)} episode rows: {fingerprinted} fingerprints regenerated, {scored} scores recomputed "
              f"({time.monotonic() - started:.0f} s)")
    copy_problems, warnings = check_copies(path, rows)
    return problems + copy_problems, warnings, notes


def check_copies(path, rows: List[dict]) -> Tuple[List[str], List[str]]:
    """(failures: rows copied under another method name, warnings: identical predictions on every episode)."""
    cells: Dict[tuple, Dict[str, List[dict]]] = {}
    for row in rows:
        if row["status"] == "ok":
            cells.setdefault((row["task"], row["setting"], row["backbone"]), {}).setdefault(row["method"], []).append(row)
    figures = [c for c in rows[0] if c not in _NOT_COPIED] if rows else []
    problems, warnings = [], []
    for (task, setting, backbone), methods in sorted(cells.items()):
        by_predictions: Dict[tuple, List[str]] = {}
        by_everything: Dict[tuple, List[str]] = {}
        for method, members in sorted(methods.items()):
            ordered = sorted(members, key=lambda r: (r["fingerprint"], r["restart"] or 0))
            by_predictions.setdefault(tuple((r["fingerprint"], r["restart"] or 0, r["predictions"]) for r in ordered),
                                      []).append(method)
            by_everything.setdefault(tuple(tuple(r[c] for c in figures) for r in ordered), []).append(method)
        identical = {tuple(m) for m in by_everything.values() if len(m) > 1}
        for same in identical:
            problems.append(f"{path}: method: {', '.join(same)} on {setting} ({backbone}) hold byte-identical rows in "
                            "everything but the method name (accuracy, predictions, timings, memory, gradient "
                            "figures) on every episode (expected each method's own run: one is a copy)")
        for same in by_predictions.values():
            if len(same) > 1 and tuple(same) not in identical:
                warnings.append(f"warning: {path}: {', '.join(same)} on {setting} ({backbone}) have identical "
                                f"predictions on all {len(methods[same[0]])} episodes (a clone or a copy)")
    return problems, warnings


def _csv_rows(path) -> List[Dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _expected_text(value) -> str:
    return "" if value is None else str(neutralise(value))


def _same(column, got: str, want: str) -> bool:
    """Whether the CSV's text ``got`` equals the recomputed ``want`` in ``column`` (a float: within one unit of
    its printed decimals)."""
    if got == want:
        return True
    if column.kind != "float" or not got or not want:
        return False
    try:
        a, b = float(got), float(want)
    except ValueError:
        return False
    return abs(a - b) <= 10 ** -min(column.decimals, 6) * 1.01 + 1e-12


def compare_csv(csv_path, store_path, bootstrap: int = 10000) -> Tuple[List[str], List[str]]:
    """(problems, notes) of the CSV against the leaderboard recomputed from the store (see the module docstring)."""
    rows = _csv_rows(csv_path)
    references = sorted({r.get("ref_method") or "" for r in rows} - {""})
    if len(references) > 1:
        return [f"{csv_path}: ref_method: several references ({', '.join(references)}) (expected one per "
                "leaderboard)"], []
    reference = references[0] if references else DEFAULT_REFERENCE
    started = time.monotonic()
    _progress(f"recomputing the leaderboard of {store_path} (reference {reference}, {bootstrap} bootstrap "
              "resamples) to compare with the CSV")
    expected = aggregate(store_path, bootstrap=bootstrap, reference=reference)
    with ResultsStore(store_path, create=False) as store:
        columns = LEADERBOARD + store_columns(store)
    _progress(f"leaderboard recomputed: {len(expected)} rows ({time.monotonic() - started:.0f} s)")

    def key(row):
        return row["method"], row["backbone"], row["setting"]
    want = {key({c: _expected_text(r[c]) for c in ("method", "backbone", "setting")}): r for r in expected}
    problems, seen = [], set()
    local: Dict[str, bool] = {}
    for line, row in enumerate(rows, start=2):
        where = f"{csv_path}:{line}"
        k = key(row)
        if k in seen:
            continue  # a duplicated row: the CSV checks name it
        seen.add(k)
        if k not in want:
            problems.append(f"{where}: row: {row['method']} on {row['setting']} ({row['backbone']}) is not in the "
                            f"leaderboard recomputed from {store_path} (expected only rows of stored methods)")
            continue
        recomputed = want[k]
        task = str(recomputed.get("task") or "").split("->")[-1].split(" ")[0]
        if task not in local:
            try:
                local[task] = bool(loading.local_copy(task))
            except Exception:
                local[task] = False
        differing = []
        for column in columns:
            if column.name not in row:
                continue
            got, expect = row[column.name], _expected_text(recomputed.get(column.name))
            if column.name in _CLASS_COLUMNS and not local[task] and not expect:
                continue  # class-level CIs need the episodes' classes: not regenerable here
            if not _same(column, got, expect):
                differing.append(f"{column.name} '{got}' (recomputed '{expect}')")
        if differing:
            problems.append(f"{where}: {row['method']} on {row['setting']}: {'; '.join(differing[:6])}"
                            f"{f' and {len(differing) - 6} more' if len(differing) > 6 else ''} (expected the values "
                            f"the leaderboard code gives from {store_path})")
    for k, recomputed in want.items():
        if k not in seen:
            problems.append(f"{csv_path}: row: {k[0]} on {k[2]} ({k[1]}) is missing (expected a row for every stored "
                            f"method and cell of {store_path})")
    return problems, []
