"""docs/sgg.md's blocks (the summary of where each SGG term acts, and the suite-v1 results: header, table, reading)
and leaderboard/README.md's two suite-v1 passages (the summary and the paired SD). Each block is a function of
:class:`readme_facts.Facts` returning the Markdown between its markers."""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from readme_facts import FROZEN, Facts
from readme_format import base, bullet, code, listing, n, paragraph, pct, span, table

V1_METHODS = ("sgg", "sgg-no-dir", "sgg-no-mag", "sgg-no-align", "full_ft", "lora")
V1_COLUMNS = ("grad_norm_cv", "grad_dir_consistency", "source_alignment", "path_efficiency")


def _v1(f: Facts) -> Dict[tuple, object]:
    return {(e.row["task"], str(e.row["k_shot"]), e.method): e for e in f.v1}


def v1_summary(f: Facts) -> str:
    rows = [e.row for e in f.v1]
    settings = sorted({r["setting"] for r in rows})
    ways = sorted({str(r["n_way"]) for r in rows})
    shots = sorted({str(r["k_shot"]) for r in rows}, key=float)
    episodes = sorted({r["episodes"] for r in rows})
    return paragraph(
        f"The 0.1 leaderboard (suite v1: {'/'.join(ways)}-way {'/'.join(shots)}-shot, fold "
        f"{'/'.join(sorted({str(r['fold']) for r in rows}))}, {'/'.join(map(str, episodes))} episodes, "
        f"{len({r['method'] for r in rows})} methods on each of its {len(settings)} cells) is kept in `v1/`.")


def _term_values(f: Facts, column: str) -> List[tuple]:
    """(entry, value) of the SGG rows holding ``column``, the ablation that switches that term off left out."""
    off = {method for method, ablated in f.claims.ABLATED.items() if ablated == column}
    return [(e, e.row[column]) for e in f.entries if e.row.get(column) is not None and base(e.method) not in off]


def terms_summary_block(f: Facts) -> str:
    direction = _term_values(f, "sgg_dir_angle")
    stress_labels = {label for _, _, sgg, full_ft in f.claims.stress_pairs() for label in (sgg, full_ft)}
    defaults = [v for e, v in direction if "[" not in e.method and e.method not in stress_labels]
    tuned = [v for e, v in direction if "[tuned]" in e.method]
    extra = [e.row["sgg_step_angle"] - v for e, v in direction if e.row["sgg_step_angle"] is not None]
    align = [v for _, v in _term_values(f, "sgg_align_active")]
    nodir = [e.row["sgg_step_angle"] for e in f.entries
             if e.method == "sgg-no-dir" and e.row["sgg_step_angle"] is not None]
    magnitude = _term_values(f, "sgg_mag_active")
    mag = [(e, v) for e, v in magnitude if e.method not in stress_labels]  # the stress rows apart
    stressed = sorted(((e.cell[1], e.method), v) for e, v in magnitude if e.method in stress_labels)
    never = sorted({e.cell[1] for e, _ in mag} - {e.cell[1] for e, v in mag if v > 0})
    bound: Dict[str, List[float]] = {}
    for e, v in mag:
        if v > 0:
            bound.setdefault(e.cell[1], []).append(v)
    nomag = sorted(e.cell[1] for e in f.entries if e.method == "sgg-no-mag")
    stress = sum(1 for r in f.records if r["method"] in stress_labels)
    text = bullet(f"**Direction** acts in every row that has it: {span(defaults, '.1f', '-')}° per step at the defaults"
                  + (f" ({span(tuned, '.1f', '-')}° for the `[tuned]` configs)" if tuned else "")
                  + ", nearly all of the applied step's angle to the task gradient (the last column is at most "
                    f"{max(extra, default=0.0):.1f}° larger)." if direction else "**Direction**: no row holds it yet.")
    text += bullet(f"**Alignment**: the projection fires on {span([100 * a for a in align], '.0f', '-')}% of steps "
                   "(those with cos(g, g_src) < 0) and moves the step little"
                   + (" (in `sgg-no-dir`, where it is the only term that acted, the step is "
                      f"{span(nodir, '.1f', '-')}° from the task gradient)" if nodir else "")
                   + ", hence `sgg-no-align` ≈ `sgg`.")
    ablations = (f"The store's one magnitude ablation (`sgg-no-mag` on {code(nomag[0])}) is" if len(nomag) == 1 else
                 f"The store's {len(nomag)} magnitude ablations (`sgg-no-mag` on {listing([code(c) for c in nomag])}) "
                 "are")
    text += bullet(
        "**Magnitude**: with τ = 1.5 × the running norm EMA the bound never bound on "
        f"{listing([code(c) for c in never])}"
        + (" and bound on " + listing([span([100 * v for v in vs], ".0f", "-") + f"% of steps on {code(c)}"
                                       for c, vs in bound.items()]) if bound else "") + ".",
        (ablations + " therefore " + ("a tie by construction, not evidence against the term."
                                      if set(nomag) <= set(never) else "partly on cells where the bound binds."))
        if nomag else "",
        "The **stress suite** (`tasks/suites/stress.yaml`: `sgg` and `full_ft` at multiples of the default learning "
        "rate on banking77 and fewrel → fewrel_pubmed 5-way 1-shot) is where magnitude control is supposed to act: "
        "larger steps, larger swings in the gradient norm, a bound that binds. Its claims (accuracy, and failed or "
        "diverged episodes) are rows of the claims table in `leaderboard/README.md`; "
        + ("its rows are not computed yet." if not stress else f"the store holds {n(stress)} of its episodes.")
        + (" There the bound acted on " + listing([f"{100 * v:.1f}% of steps for {code(m)} on {code(c)}"
                                                   for (c, m), v in stressed]) + "." if stressed else ""))
    return text


def v1_header_block(f: Facts) -> str:
    rows = [e.row for e in f.v1]
    episodes = sorted({r["episodes"] for r in rows})
    failed = sum(r["failed_episodes"] for r in rows)
    ways, queries = (sorted({str(r[c]) for r in rows}) for c in ("n_way", "q_query"))
    return paragraph(
        f"{'/'.join(ways)}-way, {'/'.join(queries)} queries per class, {'/'.join(map(str, episodes))} episodes per "
        "cell (identical episodes for every method), "
        f"{'/'.join(sorted({r['backbone'] for r in rows}))}, fold {'/'.join(sorted({str(r['fold']) for r in rows}))}, "
        f"from the suite-v1 store `leaderboard/v1/results.sqlite` (`leaderboard/v1/leaderboard.csv`; "
        f"{'no' if not failed else failed} failed episodes):")


def v1_table_block(f: Facts) -> str:
    by = _v1(f)
    rows = []
    for task in sorted({t for t, _, _ in by}, key=lambda t: ["banking77", "clinc150", "hwu64", "huffpost"].index(t)
                       if t in ("banking77", "clinc150", "hwu64", "huffpost") else 9):
        for k in sorted({k for t, k, _ in by if t == task}, key=float):
            for method in V1_METHODS:
                e = by.get((task, k, method))
                if e is None:
                    continue
                r = e.row
                accuracy = f"{r['acc_mean']:.3f} [{r['acc_ci95_low']:.3f}, {r['acc_ci95_high']:.3f}]"
                rows.append((task, k, method, accuracy, *("-" if r[c] is None else f"{r[c]:.3f}" for c in V1_COLUMNS)))
    return table(("task", "K", "method", "accuracy [95% CI]", *V1_COLUMNS), rows)


def v1_reading_block(f: Facts) -> str:
    from fewshot_bench.analysis.compare import identical_share

    by = _v1(f)
    cells = sorted({(t, k) for t, k, m in by if m == "sgg"})

    def get(cell, method, column):
        e = by.get((*cell, method))
        return None if e is None else e.row[column]
    inside = sum(1 for c in cells if get(c, "full_ft", "acc_ci95_low") <= get(c, "sgg", "acc_mean")
                 <= get(c, "full_ft", "acc_ci95_high"))
    path_ft = [get(c, "full_ft", "path_efficiency") for c in cells]
    path_sgg = [get(c, "sgg", "path_efficiency") for c in cells]
    drop = [100 * (1 - get(c, "sgg", "grad_norm_cv") / get(c, "full_ft", "grad_norm_cv")) for c in cells]
    align_up = [get(c, "sgg", "source_alignment") - get(c, "full_ft", "source_alignment") for c in cells]
    nodir_same = sum(all(round(get(c, "sgg-no-dir", col), 3) == round(get(c, "full_ft", col), 3)
                         for col in ("acc_mean",) + V1_COLUMNS) for c in cells)
    nomag_share = [identical_share(by[(*c, "sgg")], by[(*c, "sgg-no-mag")]) for c in cells]
    nomag_cv = max(abs(get(c, "sgg", "grad_norm_cv") - get(c, "sgg-no-mag", "grad_norm_cv")) for c in cells)
    noalign_diff = [f"{c[0]} {c[1]}-shot" for c in cells if any(
        round(get(c, "sgg", col), 3) != round(get(c, "sgg-no-align", col), 3) for col in ("acc_mean",) + V1_COLUMNS)]
    lora_cons = [get(c, "lora", "grad_dir_consistency") for c in cells]
    cosines = [get(c, m, "source_alignment") for c in cells for m in V1_METHODS if m != "lora"]
    lora_off = []
    for c in cells:
        others = [get(c, m, "acc_mean") for m in V1_METHODS if m != "lora"]
        mine = get(c, "lora", "acc_mean")
        if not min(others) - 0.005 <= mine <= max(others) + 0.005:
            lora_off.append(f"{c[0]} {c[1]}-shot ({mine:.3f} against {span(others, '.3f', '-')})")
    episodes = sum(by[(*c, "sgg")].row["episodes"] for c in cells)
    return paragraph(
        f"`sgg`'s mean accuracy lies inside `full_ft`'s bootstrap CI in {inside} of "
        f"{len(cells)} cells; `path_efficiency` {span(path_ft)} (`full_ft`) against {span(path_sgg)} (`sgg`); "
        f"`grad_norm_cv` lower by {span(drop, '.1f', '-')}%; `source_alignment` higher in "
        f"{sum(d > 0 for d in align_up)} of {len(cells)} cells (by at most {max(align_up):.3f}); `sgg-no-dir` equals "
        f"`full_ft` in accuracy and every gradient column to 3 decimals in {nodir_same} of {len(cells)} cells; "
        + ("`sgg-no-mag` makes `sgg`'s prediction on every query of " if min(nomag_share) == 1 else
           f"`sgg-no-mag` makes `sgg`'s prediction on {pct(min(nomag_share))} or more of the queries of ")
        + f"all {episodes} episodes (`grad_norm_cv` moves by at most {nomag_cv:.1g}); `sgg-no-align` differs from "
        f"`sgg` to 3 decimals only in {listing(noalign_diff)}; the mean `source_alignment` of the other rows "
        f"{span(cosines, '.2f', '-')}; `lora`'s `grad_dir_consistency` {span(lora_cons, '.2f', '-')}, its accuracy "
        f"outside the other rows' range only in {listing(lora_off)}.")


def v1_paired_sd_block(f: Facts) -> str:
    """The largest SD of per-episode paired differences between two gradient-based rows of a v1 cell, and the
    frozen pair's SD in that cell."""
    from itertools import combinations

    from fewshot_bench.analysis.compare import by_cell, differences

    best = None
    for cell, members in by_cell(f.v1).items():
        gradient = [e for e in members if base(e.method) not in FROZEN]
        for a, b in combinations(gradient, 2):
            d = differences(a, b)
            if d is not None and len(d) > 1 and (best is None or np.std(d, ddof=1) > best[0]):
                frozen = [e for e in members if e.method in FROZEN]
                fd = differences(*frozen) if len(frozen) == 2 else None
                best = (float(np.std(d, ddof=1)), cell[1], a.method, b.method,
                        None if fd is None else float(np.std(fd, ddof=1)))
    if best is None:
        return paragraph("")
    sd, cell, a, b, frozen = best
    return paragraph(f"Gradient-based methods differ from each other more from episode to episode (v1 store: paired SD "
                     f"up to {sd:.3f}, `{a}` − `{b}` on {code(cell)}"
                     + (f", where `protonet` − `linear_probe` has {frozen:.3f}" if frozen is not None else "")
                     + "), so 100 episodes is a floor, not a guarantee, for them.")
