"""``fewshot-bench power``: per cell, the paired SD of adjacent methods and the episodes each difference needs.

Normal approximation of a two-sided paired test at alpha 0.05 (``stats.episodes_needed``), without a
multiplicity correction; adjacent = next to each other in the cell's mean-accuracy order.
"""
from __future__ import annotations

from typing import List

from . import compare
from ..core.errors import UserError
from .stats import episodes_needed


def parse_deltas(text: str) -> List[float]:
    """'0.01,0.02' -> [0.01, 0.02]; each in (0, 1]."""
    try:
        deltas = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--delta expects comma-separated accuracy differences such as 0.01,0.02, got '{text}'") from None
    if not deltas or not all(0 < d <= 1 for d in deltas):
        raise UserError(f"--delta values must be in (0, 1] (accuracy differences), got '{text}'")
    return deltas


def power_table(entries: List[compare.Entry], deltas: List[float], power: float) -> List[dict]:
    """One dict per adjacent pair of every cell: cell, methods, common episodes, paired SD, episodes needed."""
    table = []
    for (task, setting, backbone), members in compare.by_cell(entries).items():
        for pair in compare.adjacent_pairs(members):
            needed = {d: (episodes_needed(pair.sd, d, power, compare.ALPHA) if pair.sd else None) for d in deltas}
            table.append(dict(task=task, setting=setting, backbone=backbone, better=pair.better, worse=pair.worse,
                              episodes=pair.episodes, sd=pair.sd, needed=needed))
    return table
