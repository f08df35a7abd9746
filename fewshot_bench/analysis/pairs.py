"""``fewshot-bench compare``: named method pairs (e.g. a tuned method against its untuned row), paired per cell.

For every cell (task x setting x backbone) holding both methods of a pair ``A=B``: the mean per-episode accuracy
difference A - B on their common ok episodes, its paired percentile bootstrap 95% CI, the two-sided sign-flip
p-value, the paired d_z and Holm's correction over every comparison printed (one family), with the same
functions as the leaderboard (``compare.differences``, ``stats``). A comparison that repeats an earlier one
(same backbone and pair, the same episodes with the same per-episode differences: e.g. two target-only
methods in clinc150->hwu64 and hwu64 fold 1, which hold the same episodes) is counted once in the Holm family:
it gets the earlier one's adjusted p and ``same_as`` names the earlier setting. A same-class-source row's method
carries the leak mark (``compare.LEAK_MARK``). Pairs whose episode sets do not nest are not compared.
"""
from __future__ import annotations

from typing import List, Tuple

from . import compare
from ..core.errors import UserError
from ..core.registry import did_you_mean
from .stats import bootstrap_ci, effect_size, holm, sign_flip_p


def _split_pair(text: str) -> Tuple[str, str, str]:
    """``text`` split at its first '=' outside parentheses (a method label's overrides hold '=' too)."""
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "=" and depth == 0:
            return text[:i], "=", text[i + 1:]
    return text, "", ""


def parse_pairs(texts: List[str]) -> List[Tuple[str, str]]:
    """['A=B', ...] -> [(A, B), ...]; labels with overrides work: 'maml(inner_lr=0.3)=maml'."""
    pairs = []
    for text in texts:
        left, sep, right = _split_pair(text)
        if not sep or not left.strip() or not right.strip():
            raise UserError(f"--pair expects METHOD=OTHER (the difference METHOD minus OTHER), got '{text}'")
        pairs.append((left.strip(), right.strip()))
    if not pairs:
        raise UserError("give at least one --pair METHOD=OTHER")
    return pairs


def pair_table(entries: List[compare.Entry], pairs: List[Tuple[str, str]], bootstrap: int, seed: int = 0) -> List[dict]:
    """One dict per (cell, pair) with both methods: setting, pair, episodes, means, difference, CI, p, p_holm,
    same_as (the setting this comparison repeats, else None)."""
    methods = {e.method for e in entries}
    for name in {m for pair in pairs for m in pair} - methods:
        raise UserError(f"--pair names '{name}', which has no rows{did_you_mean(name, sorted(methods))} "
                        f"(methods: {', '.join(sorted(methods))})")
    table, first = [], {}
    for (task, setting, backbone), members in compare.by_cell(entries).items():
        by_method = {e.method: e for e in members}
        for a, b in pairs:
            if a not in by_method or b not in by_method:
                continue
            d = compare.differences(by_method[a], by_method[b])
            if d is None:
                continue
            low, high = bootstrap_ci(d, bootstrap, seed)
            common = compare.common_episodes(by_method[a], by_method[b])
            leaked = by_method[a].same_class_source or by_method[b].same_class_source
            table.append(dict(setting=setting, backbone=backbone, a=compare.marked(a, by_method[a].same_class_source),
                              b=compare.marked(b, by_method[b].same_class_source), leaked=leaked, episodes=len(d),
                              acc_a=sum(by_method[a].accuracy[f] for f in common) / len(common),
                              acc_b=sum(by_method[b].accuracy[f] for f in common) / len(common),
                              delta=float(d.mean()), low=low, high=high, dz=effect_size(d), p=sign_flip_p(d),
                              same_as=first.setdefault((backbone, a, b, tuple(zip(common, d.round(9)))), setting)))
    family = [r for r in table if r["same_as"] == r["setting"]]
    adjusted = dict(zip(((r["backbone"], r["a"], r["b"], r["setting"]) for r in family),
                        holm([r["p"] for r in family]) if family else []))
    for row in table:
        row["p_holm"] = adjusted[(row["backbone"], row["a"], row["b"], row["same_as"])]
        row["same_as"] = None if row["same_as"] == row["setting"] else row["same_as"]
    return table
