"""The seed's claims decided on a results store: `python leaderboard/claims.py --store leaderboard/results.sqlite`.

Prints the Markdown table that leaderboard/README.md carries between its ``claims`` markers (a test checks the
README against this script's output on the committed store); ``--terms`` prints instead the table of
docs/sgg.md's "Where each term acts" (per cell and SGG row, how often each guidance term changed the update).

Contract. Each claim is one Holm family: the pair ``A=B`` compared in every cell (task x setting x backbone)
where both rows hold every planned episode as ok (``complete``), with :func:`fewshot_bench.analysis.pairs.pair_table`
(mean paired per-episode difference A - B, paired bootstrap 95% CI, exact sign-flip p, d_z), Holm over that
claim's cells only. Verdict per claim:
  * ``supported`` - A significantly better (Holm p < 0.05) in at least one cell and significantly worse in none;
  * ``not supported`` - A significantly worse in at least one cell and better in none;
  * ``mixed`` - significant in both directions;
  * ``undecided`` - no cell significant, or no cell computed.
A claim holds "across the suite" only if it holds in every cell; the verdict states in how many cells of how
many it holds. Restart-based stability needs rows with ``--restarts``; without them the claim is undecided.

The same machinery (``pair_table`` on per-episode values in place of accuracy) decides the other claims:
  * stress (tasks/suites/stress.yaml: sgg and full_ft at multiples of their default lr, labels read from the suite):
    accuracy on the episodes both finished ok, and the failure indicator per episode (failed or diverged: the
    leaderboard's failed_episodes), full_ft minus sgg, over every stored episode - the sign-flip test of +-1/0
    differences is the exact sign test on the discordant episodes (McNemar's exact test). A stress cell counts
    when both rows hold every planned episode, ok or not;
  * stability over training seeds (rows run with ``--restarts``): per episode the SD of accuracy over the restarts
    (the leaderboard's seed SD), full_ft minus sgg and lora minus sgg (lower is better), both comparisons in every
    cell holding them and Holm over all of them, so the verdict counts comparisons, not cells (the leaderboard's
    seed-SD section tests the median difference instead, Wilcoxon, Holm within the cell over every method pair);
  * gradient stability and directional alignment, sgg vs full_ft at defaults: ``grad_norm_cv`` (lower is better:
    A - B is full_ft - sgg), ``grad_dir_consistency`` and ``path_efficiency`` (sgg - full_ft), per episode from
    the store's episodes table, only in cells where both rows train the same number of parameters;
  * ablations at equal budget (same steps, learning rates and episodes): sgg against each of sgg-no-dir,
    sgg-no-mag, sgg-no-align, and against full_ft, both at defaults and both tuned with the same trial budget
    (rows labelled ``[tuned]``; leaderboard/tuning/).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Dict, List, Optional, Tuple

CLAIMS: List[Tuple[str, str, str, str]] = [
    # (claim, A, B, cells: "all" holding both, "cross-domain" (source task differs: 'S->T' settings) or "in-domain")
    ("SGG is more accurate than full fine-tuning", "sgg", "full_ft", "all"),
    ("SGG is more accurate than LoRA", "sgg", "lora", "all"),
    ("SGG is more accurate than MAML (second order)", "sgg", "maml", "all"),
    ("SGG is more accurate than first-order MAML", "sgg", "fomaml", "all"),
    ("Source/target alignment helps across domains", "sgg", "sgg-no-align", "cross-domain"),
    ("Source/target alignment helps in-domain", "sgg", "sgg-no-align", "in-domain"),
]
STABILITY = ("SGG is more stable over training seeds than full fine-tuning and LoRA", ("sgg", "full_ft", "lora"))
STRESS_SUITE = "stress"
GRADIENT_PAIR = ("sgg", "full_ft")
GRADIENT_CLAIMS: List[Tuple[str, str, bool]] = [  # (claim, per-episode column, higher is better)
    ("SGG's gradient norms vary less over its steps than full fine-tuning's", "grad_norm_cv", False),
    ("SGG's gradient directions are more consistent than full fine-tuning's", "grad_dir_consistency", True),
    ("SGG's parameter path is straighter than full fine-tuning's", "path_efficiency", True),
]
BY_CONSTRUCTION = ("SGG steers each step toward its running gradient direction, so a win here is partly by "
                   "construction")
ABLATIONS: List[Tuple[str, str, str]] = [
    ("The direction term helps: SGG is more accurate than sgg-no-dir (ablation at equal budget, both at "
     "defaults)", "sgg", "sgg-no-dir"),
    ("The magnitude term helps: SGG is more accurate than sgg-no-mag (ablation at equal budget, both at "
     "defaults)", "sgg", "sgg-no-mag"),
    ("The alignment term helps: SGG is more accurate than sgg-no-align in every cell (ablation at equal budget, "
     "both at defaults)", "sgg", "sgg-no-align"),
    ("SGG is more accurate than full fine-tuning at equal budget, both at defaults (the first row's "
     "comparison)", "sgg", "full_ft"),
    *((f"The {term} term helps at tuned configs: sgg[tuned] is more accurate than {ablation}[tuned] (each tuned "
       f"with the same trial budget on validation classes; {ablation} searches SGG's space less that term's "
       f"fields)", "sgg[tuned]", f"{ablation}[tuned]")
      for term, ablation in (("direction", "sgg-no-dir"), ("magnitude", "sgg-no-mag"), ("alignment", "sgg-no-align"))),
    ("SGG is more accurate than full fine-tuning at equal budget, both tuned with the same trial budget on "
     "validation classes (rows labelled [tuned])", "sgg[tuned]", "full_ft[tuned]"),
]
ABLATED = {"sgg-no-mag": "sgg_mag_active", "sgg-no-align": "sgg_align_active", "sgg-no-dir": "sgg_dir_angle"}
TERMS = (("sgg_mag_active", "magnitude bound acted (share of steps)", ".3f"),
         ("sgg_align_active", "alignment projection fired (share of steps)", ".3f"),
         ("sgg_dir_angle", "direction term rotated g (mean degrees)", ".1f"),
         ("sgg_step_angle", "task gradient to applied step (mean degrees)", ".1f"))


def _complete(entries) -> list:
    return [e for e in entries if not e.same_class_source and e.row["episodes_planned"] is not None
            and e.row["episodes"] - e.row["failed_episodes"] >= e.row["episodes_planned"]]


def _stored(entries) -> list:
    """Rows holding every planned episode, ok or failed (the stress claims count the failures)."""
    return [e for e in entries if not e.same_class_source and e.row["episodes_planned"] is not None
            and e.row["episodes"] >= e.row["episodes_planned"]]


def _verdict(table: List[dict], unit: str = "cell") -> str:
    if not table:
        return "undecided (not computed)"
    better = [r for r in table if r["p_holm"] < 0.05 and r["delta"] > 0]
    worse = [r for r in table if r["p_holm"] < 0.05 and r["delta"] < 0]
    n = f"{len(table)} {unit}{'s' if len(table) > 1 else ''}"
    if better and worse:
        return f"mixed (better in {len(better)}, worse in {len(worse)} of {n})"
    if better:
        return f"supported in {len(better)} of {n} (worse in none)"
    if worse:
        return f"not supported (worse in {len(worse)} of {n}, better in none)"
    return f"undecided (no significant difference in {n})"


def _pairs(chosen, *pairs: Tuple[str, str]) -> List[dict]:
    """:func:`pair_table` of each A=B of ``pairs`` whose two methods both have rows in ``chosen``, Holm over all of
    them (empty when none has)."""
    from fewshot_bench.analysis.pairs import pair_table

    methods = {e.method for e in chosen}
    present = [pair for pair in pairs if set(pair) <= methods]
    return pair_table(chosen, present, bootstrap=10000, seed=0) if present else []


def _figures(table: List[dict], pairs: bool = False) -> str:
    """Per cell (and with ``pairs``, per A - B in it): mean difference [95% CI], d_z, Holm p, episodes; one Markdown
    cell."""
    def label(r) -> str:
        return f"{r['setting']} {r['a']} - {r['b']}" if pairs else r["setting"]

    return "<br>".join(
        f"{label(r)}: {r['delta']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}], d_z "
        f"{'-' if r['dz'] is None else format(r['dz'], '+.2f')}, p_Holm {r['p_holm']:.2g}, n={r['episodes']}"
        for r in sorted(table, key=lambda r: (r["setting"], r["a"]))) or "-"


def _row(claim: str, a: str, b: str, table: List[dict], cells: Optional[str] = None) -> Dict[str, str]:
    return dict(claim=claim, comparison=f"{a} - {b}", verdict=_verdict(table),
                cells=_figures(table) if cells is None else cells)


def claim_rows(entries, metrics: Optional[dict] = None) -> List[Dict[str, str]]:
    """One dict per claim: claim, comparison, verdict, and the per-cell figures as one Markdown cell. ``metrics``:
    :func:`episode_metrics` of the store (the gradient claims are not computed without it)."""
    complete = _complete(entries)
    out = []
    for claim, a, b, cells in CLAIMS:
        chosen = [e for e in complete if cells == "all" or (cells == "cross-domain") == ("->" in e.cell[1])]
        out.append(_row(claim, a, b, _pairs(chosen, (a, b))))
    out.append(stability_row(complete))
    out += stress_rows(entries)
    out += gradient_rows(complete, metrics or {})
    out += [_row(claim, a, b, _pairs(complete, (a, b))) for claim, a, b in ABLATIONS]
    return out


def stability_row(complete) -> Dict[str, str]:
    """SGG's per-episode seed SD against full_ft's and lora's (see the module docstring)."""
    claim, (sgg, *others) = STABILITY
    restarted = (dataclasses.replace(e, accuracy={f: e.seed_sd[f] for f in e.accuracy if f in e.seed_sd})
                 for e in complete if e.method in STABILITY[1] and (e.row["restarts"] or 1) > 1)
    table = _pairs([e for e in restarted if e.accuracy], *((other, sgg) for other in others))
    verdict = (_verdict(table, "comparison") if table else
               f"undecided (not computed: no cell holds {sgg} and {' or '.join(others)} run with --restarts)")
    return dict(claim=f"{claim} (per-episode SD of accuracy over the training restarts, lower is better)",
                comparison="seed SD: " + ", ".join(f"{other} - {sgg}" for other in others), verdict=verdict,
                cells=_figures(table, pairs=True))


# stress ------------------------------------------------------------------------------------------------------------
def default_lr(method: str) -> float:
    """The default ``lr`` of a registered method's config dataclass."""
    from fewshot_bench.core.registry import METHODS

    return next(f.default for f in dataclasses.fields(METHODS.get(method).config_class) if f.name == "lr")


def stress_pairs(suite: str = STRESS_SUITE) -> List[Tuple[str, str, str, str]]:
    """(multiplier, lr, sgg label, full_ft label) per learning-rate multiplier of the suite's method specs."""
    from fewshot_bench.execution.run_config import load_suite, spec_list
    from fewshot_bench.methods.spec import method_label, parse_spec

    labels: Dict[tuple, Dict[str, str]] = {}
    for spec in spec_list(load_suite(suite)["methods"]):
        name, overrides = parse_spec(spec)
        factor = round(float(overrides["lr"]) / default_lr(name), 6)
        labels.setdefault((factor, overrides["lr"]), {})[name] = method_label(name, overrides)
    return [(f"{factor:g}x", lr, by_name["sgg"], by_name["full_ft"])
            for (factor, lr), by_name in sorted(labels.items())]


def _failures(entry):
    """``entry`` with a failure indicator (1: failed or diverged, no ok restart) per stored episode as its value."""
    return dataclasses.replace(entry, accuracy={f: float(f not in entry.accuracy) for f in sorted(entry.fingerprints)})


def _failure_figures(table: List[dict], failures) -> str:
    by_key = {(e.cell[1], e.cell[2], e.method): e for e in failures}
    parts = []
    for r in sorted(table, key=lambda r: r["setting"]):
        a, b = by_key[r["setting"], r["backbone"], r["a"]], by_key[r["setting"], r["backbone"], r["b"]]
        discordant = sum(a.accuracy[f] != b.accuracy[f] for f in a.accuracy if f in b.accuracy)
        parts.append(f"{r['setting']}: failed {r['b']} {r['acc_b']:.3f} vs {r['a']} {r['acc_a']:.3f}, difference "
                     f"{r['delta']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}], {discordant} discordant, "
                     f"p_Holm {r['p_holm']:.2g}, n={r['episodes']}")
    return "<br>".join(parts) or "-"


def stress_rows(entries) -> List[Dict[str, str]]:
    """Per multiplier of the stress suite: SGG more accurate than full_ft, and SGG failing less often."""
    stored, out = _stored(entries), []
    for factor, lr, sgg, full_ft in stress_pairs():
        out.append(_row(f"SGG is more accurate than full fine-tuning at {factor} learning rate (lr {lr}; "
                        f"stress suite; episodes both finished ok)", sgg, full_ft, _pairs(stored, (sgg, full_ft))))
        failures = [_failures(e) for e in stored if e.method in (sgg, full_ft)]
        table = _pairs(failures, (full_ft, sgg))
        out.append(dict(claim=f"SGG diverges or fails less than full fine-tuning at {factor} learning rate (lr {lr}; "
                              f"failed share, exact sign test on discordant episodes)",
                        comparison=f"failed: {full_ft} - {sgg}", verdict=_verdict(table),
                        cells=_failure_figures(table, failures)))
    return out


# gradient stability --------------------------------------------------------------------------------------------------
def _key(entry) -> tuple:
    return (entry.cell[0], entry.cell[1], entry.row.get("protocol"), entry.cell[2], entry.method)


def episode_metrics(store_path, methods=GRADIENT_PAIR, columns=tuple(c for _, c, _ in GRADIENT_CLAIMS)) -> dict:
    """{(task, setting, protocol, backbone, method): {column: {fingerprint: value}}} from the store's episodes table,
    with load_entries' conventions: the latest row per (episode, restart), the mean over the ok restarts."""
    from fewshot_bench.store.results import ResultsStore

    latest = {}
    with ResultsStore(store_path, create=False) as store:
        for method in methods:
            for r in sorted(store.episodes(method=method), key=lambda r: r["created_at"]):
                latest[(r["task"], r["setting"], r["protocol"], r["backbone"], method, r["fingerprint"],
                        r["restart"] or 0)] = r
    values: dict = {}
    for (*key, fingerprint, _), r in latest.items():
        if r["status"] == "ok" and r["accuracy"] is not None:
            for column in columns:
                if r[column] is not None:
                    by_episode = values.setdefault(tuple(key), {}).setdefault(column, {})
                    by_episode.setdefault(fingerprint, []).append(r[column])
    return {key: {c: {f: sum(v) / len(v) for f, v in by_f.items()} for c, by_f in by_column.items()}
            for key, by_column in values.items()}


def _size(count) -> str:
    return "-" if count is None else f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.1f}k"


def gradient_rows(complete, metrics: dict) -> List[Dict[str, str]]:
    """SGG vs full_ft on each per-episode gradient column, in cells where both train the same parameter count."""
    a, b = GRADIENT_PAIR
    cells: Dict[tuple, dict] = {}
    for e in complete:
        if e.method in GRADIENT_PAIR:
            cells.setdefault(e.cell, {})[e.method] = e
    same = [pair for pair in cells.values() if len(pair) == 2 and pair[a].row.get("trainable_params") is not None
            and pair[a].row["trainable_params"] == pair[b].row.get("trainable_params")]
    left_out = sorted(f"{cell[1]} (trainable {_size(p[a].row.get('trainable_params'))} vs "
                      f"{_size(p[b].row.get('trainable_params'))})" for cell, p in cells.items() if len(p) == 2
                      and p not in same)
    sizes = sorted({_size(p[a].row["trainable_params"]) for p in same})
    trained = f"{' / '.join(sizes)} in both" if sizes else "no cell"
    out = []
    for claim, column, higher in GRADIENT_CLAIMS:
        chosen = []
        for e in (e for pair in same for e in pair.values()):
            values = metrics.get(_key(e), {}).get(column, {})
            chosen.append(dataclasses.replace(e, accuracy={f: values[f] for f in e.accuracy if f in values}))
        chosen = [e for e in chosen if e.accuracy]  # episode order, as the accuracy pairs
        first, second = (a, b) if higher else (b, a)
        caveat = f"{column}, {'higher' if higher else 'lower'} is better; comparable only at the same trainable set: " \
                 f"{trained}" + ("; " + BY_CONSTRUCTION if higher else "")
        table = _pairs(chosen, (first, second))
        figures = [_figures(table)] * bool(table) + ["not compared: " + ", ".join(left_out)] * bool(left_out)
        out.append(_row(f"{claim} ({caveat})", first, second, table, "<br>".join(figures) or "-"))
    return out


# output --------------------------------------------------------------------------------------------------------------
def markdown(entries, metrics: Optional[dict] = None) -> str:
    lines = ["| claim | A - B | verdict (Holm within the claim) | per cell: mean difference [95% CI], d_z, Holm p, "
             "episodes |", "|---|---|---|---|"]
    lines += [f"| {r['claim']} | {r['comparison']} | {r['verdict']} | {r['cells']} |"
              for r in claim_rows(entries, metrics)]
    return "\n".join(lines) + "\n"


def terms_markdown(entries) -> str:
    """Per cell and SGG row (a row with any term column): the mean over its ok episodes of each term's activity;
    an ablation's switched-off term reads ``off``."""
    rows = sorted((e for e in entries if any(e.row.get(column) is not None for column, _, _ in TERMS)),
                  key=lambda e: (e.cell[1], e.cell[2], e.method))
    lines = ["| cell | method | ok episodes | " + " | ".join(title for _, title, _ in TERMS) + " |",
             "|---" * (3 + len(TERMS)) + "|"]
    for e in rows:
        off = ABLATED.get(e.method.split("(")[0].split("[")[0])
        values = ["off" if c == off else "-" if e.row[c] is None else format(e.row[c], spec) for c, _, spec in TERMS]
        lines.append(f"| {e.cell[1]} | {e.method} | {len(e.accuracy)} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="results store (SQLite)")
    parser.add_argument("--terms", action="store_true", help="print where each SGG term acted (docs/sgg.md) instead")
    args = parser.parse_args(argv)
    from fewshot_bench.report.leaderboard import load_entries

    entries = load_entries(args.store, bootstrap=1)
    sys.stdout.write(terms_markdown(entries) if args.terms else markdown(entries, episode_metrics(args.store)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
