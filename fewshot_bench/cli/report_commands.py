"""The commands that read results stores: ``leaderboard``, ``compare``, ``power``, ``validate`` and ``merge``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

from ..analysis import compare
from ..analysis.entries import load_entries
from ..analysis.pairs import pair_table, parse_pairs
from ..analysis.power import parse_deltas, power_table
from ..analysis.stats import format_dz
from ..core.errors import UserError
from ..core.outputs import check_outputs, print_table
from ..report.leaderboard import write_leaderboard
from ..report.validate import check_store, is_sqlite
from ..report.validate_csv import check_csv
from ..report.validate_recompute import compare_csv
from ..store.checks import shard_problems_of
from ..store.results import ResultsStore
from ..store.shards import check_no_conflicts


def cli_leaderboard(args) -> int:
    """``fewshot-bench leaderboard``: :func:`~fewshot_bench.report.leaderboard.write_leaderboard` of --store at
    --out."""
    write_leaderboard(args.store, args.out, args.bootstrap, getattr(args, "reference", None))
    return 0


def cli_compare(args) -> int:
    """``fewshot-bench compare --pair A=B ...``: :func:`~fewshot_bench.analysis.pairs.pair_table`, printed."""
    pairs = parse_pairs(args.pair)
    # from the stored predictions alone (no class-level CIs): no data dir, no network
    table = pair_table(load_entries(args.store, bootstrap=1, class_level=False), pairs, args.bootstrap)
    if not table:
        raise UserError(f"no cell of {args.store} holds both methods of any --pair with common episodes")
    repeats = sum(r["same_as"] is not None for r in table)
    print(f"paired comparisons (A - B on common ok episodes; bootstrap 95% CI, {args.bootstrap:,} resamples; "
          f"sign-flip p; Holm over these {len(table) - repeats} comparisons"
          + (f", {repeats} repeating another on the same episodes counted once (=)" if repeats else "") + ")")
    header = ["setting", "backbone", "A", "B", "episodes", "acc A", "acc B", "A - B [95% CI]", "d_z", "p", "p (Holm)"]
    lines = [[r["setting"], r["backbone"], r["a"], r["b"], str(r["episodes"]), f"{r['acc_a']:.4f}",
              f"{r['acc_b']:.4f}", f"{r['delta']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]",
              format_dz(r["dz"], "+.3f", "-"), f"{r['p']:.4g}",
              f"{r['p_holm']:.4g}" + ("" if r["same_as"] is None else f" (= {r['same_as']})")] for r in table]
    print_table(header, lines)
    if any(r["leaked"] for r in table):
        print(f"{compare.LEAK_MARK} trained on a source pool holding the evaluated classes (same-class-source): not "
              "few-shot on them")
    return 0


def cli_power(args) -> int:
    """``fewshot-bench power``: :func:`~fewshot_bench.analysis.power.power_table`, printed."""
    deltas = parse_deltas(args.delta)
    if not 0 < args.power < 1:
        raise UserError(f"--power must be between 0 and 1 (e.g. 0.8), got {args.power}")
    table = power_table(load_entries(args.store, bootstrap=1), deltas, args.power)
    if not table:
        raise UserError(f"no pair of methods with common episodes in {args.store}")
    print(f"episodes needed to detect a difference with {args.power:.0%} power (two-sided paired test, alpha "
          f"{compare.ALPHA}, normal approximation, no multiplicity correction); sd 0 = identical differences")
    header = ["setting", "backbone", "adjacent methods", "episodes", "paired sd"] + [f"n @ {d:g}" for d in deltas]
    lines = [[r["setting"], r["backbone"], f"{r['better']} > {r['worse']}", str(r["episodes"]),
              "" if r["sd"] is None else f"{r['sd']:.4f}"] + ["-" if n is None else str(n) for n in r["needed"].values()]
             for r in table]
    print_table(header, lines)
    return 0


def validate_paths(args) -> Tuple[Optional[Path], Optional[Path]]:
    """(store, CSV) to check: ``FILE`` (a store or a CSV) and/or ``--store``; a CSV without ``--store`` is compared
    with the ``results.sqlite`` beside it when there is one (the committed layout)."""
    file, store = getattr(args, "file", None), getattr(args, "store", None)
    if not file and not store:
        raise UserError("nothing to validate; give a leaderboard CSV and/or --store STORE")
    for given, what in ((file, "a leaderboard CSV or a results store"), (store, "a results store (--store)")):
        if given and not Path(given).is_file():
            raise UserError(f"'{given}' does not exist (expected {what})")
    csv_path = None
    if file and is_sqlite(Path(file)):
        if store and not os.path.samefile(file, store):
            raise UserError(f"two stores given ({file} and --store {store}); give one store and optionally its CSV")
        store = file
    elif file:
        csv_path = Path(file)
        beside = csv_path.parent / "results.sqlite"
        if not store and beside.is_file():
            store = beside
    return (Path(store) if store else None), csv_path


def cli_validate(args) -> int:
    """``fewshot-bench validate [--store STORE] [FILE]``: 0 when valid, 1 with one line per problem otherwise.
    A store is also recomputed (``validate_recompute``); a CSV with a store is compared with the leaderboard
    recomputed from it. Warnings and notes (checks that could not run) do not fail."""
    store, csv_path = validate_paths(args)
    problems, remarks, done = [], [], []
    if csv_path is not None:
        found, count = check_csv(csv_path, store)
        problems += found
        done.append(f"OK: {csv_path} ({count} rows checked)")
    if store is None:
        remarks.append(f"note: no --store given and no results.sqlite beside {csv_path}: the CSV was not compared "
                       "with the leaderboard recomputed from its store")
    beside = store is not None and csv_path is not None and not getattr(args, "store", None)
    if store is not None:
        # a store found beside the CSV is only read for the comparison: its own problems are `validate STORE`'s
        found, count, more = check_store(store, recompute=not beside)
        problems, remarks = (problems, remarks) if beside else (problems + found, remarks + more)
        if not beside:
            done.append(f"OK: {store} ({count} rows checked, episodes regenerated and scores recomputed)")
        readable = not found or not found[0].startswith(f"{store}: file:")
        if not readable or any(": missing column" in p for p in found):
            problems += [p for p in found if p not in problems]
        elif csv_path is not None and not any(p.startswith((f"{csv_path}:1: header", f"{csv_path}: file:"))
                                              for p in problems):
            if beside:
                print(f"validate: comparing {csv_path} with the store beside it, {store} (--store to name another)")
            bootstrap = getattr(args, "bootstrap", None) or 10000
            try:
                more_problems, notes = compare_csv(csv_path, store, bootstrap)
            except UserError as exc:
                more_problems, notes = [f"{csv_path}: cannot be recomputed from {store}: {exc}"], []
            problems, remarks = problems + more_problems, remarks + notes
    for remark in remarks:
        print(remark)
    if not problems:
        for line in done:
            print(line)
        return 0
    for problem in problems:
        print(problem)
    print(f"INVALID: {len(problems)} problem(s)")
    return 1


def cli_merge(args) -> int:
    """``fewshot-bench merge SHARD... --store STORE``: every shard is checked before the store is opened."""
    check_outputs([(args.store, "--store")], [(shard, "shard store") for shard in args.shards])
    for shard in args.shards:
        ResultsStore(shard, create=False).close()
        problems = shard_problems_of(shard)
        if problems:
            raise UserError(f"shard '{shard}' cannot be merged: {'; '.join(problems)}; nothing was merged")
    check_no_conflicts([args.store, *args.shards])
    with ResultsStore(args.store) as store:
        added = store.merge_from(args.shards)
    print(f"merged {added} episode rows from {len(args.shards)} shards into {args.store}")
    return 0
