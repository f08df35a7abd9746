"""leaderboard.html: the leaderboard as one self-contained page (no network: inline CSS, JS, SVG and the summary
PNG as data), written with the other leaderboard outputs.

The page (``templates/leaderboard.html``) shows a methods x cells table (mean accuracy, Δ vs the reference with
its CI in the tooltip, ▲/▼ significance after Holm, flags), sortable by any column and filterable by task, shot,
way, protocol and backbone. The reference is chosen on the page (a select of every method; the generation-time
one is the default): every Δ, CI and Holm p is read from ``pairs`` (:func:`pair_rows`: every comparable pair of
every cell, Holm over all pairs of the cell, the leaderboard's own per-cell family), and a method's mean Δ runs
over the cells it shares with the reference only, its coverage shown (rows lacking some are marked and sorted
after complete ones when sorting by mean Δ or coverage); a cell's details on click (forest plot as SVG, rank groups, power); the across-cell
summary (average ranks, the summary figure) and the overall table; provenance (versions, run config hashes, git
commits, the isolation levels the rows' episodes reached, environments); each row's isolation (the CSV's
``isolation``: the levels its episodes ran under) is shown per method on the table, in a cell's tooltip and its
details. Its state (filters, sort, open cell) lives in the address's fragment, e.g.
``leaderboard.html#protocol=meta-trained&sort=acc&dir=desc``.
"""
from __future__ import annotations

import base64
import json
from importlib import resources
from itertools import combinations
from pathlib import Path
from typing import Dict, List, Optional

from ..store.schema import ISOLATION_LEVELS, OVERALL_COLUMNS, cell_key
from ..analysis import compare
from ..analysis.compare import ALPHA
from ..analysis.stats import bootstrap_ci
from ..store.environment import describe, store_environments
from ..analysis.ranks import RankSummary
from .markdown import CELL_FLAGS
from ..store.results import ResultsStore
from .summary_figure import cell_label

ROW_FIELDS = ("method", "protocol", "backbone", "episodes", "acc_mean", "acc_ci95_low", "acc_ci95_high",
              "delta_vs_ref", "delta_ci95_low", "delta_ci95_high", "p_value", "p_holm", "rank_group", "beaten_by",
              "flags", "isolation")


def provenance(store_path, rows: List[Dict]) -> Dict:
    """{"facts": [(label, text)], "environments": [text]} of the store's runs that wrote episodes; the isolation
    fact: the levels the rows' episodes ran under (their ``isolation`` column, weakest first), not the requested
    ones."""
    with ResultsStore(store_path, create=False) as store:
        used = {row[0] for row in store.conn.execute("SELECT DISTINCT run_id FROM episodes")}
        runs = [run for run in store.runs() if run["run_id"] in used]
    reached = {level for row in rows for level in (row["isolation"] or "").split(";")}
    isolation = [level for level in ISOLATION_LEVELS if level in reached]
    facts = [("project version", ", ".join(sorted({v for r in rows for v in r["version"].split(";")}))),
             ("runs", str(len(runs))),
             ("run config hashes", ", ".join(sorted({run["config_hash"][:12] for run in runs if run["config_hash"]}))),
             ("git commits", ", ".join(sorted({run["git_commit"][:12] for run in runs if run["git_commit"]})) or "none"),
             ("isolation", ", ".join(isolation) or "not recorded")]
    environments = [f"{describe(e['environment'])}; episodes: "
                    + ", ".join(f"{m} ({n})" for m, n in sorted(e["episodes"].items()))
                    for e in store_environments(store_path)]
    return {"facts": facts, "environments": environments}


def pair_rows(entries: List[compare.Entry], bootstrap: int, seed: int = 0) -> Dict[tuple, List[list]]:
    """{cell_key: [[A, B, common episodes, Δ A - B, CI low, CI high, p, Holm p], ...]}: every comparable unordered
    pair of each cell's methods (``compare.differences``), the paired percentile bootstrap 95% CI (unadjusted,
    ``bootstrap`` resamples, ``seed``: the leaderboard's), the sign-flip p and its Holm adjustment over every
    comparable pair of the cell (``compare.pairwise``: the leaderboard's per-cell family, so the page's decisions
    vs its default reference are the CSV's). B - A is the negation (CI [-high, -low]); Δ and CI rounded to 4."""
    cells = compare.by_cell(entries)
    tests = compare.pairwise(cells)
    result: Dict[tuple, List[list]] = {}
    for members in cells.values():
        found = result.setdefault(cell_key(members[0].row), [])
        for a, b in combinations(members, 2):
            if (a, b) in tests:
                d = compare.differences(a, b)
                low, high = bootstrap_ci(d, bootstrap, seed)
                mean, p, p_holm, _ = tests[(a, b)]
                found.append([a.method, b.method, len(d), round(mean, 4), round(low, 4), round(high, 4), p, p_holm])
    return result


def page_data(rows: List[Dict], overall_rows: List[Dict], ranks: Optional[RankSummary], reference: str,
              prov: Dict, pairs: Optional[Dict[tuple, List[list]]] = None, claims: Optional[str] = None) -> Dict:
    """The JSON the page renders: cells, rows (``ROW_FIELDS`` + cell id), methods, pairs by cell id (method
    names as indices into methods; :func:`pair_rows`), ranks, overall table, provenance, claims (Markdown text
    shown at the top, or None), the isolation levels weakest first (the order the page lists a method's in)."""
    groups: Dict[tuple, List[Dict]] = {}
    for row in rows:
        groups.setdefault(cell_key(row), []).append(row)
    several = len({r["backbone"] for r in rows}) > 1
    cells, data_rows = [], []
    for number, members in enumerate(groups.values()):
        row = members[0]
        cells.append({"id": number, "task": row["task"], "n_way": row["n_way"], "k_shot": row["k_shot"],
                      "fold": row["fold"], "backbone": row["backbone"], "setting": row["setting"],
                      "label": cell_label(row) + (f" {row['backbone']}" if several else ""),
                      "title": f"{row['task']} fold {row['fold']}, {row['n_way']}-way {row['k_shot']}-shot, "
                               f"{row['q_query']} queries/class, {row['backbone']}",
                      "episodes": "/".join(str(e) for e in sorted({r["episodes"] for r in members})),
                      "detectable_diff": row["detectable_diff"],
                      "flags": [f for f in (row["flags"] or "").split(";") if f in CELL_FLAGS],
                      "has_reference": any(r["method"] == reference for r in members)})
        data_rows += [{**{f: r[f] for f in ROW_FIELDS}, "cell": number} for r in members]
    methods = sorted({r["method"] for r in rows})
    index = {m: i for i, m in enumerate(methods)}
    by_id = {str(number): [[index[a], index[b], *rest] for a, b, *rest in (pairs or {}).get(key, [])
                           if a in index and b in index] for number, key in enumerate(groups)}
    return {"reference": reference, "alpha": ALPHA, "cells": cells, "rows": data_rows, "methods": methods,
            "pairs": by_id, "claims": claims, "isolation_levels": list(ISOLATION_LEVELS),
            "ranks": None if ranks is None else vars(ranks), "overall_columns": list(OVERALL_COLUMNS),
            "overall": overall_rows, "provenance": prov}


def write_html(data: Dict, summary_png: bytes, path) -> None:
    """Fill the template with ``data`` (JSON, ``</`` escaped so no text closes the script) and the PNG."""
    template = resources.files("fewshot_bench.report").joinpath("templates", "leaderboard.html").read_text(encoding="utf-8")
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    page = template.replace("__SUMMARY_PNG__", "data:image/png;base64," + base64.b64encode(summary_png).decode())
    Path(path).write_text(page.replace("__DATA__", payload), encoding="utf-8")
