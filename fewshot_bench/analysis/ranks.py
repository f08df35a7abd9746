"""Average ranks of methods across leaderboard cells and Nemenyi's critical difference (the CD diagram).

Contracts:
  * A *design* is a set of methods and every cell holding all of them with an accuracy (a complete block design:
    the Friedman test and average ranks need every method in every block). Rows flagged ``same-class-source``
    (not few-shot) are left out.
  * :func:`choose_design` takes, among the method sets of the cells, the one whose design holds the most
    observations (methods x cells) with at least 2 methods and 2 cells; ties: more methods, then names.
  * Within a cell, methods are ranked by mean accuracy, 1 = best; ties share their mean rank
    (``scipy.stats.rankdata``). ``average_ranks`` are the means over the design's cells.
  * ``cd``: Nemenyi's critical difference at ``alpha``, q_alpha * sqrt(k (k + 1) / (6 N)) with q_alpha the
    studentized range quantile (k methods, infinite df) / sqrt(2); two methods whose average ranks differ by
    less are not told apart. ``friedman_p``: ``scipy.stats.friedmanchisquare`` (None below 3 methods).
  * ``groups``: maximal runs of methods (in average-rank order) whose ranks span at most ``cd``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import stats

from ..store.schema import cell_key
from .compare import ALPHA


@dataclass
class RankSummary:
    """Average ranks over a design's cells: methods best first, the CD and the groups it cannot separate."""
    methods: List[str]
    average_ranks: List[float]
    cells: int
    cd: float
    friedman_p: Optional[float]
    groups: List[Tuple[int, int]]  # (first, last) indices into ``methods``, inclusive


def row_scores(rows: List[Dict]) -> Dict[tuple, Dict[str, float]]:
    """{cell: {method: mean accuracy}} of the few-shot rows that have an accuracy."""
    cells: Dict[tuple, Dict[str, float]] = {}
    for row in rows:
        if row["acc_mean"] is not None and "same-class-source" not in (row["flags"] or "").split(";"):
            cells.setdefault(cell_key(row), {})[row["method"]] = row["acc_mean"]
    return cells


def choose_design(scores: Dict[tuple, Dict[str, float]]) -> Tuple[List[str], List[tuple]]:
    """(methods, blocks) of the complete block design with the most observations (see the module docstring);
    ([], []) when no two methods share two blocks. ``scores``: {block: {method: score}}."""
    best = ((0, 0, ()), [], [])
    for method_set in {frozenset(m) for m in scores.values() if len(m) >= 2}:
        holding = [c for c, methods in scores.items() if method_set <= set(methods)]
        score = (len(method_set) * len(holding), len(method_set), tuple(sorted(method_set)))
        if len(holding) >= 2 and score > best[0]:
            best = (score, sorted(method_set), holding)
    return best[1], best[2]


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference of average ranks for ``k`` methods over ``n`` cells."""
    q_alpha = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q_alpha * math.sqrt(k * (k + 1) / (6 * n)))


def rank_summary(scores: Dict[tuple, Dict[str, float]], alpha: float = ALPHA) -> Optional[RankSummary]:
    """Average ranks, CD, Friedman p and groups over :func:`choose_design`'s design of ``scores`` ({block:
    {method: mean accuracy}}: cells, or units of cells sharing episodes); None without a design."""
    methods, design = choose_design(scores)
    if not methods:
        return None
    accuracy = np.array([[scores[c][m] for m in methods] for c in design])
    ranks = np.array([stats.rankdata(-line) for line in accuracy]).mean(0)
    order = sorted(range(len(methods)), key=lambda i: (ranks[i], methods[i]))
    methods, ranks = [methods[i] for i in order], [round(float(ranks[i]), 4) for i in order]
    cd = critical_difference(len(methods), len(design), alpha)
    friedman = stats.friedmanchisquare(*accuracy.T).pvalue if len(methods) >= 3 else None
    groups, reach = [], -1
    for first in range(len(methods)):
        last = max(j for j in range(first, len(methods)) if ranks[j] - ranks[first] <= cd)
        if last > reach and last > first:
            groups.append((first, last))
        reach = max(reach, last)
    return RankSummary(methods, ranks, len(design), round(cd, 4),
                       None if friedman is None or math.isnan(friedman) else float(friedman), groups)
