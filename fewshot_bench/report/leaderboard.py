"""Aggregate a results store into the leaderboard: CSV, per-method overall CSV, Markdown and a figure.

One row per (method, protocol, backbone, task, setting); columns are declared in ``columns.py``. Conventions:
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
    no ok episode has a value (e.g. prototypical networks have no gradients).
  * 95% CI of the mean accuracy: percentile bootstrap over episodes in episode order (default 10,000 resamples)
    from a numpy Generator seeded with ``seed``, so it is deterministic.
  * Comparisons, ``rank``/``rank_group``, flags and power: ``compare.py`` (paired, Holm within each cell);
    "better over the suite" (Markdown section): ``across.py``.
  * Numbers are rounded to the decimals their column declares.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..analysis import compare
from ..analysis.across import across_cells, cell_units
from ..store.schema import AGGREGATES, COLUMNS, LEADERBOARD_SCHEMA_VERSION, OVERALL_COLUMNS, cell_key
from ..episodes.sampling import episode_set_sha256
from ..core.errors import UserError
from ..analysis.folds import FOLD_COLUMNS, fold_summary
from ..analysis.gradients import accuracy_spearman
from ..analysis.hierarchical import class_ci, episode_labels
from ..core.outputs import atomic_files, check_outputs, leaderboard_paths
from ..core.registry import did_you_mean
from ..analysis.restarts import seed_sd_tests, seed_stability
from .markdown import write_markdown
from ..analysis.stats import bootstrap_ci
from ..store.results import ResultsStore
from .views import Views

log = logging.getLogger(__name__)

DEFAULT_REFERENCE = "full_ft"
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _task_label(task: str, setting: str) -> str:
    """``SOURCE->TASK`` for a cross-dataset setting labelled ``SOURCE->TASK/...``, else ``TASK``; a
    validation-pool setting (``.../validation/...``, hyperparameter choice) gets `` [validation]``."""
    head = setting.split("/", 1)[0]
    label = head if head.endswith("->" + task) else task
    return label + " [validation]" if "/validation/" in setting else label


def planned_episodes(config_json: Optional[str]) -> Optional[int]:
    """Episodes per task x setting a stored run config asked for (``min(episodes, limit)``); None when the
    config does not say or cannot be read."""
    try:
        config = json.loads(config_json or "{}")
        episodes, limit = config.get("episodes"), config.get("limit")
        return min(episodes, limit) if limit else episodes
    except (ValueError, TypeError, AttributeError):
        return None


def _planned_by_run(runs: List[dict]) -> Dict[str, Optional[int]]:
    """{run_id: :func:`planned_episodes` of its config}."""
    return {run["run_id"]: planned_episodes(run["config_json"]) for run in runs}


def _summarise(key: tuple, runs: Dict[str, List[dict]], planned: Optional[int], bootstrap: int, seed: int,
               stability: tuple) -> dict:
    """The row of one (task, setting, protocol, backbone, method) from its stored runs by fingerprint (one per
    training restart, episode order) and their :func:`seed_stability`."""
    task, setting, protocol, backbone, method = key
    first = next(iter(runs.values()))[0]
    ok_runs = [r for rows in runs.values() for r in rows if r["status"] == "ok"]
    accuracy = list(_episode_accuracy(runs).values())
    row = dict.fromkeys(COLUMNS)
    row.update(method=method, protocol=protocol, backbone=backbone, task=_task_label(task, setting), n_way=first["n_way"],
               k_shot=first["k_shot"], q_query=first["q_query"], episodes=len(runs),
               failed_episodes=len(runs) - len(accuracy), episodes_planned=planned,
               episode_set_sha256=episode_set_sha256(list(runs)),
               version=";".join(sorted({r["version"] for rows in runs.values() for r in rows})),
               schema_version=LEADERBOARD_SCHEMA_VERSION, fold=first["fold"], setting=setting)
    if accuracy:
        low, high = bootstrap_ci(accuracy, bootstrap, seed)
        row.update(acc_mean=round(float(np.mean(accuracy)), 4), acc_ci95_low=round(low, 4),
                   acc_ci95_high=round(high, 4))
    for column in AGGREGATES:
        values = [r[column.source] for r in ok_runs if r[column.source] is not None]
        reduce = np.sum if column.aggregate == "sum" else np.mean
        row[column.name] = round(float(reduce(values)), column.decimals) if values else None
    if row["trainable_params"] is not None:
        row["trainable_params"] = int(row["trainable_params"])
    restarts, seed_sd, failed_share, _ = stability
    row.update(restarts=restarts, seed_sd=None if seed_sd is None else round(seed_sd, 4),
               failed_run_share=None if failed_share is None else round(failed_share, 4))
    return row


def _episode_accuracy(runs: Dict[str, List[dict]]) -> Dict[str, float]:
    """{fingerprint: mean accuracy over its ok restarts} of the episodes with one or more."""
    means = {}
    for fingerprint, rows in runs.items():
        accuracy = [r["accuracy"] for r in rows if r["status"] == "ok" and r["accuracy"] is not None]
        if accuracy:
            means[fingerprint] = float(np.mean(accuracy))
    return means


def load_entries(store_path, bootstrap: int = 10000, seed: int = 0, class_level: bool = True) -> List[compare.Entry]:
    """One ``compare.Entry`` per leaderboard row (rows without the comparison columns filled). ``class_level``:
    recover the episodes' classes (``hierarchical.episode_labels``) for the class-level CIs; settings whose
    classes are neither stored nor local are left without them, with one logged note."""
    path = Path(store_path)
    if not path.is_file():
        raise UserError(f"results store '{path}' does not exist; run `fewshot-bench run` first or pass --store")
    if bootstrap < 1:
        raise UserError(f"--bootstrap must be >= 1, got {bootstrap}")
    with ResultsStore(path, create=False) as store:
        records, planned_by_run = store.episodes(), _planned_by_run(store.runs())
    groups: Dict[tuple, Dict[tuple, dict]] = {}
    for record in sorted(records, key=lambda r: r["created_at"]):  # stable sort: later rows overwrite earlier
        key = (record["task"], record["setting"], record["protocol"], record["backbone"], record["method"])
        groups.setdefault(key, {})[(record["fingerprint"], record["restart"] or 0)] = record
    by_setting: Dict[tuple, List[dict]] = {}
    for key, stored in groups.items():
        by_setting.setdefault(key[:2], []).extend(stored.values())
    labels = {setting: episode_labels(members) if class_level else {} for setting, members in by_setting.items()}
    unknown = [key for key, members in by_setting.items() if any(r["fingerprint"] not in labels[key] for r in members)]
    if class_level and unknown:
        log.warning("class-level CIs left empty for rows of %d of %d settings (tasks %s): their episodes' classes "
                    "are neither in the store nor regenerable from local task rows; set --data-dir DIR to fill them",
                    len(unknown), len(labels), ", ".join(sorted({task for task, _ in unknown})))
    entries = []
    for key, stored in groups.items():
        # episode order, not write order (ranks, resumes): the bootstrap CI is a function of the episode set
        runs: Dict[str, List[dict]] = {}
        for record in sorted(stored.values(), key=lambda e: (e["episode_index"], e["fingerprint"], e["restart"] or 0)):
            runs.setdefault(record["fingerprint"], []).append(record)
        restarts = {r["restart"] or 0 for r in stored.values()}
        if len({(r["restart"] or 0, r["config_hash"]) for r in stored.values()}) > len(restarts):
            log.warning("%s: episodes from several run configs are pooled (latest row per episode)", "/".join(key))
        plans = [planned_by_run.get(r["run_id"]) for r in stored.values()]
        planned = max((p for p in plans if p is not None), default=None)
        accuracy, stability = _episode_accuracy(runs), seed_stability(runs, next(iter(runs.values()))[0]["n_way"])
        predictions = {f: next(r["predictions"] for r in runs[f] if r["status"] == "ok" and r["accuracy"] is not None)
                       for f in accuracy}  # the first ok restart's
        entry = compare.Entry(cell=(key[0], key[1], key[3]), row=_summarise(key, runs, planned, bootstrap, seed, stability),
                              accuracy=accuracy, predictions=predictions, fingerprints=frozenset(runs),
                              same_class_source=any(r.get("same_class_source") == 1 for r in stored.values()),
                              seed_sd=stability[3], labels=labels[key[:2]])
        entry.row["acc_class_ci95_low"], entry.row["acc_class_ci95_high"] = class_ci(entry, list(accuracy),
                                                                                     entry.labels, seed=seed)
        entries.append(entry)
    return entries


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
    """Leaderboard rows (dicts with keys ``COLUMNS``) in :func:`annotated_entries` order."""
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


def cli_leaderboard(args) -> int:
    """``fewshot-bench leaderboard``: CSV at --out plus <stem>.md, <stem>_overall.csv, <stem>_folds.csv, <stem>.png
    (the summary figure), <stem>_summary.md, <stem>.html and a forest plot per cell in <stem>_cells/ beside it."""
    check_outputs([(path, "--out") for path in leaderboard_paths(args.out)], [(args.store, "--store")])
    reference = getattr(args, "reference", None) or default_reference(args.store)
    entries = annotated_entries(args.store, args.bootstrap, reference=reference)
    rows = [entry.row for entry in entries]
    with ResultsStore(args.store, create=False) as store:
        records = store.episodes()
    if not rows:
        raise UserError(f"no episodes in {args.store}; run `fewshot-bench run` first")
    methods = sorted({r["method"] for r in rows})
    if getattr(args, "reference", None) and reference not in methods:
        raise UserError(f"--reference '{reference}' has no rows in {args.store}{did_you_mean(reference, methods)} "
                        f"(methods there: {', '.join(methods)})")
    out = Path(args.out)
    overall_rows, fold_rows = overall(rows, cell_units(entries)), fold_summary(rows, entries)
    md, overall_csv, folds_csv = (out.with_name(out.stem + suffix) for suffix in (".md", "_overall.csv", "_folds.csv"))
    views = Views(out, rows, args.store)  # the summary PNG and Markdown, the HTML page, the per-cell forest plots
    with atomic_files([out, overall_csv, folds_csv, md, *views.paths]) as (out_tmp, overall_tmp, folds_tmp, md_tmp,
                                                                           *views_tmp):
        write_csv(rows, out_tmp)
        write_csv(overall_rows, overall_tmp, OVERALL_COLUMNS)
        write_csv(fold_rows, folds_tmp, FOLD_COLUMNS)
        suite = across_cells(entries)
        write_markdown(rows, overall_rows, md_tmp, args.bootstrap, reference, fold_rows, suite, seed_sd_tests(entries),
                       accuracy_spearman(records))
        views.write(overall_rows, suite.ranks, reference, md_tmp, views_tmp)
    views.remove_stale_plots()
    print(f"wrote {out} ({len(rows)} rows), {md}, {overall_csv}, {folds_csv} ({len(fold_rows)} rows), {views}")
    print(f"overall (reference {reference}; wins/ties/losses significant after Holm):")
    for r in overall_rows[:10]:
        print(f"  {r['method']:<20} {r['backbone']:<16} cells {r['cells']}/{r['cells_total']} (units {r['units']}/"
              f"{r['units_total']})  acc {r['acc_mean']}  "
              f"w/t/l {r['wins']}/{r['ties']}/{r['losses']}  rank group {r['mean_rank_group']}")
    return 0
