"""leaderboard.md: what the data can and cannot decide, cell by cell, then the overall table and how to read it."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..store.schema import LEADERBOARD_SCHEMA_VERSION, OVERALL_COLUMNS, cell_key
from ..analysis.across import SuiteComparison
from ..analysis.compare import ALPHA, IDENTICAL_SHARE, LEAK_MARK, POWER, SATURATED_ACCURACY, connected_groups, marked
from ..analysis.gradients import BASIS_HELP, COLUMNS as GRADIENT_COLUMNS, basis
from ..analysis.restarts import FAILED_MARGIN
from ..analysis.stats import format_dz

CELL_FLAGS = ("saturated", "narrow-spread", "mixed-episodes", "no-reference")
RULE = (f"**Decision rule.** Within a cell: every pair of its methods is compared paired on the common episodes "
        f"(exact sign-flip test) and Holm-corrected within the cell (one family per cell, so adding cells or "
        f"methods elsewhere changes nothing here); A beats B when Holm p < {ALPHA} and A's mean is higher. Over "
        f"the suite: a Wilcoxon signed-rank test over cells of the per-cell paired mean differences, cells sharing "
        f"target episodes counted once, Holm over the method pairs; Friedman average ranks with the Nemenyi "
        f"critical difference for the methods present everywhere.")


def _md_table(header: Sequence[str], body: List[Sequence]) -> List[str]:
    def cell(value):
        return "" if value is None else str(value).replace("|", "\\|")
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(cell(v) for v in line) + " |" for line in body]


def _interval(mean, low, high, signed: bool = False):
    """``mean [low, high]``; the mean alone when it has no interval; None without a mean."""
    if mean is None:
        return None
    fmt = "{:+.4f}" if signed else "{:.4f}"
    if low is None or high is None:
        return fmt.format(mean)
    return f"{fmt.format(mean)} [{fmt.format(low)}, {fmt.format(high)}]"


def _classes(text, row: Dict, prefix: str, signed: bool = False):
    """``text`` plus the class-level CI (``classes [low, high]``) where it differs from the episode-level one."""
    low, high = row[f"{prefix}_class_ci95_low"], row[f"{prefix}_class_ci95_high"]
    if text is None or low is None or (low, high) == (row[f"{prefix}_ci95_low"], row[f"{prefix}_ci95_high"]):
        return text
    fmt = "{:+.4f}" if signed else "{:.4f}"
    return f"{text}; classes [{fmt.format(low)}, {fmt.format(high)}]"


def _delta(row: Dict, reference: str):
    """The Δ column: the interval, ``reference`` on the reference's own row, ``no reference`` without a
    comparison to it."""
    if row["delta_vs_ref"] is not None:
        return _interval(row["delta_vs_ref"], row["delta_ci95_low"], row["delta_ci95_high"], signed=True)
    return "reference" if row["method"] == reference else "no reference"


def _dz(row: Dict) -> Optional[str]:
    """The d_z column: empty without a comparison to the reference, "undefined" when its SD is ~0."""
    return None if row["delta_vs_ref"] is None else format_dz(row["delta_dz"], "")


def _flags(row: Dict, cell_level: bool) -> List[str]:
    flags = (row["flags"] or "").split(";") if row["flags"] else []
    return [f for f in flags if (f in CELL_FLAGS) == cell_level]


def _row_flags(row: Dict) -> str:
    """The row's own flags, its identical-prediction partners written as ``≈ OTHER SHARE``."""
    own = [f for f in _flags(row, False) if not f.startswith("indistinguishable:")]
    return ", ".join(own + [f"≈ {other} {share}" for other, share in _identical(row)])


def _cells(rows: List[Dict]) -> Dict[tuple, List[Dict]]:
    cells: Dict[tuple, List[Dict]] = {}
    for row in rows:
        cells.setdefault(cell_key(row), []).append(row)
    return cells


def _title(key: tuple) -> str:
    task, n_way, k_shot, q_query, backbone, fold, _ = key
    return f"{task} fold {fold}, {n_way}-way {k_shot}-shot, {q_query} queries/class, {backbone}"


def _sgg_terms(row: Dict) -> str:
    """Share of steps the magnitude bound and the alignment projection acted, and the direction term's mean
    rotation (empty for methods without SGG's terms)."""
    parts = [row.get("sgg_mag_active"), row.get("sgg_align_active"), row.get("sgg_dir_angle")]
    if parts[0] is None and parts[2] is None:  # SGG's figure columns: absent from a store without SGG rows
        return ""
    return " / ".join("–" if v is None else f"{v:.2f}" if i < 2 else f"{v:.1f}°" for i, v in enumerate(parts))


def _identical(row: Dict) -> List[tuple]:
    """(other method, share text) of the row's ``indistinguishable:OTHER(SHARE)`` flags."""
    return [tuple(f.split(":", 1)[1][:-1].rsplit("(", 1)) for f in _flags(row, False) if f.startswith("indistinguishable:")]


def _findings(cells: Dict[tuple, List[Dict]], reference: str, rows: List[Dict]) -> List[str]:
    lines = ["## What the data can decide", "", RULE, ""]
    for key, members in cells.items():
        name = {r["method"]: marked(r["method"], "same-class-source" in _flags(r, False)) for r in members}
        beaten = [f"{name[r['method']]} < {', '.join(name[m] for m in r['beaten_by'].split(';'))}"
                  for r in members if r["beaten_by"]]
        nominal = [f"{name[r['method']]} {r['delta_vs_ref']:+.4f} (d_z {format_dz(r['delta_dz'], '')}, "
                   f"p {r['p_value']})"
                   for r in members if r["p_value"] is not None and r["p_value"] < ALPHA]
        pairs = {tuple(sorted((r["method"], other))): share for r in members for other, share in _identical(r)}
        total = len(members) * (len(members) - 1) // 2
        same = connected_groups([pair for pair, share in pairs.items() if share == "100.0%"])
        text = f"- **{_title(key)}**" + (" (*saturated*)" if "saturated" in _flags(members[0], True) else "")
        text += f": significant after Holm: {'; '.join(beaten) if beaten else 'none'}"
        text += f"; nominal p < {ALPHA} vs {reference}: {', '.join(nominal) if nominal else 'none'}"
        text += f"; identical predictions on >= {IDENTICAL_SHARE:.0%} of queries: {len(pairs)} of {total} pairs"
        text += f" (100.0%: {'; '.join(' = '.join(g) for g in same)})" if same else ""
        lines.append(text)
    return lines + ([f"{LEAK_MARK} trained on a source pool holding the evaluated classes (same-class-source): "
                     "not few-shot, ranked apart", ""] if any("same-class-source" in (r["flags"] or "") for r in rows)
                    else [""])


def _across(suite: SuiteComparison) -> List[str]:
    """The across-cell section: units, the pairwise Wilcoxon tests with Holm, Friedman ranks and the CD."""
    lines = ["## Better over the suite (across cells)", "",
             f"{suite.units} independent units (cells; same-class-source rows left out)"
             + (f"; cells sharing target episodes counted once: {'; '.join(' = '.join(u) for u in suite.merged)}"
                if suite.merged else "") + ".", ""]
    lines += _md_table(("A", "B", "units", "mean A − B", "d_z", "units A ahead / B ahead", "Wilcoxon p", "p (Holm)",
                        "better over the suite"),
                       [(p.a, p.b, p.units, f"{p.mean_diff:+.4f}", format_dz(p.dz),
                         f"{p.a_ahead} / {p.b_ahead}", f"{p.p:.4g}",
                         f"{p.p_holm:.4g}", p.winner or "undecided") for p in suite.pairs])
    if suite.ranks is not None:
        r = suite.ranks
        ranks = ", ".join(f"{m} {rank:.2f}" for m, rank in zip(r.methods, r.average_ranks))
        lines += ["", f"Average ranks over the {r.cells} units holding all of the {len(r.methods)} methods "
                  f"(1 = best): {ranks}; Nemenyi critical difference {r.cd:.3f}"
                  + ("" if r.friedman_p is None else f"; Friedman p {r.friedman_p:.4g}") + "."]
    return lines + [""]


def _stability(cells: Dict[tuple, List[Dict]], tests: Sequence[Dict]) -> List[str]:
    """The restarts section: per cell and method restarts, seed SD, failed-run share; paired seed-SD tests."""
    lines = ["## Stability over training restarts", "",
             "**seed SD**: per episode the SD of accuracy over the training restarts (`run --restarts R`), median "
             f"over episodes; **failed runs**: share of runs (episode × restart) that crashed or scored at most "
             f"chance + {FAILED_MARGIN}; **SD test**: paired over episodes, two-sided Wilcoxon signed-rank on the "
             "per-episode SD differences, Holm within the cell (lower SD with Holm p < "
             f"{ALPHA} = more stable).", ""]
    lines += _md_table(("cell", "method", "restarts", "accuracy (mean over restarts)", "seed SD", "failed runs"),
                       [(_title(key), r["method"], r["restarts"], r["acc_mean"], r["seed_sd"], r["failed_run_share"])
                        for key, members in cells.items() for r in members if r["restarts"] > 1])
    if tests:
        lines += [""] + _md_table(("setting", "A", "B", "episodes", "median SD A − B", "p", "p (Holm)", "more stable"),
                                  [(t["setting"], t["a"], t["b"], t["episodes"], f"{t['median_diff']:+.4f}",
                                    f"{t['p']:.4g}", f"{t['p_holm']:.4g}",
                                    (t["a"] if t["median_diff"] < 0 else t["b"]) if t["p_holm"] < ALPHA else "undecided")
                                   for t in tests])
    return lines + [""]


def _isolation(row: Dict) -> str:
    """The isolation column: the levels the row's episodes ran under (weakest first), "not recorded" without one."""
    return (row["isolation"] or "").replace(";", ", ") or "not recorded"


def _gradient_value(row: Dict):
    """``grad_dir_consistency @ trainable set`` (e.g. ``0.6840 @ 22.7M``): comparable only at equal sets."""
    value, trained = row["grad_dir_consistency"], basis(row["trainable_params"])
    return value if value is None or trained is None else f"{value} @ {trained}"


def _gradients(spearman: Sequence[Dict]) -> List[str]:
    """The gradient-diagnostics section: where the columns are comparable, and their within-cell Spearman
    correlation with accuracy per method and trainable set (``gradients.accuracy_spearman``)."""
    lines = ["## Gradient diagnostics", "",
             f"`{'`, `'.join(GRADIENT_COLUMNS)}` are diagnostics, not a stability or quality measure: each is "
             f"{BASIS_HELP} (the per-cell tables write the set as `@ 22.7M`). Their Spearman correlation with "
             "accuracy over a method's episodes within a cell (median [min, max] over cells, cells counted) shows "
             "whether they track accuracy:", ""]
    table: Dict[tuple, Dict[str, Dict]] = {}
    for r in spearman:
        table.setdefault((r["method"], r["basis"]), {})[r["column"]] = r

    def entry(r: Optional[Dict]) -> str:
        return "" if r is None else f"{r['median']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}] ({r['cells']})"
    return lines + _md_table(("method", "trainable set", *GRADIENT_COLUMNS),
                             [(method, trained, *(entry(by.get(c)) for c in GRADIENT_COLUMNS))
                              for (method, trained), by in table.items()]) + [""]


def write_markdown(rows: List[Dict], overall_rows: List[Dict], path, bootstrap: int = 10000,
                   reference: str = "full_ft", fold_rows: Sequence[Dict] = (),
                   suite: Optional[SuiteComparison] = None, seed_sd_tests: Sequence[Dict] = (),
                   gradient_spearman: Sequence[Dict] = ()) -> None:
    """leaderboard.md: findings, the across-cell tests, the restarts section (when a row has restarts), one table
    per cell, the fold averages, the gradient diagnostics (when ``gradient_spearman`` holds any), the overall
    table and how to read them."""
    cells = _cells(rows)
    text = [f"# Leaderboard (schema {LEADERBOARD_SCHEMA_VERSION}, reference `{reference}`)", ""] + _findings(cells, reference, rows)
    text += _across(suite) if suite is not None else []
    text += _stability(cells, seed_sd_tests) if any(r["restarts"] > 1 for r in rows) else []
    for key, members in cells.items():
        first = members[0]
        counts = sorted({r["episodes"] for r in members})
        facts = [f"{'/'.join(map(str, counts))} episodes", f"chance {1 / first['n_way']:.2f}"]
        if first["detectable_diff"] is not None:
            facts.append(f"detectable difference {first['detectable_diff']:.3f} ({POWER:.0%} power)")
        facts += [f"**{flag}**" for flag in _flags(first, True)]
        text += [f"## {_title(key)}", "", " · ".join(facts), ""] + _md_table(
            ("rank group", "method", "protocol", "isolation", "episodes", "accuracy [95% CI; class-level CI]",
             f"Δ vs {reference} [95% CI; class-level CI]",
             "d_z", "p", "p (Holm)", "beaten by", "flags", "macro-F1", "grad dir. consistency @ trainable set",
             "s/episode", "SGG terms acting: mag / align share, dir °"),
            [(r["rank_group"], r["method"], r["protocol"], _isolation(r),
              r["episodes"] if r["episodes_planned"] in (None, r["episodes"]) else f"{r['episodes']}/{r['episodes_planned']}",
              _classes(_interval(r["acc_mean"], r["acc_ci95_low"], r["acc_ci95_high"]), r, "acc"),
              _classes(_delta(r, reference), r, "delta", signed=True), _dz(r), r["p_value"], r["p_holm"],
              (r["beaten_by"] or "").replace(";", ", "), _row_flags(r), r["macro_f1_mean"],
              _gradient_value(r), r["sec_per_episode"], _sgg_terms(r)) for r in members]) + [""]
    if fold_rows:
        text += ["## Averaged over folds", ""] + _md_table(
            ("setting (all folds)", "method", "folds", "episodes", "accuracy [95% CI over folds; class-level CI]",
             f"Δ vs {reference} [95% CI over folds; class-level CI]", "flags"),
            [(r["setting"] + ("" if len({x["backbone"] for x in fold_rows}) == 1 else f" ({r['backbone']})"),
              r["method"], r["folds"], r["episodes"],
              _classes(_interval(r["acc_mean"], r["acc_ci95_low"], r["acc_ci95_high"]), r, "acc"),
              _classes(_delta(r, reference), r, "delta", signed=True), (r["flags"] or "").replace(";", ", ")) for r in fold_rows]) + [""]
    text += _gradients(gradient_spearman) if gradient_spearman else []
    text += ["## Overall", ""] + _md_table(OVERALL_COLUMNS, [[r[c] for c in OVERALL_COLUMNS] for r in overall_rows])
    text += [
        "", "## How to read", "",
        "- A **cell** is task x setting (fold included) x backbone: every method in it ran on the same seeded "
        "episodes, so all its methods are compared with each other, whatever their protocol (a column), except "
        "rows flagged **same-class-source** (trained on a source pool holding the evaluated classes: not few-shot), "
        "which are ranked apart and left out of the overall table.",
        "- **Averaged over folds** (also `*_folds.csv`): mean over folds of each fold's mean accuracy and of each "
        "fold's paired difference to the reference, Student-t 95% CI over folds (folds are the unit, taken as "
        "independent); **classes [...]**: classes resampled once for all folds, so folds sharing target classes "
        "are dependent.",
        "- **accuracy**: mean query accuracy over ok episodes; 95% CI: percentile bootstrap over episodes "
        f"({bootstrap:,} resamples); **classes [...]**: the class-level CI (classes resampled, every (episode, "
        "class) accuracy of a drawn class kept: episodes sharing classes are not independent), shown where the "
        "episodes' classes are known (stored by the run or regenerated from the data dir).",
        f"- **Δ vs {reference}**: mean per-episode accuracy difference on the common episodes, paired percentile "
        "bootstrap 95% CI; **p**: two-sided paired sign-flip test (exact: convolution over the 1/(N·Q) lattice of accuracy differences); "
        "**d_z**: paired effect size (mean / SD of the per-episode differences; *undefined* when they are all "
        "equal, SD ~0); **p (Holm)**: p after Holm's correction over every pairwise comparison of the cell (one "
        "family per cell).",
        f"- **rank group** = 1 + the number of distinct methods of the cell that beat the method significantly "
        f"(Holm p < {ALPHA}), clones (identical predictions on 100.0% of the queries, equal accuracy) counted once; "
        "methods that cannot be told apart share a group. **beaten by** names them.",
        f"- **saturated**: every method >= {SATURATED_ACCURACY} accuracy (ceiling). **narrow-spread**: best minus "
        f"worst below the median CI half-width and no significant pair (the spread is within one row's noise). **≈ M share** (CSV flag `indistinguishable:M(share)`): identical query predictions on >= "
        f"{IDENTICAL_SHARE:.0%} of the queries of the common episodes. **unfinished(done/planned)**, "
        "**mixed-episodes**: the cell's episode sets differ; methods are then compared on their common episodes "
        "where the sets nest.",
        f"- **detectable difference**: the true accuracy difference a paired test on this many episodes finds with "
        f"{POWER:.0%} power at alpha {ALPHA} (normal approximation, median SD of adjacent methods' per-episode "
        "differences, no multiplicity correction); `fewshot-bench power` gives the episodes needed per difference.",
        "- **Overall**: per method, cells and units covered (a **unit**: cells sharing target episodes, e.g. "
        "clinc150->hwu64 and hwu64 fold 1, counted once, as in the across-cell tests), mean over its units of "
        "its unit accuracies (a unit: the mean over its cells; CI from the per-cell CIs, dependent within a unit, "
        f"independent across units), wins/ties/losses against {reference} per unit after Holm (a unit whose cells "
        "disagree is a tie), mean rank group over units; `incomplete` rows miss cells, so their means are not "
        "comparable with complete ones.",
        "- **isolation**: where the row's episodes ran the method's code, the levels reached (weakest first): "
        "in-process (the harness's own process), process (a sealed worker process: separate memory only) or "
        "sandboxed (the worker confined by Landlock); a run asking for sandboxed reaches process where Landlock is "
        "unavailable. Several levels when the episodes differ; *not recorded*: episodes stored without one.",
        "- **failed** episodes (crashed or diverged) are excluded from accuracy; gradient columns are empty for "
        "methods without gradient steps and comparable only between rows with the same trainable set "
        "(`@ 22.7M`: the trainable parameters they are computed on; see *Gradient diagnostics*).",
        "- **SGG terms acting** (CSV `sgg_mag_active`, `sgg_align_active`, `sgg_dir_angle`): mean over episodes of "
        "the share of steps the magnitude bound acted and the alignment projection fired, and of the mean angle "
        "the direction term rotated the step; 0 / 0 / small angle means the variant is plain fine-tuning.",
    ]
    Path(path).write_text("\n".join(text) + "\n", encoding="utf-8")
