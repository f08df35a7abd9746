"""``fewshot-bench check-task NAME``: what a task card yields before anything is run on it.

The report lists, for the chosen fold: classes and examples per class in each pool; classes too small
for the episode shape (K+Q examples per class); whether episodes of that shape can be drawn from each
pool, and from how many class combinations; and texts that occur more than once. Duplicates are exact
matches after normalisation (Unicode NFKC, case folded, punctuation and whitespace dropped: only the
word characters are compared) of the rendered model input, reported by kind:

* across pools: the same text in two pools (a source example that is also a target query);
* across splits: the same text in two split files (a leak between files meant to be disjoint);
* within a pool: twice in one pool, so one episode can hold it as a support and as a query example.

Rows are named ``split:row`` (0-based row of the split file, as in episode ids); a text whose rows carry
different labels is marked ``[labels differ]``.
"""
from __future__ import annotations

import math
import re
import statistics
import sys
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from ..core.errors import UserError
from ..data.cards import POOLS
from ..data.loading import TaskData
from .sampling import parse_shot, sample_episode

SHOWN = 5  # examples printed per kind of finding
DUPLICATE_KINDS = ("across pools", "across splits", "within a pool")


def normalise(text: str) -> str:
    """The comparison key of a text: NFKC, case folded, word characters only, single-spaced."""
    return " ".join(re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold()))


@dataclass
class Duplicate:
    """One normalised text occurring in several rows, with the pool and label of each row."""
    text: str
    rows: List[Tuple[str, str, str]]  # (row id, pool or '-', label)

    def kinds(self) -> List[str]:
        pools = [pool for _, pool, _ in self.rows if pool != "-"]
        splits = {row_id.split(":")[0] for row_id, _, _ in self.rows}
        found = []
        if len(set(pools)) > 1:
            found.append("across pools")
        if len(splits) > 1:
            found.append("across splits")
        if len(pools) > len(set(pools)):
            found.append("within a pool")
        return found

    def describe(self) -> str:
        places = ", ".join(f"{row_id} ({pool}, {label})" for row_id, pool, label in self.rows)
        conflict = " [labels differ]" if len({label for _, _, label in self.rows}) > 1 else ""
        return f"'{self.text[:60]}': {places}{conflict}"


@dataclass
class PoolReport:
    name: str
    classes: int
    examples: int
    per_class: Dict[str, int]
    too_small: Dict[str, int]
    episodes: str  # what episodes of the shape this pool gives, or why none


@dataclass
class TaskReport:
    task: str
    fold: int
    rows: int
    shape: str
    pools: List[PoolReport]
    duplicates: Dict[str, List[Duplicate]] = field(default_factory=dict)

    @property
    def problems(self) -> int:
        """Findings that change results: too-small classes, pools without episodes, duplicates."""
        return (sum(len(p.too_small) for p in self.pools) + sum(len(d) for d in self.duplicates.values())
                + sum(p.episodes.startswith("none") for p in self.pools if p.examples))


def find_duplicates(data: TaskData) -> Dict[str, List[Duplicate]]:
    """Texts occurring more than once (after :func:`normalise`), grouped by kind of duplicate."""
    pool_of = np.full(len(data.ids), "-", dtype=object)
    for name in POOLS:
        pool_of[data.pools[name].rows] = name
    rows_of: Dict[str, List[int]] = defaultdict(list)
    for row, text in enumerate(data.texts):
        rows_of[normalise(text)].append(row)
    found: Dict[str, List[Duplicate]] = {kind: [] for kind in DUPLICATE_KINDS}
    for text, rows in rows_of.items():
        if len(rows) < 2:
            continue
        duplicate = Duplicate(text, [(data.ids[r], pool_of[r], data.labels[r]) for r in rows])
        for kind in duplicate.kinds():
            found[kind].append(duplicate)
    return found


def _episodes_line(data: TaskData, pool: str, n_way, k_shot, q_query: int, eligible: int) -> str:
    try:
        episode = sample_episode(data, pool=pool, n_way=n_way, k_shot=k_shot, q_query=q_query, seed=0, index=0)
    except UserError as exc:
        return f"none: {str(exc).split(': ', 1)[-1]}"
    combinations = math.comb(eligible, episode.n_way)
    return (f"yes: {episode.n_way}-way episodes from {eligible} class(es) with >= K+Q examples "
            f"({combinations:,} class combination(s))")


def check_task(data: TaskData, *, n_way: Union[int, str], k_shot, q_query: int) -> TaskReport:
    """The report of :mod:`fewshot_bench.episodes.check` for ``data`` and one episode shape."""
    k_shot = parse_shot(k_shot)
    needed = (k_shot[1] if isinstance(k_shot, tuple) else k_shot) + q_query
    labels = np.asarray(data.labels)
    pools = []
    for name in POOLS:
        pool = data.pools[name]
        pool_labels = labels[pool.rows]
        per_class = {c: int((pool_labels == c).sum()) for c in pool.classes}
        too_small = {c: n for c, n in sorted(per_class.items(), key=lambda kv: kv[1]) if n < needed}
        eligible = len(per_class) - len(too_small)
        episodes = _episodes_line(data, name, n_way, k_shot, q_query, eligible) if len(pool.rows) else "none: empty pool"
        pools.append(PoolReport(name, len(per_class), len(pool.rows), per_class, too_small, episodes))
    shot = f"{k_shot[0]}-{k_shot[1]}" if isinstance(k_shot, tuple) else k_shot
    return TaskReport(data.name, data.fold, len(data.ids), f"{n_way}-way {shot}-shot {q_query}-query (K+Q = {needed})",
                      pools, find_duplicates(data))


def format_report(report: TaskReport, limit: Optional[int] = SHOWN) -> str:
    """The report as text; ``limit``: duplicates listed per kind (None: every one)."""
    lines = [f"task '{report.task}' fold {report.fold}: {report.rows} rows; episode shape {report.shape}", "",
             "pools:"]
    for pool in report.pools:
        counts = sorted(pool.per_class.values())
        spread = (f"examples per class min {counts[0]} / median {statistics.median(counts):g} / max {counts[-1]}"
                  if counts else "no examples")
        lines.append(f"  {pool.name}: {pool.classes} class(es), {pool.examples} examples; {spread}")
        if pool.too_small:
            shown = ", ".join(f"{c} ({n})" for c, n in list(pool.too_small.items())[:20])
            more = f" and {len(pool.too_small) - 20} more" if len(pool.too_small) > 20 else ""
            lines.append(f"    {len(pool.too_small)} class(es) too small for K+Q: {shown}{more}")
        lines.append(f"    episodes: {pool.episodes}")
    shown = limit if limit is not None else sys.maxsize
    lines += ["", "duplicate texts (exact after normalisation: case, punctuation, whitespace):"]
    for kind in DUPLICATE_KINDS:
        found = report.duplicates.get(kind, [])
        lines.append(f"  {kind}: {len(found)} text(s)" + (":" if found else ""))
        lines += [f"    {d.describe()}" for d in found[:shown]]
        if len(found) > shown:
            lines.append(f"    ... and {len(found) - shown} more (--all-duplicates lists every one)")
    lines += ["", f"{report.problems} finding(s)" if report.problems else "no findings"]
    return "\n".join(lines)
