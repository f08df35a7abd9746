"""Across-cell comparisons: is method A better than method B over the suite, not just in one cell?

Contracts (:func:`across_cells`, a plain function returning data, so a report or a critical-difference diagram
can be drawn from it):
  * **Units.** Cells of one backbone whose episode sets share a fingerprint hold the same target episodes (e.g.
    clinc150->hwu64 5-way 1-shot draws exactly hwu64 fold 1's 5-way 1-shot episodes): they are merged into one
    unit, detected from the fingerprints, never from names (fingerprints do not name the backbone, so cells of
    two backbones never merge). Every other cell is a unit of its own. :func:`cell_units` hands the same units
    to the overall table (``leaderboard.overall``). Rows flagged
    same-class-source (not few-shot) are left out.
  * **Pairwise** (every two methods with a common unit): per cell the mean paired per-episode difference
    A - B on the common episodes (``compare.differences``), per unit the mean over its cells holding both;
    a two-sided Wilcoxon signed-rank test (scipy) over the units; Holm over the method pairs. A is better
    than B over the suite when the Holm p < ``compare.ALPHA`` and the mean unit difference is positive.
  * **Friedman + Nemenyi** (Demšar 2006): per unit each method's mean accuracy (over the unit's cells), handed
    to :func:`fewshot_bench.analysis.ranks.rank_summary` (the complete block design with the most observations, average
    ranks, the Friedman p, the critical difference and the groups it cannot separate).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import compare
from ..store.schema import cell_key
from .ranks import RankSummary, rank_summary
from .stats import effect_size, holm, wilcoxon_p


@dataclass
class SuitePair:
    """Method ``a`` against ``b`` over the units holding both: mean of the unit mean differences a - b and its
    d_z over the units (None: undefined, e.g. equal unit differences), the units where a (b) was ahead, Wilcoxon
    p, Holm p over the method pairs, and the decision."""
    a: str
    b: str
    units: int
    mean_diff: float
    dz: Optional[float]
    a_ahead: int
    b_ahead: int
    p: float
    p_holm: float = 1.0

    @property
    def winner(self) -> Optional[str]:
        if self.p_holm >= compare.ALPHA or self.mean_diff == 0:
            return None
        return self.a if self.mean_diff > 0 else self.b


@dataclass
class SuiteComparison:
    """Everything :func:`across_cells` finds; ``merged``: the units of more than one cell (their settings)."""
    units: int
    merged: List[List[str]]
    pairs: List[SuitePair]
    ranks: Optional[RankSummary] = None  # Friedman average ranks and Nemenyi CD over the units


def units(entries: List[compare.Entry]) -> List[List[tuple]]:
    """Cells grouped into units: cells of one backbone whose episode fingerprints overlap share a unit
    (connected groups); sorted lists of ``Entry.cell``."""
    fingerprints: Dict[tuple, set] = {}
    for entry in entries:
        backbone = entry.cell[-1]
        fingerprints.setdefault(entry.cell, set()).update((backbone, f) for f in entry.fingerprints)
    groups: List[Tuple[List[tuple], set]] = []
    for cell in sorted(fingerprints):
        joined = [g for g in groups if g[1] & fingerprints[cell]]
        groups = [g for g in groups if g not in joined]
        groups.append((sorted([cell, *(c for g in joined for c in g[0])]),
                       set(fingerprints[cell]).union(*(g[1] for g in joined))))
    return sorted(g[0] for g in groups)


def cell_units(entries: List[compare.Entry]) -> Dict[tuple, int]:
    """{``columns.cell_key`` of each entry's row: index of its unit in :func:`units` (all entries, same-class-source
    rows included)}: the key the overall table groups a method's cells by."""
    index = {cell: i for i, unit in enumerate(units(entries)) for cell in unit}
    return {cell_key(e.row): index[e.cell] for e in entries}


def _pairs(grouped: List[List[List[compare.Entry]]]) -> List[SuitePair]:
    """``grouped``: per unit, per cell, the cell's entries."""
    per_pair: Dict[tuple, List[float]] = {}
    for unit in grouped:
        sums: Dict[tuple, List[float]] = {}
        for members in unit:
            for x, y in combinations(sorted(members, key=lambda e: e.method), 2):
                d = compare.differences(x, y)
                if d is not None and len(d):
                    sums.setdefault((x.method, y.method), []).append(float(d.mean()))
        for key, values in sums.items():
            per_pair.setdefault(key, []).append(float(np.mean(values)))
    pairs = [SuitePair(a, b, len(v), float(np.mean(v)), effect_size(v), int(np.sum(np.array(v) > 0)),
                       int(np.sum(np.array(v) < 0)), wilcoxon_p(np.array(v))) for (a, b), v in sorted(per_pair.items())]
    for pair, adjusted in zip(pairs, holm([p.p for p in pairs]) if pairs else []):
        pair.p_holm = adjusted
    return pairs


def _unit_scores(grouped: List[List[List[compare.Entry]]]) -> Dict[int, Dict[str, float]]:
    """{unit index: {method: mean accuracy over the unit's cells holding it}}."""
    scores: Dict[int, Dict[str, float]] = {}
    for index, unit in enumerate(grouped):
        by_method: Dict[str, List[float]] = {}
        for members in unit:
            for e in members:
                if e.row["acc_mean"] is not None:
                    by_method.setdefault(e.method, []).append(e.row["acc_mean"])
        scores[index] = {m: float(np.mean(v)) for m, v in by_method.items()}
    return scores


def across_cells(entries: List[compare.Entry], alpha: float = compare.ALPHA) -> SuiteComparison:
    """Pairwise Wilcoxon tests over units with Holm, and Friedman average ranks with the Nemenyi CD."""
    kept = [e for e in entries if not e.same_class_source]
    cells = compare.by_cell(kept)
    unit_cells = units(kept)
    grouped = [[cells[c] for c in unit] for unit in unit_cells]
    return SuiteComparison(len(unit_cells), [[c[1] for c in unit] for unit in unit_cells if len(unit) > 1],
                           _pairs(grouped), rank_summary(_unit_scores(grouped), alpha))
