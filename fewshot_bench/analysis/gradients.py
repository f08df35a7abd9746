"""Gradient-stability diagnostics: on which basis they are comparable, and whether they track accuracy.

Contracts:
  * ``COLUMNS``: the four per-episode gradient columns (``grad_norm_cv``, ``grad_dir_consistency``,
    ``path_efficiency``, ``source_alignment``). Each is computed on the flattened gradients / weights of the
    parameters the method trains, so its scale depends on that vector (its dimension and parametrisation: a
    cosine between two 75.7k-dimensional LoRA gradients and one between two 22.7M-dimensional full gradients
    are not on one scale). **Basis**: the trainable set, identified by ``trainable_params``; two rows'
    gradient columns are comparable only when their ``trainable_params`` are equal (e.g. full_ft, sgg and
    its ablations, 22.7M; lora, 75.7k; lora with another rank is another set). :func:`basis` names it.
  * :func:`accuracy_spearman`: per method and trainable set, per column, the Spearman correlation of the
    column with accuracy over the method's ok episodes **within each cell** (cell difficulty cannot create a
    correlation), for cells with at least ``min_episodes`` episodes holding the column and neither the
    column nor accuracy constant; reported as cells, median, min and max over those cells. Episodes of
    restarts > 0 are left out (one run per episode).
"""
from __future__ import annotations

import warnings
from typing import Dict, Iterable, List, Optional

import numpy as np
from scipy import stats

COLUMNS = ("grad_norm_cv", "grad_dir_consistency", "path_efficiency", "source_alignment")
BASIS_HELP = ("comparable only between rows training the same parameter set (equal trainable_params): its scale "
              "depends on the trained vector's dimension and parametrisation")


def basis(trainable_params: Optional[float]) -> Optional[str]:
    """The trainable set a row's gradient columns are computed on, e.g. '22.7M' or '75.7k'; None when unknown
    or zero (no trained parameters)."""
    if not trainable_params:
        return None
    n = float(trainable_params)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{int(n)}"


def accuracy_spearman(records: Iterable[dict], min_episodes: int = 10) -> List[Dict]:
    """One dict per (method, trainable set, column) with a correlation in at least one cell: method, basis,
    column, cells, episodes, median, low, high (see the module docstring)."""
    groups: Dict[tuple, Dict[str, List[tuple]]] = {}
    for r in records:
        if r["status"] != "ok" or r["accuracy"] is None or (r.get("restart") or 0) > 0:
            continue
        key = (r["method"], basis(r["trainable_params"]))
        cell = (r["task"], r["setting"], r["backbone"])
        for column in COLUMNS:
            if r[column] is not None:
                groups.setdefault(key + (column,), {}).setdefault(cell, []).append((r["accuracy"], r[column]))
    result = []
    for (method, trained, column), cells in sorted(groups.items(), key=lambda item: tuple(map(str, item[0]))):
        rhos, episodes = [], 0
        for pairs in cells.values():
            accuracy, values = np.array(pairs, dtype=float).T
            if len(pairs) < min_episodes or np.ptp(accuracy) == 0 or np.ptp(values) == 0:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rhos.append(float(stats.spearmanr(accuracy, values).statistic))
            episodes += len(pairs)
        if rhos:
            result.append(dict(method=method, basis=trained, column=column, cells=len(rhos), episodes=episodes,
                               median=float(np.median(rhos)), low=min(rhos), high=max(rhos)))
    return result
