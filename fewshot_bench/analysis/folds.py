"""Results averaged over class-split folds, with a fold-level CI.

Leaderboard rows that differ only in their fold (same setting otherwise, backbone and method) are summarised
when at least two folds are present. Folds are the unit (their target classes differ), so the figures are the
mean over folds of each fold's mean accuracy and of each fold's paired difference to the reference
(``delta_vs_ref``, itself paired over that fold's episodes), each with a Student-t 95% CI over the folds.
With the rows' entries, class-level CIs too: classes resampled once for all folds, so folds sharing target
classes are dependent (``hierarchical.grouped_class_ci``).
A fold without a comparison to the reference is left out of the difference (``delta_folds`` counts the rest);
the difference over folds needs two compared folds (a t CI), with fewer its columns are empty.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from .hierarchical import grouped_class_ci

FOLD_COLUMNS = ("method", "protocol", "backbone", "task", "n_way", "k_shot", "q_query", "setting", "folds",
                "episodes", "acc_mean", "acc_ci95_low", "acc_ci95_high", "ref_method", "delta_folds",
                "delta_vs_ref", "delta_ci95_low", "delta_ci95_high", "flags", "acc_class_ci95_low",
                "acc_class_ci95_high", "delta_class_ci95_low", "delta_class_ci95_high")


def without_fold(setting: str) -> str:
    """``banking77/fold3/5way1shot15q`` -> ``banking77/5way1shot15q``."""
    return re.sub(r"/fold\d+(?=/|$)", "", setting)


def t_interval(values: Sequence[float]) -> Tuple[float, Optional[float], Optional[float]]:
    """Mean and Student-t 95% CI (None with fewer than two values)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None, None
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def fold_summary(rows: List[Dict], entries: Sequence = ()) -> List[Dict]:
    """One row per (setting without its fold, backbone, method) present in two or more folds; with the rows'
    ``entries`` (``compare.Entry``) also the class-level CIs (``hierarchical.grouped_class_ci``)."""
    entry_of = {id(e.row): e for e in entries}
    by_cell = {(e.cell, e.method): e for e in entries}
    groups: Dict[tuple, List[Dict]] = {}
    for row in rows:
        groups.setdefault((without_fold(row["setting"]), row["backbone"], row["method"]), []).append(row)
    summary = []
    for (setting, backbone, method), members in groups.items():
        scored = [r for r in members if r["acc_mean"] is not None]
        if len({r["fold"] for r in scored}) < 2:
            continue
        acc = t_interval([r["acc_mean"] for r in scored])
        deltas = [r["delta_vs_ref"] for r in scored if r["delta_vs_ref"] is not None]
        delta = t_interval(deltas) if len(deltas) > 1 else (None, None, None)
        flags = sorted({f for r in members for f in (r["flags"] or "").split(";")
                        if f in ("same-class-source", "saturated") or f.startswith("unfinished")})
        first = members[0]
        summary.append(dict(zip(FOLD_COLUMNS, (
            method, ";".join(sorted({r["protocol"] for r in members})), backbone, first["task"], first["n_way"],
            first["k_shot"], first["q_query"], setting, len(scored), sum(r["episodes"] for r in scored),
            *(_round(v) for v in acc), first["ref_method"], len(deltas), *(_round(v) for v in delta),
            ";".join(flags) or None, *_class_cis(scored, entry_of, by_cell, delta[0] is not None)))))
    return sorted(summary, key=lambda r: (r["setting"], r["backbone"], -r["acc_mean"], r["method"]))


def _class_cis(scored: List[Dict], entry_of: Dict, by_cell: Dict, with_delta: bool) -> tuple:
    """Class-level CIs over the folds of the accuracy and (with two or more compared folds) of the difference
    to the reference; (None,) * 4 without entries."""
    folds = [entry_of.get(id(r)) for r in scored]
    if not folds or None in folds:
        return None, None, None, None
    acc = grouped_class_ci([(e, list(e.accuracy), e.labels, None) for e in folds])
    refs = [(e, by_cell.get((e.cell, e.row["ref_method"]))) for e in folds if e.row["delta_vs_ref"] is not None]
    delta = grouped_class_ci([(e, [f for f in e.accuracy if f in ref.accuracy], e.labels, ref) for e, ref in refs]) \
        if with_delta else (None, None)
    return (*acc, *delta)


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)
