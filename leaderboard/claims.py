"""The seed's claims decided on a results store: `python leaderboard/claims.py --store leaderboard/results.sqlite`.

Prints the Markdown table that leaderboard/README.md carries between its ``claims`` markers (a test checks the
README against this script's output on the committed store).

Contract. Each claim is one Holm family: the pair ``A=B`` compared in every cell (task x setting x backbone)
where both rows hold every planned episode as ok (``complete``), with :func:`fewshot_bench.pairs.pair_table`
(mean paired per-episode difference A - B, paired bootstrap 95% CI, exact sign-flip p, d_z), Holm over that
claim's cells only. Verdict per claim:
  * ``supported`` - A significantly better (Holm p < 0.05) in at least one cell and significantly worse in none;
  * ``not supported`` - A significantly worse in at least one cell and better in none;
  * ``mixed`` - significant in both directions;
  * ``undecided`` - no cell significant, or no cell computed.
A claim holds "across the suite" only if it holds in every cell; the verdict states in how many cells of how
many it holds. Restart-based stability needs rows with ``--restarts``; without them the claim is undecided.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Tuple

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


def _complete(entries) -> list:
    return [e for e in entries if not e.same_class_source and e.row["episodes_planned"] is not None
            and e.row["episodes"] - e.row["failed_episodes"] >= e.row["episodes_planned"]]


def _verdict(table: List[dict]) -> str:
    if not table:
        return "undecided (not computed)"
    better = [r for r in table if r["p_holm"] < 0.05 and r["delta"] > 0]
    worse = [r for r in table if r["p_holm"] < 0.05 and r["delta"] < 0]
    n = len(table)
    if better and worse:
        return f"mixed (better in {len(better)}, worse in {len(worse)} of {n} cells)"
    if better:
        return f"supported in {len(better)} of {n} cells (worse in none)"
    if worse:
        return f"not supported (worse in {len(worse)} of {n} cells, better in none)"
    return f"undecided (no significant difference in {n} cells)"


def claim_rows(entries) -> List[Dict[str, str]]:
    """One dict per claim: claim, comparison, verdict, and the per-cell figures as one Markdown cell."""
    from fewshot_bench.pairs import pair_table

    complete = _complete(entries)
    out = []
    for claim, a, b, cells in CLAIMS:
        chosen = [e for e in complete if cells == "all" or (cells == "cross-domain") == ("->" in e.cell[1])]
        table = []
        if {a, b} <= {e.method for e in chosen}:
            table = pair_table(chosen, [(a, b)], bootstrap=10000, seed=0)
        cells = "<br>".join(
            f"{r['setting']}: {r['delta']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}], d_z "
            f"{'-' if r['dz'] is None else format(r['dz'], '+.2f')}, p_Holm {r['p_holm']:.2g}, n={r['episodes']}"
            for r in sorted(table, key=lambda r: r["setting"])) or "-"
        out.append(dict(claim=claim, comparison=f"{a} - {b}", verdict=_verdict(table), cells=cells))
    claim, methods = STABILITY
    restarted = [e for e in complete if e.method in methods and (e.row["restarts"] or 1) > 1]
    verdict = ("undecided (not computed: no row of these methods was run with --restarts)" if not restarted else
               "see the leaderboard's seed-SD section (paired Wilcoxon over episodes, Holm within the cell)")
    out.append(dict(claim=claim, comparison=" vs ".join(methods), verdict=verdict, cells="-"))
    return out


def markdown(entries) -> str:
    lines = ["| claim | A - B | verdict (Holm within the claim) | per cell: mean difference [95% CI], d_z, Holm p, "
             "episodes |", "|---|---|---|---|"]
    lines += [f"| {r['claim']} | {r['comparison']} | {r['verdict']} | {r['cells']} |" for r in claim_rows(entries)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="results store (SQLite)")
    args = parser.parse_args(argv)
    from fewshot_bench.leaderboard import load_entries

    sys.stdout.write(markdown(load_entries(args.store, bootstrap=1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
