"""Paired comparisons of the methods of each leaderboard cell: significance, rank groups, flags, power.

A **cell** is (task, setting, backbone): its methods ran on the same seeded episodes whatever their protocol,
so they are ranked together (protocol stays a column). Contracts:
  * Two rows are compared on their common ok episodes, and only when their episode sets nest (one holds every
    fingerprint of the other, e.g. a run stopped after 10 of 20 episodes); other pairs are not compared.
  * Each comparison is a two-sided paired sign-flip test (``stats.sign_flip_p``, exact). One Holm family per
    cell: every comparable pair of the cell (a cell's decisions do not change when other cells are added;
    "better over the suite" is ``across.across_cells``). A beats B when the Holm-adjusted p < ``ALPHA`` and
    A's mean per-episode accuracy on the common episodes is higher. Effect size: paired d_z (``stats.effect_size``).
  * ``rank_group`` = 1 + the number of distinct winners of the cell over the row, where clones (identical
    predictions on 100.0% of the common queries and equal mean accuracy: ``clones``) count once, so a
    duplicated method cannot move anyone's group; methods that cannot be told apart share a group.
    ``beaten_by`` names every winner. Rows whose method trained on a source pool sharing
    the evaluated classes (flag ``same-class-source``: not few-shot on those classes) are ranked apart: their
    rank group counts only same-class-source rows, and they never lower the rank group of the other rows. They
    are still compared with the reference (``delta_vs_ref``), which shows what the leak is worth.
  * Against the reference method: mean difference (row minus reference), paired percentile bootstrap 95% CI
    (episodes resampled, seeded) and its class-level CI (``hierarchical.class_ci``), its d_z, the raw and the Holm-adjusted p of that pair. A cell without the reference
    gets the flag ``no-reference`` and empty comparison columns; the reference's own row has them empty too.
  * Flags: ``saturated`` (every method >= ``SATURATED_ACCURACY``: the cell is at ceiling), ``narrow-spread``
    (best minus worst mean below the median CI half-width and no significant pair in the cell: the methods'
    spread is within the noise of one row), ``mixed-episodes`` (episode counts differ within the cell), ``unfinished(DONE/PLANNED)``,
    ``indistinguishable:OTHER(SHARE)`` (identical query predictions on >= ``IDENTICAL_SHARE`` of the queries
    of their common episodes).
  * Power: for adjacent methods (by mean accuracy) the SD of their per-episode differences; a cell's
    ``detectable_diff`` uses the median positive SD and the cell's smallest episode count.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Dict, List, Optional, Tuple

import numpy as np

from .hierarchical import class_ci
from .stats import bootstrap_ci, detectable_difference, effect_size, holm, sign_flip_p

ALPHA = 0.05
SATURATED_ACCURACY = 0.97
IDENTICAL_SHARE = 0.95
POWER = 0.8
LEAK_MARK = "†"  # beside every number of a same-class-source row outside its own table row


def marked(method: str, same_class_source: bool) -> str:
    """``method`` with the leak mark when its row trained on a source pool holding the evaluated classes."""
    return method + LEAK_MARK if same_class_source else method


@dataclass(eq=False)
class Entry:
    """One leaderboard row with its episodes: ``accuracy`` (the mean over its ok training restarts) and
    ``predictions`` (of its first ok restart) of ok episodes by fingerprint (episode order), ``fingerprints`` of
    every stored episode."""
    cell: Tuple[str, str, str]
    row: dict
    accuracy: Dict[str, float]
    predictions: Dict[str, list]
    fingerprints: frozenset = field(default_factory=frozenset)
    same_class_source: bool = False  # trained on a source pool sharing the evaluated classes: ranked apart
    seed_sd: Dict[str, float] = field(default_factory=dict)  # SD of accuracy over training restarts, by fingerprint
    labels: Dict[str, tuple] = field(default_factory=dict)  # (classes, query labels) by fingerprint: class-level CI

    @property
    def method(self) -> str:
        return self.row["method"]


@dataclass
class AdjacentPair:
    """Two methods next to each other in a cell's accuracy order and the SD of their per-episode differences."""
    better: str
    worse: str
    episodes: int
    sd: Optional[float]


def common_episodes(a: Entry, b: Entry) -> Optional[List[str]]:
    """Fingerprints of the ok episodes both rows have, when their episode sets nest; None when they do not."""
    if not (a.fingerprints <= b.fingerprints or b.fingerprints <= a.fingerprints):
        return None
    return [f for f in a.accuracy if f in b.accuracy]


def differences(a: Entry, b: Entry) -> Optional[np.ndarray]:
    """Per-episode accuracy of ``a`` minus ``b`` on their common episodes (None: not comparable)."""
    common = common_episodes(a, b)
    return None if not common else np.array([a.accuracy[f] - b.accuracy[f] for f in common])


def identical_share(a: Entry, b: Entry) -> Optional[float]:
    """Share of the queries of their common episodes on which both rows predicted the same label."""
    same = total = 0
    for f in common_episodes(a, b) or []:
        pa, pb = a.predictions.get(f), b.predictions.get(f)
        if pa is not None and pb is not None and len(pa) == len(pb):
            same += sum(x == y for x, y in zip(pa, pb))
            total += len(pa)
    return same / total if total else None


def by_cell(entries: List[Entry]) -> Dict[tuple, List[Entry]]:
    cells: Dict[tuple, List[Entry]] = {}
    for entry in entries:
        cells.setdefault(entry.cell, []).append(entry)
    return cells


def adjacent_pairs(members: List[Entry]) -> List[AdjacentPair]:
    """Adjacent methods of one cell in mean-accuracy order, with the SD of their paired differences."""
    ranked = sorted((e for e in members if e.row["acc_mean"] is not None),
                    key=lambda e: (-e.row["acc_mean"], e.method))
    pairs = []
    for better, worse in zip(ranked, ranked[1:]):
        d = differences(better, worse)
        if d is not None:
            pairs.append(AdjacentPair(better.method, worse.method, len(d), float(np.std(d, ddof=1)) if len(d) > 1 else None))
    return pairs


def cell_detectable_difference(members: List[Entry], power: float = POWER) -> Optional[float]:
    """Smallest mean difference the cell's episode count detects (median positive adjacent-pair SD); 1.0: none."""
    sds = [p.sd for p in adjacent_pairs(members) if p.sd]
    if not sds:
        return None
    episodes = min(len(e.accuracy) for e in members if e.accuracy)
    # capped at 1.0: a cell that needs more than the whole accuracy range detects no difference at all
    detectable = detectable_difference(float(np.median(sds)), episodes, power, ALPHA)
    return None if detectable is None else min(1.0, detectable)


def pairwise(cells: Dict[tuple, List[Entry]]) -> Dict[tuple, tuple]:
    """{(a, b) and (b, a): (mean difference a - b, p, p_holm, d_z)} for every comparable pair (``differences`` not
    None) of the entries of each cell of ``cells`` (:func:`by_cell`): p the exact sign-flip p, p_holm Holm over the
    cell's comparable pairs (one family per cell), both rounded to 6 as the CSV writes them; d_z the paired effect
    size (None when undefined), negated with the difference for (b, a)."""
    result = {}
    for members in cells.values():
        tests = []
        for a, b in combinations(members, 2):
            d = differences(a, b)
            if d is not None:
                tests.append((a, b, d, sign_flip_p(d)))
        for (a, b, d, p), p_holm in zip(tests, holm([t[3] for t in tests]) if tests else []):
            # rounded as written, so the CSV decides alike
            dz = effect_size(d)
            result[(a, b)] = (float(d.mean()), round(p, 6), round(p_holm, 6), dz)
            result[(b, a)] = (-float(d.mean()), round(p, 6), round(p_holm, 6), None if dz is None else -dz)
    return result


def connected_groups(pairs) -> List[List[str]]:
    """Connected groups of methods from (a, b) pairs, each sorted, in sorted order."""
    groups: List[set] = []
    for a, b in pairs:
        joined = [g for g in groups if a in g or b in g]
        groups = [g for g in groups if g not in joined] + [set().union({a, b}, *joined)]
    return sorted(sorted(g) for g in groups)


def clones(members: List[Dict]) -> List[List[str]]:
    """Clone groups of a cell's rows: methods whose ``indistinguishable`` flag reads 100.0% and whose acc_mean
    is equal (identical predictions, so identical accuracy): connected groups. Read from the rows' flags, as the
    CSV shows them, so ``validate`` decides alike."""
    acc = {r["method"]: r["acc_mean"] for r in members}
    return connected_groups((r["method"], other) for r in members for f in (r["flags"] or "").split(";")
                            if f.startswith("indistinguishable:") and f.endswith("(100.0%)")
                            for other in [f.split(":", 1)[1].rsplit("(", 1)[0]]
                            if other in acc and acc[other] == r["acc_mean"])


def rank_group(beaten_by: List[str], clones: List[List[str]]) -> int:
    """1 + the number of distinct winners, methods of one clone group (``clones``) counting once."""
    group_of = {m: i for i, group in enumerate(clones) for m in group}
    return 1 + len({group_of.get(m, m) for m in beaten_by})


def _cell_flags(members: List[Entry], any_significant: bool) -> List[str]:
    rows = [e.row for e in members if e.row["acc_mean"] is not None]
    flags = []
    if rows:
        means = [r["acc_mean"] for r in rows]
        half_widths = [(r["acc_ci95_high"] - r["acc_ci95_low"]) / 2 for r in rows]
        if min(means) >= SATURATED_ACCURACY:
            flags.append("saturated")
        if len(rows) > 1 and not any_significant and max(means) - min(means) < float(np.median(half_widths)):
            flags.append("narrow-spread")
    if len({e.row["episodes"] for e in members}) > 1:
        flags.append("mixed-episodes")
    return flags


def annotate(entries: List[Entry], reference: str, bootstrap: int = 10000, seed: int = 0) -> None:
    """Fill the comparison columns of every entry's row (see the module docstring)."""
    cells = by_cell(entries)
    tests = pairwise(cells)
    for members in cells.values():
        beaten_by = {entry: sorted(o.method for o in members if o.same_class_source == entry.same_class_source
                                   and (o, entry) in tests and tests[(o, entry)][2] < ALPHA
                                   and tests[(o, entry)][0] > 0) for entry in members}
        shares = {(a, b): share for a, b in combinations(members, 2)
                  for share in [identical_share(a, b)] if share is not None and share >= IDENTICAL_SHARE}
        cell_flags = _cell_flags(members, any(beaten_by.values()))
        detectable = cell_detectable_difference(members)
        ref = next((e for e in members if e.method == reference), None)
        for entry in members:
            row = entry.row
            flags = list(cell_flags) + (["same-class-source"] if entry.same_class_source else [])
            planned = row["episodes_planned"]
            if planned is not None and row["episodes"] < planned:
                flags.append(f"unfinished({row['episodes']}/{planned})")
            if ref is None:
                flags.append("no-reference")
            flags += [f"indistinguishable:{(b if a is entry else a).method}({share:.1%})"
                      for (a, b), share in shares.items() if entry in (a, b)]
            row.update(beaten_by=";".join(beaten_by[entry]) or None,
                       ref_method=reference if ref is not None else None, flags=";".join(flags) or None,
                       detectable_diff=None if detectable is None else round(detectable, 4))
            d = differences(entry, ref) if ref is not None and entry is not ref else None
            if d is not None:
                low, high = bootstrap_ci(d, bootstrap, seed)
                class_low, class_high = class_ci(entry, common_episodes(entry, ref), entry.labels, ref, seed)
                _, p, p_holm, dz = tests[(entry, ref)]
                row.update(delta_vs_ref=round(float(d.mean()), 4), delta_ci95_low=round(low, 4),
                           delta_ci95_high=round(high, 4), p_value=p, p_holm=p_holm,
                           delta_dz=None if dz is None else round(dz, 3),
                           delta_class_ci95_low=class_low, delta_class_ci95_high=class_high)
        groups = clones([e.row for e in members])
        for entry in members:
            entry.row["rank"] = entry.row["rank_group"] = rank_group(beaten_by[entry], groups)
