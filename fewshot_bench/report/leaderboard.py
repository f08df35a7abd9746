"""Aggregate a results store into the leaderboard: CSV, per-method overall CSV, Markdown and a figure.

One row per (method, protocol, backbone, task, setting); columns are declared in ``store/schema.py``, followed by one
column per figure the store's methods declare (``store/figures.py``). Conventions:
  * ``task`` is the target task, written ``SOURCE->TASK`` for cross-dataset settings (setting ``SOURCE->TASK/...``).
  * ``episodes`` counts every distinct episode of the row (ok + failed + diverged). An episode is identified by
    its fingerprint; if it was evaluated more than once (e.g. under another run config) the latest row counts.
    ``episodes_planned``: the largest episode count (``min(episodes, limit)``) of the run configs that wrote it.
  * Training restarts (``run --restarts``, the ``restart`` column; NULL = 0): an episode's accuracy is the mean
    over its ok restarts, its predictions the first ok restart's; ``restarts``, ``seed_sd`` and
    ``failed_run_share`` come from ``restarts.seed_stability``; metric means run over every ok run.
  * Failed and diverged episodes (no ok restart) are EXCLUDED from the accuracy statistics and counted in
    ``failed_episodes``.
    All other metric columns are means (``embedding_cache_seconds_total``: the sum) over ok episodes, empty when
    no ok episode has a value (e.g. prototypical networks have no gradients); a method figure's column is the
    aggregate its declaration names (mean or sum over ok episodes), empty for methods without that figure.
  * ``isolation``: the isolation levels the row's episodes ran under (weakest first, ';'-separated).
  * 95% CI of the mean accuracy: percentile bootstrap over episodes in episode order (default 10,000 resamples)
    from a numpy Generator seeded with ``seed``, so it is deterministic.
  * Comparisons, ``rank``/``rank_group``, flags and power: ``compare.py`` (paired, Holm within each cell);
    "better over the suite" (Markdown section): ``across.py``.
  * Numbers are rounded to the decimals their column declares.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..analysis import compare
from ..analysis.across import across_cells, cell_units
from ..analysis.entries import load_entries, planned_episodes, store_columns
from ..analysis.folds import FOLD_COLUMNS, fold_summary
from ..analysis.gradients import accuracy_spearman
from ..analysis.restarts import seed_sd_tests
from ..core.errors import UserError
from ..core.outputs import atomic_files, check_outputs, leaderboard_paths
from ..core.registry import did_you_mean
from ..store.results import ResultsStore
from ..store.schema import COLUMNS, OVERALL_COLUMNS, cell_key
from .markdown import write_markdown
from .views import Views

__all__ = ["DEFAULT_REFERENCE", "FORMULA_PREFIXES", "aggregate", "annotated_entries", "default_reference",
           "load_entries", "neutralise", "overall", "planned_episodes", "row_units", "write_csv", "write_leaderboard"]

DEFAULT_REFERENCE = "full_ft"
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def annotated_entries(store_path, bootstrap: int = 10000, seed: int = 0,
                      reference: str = DEFAULT_REFERENCE) -> List[compare.Entry]:
    """Entries with their rows' comparison columns filled, ordered by task, setting, backbone, rank group,
    accuracy."""
    entries = load_entries(store_path, bootstrap, seed)
    compare.annotate(entries, reference, bootstrap, seed)

    def order(entry):
        row = entry.row
        return (*entry.cell, row["rank_group"], row["acc_mean"] is None, -(row["acc_mean"] or 0), row["method"])
    return sorted(entries, key=order)


def aggregate(store_path, bootstrap: int = 10000, seed: int = 0, reference: str = DEFAULT_REFERENCE) -> List[Dict]:
    """Leaderboard rows (dicts with keys ``COLUMNS`` and the store's figure columns) in :func:`annotated_entries`
    order."""
    return [entry.row for entry in annotated_entries(store_path, bootstrap, seed, reference)]


def neutralise(cell):
    """Prefix text that a spreadsheet would run as a formula with a single quote; numbers stay numbers."""
    return "'" + cell if isinstance(cell, str) and cell.startswith(FORMULA_PREFIXES) else cell


def write_csv(rows: List[Dict], out_path, columns: Sequence[str] = COLUMNS) -> None:
    """Write ``rows`` with header ``columns``; None -> empty cell, formula-like text neutralised."""
    with open(out_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row[c] is None else neutralise(row[c]) for c in columns])


def _combined_ci(members: List[Dict]) -> tuple:
    """Mean of the members' means and its 95% CI from their CIs (members independent: half-widths add in
    quadrature, each side separately)."""
    means = np.array([r["acc_mean"] for r in members])
    mean, k = float(means.mean()), len(members)
    low = mean - float(np.sqrt(np.sum((means - [r["acc_ci95_low"] for r in members]) ** 2))) / k
    high = mean + float(np.sqrt(np.sum(([r["acc_ci95_high"] for r in members] - means) ** 2))) / k
    return round(mean, 4), round(max(0.0, low), 4), round(min(1.0, high), 4)


def _unit_accuracy(members: List[Dict]) -> Dict:
    """One unit's accuracy from its cells' rows (same target episodes, so dependent): mean of the cell means,
    half-widths averaged (the worst case, perfectly correlated cells)."""
    mean = float(np.mean([r["acc_mean"] for r in members]))
    return dict(acc_mean=mean, acc_ci95_low=mean - float(np.mean([r["acc_mean"] - r["acc_ci95_low"] for r in members])),
                acc_ci95_high=mean + float(np.mean([r["acc_ci95_high"] - r["acc_mean"] for r in members])))


def _unit_decision(members: List[Dict]) -> Optional[int]:
    """+1 (win), -1 (loss) or 0 (tie) of a unit against the reference from its cells' rows compared with it: a
    significant (Holm) win in a cell and no significant loss is a win, and vice versa; None when none compared."""
    compared = [r for r in members if r["p_holm"] is not None]
    if not compared:
        return None
    signs = {1 if r["delta_vs_ref"] > 0 else -1 for r in compared if r["p_holm"] < compare.ALPHA}
    return signs.pop() if len(signs) == 1 else 0


def row_units(rows: List[Dict]) -> Dict[tuple, int]:
    """{cell_key: unit index} from the rows alone, for callers without the episodes (``across.cell_units`` is the
    exact rule): cells of one backbone holding rows with the same ``episode_set_sha256`` share a unit."""
    parent: Dict[tuple, tuple] = {}
    owner: Dict[tuple, tuple] = {}

    def root(key):
        while parent[key] != key:
            key = parent[key]
        return key
    for row in rows:
        key, shared = cell_key(row), (row["backbone"], row["episode_set_sha256"])
        parent.setdefault(key, key)
        if shared in owner:
            parent[root(key)] = root(owner[shared])
        else:
            owner[shared] = key
    index: Dict[tuple, int] = {}
    return {key: index.setdefault(root(key), len(index)) for key in parent}


def overall(rows: List[Dict], units: Optional[Dict[tuple, int]] = None) -> List[Dict]:
    """Per method x backbone: cells and units covered, mean accuracy over its units with a CI, significant
    wins/ties/losses against the reference per unit and mean rank group over units; complete methods first, then
    by mean rank group. A unit: cells sharing target episodes (``units``: {cell_key: unit}, default
    :func:`row_units`), counted once (a method's unit value: the mean over its cells in the unit). Rows flagged
    ``same-class-source`` are left out (not few-shot on their cells' classes): such a cell counts as missing."""
    units = units if units is not None else row_units(rows)
    cells_on: Dict[str, set] = {}
    for row in rows:
        cells_on.setdefault(row["backbone"], set()).add(cell_key(row))
    groups: Dict[tuple, Dict[int, List[dict]]] = {}
    for row in rows:
        if "same-class-source" not in (row["flags"] or "").split(";"):
            groups.setdefault((row["method"], row["backbone"]), {}).setdefault(units[cell_key(row)], []).append(row)
    result = []
    for (method, backbone), by_unit in groups.items():
        members = [r for unit in by_unit.values() for r in unit]
        scored = [_unit_accuracy(s) for s in ([r for r in unit if r["acc_mean"] is not None] for unit in by_unit.values())
                  if s]
        decisions = [d for unit in by_unit.values() for d in [_unit_decision(unit)] if d is not None]
        total = len(cells_on[backbone])
        result.append(dict(zip(OVERALL_COLUMNS, (
            method, backbone, ";".join(sorted({r["protocol"] for r in members})), len(members), total,
            len(by_unit), len({units[c] for c in cells_on[backbone]}),
            *(_combined_ci(scored) if scored else (None, None, None)),
            *((decisions.count(1), decisions.count(0), decisions.count(-1)) if decisions else (None, None, None)),
            round(float(np.mean([np.mean([r["rank_group"] for r in unit]) for unit in by_unit.values()])), 4),
            "incomplete" if len(members) < total else None))))
    return sorted(result, key=lambda r: (r["flags"] is not None, r["mean_rank_group"], -(r["acc_mean"] or 0),
                                         r["method"]))


def default_reference(store_path) -> str:
    """The reference when none is named: ``DEFAULT_REFERENCE`` (full_ft) when the store holds it, else the method
    with rows in the most cells (ties: by name), so a run without full_ft is still compared cell by cell."""
    with ResultsStore(store_path, create=False) as store:
        cells = store.conn.execute("SELECT method, COUNT(DISTINCT backbone || '|' || setting) FROM episodes "
                                   "GROUP BY method").fetchall()
    if not cells or DEFAULT_REFERENCE in {method for method, _ in cells}:
        return DEFAULT_REFERENCE
    return min(cells, key=lambda row: (-row[1], row[0]))[0]


def write_leaderboard(store, out, bootstrap: int = 10000, reference: Optional[str] = None) -> None:
    """The leaderboard of ``store``: CSV at ``out`` plus <stem>.md, <stem>_overall.csv, <stem>_folds.csv, <stem>.png
    (the summary figure), <stem>_summary.md, <stem>.html and a forest plot per cell in <stem>_cells/ beside it;
    prints what it wrote and the top of the overall table. ``reference``: the method every other one is compared
    with (None: :func:`default_reference`)."""
    check_outputs([(path, "--out") for path in leaderboard_paths(out)], [(store, "--store")])
    named, reference = reference, reference or default_reference(store)
    entries = annotated_entries(store, bootstrap, reference=reference)
    rows = [entry.row for entry in entries]
    with ResultsStore(store, create=False) as results:
        records, columns = results.episodes(), COLUMNS + tuple(c.name for c in store_columns(results))
    if not rows:
        raise UserError(f"no episodes in {store}; run `fewshot-bench run` first")
    methods = sorted({r["method"] for r in rows})
    if named and reference not in methods:
        raise UserError(f"--reference '{reference}' has no rows in {store}{did_you_mean(reference, methods)} "
                        f"(methods there: {', '.join(methods)})")
    out = Path(out)
    overall_rows, fold_rows = overall(rows, cell_units(entries)), fold_summary(rows, entries)
    md, overall_csv, folds_csv = (out.with_name(out.stem + suffix) for suffix in (".md", "_overall.csv", "_folds.csv"))
    views = Views(out, rows, store)  # the summary PNG and Markdown, the HTML page, the per-cell forest plots
    with atomic_files([out, overall_csv, folds_csv, md, *views.paths]) as (out_tmp, overall_tmp, folds_tmp, md_tmp,
                                                                           *views_tmp):
        write_csv(rows, out_tmp, columns)
        write_csv(overall_rows, overall_tmp, OVERALL_COLUMNS)
        write_csv(fold_rows, folds_tmp, FOLD_COLUMNS)
        suite = across_cells(entries)
        write_markdown(rows, overall_rows, md_tmp, bootstrap, reference, fold_rows, suite, seed_sd_tests(entries),
                       accuracy_spearman(records))
        views.write(overall_rows, suite.ranks, reference, md_tmp, views_tmp)
    views.remove_stale_plots()
    print(f"wrote {out} ({len(rows)} rows), {md}, {overall_csv}, {folds_csv} ({len(fold_rows)} rows), {views}")
    print(f"overall (reference {reference}; wins/ties/losses significant after Holm):")
    for r in overall_rows[:10]:
        print(f"  {r['method']:<20} {r['backbone']:<16} cells {r['cells']}/{r['cells_total']} (units {r['units']}/"
              f"{r['units_total']})  acc {r['acc_mean']}  "
              f"w/t/l {r['wins']}/{r['ties']}/{r['losses']}  rank group {r['mean_rank_group']}")
