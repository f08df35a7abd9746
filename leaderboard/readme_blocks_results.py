"""leaderboard/README.md's blocks on the results: MAML's adaptation and defaults, the ablations, the class-level
and fold-level CIs, the compare families, and the bullets of "What this shows". Each block is a function of
:class:`readme_facts.Facts` returning the Markdown between its markers."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np

from readme_facts import CELL_BULLETS, FAMILIES, FOLD_EXAMPLES, FROZEN, REFERENCE, Facts
from readme_format import (base, bullet, ci, code, dz, listing, n, paragraph, pct, points, pvalue, shot, signed, span,
                            table)

ABLATIONS = ("sgg-no-dir", "sgg-no-mag", "sgg-no-align")
TERM_OF = {"sgg-no-mag": ("sgg_mag_active", "the magnitude bound acted on", "share"),
           "sgg-no-align": ("sgg_align_active", "the alignment projection fired on", "share"),
           "sgg-no-dir": ("sgg_dir_angle", "the direction term rotated g by", "angle")}


def _differing(a, b) -> Tuple[int, int]:
    """(query predictions that differ, query predictions compared) of two rows on their common episodes."""
    from fewshot_bench.analysis.compare import common_episodes

    differ = total = 0
    for fp in common_episodes(a, b) or []:
        pa, pb = a.predictions.get(fp), b.predictions.get(fp)
        if pa is not None and pb is not None and len(pa) == len(pb):
            differ += sum(x != y for x, y in zip(pa, pb))
            total += len(pa)
    return differ, total


def maml_block(f: Facts) -> str:
    cells = sorted({e.cell[1] for e in f.entries if e.method in ("maml", "fomaml")})
    rows = []
    for cell in cells:
        maml, fomaml = f.entry(cell, "maml"), f.entry(cell, "fomaml")

        def pair(column, fmt, both=(maml, fomaml)):
            return " / ".join("-" if e is None or e.row[column] is None else fmt(e.row[column]) for e in both)
        differ = _differing(maml, fomaml) if maml and fomaml else None
        rows.append((cell, pair("episodes", str), pair("acc_mean", lambda v: f"{v:.3f}"),
                     pair("support_loss_before", lambda v: f"{v:.2f}"),
                     pair("support_loss_after", lambda v: f"{v:.2f}"),
                     pair("adapt_changed", pct), "-" if differ is None else f"{n(differ[0])} of {n(differ[1])}"))
    return table(("cell", "episodes (maml / fomaml)", "accuracy", "support loss before the inner loop",
                  "after it", "query predictions adaptation changed", "maml and fomaml predictions that differ"),
                 rows)


def maml_defaults_block(f: Facts) -> str:
    from fewshot_bench.core.config import read_yaml
    from fewshot_bench.core.registry import METHODS

    defaults = {m: {fl.name: fl.default for fl in dataclasses.fields(METHODS.get(m).config_class)}
                for m in ("maml", "fomaml")}
    def head(d: dict) -> str:
        scale = f" at `head_scale` {d['head_scale']:g}" if d["head_init"] == "proto" else ""
        return f"`head_init` {d['head_init']}{scale} and `inner_lr` {d['inner_lr']:g}"

    keys = ("head_init", "head_scale", "inner_lr")
    same = all(defaults["maml"][k] == defaults["fomaml"][k] for k in keys)
    now = head(defaults["maml"]) if same else "; ".join(f"{m}: {head(d)}" for m, d in defaults.items())
    tuned = []
    for path in f.paths.tuned:
        data = read_yaml(path, "tuned configs")
        for setting, methods in (data.get("settings") or {}).items():
            overrides = (methods.get("fomaml") or {}).get("overrides") or {}
            if "head_scale" in overrides:
                tuned.append(f"{overrides['head_scale']:.2g} on {code(setting)}")
    return paragraph(f"MAML defaults now (the registered configs): {now}. The `fomaml[tuned]` rows' tuned "
                     f"`head_scale`: {listing(tuned)}.")


def _ablation_rows(f: Facts):
    for ablation in ABLATIONS:
        for cell in sorted({e.cell[1] for e in f.entries if e.method == ablation}):
            yield ablation, cell, f.entry(cell, "sgg"), f.entry(cell, ablation), f.entry(cell, "full_ft")


def ablation_block(f: Facts) -> str:
    from fewshot_bench.analysis.compare import identical_share

    rows = []
    for ablation, cell, sgg, abl, full in _ablation_rows(f):
        column, _, kind = TERM_OF[ablation]
        acted = sgg.row[column] if sgg is not None else None
        acted = "-" if acted is None else (pct(acted) if kind == "share" else f"{acted:.1f}°")
        rows.append((cell, code(ablation), abl.row["episodes"] - abl.row["failed_episodes"],
                     "-" if sgg is None else f"{sgg.row['acc_mean']:.4f}", f"{abl.row['acc_mean']:.4f}",
                     "-" if sgg is None else f"{100 * (abl.row['acc_mean'] - sgg.row['acc_mean']):+.2f}",
                     "-" if sgg is None else pct(identical_share(sgg, abl)),
                     "-" if full is None else pct(identical_share(full, abl)), acted))
    text = table(("cell", "ablation", "ok episodes", "sgg accuracy", "ablation accuracy",
                  "ablation - sgg (points)", "same prediction as sgg (queries)", "same as full_ft",
                  "the term in sgg (share of steps it acted / mean rotation)"), rows)
    align = [(cell, abl.row["acc_mean"] - sgg.row["acc_mean"]) for a, cell, sgg, abl, _ in _ablation_rows(f)
             if a == "sgg-no-align" and sgg is not None]
    cross = [c for c in f.core_labels if "->" in c.split("/")[0]]
    lacking = [c for c in cross if f.entry(c, "sgg-no-align") is None or not f.complete(f.entry(c, "sgg-no-align"))]
    if align:
        largest = max(abs(d) for _, d in align)
        text += "\n" + paragraph(
            f"`sgg-no-align` is within {100 * largest:.2f} points of `sgg` in all {len(align)} cells where both ran "
            f"({listing([code(c) for c, _ in align])}); cross-domain core cells with both: "
            f"{listing([code(c) for c in cross if c not in lacking])}; without a complete `sgg-no-align` row: "
            f"{listing([code(c) for c in lacking])}.")
    return text


def _ratio(low, high, base_low, base_high) -> Optional[float]:
    if None in (low, high, base_low, base_high) or base_high - base_low <= 0:
        return None
    return (high - low) / (base_high - base_low)


def class_block(f: Facts) -> str:
    acc, delta, lost, significant = [], [], {}, {}
    one_shot_kept = one_shot_total = 0
    for e in f.entries:
        row = e.row
        a_low, a_high, d_low, d_high = f.class_cis[e.cell[1], e.method]
        ratio = _ratio(a_low, a_high, row["acc_ci95_low"], row["acc_ci95_high"])
        if ratio is not None:
            acc.append((ratio, e.cell[1], e.method))
        ratio = _ratio(d_low, d_high, row["delta_ci95_low"], row["delta_ci95_high"])
        if ratio is not None:
            delta.append((ratio, e.cell[1], e.method))
        if row["p_holm"] is not None and row["p_holm"] < 0.05 and d_low is not None:
            k = "5-shot" if shot(e.cell[1]) == "5" else "1-shot"
            significant.setdefault(e.method, {}).setdefault(k, []).append(e.cell[1])
            if d_low <= 0 <= d_high:
                lost.setdefault(e.method, {}).setdefault(k, []).append(e.cell[1])
            if e.method == "linear_probe" and k == "1-shot" and row["delta_vs_ref"] < 0:
                one_shot_total += 1
                one_shot_kept += not (d_low <= 0 <= d_high)
    n_sig = sum(len(v) for m in significant.values() for v in m.values())
    n_lost = sum(len(v) for m in lost.values() for v in m.values())
    per_method = []
    for method, kinds in sorted(lost.items()):
        parts = []
        for k, cells in sorted(kinds.items()):
            text = f"{len(cells)} of its {len(significant[method][k])} significant {k} differences"
            if len(cells) <= 3:
                text += f" ({listing([code(c) for c in cells])})"
            parts.append(text)
        per_method.append(f"{code(method)}: {listing(parts)}")
    acc.sort()
    delta.sort()
    if not acc or not delta:
        return paragraph("No row has both an episode-level and a class-level CI yet.")
    widest = acc[-1]
    return paragraph(
        f"Resampling the classes instead of the episodes widens the accuracy CIs by a factor of "
        f"{np.median([r for r, _, _ in acc]):.1f} (median over the {len(acc)} rows with both; {acc[0][0]:.1f} to "
        f"{widest[0]:.1f}, widest {widest[2]} on {code(widest[1])}) and the Δ CIs by "
        f"{np.median([r for r, _, _ in delta]):.1f} ({delta[0][0]:.1f} to {delta[-1][0]:.1f}; {len(delta)} rows). "
        f"{n_lost} of the {n_sig} differences to `{REFERENCE}` that are significant after Holm have a class-level "
        f"CI containing 0" + (f": {'; '.join(per_method)}" if per_method else "") + ". "
        f"`{REFERENCE}`'s significant 1-shot advantages over `linear_probe` keep a class-level CI excluding 0 in "
        f"{one_shot_kept} of {one_shot_total} cells.")


def folds_block(f: Facts) -> str:
    parts = []
    for setting, method in FOLD_EXAMPLES:
        row = next((r for r in f.folds if r["setting"] == setting and r["method"] == method), None)
        if row is None or row["delta_vs_ref"] is None:
            continue
        *_, d_low, d_high = f.fold_class[setting, method]
        parts.append(f"{code(setting)} `{method}` − `{REFERENCE}` {signed(row['delta_vs_ref'])} over "
                     f"{row['delta_folds']} folds: t {ci(row['delta_ci95_low'], row['delta_ci95_high'])}, class-level "
                     f"{ci(d_low, d_high)}")
    return paragraph("For example " + "; ".join(parts) + ".") if parts else paragraph("")


def families_block(f: Facts) -> str:
    wrapped = []
    for family in FAMILIES:
        lines = ["fewshot-bench compare --store leaderboard/results.sqlite"]
        for a, b in family:
            token = f'--pair "{a}={b}"'
            if len(lines[-1]) + len(token) + 1 > 110:
                lines.append(token)
            else:
                lines[-1] += " " + token
        wrapped.append(" \\\n  ".join(lines))
    sizes = [sum(r["same_as"] is None for r in t) for t in f.families]
    return (paragraph(f"Named pairs are compared in {len(FAMILIES)} Holm families, "
                      f"{listing([str(s) for s in sizes])} comparisons:")
            + "\n```bash\n" + "\n".join(wrapped) + "\n```\n")


def _family_row(f: Facts, setting: str, a: str, b: str) -> Optional[dict]:
    for t in f.families:
        for r in t:
            if r["setting"] == setting and r["a"] == a and r["b"] == b:
                return r
    return None


def _pair_text(r: dict, with_dz: bool = True) -> str:
    return (f"`{r['a']}` − `{r['b']}` {signed(r['delta'])} {ci(r['low'], r['high'])}"
            + (f", d_z {dz(r['dz'])}" if with_dz else "") + f", Holm p {pvalue(r['p_holm'])}")


def frozen_block(f: Facts) -> str:
    cells = sorted(f.cells.items(), key=lambda kv: kv[0][1])
    total = len(cells)
    saturated = [c[1] for c, m in cells if "saturated" in (m[0].row["flags"] or "").split(";")]
    narrow = [c[1] for c, m in cells if "narrow-spread" in (m[0].row["flags"] or "").split(";")]
    lp = [(c[1], f.entry(c[1], "linear_probe")) for c, _ in cells]
    lp = [(c, e) for c, e in lp if e is not None and e.row["p_holm"] is not None]
    differ = [c for c, e in lp if e.row["p_holm"] < 0.05]
    ones = [(c, e) for c, e in lp if shot(c) == "1"]
    fives = [(c, e) for c, e in lp if shot(c) == "5"]
    proto_better = [c for c, e in ones if e.row["p_holm"] < 0.05 and e.row["delta_vs_ref"] < 0]
    one_ties = [c for c, e in ones if e.row["p_holm"] >= 0.05]
    lp_better = [c for c, e in fives if e.row["p_holm"] < 0.05 and e.row["delta_vs_ref"] > 0]
    five_ties = [c for c, e in fives if e.row["p_holm"] >= 0.05]
    five_worse = [c for c, e in fives if e.row["p_holm"] < 0.05 and e.row["delta_vs_ref"] < 0]

    def over_folds(setting):
        r = next((r for r in f.folds if r["setting"] == setting and r["method"] == "linear_probe"), None)
        return "-" if r is None or r["delta_vs_ref"] is None else \
            f"{signed(r['delta_vs_ref'])} {ci(r['delta_ci95_low'], r['delta_ci95_high'])} over {r['delta_folds']} folds"
    pair = next((p for p in f.suite.pairs if {p.a, p.b} == {"linear_probe", REFERENCE}), None)
    suite = ""
    if pair is not None:
        sign = 1 if pair.a == "linear_probe" else -1
        ahead = pair.b_ahead if pair.a == "linear_probe" else pair.a_ahead
        better = pair.p_holm < 0.05 and sign * pair.mean_diff != 0
        winner = (REFERENCE if sign * pair.mean_diff < 0 else "linear_probe") if better else None
        suite = (f"Over the suite ({pair.units} units, 1- and 5-shot mixed) `linear_probe` − `{REFERENCE}` "
                 f"{signed(sign * pair.mean_diff)} (d_z {'-' if pair.dz is None else format(sign * pair.dz, '+.2f')} "
                 f"over the units, `{REFERENCE}` ahead in "
                 f"{ahead}), Wilcoxon Holm p {pvalue(pair.p_holm)}: "
                 + (f"`{winner}` is better over this suite" if winner else "no difference over this suite")
                 + f", which has {len(ones)} 1-shot cells and {len(fives)} 5-shot ones.")
    return bullet(
        "**The suite separates methods.**",
        ("No cell is" if not saturated else f"{len(saturated)} cell{'s are' if len(saturated) > 1 else ' is'}")
        + " `saturated`"
        + (f" ({listing([code(c) for c in saturated])})" if saturated else "")
        + f"; {len(narrow)} of {total} cells are `narrow-spread`"
        + (f" ({listing([code(c) for c in narrow])})" if narrow else "") + ".",
        f"In {len(differ)} of {len(lp)} cells the two frozen methods differ after Holm.",
        f"`{REFERENCE}` is better in {len(proto_better)} of the {len(ones)} 1-shot cells"
        + (f" (no significant difference: {listing([code(c) for c in one_ties])})" if one_ties else "")
        + f", e.g. banking77 all-way 1-shot: `linear_probe` {over_folds('banking77/allway1shot15q')}; hwu64 5-way "
          f"1-shot {over_folds('hwu64/5way1shot15q')}.",
        f"At 5-shot `linear_probe` is better in {len(lp_better)} of {len(fives)} cells (banking77 all-way "
        f"{over_folds('banking77/allway5shot15q')}; hwu64 all-way {over_folds('hwu64/allway5shot15q')}), ties in "
        f"{len(five_ties)}" + (f" ({listing([code(c) for c in five_ties])})" if five_ties else "")
        + f" and is worse in {len(five_worse)}.", suite)


def _cell_text(f: Facts, setting: str) -> str:
    members = f.cells.get(next((c for c in f.cells if c[1] == setting), None), [])
    if not members:
        return f"**{setting}**: no rows."
    from fewshot_bench.analysis.compare import clones

    twins = {m: group for group in clones([e.row for e in members]) for m in group}
    groups: Dict[int, List] = {}
    for e in sorted(members, key=lambda e: (-(e.row["acc_mean"] or 0), e.method)):
        groups.setdefault(e.row["rank_group"], []).append(e)
    shown, parts = set(), []
    for g, es in sorted(groups.items()):
        names = []
        for e in es:
            if e.method in shown:
                continue
            same = [m for m in twins.get(e.method, [e.method]) if m != e.method]
            shown.update(same)
            notes = ([f"= {', '.join(same)}"] if same else []) + \
                ([f"beaten by {', '.join((e.row['beaten_by'] or '').split(';'))}"] if g > 1 else [])
            names.append(f"`{e.method}` {e.row['acc_mean']:.3f}" + (f" ({'; '.join(notes)})" if notes else ""))
        parts.append(f"group {g}: {', '.join(names)}")
    first = members[0].row
    ref_sig = [e for e in members if e.row["p_holm"] is not None and e.row["p_holm"] < 0.05]
    ref_text = "; ".join(f"`{e.method}` {signed(e.row['delta_vs_ref'])} "
                         f"{ci(e.row['delta_ci95_low'], e.row['delta_ci95_high'])}, d_z {dz(e.row['delta_dz'])}, "
                         f"Holm p {pvalue(e.row['p_holm'])}"
                         for e in sorted(ref_sig, key=lambda e: -e.row["delta_vs_ref"]))
    fam = [r for pair in (("sgg", "full_ft"), ("lora", "full_ft"), ("sgg", "lora"))
           for r in [_family_row(f, setting, *pair)] if r is not None]
    detectable = "-" if first["detectable_diff"] is None else f"{100 * first['detectable_diff']:.2f}"
    return (f"**{setting}** ({min(len(e.accuracy) for e in members)} episodes, {len(members)} rows, detectable "
            f"difference {detectable} points): rank {'; '.join(parts)}. "
            f"Against `{REFERENCE}`, significant within the cell: {ref_text or 'none'}."
            + (f" In the `compare` families: {'; '.join(_pair_text(r) for r in fam)}." if fam else ""))


def cells_block(f: Facts) -> str:
    return "".join(bullet(_cell_text(f, setting)) for setting in CELL_BULLETS)


def ablation_bullet_block(f: Facts) -> str:
    from fewshot_bench.analysis.compare import identical_share

    same: Dict[str, List[tuple]] = {}
    for ablation, cell, sgg, abl, full in _ablation_rows(f):
        other = full if ablation == "sgg-no-dir" else sgg
        if other is not None and sgg is not None:
            same.setdefault(ablation, []).append((cell, identical_share(other, abl), sgg.row[TERM_OF[ablation][0]]))
    parts = []
    for ablation, found in same.items():
        _, words, kind = TERM_OF[ablation]
        against = "full_ft" if ablation == "sgg-no-dir" else "sgg"
        acted = [a for _, _, a in found if a is not None]
        term = (f"{span([100 * a for a in acted], '.1f', '-')}% of steps" if kind == "share" else
                f"{span(acted, '.1f', '-')}° on average")
        shares = span([100 * x for _, x, _ in found], ".1f", "-")
        parts.append(f"`{ablation}` made `{against}`'s prediction on {shares}% of queries in {len(found)} "
                     f"cell{'s' * (len(found) > 1)} (in `sgg` {words} {term})")
    text = "; ".join(parts) + "."
    banking = CELL_BULLETS[0]
    gain = _family_row(f, banking, "sgg", "full_ft")
    inert = {a: min(x for _, x, _ in found if x is not None) for a, found in same.items()}
    if gain is not None and inert.get("sgg-no-mag", 0) >= 0.999 and inert.get("sgg-no-dir", 0) >= 0.999:
        angle = f.entry(banking, "sgg").row["sgg_dir_angle"]
        text += (f" So on {code(banking)} the {points(gain['delta'])}-point difference `sgg` − `full_ft` (Holm p "
                 f"{pvalue(gain['p_holm'])} in its `compare` family) is the direction term's alone (mean rotation "
                 f"{angle:.1f}°).")
    return bullet("**Ablations** (the table under *Read with care*):", text)


def tuning_bullet_block(f: Facts) -> str:
    parts = []
    for method in ("fomaml", "full_ft", "lora", "sgg"):
        rows = [r for t in f.families for r in t if r["a"] == f"{method}[tuned]" and r["b"] == method]
        if rows:
            parts.append(f"`{method}[tuned]` − `{method}`: " + ", ".join(
                f"{signed(r['delta'])} on {r['setting'].split('/')[0]} (Holm p {pvalue(r['p_holm'])})"
                for r in sorted(rows, key=lambda r: r["setting"])))
    worse = sorted({r["a"] for t in f.families for r in t if r["a"].endswith("[tuned]") and r["b"] == base(r["a"])
                    and r["p_holm"] < 0.05 and r["delta"] < 0})
    return bullet("**Tuning** (validation classes, the budgets above):", "; ".join(parts) + ".",
                  "A validation budget this small picked configs worse than the defaults for "
                  f"{listing([code(m) for m in worse])}." if worse else "")


def gradient_bullet_block(f: Facts) -> str:
    from fewshot_bench.analysis.gradients import COLUMNS, basis

    sets: Dict[str, List[str]] = {}
    for method in sorted({e.method for e in f.entries if base(e.method) not in FROZEN}):
        sizes = {basis(e.row["trainable_params"]) for e in f.entries if e.method == method} - {None}
        for size in sorted(sizes):  # sorted: a set's order of strings changes from process to process
            sets.setdefault(size, []).append(method)
    trained = "; ".join(f"{', '.join(code(m) for m in ms)} {size}"
                        for size, ms in sorted(sets.items(), key=lambda kv: (-len(kv[1]), kv[0])))
    gradient = [s for s in f.spearman if base(s["method"]) not in FROZEN]
    parts = []
    for column in COLUMNS:
        mine = [s for s in gradient if s["column"] == column]
        if mine:
            parts.append(f"`{column}` {span([s['low'] for s in mine] + [s['high'] for s in mine], '+.2f')} "
                         f"(medians per method {span([s['median'] for s in mine], '+.2f')})")
    cells = sorted({s["cells"] for s in gradient})
    return bullet(
        "**Gradient columns** (`grad_norm_cv`, `grad_dir_consistency`, `path_efficiency`, `source_alignment`) are "
        "diagnostics computed on the parameters each method trains, comparable only between rows with the same "
        f"trainable set (equal `trainable_params`: {trained}), written `@ SIZE` beside the value in "
        "`leaderboard.md`. Their Spearman correlation with accuracy over a method's episodes within a cell "
        "(`gradients.accuracy_spearman`, the *Gradient diagnostics* section), over the gradient-based rows of this "
        f"store, ranges: {'; '.join(parts)}; {span(cells, 'd', '-')} cells per method and set.")


def claims_bullet_block(f: Facts) -> str:
    return bullet("**The seed's claims** (the claims table above, one Holm family each): " + "; ".join(
        f"*{r['claim'].split(' (')[0]}*: {r['verdict']}" for r in f.claim_rows) + ".")


def shows_block(f: Facts) -> str:
    """The bullets of "What this shows"."""
    return "".join(block(f) for block in (frozen_block, cells_block, ablation_bullet_block, tuning_bullet_block,
                                          gradient_bullet_block, claims_bullet_block))
