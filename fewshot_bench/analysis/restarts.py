"""Training-seed stability from restarts (``run --restarts R``: each episode trained with R training seeds).

Contracts:
  * :func:`seed_stability`: for one leaderboard row's runs (episode x restart), the number of restarts, the
    **seed SD** (per episode the SD, ddof 1, of accuracy over its ok restarts; the median over the episodes with
    two or more), the per-episode SDs, and the **failed-run share**: runs that crashed or diverged or scored
    at most chance (1 / N) + ``FAILED_MARGIN``, over all runs (Dodge et al. 2020; Mosbach et al. 2021).
  * :func:`seed_sd_tests`: per cell, every two methods with per-episode seed SDs on common episodes: the
    median paired SD difference, a two-sided Wilcoxon signed-rank test (scipy) on the paired differences, Holm
    within the cell. "More stable" = lower seed SD with Holm p < ``compare.ALPHA``.
"""
from __future__ import annotations

from itertools import combinations
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import compare
from .stats import holm, wilcoxon_p

FAILED_MARGIN = 0.05  # a run at most this far above chance accuracy counts as failed


def seed_stability(runs: Dict[str, List[dict]], n_way: int) -> Tuple[int, Optional[float], Optional[float],
                                                                      Dict[str, float]]:
    """(restarts, seed SD, failed-run share, {fingerprint: SD over restarts}) of one row; ``runs``: the stored
    rows by episode fingerprint (``restart``, ``status``, ``accuracy``)."""
    restarts = len({r["restart"] or 0 for rows in runs.values() for r in rows})
    sds = {}
    for fingerprint, rows in runs.items():
        accuracy = [r["accuracy"] for r in rows if r["status"] == "ok" and r["accuracy"] is not None]
        if len(accuracy) > 1:
            sds[fingerprint] = float(np.std(accuracy, ddof=1))
    everything = [r for rows in runs.values() for r in rows]
    failed = [r for r in everything if r["status"] != "ok" or r["accuracy"] is None
              or r["accuracy"] <= 1 / n_way + FAILED_MARGIN]
    seed_sd = float(np.median(list(sds.values()))) if sds else None
    return restarts, seed_sd, (len(failed) / len(everything) if everything else None), sds


def seed_sd_tests(entries: List[compare.Entry]) -> List[dict]:
    """One dict per comparable method pair of each cell: cell (its setting), a, b, episodes, median SD a - b,
    p, p_holm (Holm within the cell)."""
    table = []
    for (_, setting, backbone), members in compare.by_cell(entries).items():
        tests = []
        for a, b in combinations(sorted(members, key=lambda e: e.method), 2):
            common = [f for f in a.seed_sd if f in b.seed_sd]
            if common:
                d = np.array([a.seed_sd[f] - b.seed_sd[f] for f in common])
                tests.append(dict(setting=setting, backbone=backbone, a=a.method, b=b.method, episodes=len(d),
                                  median_diff=float(np.median(d)), p=wilcoxon_p(d)))
        for test, adjusted in zip(tests, holm([t["p"] for t in tests]) if tests else []):
            test["p_holm"] = adjusted
        table += tests
    return table
