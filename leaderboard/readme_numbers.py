"""Every number of leaderboard/README.md and docs/sgg.md (and the README's method timing table), generated from
the results store:
`python leaderboard/readme_numbers.py --store leaderboard/results.sqlite [--check]`.

The two files carry their numbers between HTML comment markers, ``<!-- NAME -->`` ... ``<!-- /NAME -->``; this
script rewrites the text between every such pair from the store (and the suites, the campaign file and the tuned
configs the README cites), leaving everything outside them as it is. ``--check`` writes nothing: it prints a
unified diff of each file that differs from what the store gives and exits 1 (0 when both are up to date); a test
runs it on the committed store (tests/test_readme_numbers.py). Run it without ``--check`` after every merge into
the store; ``--leaderboard`` then rewrites the leaderboard files too (``fewshot-bench leaderboard``, minutes), after
the README, whose claims table the page shows.

Contract. Each marker name in a file must be one this script generates for that file, and every block it
generates must be in the file: an unknown or missing block is an error, never silently skipped. The blocks:
  * ``core-coverage`` (ok episodes per core cell and method, :func:`coverage_table`), ``claims`` and docs/sgg.md's
    ``terms`` (leaderboard/claims.py's tables, its own functions) and one block per passage with digits
    (:data:`README_BLOCKS`, :data:`DOCS_BLOCKS`; the project README's :data:`GUIDE_BLOCKS`, ``--guide``).
  * Figures are the leaderboard's (``analysis.entries.load_entries``, ``compare.annotate`` against
    :data:`REFERENCE` with the leaderboard's 10,000 bootstrap resamples and seed 0, ``across``, ``folds``,
    ``pairs.pair_table``) on the store's rows, except the class-level CIs: those need every episode's classes,
    which rows written before the store kept them must regenerate from the task data (minutes). They are read
    from the committed leaderboard CSVs (``--class-cache``) for every row whose episodes are unchanged there (same
    episode-set hash, episode and failure counts and mean accuracy, and the same for its reference row), and
    computed from the store (``hierarchical.class_ci``, the leaderboard's function) for the others.
  * Counts and hours come from the episodes table directly: every stored row (ok, failed, diverged), CPU time as
    the sum of ``wall_seconds``, plus ``meta_train_seconds`` once per method, cell and value (every episode of a
    meta-trained row repeats its meta-training time), plus ``embedding_cache_seconds`` (the frozen-embedding cache).
  * docs/sgg.md's suite-v1 results come from the v1 store (``--v1-store``, leaderboard/v1/results.sqlite).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import difflib
import functools
import importlib.util
import re
import sqlite3
import sys
import textwrap
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple
from urllib.parse import quote

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REFERENCE = "protonet"   # the leaderboard's reference (fewshot-bench leaderboard --reference protonet)
BOOTSTRAP = 10000        # the leaderboard's resamples
SEED = 0
FROZEN = ("protonet", "linear_probe")  # frozen-backbone methods (no gradient through the encoder)
DROP_RULE = 0.89         # the pilot's rule: a cell is dropped when the better frozen method reaches this
CELL_BULLETS = ("banking77/fold1/5way1shot15q", "hwu64/fold1/5way1shot15q")
FOLD_EXAMPLES = (("hwu64/5way1shot15q", "linear_probe"), ("banking77/allway5shot15q", "linear_probe"))
# the named comparisons of `fewshot-bench compare`, two Holm families (the README prints these commands)
FAMILIES = ((("sgg", "full_ft"), ("full_ft[tuned]", "full_ft"), ("sgg[tuned]", "sgg"), ("fomaml[tuned]", "fomaml"),
             ("sgg-no-align", "sgg"), ("sgg-no-mag", "sgg"), ("sgg-no-dir", "full_ft"), ("fomaml[tuned]", "full_ft")),
            (("lora[tuned]", "lora"), ("sgg", "lora"), ("lora", "full_ft")))
ABLATIONS = ("sgg-no-dir", "sgg-no-mag", "sgg-no-align")
TERM_OF = {"sgg-no-mag": ("sgg_mag_active", "the magnitude bound acted on", "share"),
           "sgg-no-align": ("sgg_align_active", "the alignment projection fired on", "share"),
           "sgg-no-dir": ("sgg_dir_angle", "the direction term rotated g by", "angle")}
WIDTH = 118              # generated paragraphs are wrapped at this width
BLOCK = re.compile(r"<!-- ([a-z0-9-]+) -->\n(.*?)<!-- /\1 -->", re.S)


# formatting -------------------------------------------------------------------------------------------------------
def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(text, WIDTH, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def paragraph(*sentences: str) -> str:
    return _wrap(" ".join(s for s in sentences if s)) + "\n"


def bullet(*sentences: str) -> str:
    return _wrap("- " + " ".join(s for s in sentences if s), "  ") + "\n"


def table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def listing(items: Sequence[str], empty: str = "none") -> str:
    items = list(items)
    if not items:
        return empty
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def code(name: str) -> str:
    return f"`{name}`"


def n(value: int) -> str:
    return f"{value:,}"


def signed(value: float, digits: int = 3) -> str:
    return f"{value:+.{digits}f}"


def ci(low: Optional[float], high: Optional[float], digits: int = 3) -> str:
    return "-" if low is None or high is None else f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def pct(share: Optional[float], digits: int = 1) -> str:
    return "-" if share is None else f"{100 * share:.{digits}f}%"


def points(delta: float) -> str:
    return f"{100 * delta:+.1f}"


def pvalue(p: Optional[float]) -> str:
    """The leaderboard stores p rounded to 6 decimals, so 0 reads as below that."""
    return "-" if p is None else "< 1e-06" if p == 0 else f"{p:.2g}"


def dz(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:+.2f}"


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def span(values: Sequence[float], spec: str = ".3f", sep: str = " to ") -> str:
    values = sorted(values)
    if not values:
        return "-"
    low, high = format(values[0], spec), format(values[-1], spec)
    return low if low == high else f"{low}{sep}{high}"


def base(method: str) -> str:
    """``sgg[tuned]`` / ``sgg(lr=0.0005)`` -> ``sgg``."""
    return method.split("[")[0].split("(")[0]


def shot(setting: str) -> str:
    return re.search(r"way(\d+(?:-\d+)?)shot", setting).group(1)


# inputs -----------------------------------------------------------------------------------------------------------
def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"leaderboard_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def suite_config(name: str):
    """The RunConfig of a suite as ``run --suite NAME`` builds it (its demo block left out)."""
    from fewshot_bench.core.config import from_mapping
    from fewshot_bench.execution.run_config import RunConfig, load_suite

    values = {k: v for k, v in load_suite(name).items() if k != "demo"}
    return from_mapping(RunConfig, values, f"suite {name}")


def ok_episodes(rows, labels, methods) -> Dict[tuple, int]:
    """{(cell, method): ok episodes} of the leaderboard rows for the suite's cells and methods (0: no row)."""
    found = {(r["setting"], r["method"]): int(r["episodes"]) - int(r["failed_episodes"]) for r in rows}
    return {(cell, method): found.get((cell, method), 0) for cell in labels for method in methods}


def coverage_table(rows, labels, methods) -> str:
    """The Markdown table leaderboard/README.md carries between the core-coverage markers: ok episodes per cell of
    the core suite (``labels``) and method (``methods``) in ``rows`` (leaderboard rows, from the store or a CSV)."""
    counts = ok_episodes(rows, labels, methods)
    lines = ["| cell | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    lines += ["| " + cell + " | " + " | ".join(str(counts[cell, m]) for m in methods) + " |" for cell in labels]
    return "\n".join(lines) + "\n"


def core_suite():
    """(cell labels, method specs, RunConfig) of tasks/suites/core.yaml."""
    from fewshot_bench.execution.run_config import settings_of, spec_list

    config = suite_config("core")
    return [s.label for s in settings_of(config)], spec_list(config.methods), config


def store_rows(store) -> List[dict]:
    """The leaderboard rows of ``store`` without the comparison columns (cheap: one bootstrap resample)."""
    from fewshot_bench.analysis.entries import load_entries

    return [e.row for e in load_entries(store, bootstrap=1, class_level=False)]


def read_only(path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def _identity(row) -> tuple:
    """What a leaderboard row's class-level CIs are a function of (with the episodes' classes): its episodes."""
    def number(value):
        return None if value in (None, "") else round(float(value), 4)
    return (row["episode_set_sha256"], int(row["episodes"]), int(row["failed_episodes"]), number(row["acc_mean"]))


def _key(row) -> tuple:
    return row["task"], row["setting"], row["backbone"], row["method"], row["protocol"]


def _float(value) -> Optional[float]:
    return None if value in (None, "") else float(value)


@contextlib.contextmanager
def _setfit_config_only():
    """``campaign_queue.load_campaign`` builds every planned method to hash its config; SetFit's constructor also imports
    sentence-transformers, only to fail early when that extra is missing (about 20 s on this VM). A unit's key
    needs the config alone, so the import check is skipped while the campaign is read."""
    from fewshot_bench.core.registry import METHODS

    try:
        module = sys.modules[METHODS.get("setfit").__module__]
        original = module.import_setfit
    except Exception:  # no setfit method (or another module layout): nothing to skip
        yield
        return
    module.import_setfit = lambda: (None, None)
    try:
        yield
    finally:
        module.import_setfit = original


# facts: everything the blocks print, computed once ------------------------------------------------------------------
class Paths(NamedTuple):
    store: Path
    readme: Path
    docs: Path
    guide: Optional[Path]  # the project README (its method-submission timing table)
    campaign: Path
    v1_store: Path
    class_cache: Optional[Path]
    tuned: Sequence[Path]


class Facts:
    def __init__(self, paths: Paths):
        from fewshot_bench.analysis import compare
        from fewshot_bench.analysis.across import across_cells, cell_units
        from fewshot_bench.analysis.entries import load_entries
        from fewshot_bench.analysis.folds import fold_summary
        from fewshot_bench.analysis.gradients import accuracy_spearman
        from fewshot_bench.analysis.pairs import pair_table
        from fewshot_bench.execution.run_config import settings_of
        from fewshot_bench.report.leaderboard import overall

        self.paths = paths
        self.claims = load_script("claims")
        self.entries = load_entries(paths.store, bootstrap=BOOTSTRAP, seed=SEED, class_level=False)
        # claims first: their figures read the rows as load_entries leaves them
        metrics = self.claims.episode_metrics(paths.store)
        self.claim_rows = self.claims.claim_rows(self.entries, metrics)
        # claims.markdown formats claim_rows' rows; this module instance hands it the rows just computed
        self.claims.claim_rows = lambda entries, metrics=None: self.claim_rows
        self.claims_md = self.claims.markdown(self.entries, metrics)
        self.terms_md = self.claims.terms_markdown(self.entries)
        compare.annotate(self.entries, REFERENCE, BOOTSTRAP, SEED)
        self.rows = [e.row for e in self.entries]
        self.by = {(e.cell[1], e.method): e for e in self.entries}
        self.cells = compare.by_cell(self.entries)
        self.suite = across_cells(self.entries)
        self.overall = overall(self.rows, cell_units(self.entries))
        self.folds = fold_summary(self.rows, self.entries)
        present = {e.method for e in self.entries}  # a pair one of whose methods has no row yet is left out
        self.families = [pair_table(self.entries, [p for p in family if set(p) <= present], BOOTSTRAP, SEED)
                         for family in FAMILIES]
        with contextlib.closing(read_only(paths.store)) as conn:
            self.records = [dict(r) for r in conn.execute(
                "SELECT method, protocol, backbone, task, setting, fingerprint, restart, status, accuracy, "
                "wall_seconds, meta_train_seconds, embedding_cache_seconds, created_at, trainable_params, "
                "grad_norm_cv, grad_dir_consistency, path_efficiency, source_alignment FROM episodes")]
            self.runs = [dict(r) for r in conn.execute("SELECT versions_json FROM runs")]
        self.spearman = accuracy_spearman(self.records)
        self.core_labels, self.core_methods, self.core = core_suite()
        self.default = suite_config("default")
        self.default_labels = [s.label for s in settings_of(self.default)]
        self._labels: Dict[str, dict] = {}
        self.class_cis = self._class_cis()
        self.fold_class = self._fold_class_cis()
        self.campaign = self._campaign()
        self.v1 = load_entries(paths.v1_store, bootstrap=BOOTSTRAP, seed=SEED, class_level=False)

    # class-level CIs ---------------------------------------------------------------------------------------------
    def labels(self, entry) -> dict:
        """{fingerprint: (classes, query labels)} of the entry's setting: stored with the episode, else
        regenerated from the task data (hierarchical.episode_labels)."""
        from fewshot_bench.analysis.hierarchical import episode_labels
        from fewshot_bench.store.results import ResultsStore

        task, setting, _ = entry.cell
        if setting not in self._labels:
            with ResultsStore(self.paths.store, create=False) as store:
                records = store.episodes(task=task, setting=setting)
            records.sort(key=lambda r: not (r.get("extra") or {}).get("query_labels"))  # stored labels first
            self._labels[setting] = episode_labels(records)
        return self._labels[setting]

    def _cache(self, path: Optional[Path]) -> Dict[tuple, dict]:
        if path is None or not path.is_file():
            return {}
        with open(path, newline="", encoding="utf-8") as handle:
            return {_key(r): r for r in csv.DictReader(handle)}

    def _class_cis(self) -> Dict[tuple, tuple]:
        """{(setting, method): (acc class low, high, delta class low, high)}: from the cache where the row and its
        reference row are unchanged, else computed."""
        from fewshot_bench.analysis.compare import common_episodes
        from fewshot_bench.analysis.hierarchical import class_ci

        cache = self._cache(self.paths.class_cache)
        self.cached = self.computed = 0
        result = {}
        for e in self.entries:
            ref = self.by.get((e.cell[1], REFERENCE))
            mine = cache.get(_key(e.row))
            theirs = cache.get(_key(ref.row)) if ref is not None else None
            fresh = mine is not None and _identity(mine) == _identity(e.row)
            ref_fresh = ref is None or e is ref or (fresh and theirs is not None and mine["ref_method"] == REFERENCE
                                                    and _identity(theirs) == _identity(ref.row))
            if fresh and ref_fresh:
                self.cached += 1
                result[e.cell[1], e.method] = tuple(_float(mine[c]) for c in (
                    "acc_class_ci95_low", "acc_class_ci95_high", "delta_class_ci95_low", "delta_class_ci95_high"))
                continue
            self.computed += 1
            labels = self.labels(e)
            acc = class_ci(e, list(e.accuracy), labels, seed=SEED)
            delta = (None, None)
            if ref is not None and e is not ref and e.row["delta_vs_ref"] is not None:
                delta = class_ci(e, common_episodes(e, ref), labels, ref, SEED)
            result[e.cell[1], e.method] = (*acc, *delta)
        return result

    def _fold_class_cis(self) -> Dict[tuple, tuple]:
        """{(setting without fold, method): (acc class low, high, delta class low, high)} of the fold summaries of
        FOLD_EXAMPLES: from the cache when every fold's row is, else computed (hierarchical.grouped_class_ci)."""
        from fewshot_bench.analysis.folds import without_fold
        from fewshot_bench.analysis.hierarchical import grouped_class_ci

        path = self.paths.class_cache
        cache = self._cache(path.with_name(path.stem + "_folds.csv")) if path is not None else {}
        cache = {(r["setting"], r["backbone"], r["method"]): r for r in cache.values()}
        main = self._cache(path)
        result = {}
        for setting, method in FOLD_EXAMPLES:
            folds = [e for e in self.entries if without_fold(e.cell[1]) == setting and e.method == method
                     and e.accuracy]
            refs = [self.by.get((e.cell[1], REFERENCE)) for e in folds]
            unchanged = all(_key(x.row) in main and _identity(main[_key(x.row)]) == _identity(x.row)
                            for x in folds + [r for r in refs if r is not None])
            cached = cache.get((setting, folds[0].cell[2], method)) if folds else None
            if cached is not None and unchanged and cached["ref_method"] == REFERENCE:
                result[setting, method] = tuple(_float(cached[c]) for c in (
                    "acc_class_ci95_low", "acc_class_ci95_high", "delta_class_ci95_low", "delta_class_ci95_high"))
                continue
            acc = grouped_class_ci([(e, list(e.accuracy), self.labels(e), None) for e in folds])
            pairs = [(e, [f for f in e.accuracy if f in r.accuracy], self.labels(e), r) for e, r in zip(folds, refs)
                     if r is not None]
            result[setting, method] = (*acc, *(grouped_class_ci(pairs) if len(pairs) > 1 else (None, None)))
        return result

    # campaign ------------------------------------------------------------------------------------------------------
    def _campaign(self) -> dict:
        from fewshot_bench.core.config import read_yaml
        from fewshot_bench.execution import campaign_queue

        with _setfit_config_only():
            plan = campaign_queue.load_campaign(self.paths.campaign)
        finished = campaign_queue.Finished([self.paths.store])
        done, left, _ = campaign_queue.tally(plan, finished)
        pending = [u for u in plan.units if done[u] < u.episodes]
        return dict(plan=plan, done=done, left=left, pending=pending, raw=read_yaml(self.paths.campaign, "campaign")
                    ["entries"], warning=campaign_queue.other_configs(plan, finished, plan.units).strip(),
                    default_rate=campaign_queue.DEFAULT_EPISODE_SECONDS)

    # helpers -------------------------------------------------------------------------------------------------------
    def entry(self, setting: str, method: str):
        return self.by.get((setting, method))

    def complete(self, entry) -> bool:
        row = entry.row
        planned = row["episodes_planned"]
        return planned is not None and row["episodes"] - row["failed_episodes"] >= planned


# README blocks -------------------------------------------------------------------------------------------------------
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


def core_suite_block(f: Facts) -> str:
    config = f.core
    return paragraph(
        f"The suite's {len(f.core_labels)} cells: {listing([code(c) for c in f.core_labels])}; {config.episodes} "
        f"episodes of {config.query} queries per class, seed {config.seed}, {config.backbone}; "
        f"{len(f.core_methods)} methods ({', '.join(f.core_methods)}).")


def coverage_block(f: Facts) -> str:
    return coverage_table(f.rows, f.core_labels, f.core_methods)


def _entry_text(raw: dict) -> str:
    """An entry as the campaign file writes it: ``{suite: core, methods: [sgg, full_ft]}``."""
    parts = []
    for key, value in raw.items():
        value = "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else str(value)
        parts.append(f"{key}: {value}")
    return "`{" + ", ".join(parts) + "}`"


def campaign_block(f: Facts) -> str:
    c = f.campaign
    units, done, left = c["plan"].units, c["done"], c["left"]
    rows, totals = [], [0] * 6
    for number, raw in enumerate(c["raw"]):
        mine = [u for u in units if u.entry == number]
        complete = sum(done[u] >= u.episodes for u in mine)
        started = sum(0 < done[u] < u.episodes for u in mine)
        fresh = sum(done[u] == 0 for u in mine)
        todo = sum(u.episodes - min(done[u], u.episodes) for u in mine)
        seconds = sum(left.get(u, 0.0) for u in mine)
        for i, v in enumerate((len(mine), complete, started, fresh, todo, seconds)):
            totals[i] += v
        rows.append((number + 1, _entry_text(raw), len(mine), complete, started, fresh, n(todo),
                     f"{seconds / 3600:.1f}"))
    rows.append(("", "**all**", *totals[:4], n(totals[4]), f"{totals[5] / 3600:.1f}"))
    warning = c["warning"] or ("No unit's method and cell holds rows stored under another config hash (nothing a "
                               "merge would pool).")
    return table(("entry", "run configuration (`leaderboard/campaign.yaml`, queue order)", "units", "complete",
                  "partly done", "not started", "episodes to do", "CPU-hours left (estimate)"), rows) + "\n" + \
        paragraph(f"Estimates as `campaign status` makes them from this store: per episode the method's mean "
                  f"`wall_seconds` in the cell, else scaled from its other cells by texts, else "
                  f"{c['default_rate']:g} s; plus meta-training.", warning)


def _day(record) -> str:
    return record["created_at"][:10]


def computed_block(f: Facts) -> str:
    by_day: Dict[str, Dict[str, set]] = {}
    counts: Dict[str, int] = {}
    for r in f.records:
        by_day.setdefault(_day(r), {}).setdefault(r["method"], set()).add(r["setting"])
        counts[_day(r)] = counts.get(_day(r), 0) + 1
    rows = []
    for day in sorted(by_day):
        methods = by_day[day]
        rows.append((day, n(counts[day]), "; ".join(f"{code(m)} ({len(s)} cell{'s' * (len(s) > 1)})"
                                                   for m, s in sorted(methods.items()))))
    return table(("computed on (UTC day of `created_at`)", "episodes", "method (cells)"), rows)


def not_computed_block(f: Facts) -> str:
    pending = f.campaign["pending"]
    if not pending:
        return paragraph("**Not computed yet:** nothing; every unit of `leaderboard/campaign.yaml` is in the store.")
    by_label: Dict[str, Dict[str, List[str]]] = {}
    for u in pending:
        text = f"restart {u.restart}" if u.restart else "plain run"
        if f.campaign["done"][u]:
            text += f" ({f.campaign['done'][u]}/{u.episodes} episodes)"
        by_label.setdefault(u.label, {}).setdefault(u.setting.label, []).append(text)
    rows = []
    for label, cells in by_label.items():
        rows.append((code(label), sum(len(v) for v in cells.values()), "; ".join(
            code(cell) + ("" if runs == ["plain run"] else f" ({', '.join(runs)})") for cell, runs in cells.items())))
    return paragraph(f"**Not computed yet** ({len(pending)} campaign units, in queue order; `fewshot-bench campaign "
                     f"status` lists them with their CPU-hours):") + "\n" + table(("method", "units", "cells"), rows)


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


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


def suite_v2_block(f: Facts) -> str:
    config = f.default
    return paragraph(f"`tasks/suites/default.yaml` (v2): {len(f.default_labels)} cells, {config.episodes} episodes "
                     f"each, {config.query} queries per class, seed {config.seed}, {config.backbone}.")


def _detectable(f: Facts) -> Dict[str, float]:
    return {cell[1]: members[0].row["detectable_diff"] for cell, members in f.cells.items()
            if members[0].row["detectable_diff"] is not None}


def power_block(f: Facts) -> str:
    detectable = _detectable(f)
    misses = sorted((c, d) for c, d in detectable.items() if d > 0.02)
    episodes = sorted({min(len(e.accuracy) for e in members if e.accuracy) for members in f.cells.values()})
    hwu = detectable.get(CELL_BULLETS[1])
    return paragraph(
        f"On the stored episodes ({'/'.join(map(str, episodes))} per cell; `detectable_diff`, 80% power at α 0.05 "
        f"from the median SD of adjacent methods) a 2-point difference is detectable in "
        f"{len(detectable) - len(misses)} of {len(detectable)} cells"
        + (f", not in {listing([f'{code(c)} ({d:.4f})' for c, d in misses])}" if misses else "")
        + f"; {sum(d <= 0.01 for d in detectable.values())} cells reach 1 point"
        + (f"; {code(CELL_BULLETS[1])} (the cell the validation pilot below questions) detects "
           f"{100 * hwu:.2f} points" if hwu is not None else "") + ".")


def drop_rule_block(f: Facts) -> str:
    reach = []
    for cell, members in sorted(f.cells.items(), key=lambda kv: kv[0][1]):
        if "/fold1/" in cell[1]:
            continue
        best = max((e.row["acc_mean"] for e in members if e.method in FROZEN and e.row["acc_mean"] is not None),
                   default=None)
        if best is not None and best >= DROP_RULE:
            reach.append(f"{code(cell[1])} {best:.3f}")
    return paragraph(f"In the other folds {len(reach)} kept cells reach the drop rule (best of `protonet` and "
                     f"`linear_probe` ≥ {DROP_RULE}){': ' + listing(reach) if reach else ''}.")


def compute_block(f: Facts) -> str:
    per: Dict[str, dict] = {}
    metas: Dict[tuple, float] = {}
    for r in f.records:
        m = per.setdefault(r["method"], dict(cells=set(), ok=0, failed=0, diverged=0, wall=0.0, cache=0.0, days=set()))
        m["cells"].add(r["setting"])
        m[r["status"] if r["status"] in ("ok", "failed", "diverged") else "failed"] += 1
        m["wall"] += r["wall_seconds"] or 0.0
        m["cache"] += r["embedding_cache_seconds"] or 0.0
        m["days"].add(_day(r))
        if r["meta_train_seconds"] is not None:
            metas[(r["method"], r["backbone"], r["setting"], r["meta_train_seconds"])] = r["meta_train_seconds"]
    meta = {}
    for (method, *_), seconds in metas.items():
        meta[method] = meta.get(method, 0.0) + seconds
    rows, total = [], dict(ok=0, failed=0, diverged=0, wall=0.0, meta=0.0, cache=0.0)
    for method in sorted(per, key=lambda m: (-len(per[m]["cells"]), m)):
        m = per[method]
        rows.append((code(method), len(m["cells"]), n(m["ok"]), m["failed"] + m["diverged"], hours(m["wall"]),
                     hours(meta.get(method, 0.0)), hours(m["cache"]),
                     hours(m["wall"] + meta.get(method, 0.0) + m["cache"]), ", ".join(sorted(m["days"]))))
        for k in ("ok", "failed", "diverged", "wall", "cache"):
            total[k] += m[k]
        total["meta"] += meta.get(method, 0.0)
    cpu = total["wall"] + total["meta"] + total["cache"]
    rows.append(("**all**", len({r["setting"] for r in f.records}), n(total["ok"]), total["failed"] + total["diverged"],
                 hours(total["wall"]), hours(total["meta"]), hours(total["cache"]), hours(cpu), ""))
    torch = sorted({v for r in f.runs for v in [_version(r["versions_json"], "torch")] if v})
    episodes = total["ok"] + total["failed"] + total["diverged"]
    text = table(("method", "cells", "ok episodes", "failed or diverged", "CPU-hours: `wall_seconds`",
                  "meta-training", "frozen-embedding cache", "total", "computed on"), rows)
    return text + "\n" + paragraph(
        f"{n(episodes)} episodes in the store ({n(total['ok'])} ok, {n(total['failed'])} failed, "
        f"{n(total['diverged'])} diverged) in {len(f.rows)} leaderboard rows; {cpu / 3600:.1f} CPU-hours in all "
        f"(torch {listing(torch)}; cores shared, so these are contended wall times).")


def _version(versions_json, name) -> Optional[str]:
    import json

    try:
        return json.loads(versions_json or "{}").get(name)
    except ValueError:
        return None


def missing_block(f: Facts) -> str:
    total = len(f.default_labels)
    cells_of: Dict[str, set] = {}
    for e in f.entries:
        if f.complete(e):
            cells_of.setdefault(e.method, set()).add(e.cell[1])
    everywhere = sorted(m for m, cells in cells_of.items() if len(cells) >= total)
    gradient = {c for m, cells in cells_of.items() if base(m) not in FROZEN for c in cells}
    cross = sorted(c for c in f.default_labels if "->" in c.split("/")[0])
    cross_done = sorted(c for c in cross if c in gradient)
    incomplete = sorted(r["method"] for r in f.overall if r["flags"] == "incomplete")
    return paragraph(
        f"Methods with every planned episode in all {total} suite cells: {listing([code(m) for m in everywhere])}. "
        f"Gradient-based rows (every method but {listing([code(m) for m in FROZEN])}) are complete in {len(gradient)} "
        f"of the {total} cells ({listing([code(c) for c in sorted(gradient)])}); cross-domain cells with one: "
        f"{len(cross_done)} of {len(cross)} ({listing([code(c) for c in cross_done])}). The overall table marks "
        f"{len(incomplete)} methods `incomplete` ({', '.join(incomplete) or 'none'}).")


def tuning_block(f: Facts) -> str:
    from fewshot_bench.core.config import read_yaml

    parts, pinned = [], []
    for path in f.paths.tuned:
        data = read_yaml(path, "tuned configs")
        budget = data.get("budget") or {}
        parts.append(f"`{path.name}` {budget.get('trials')} trials × {budget.get('episodes')} validation episodes "
                     f"(study {budget.get('study')})")
        for setting, methods in (data.get("settings") or {}).items():
            for method, chosen in methods.items():
                if "meta_steps" in (chosen.get("overrides") or {}) and method == "fomaml":
                    pinned.append(f"{chosen['overrides']['meta_steps']} on {code(setting)}")
    return paragraph(f"Tuning budgets (`leaderboard/tuning/`): {'; '.join(parts)}"
                     + (f"; `fomaml`'s `meta_steps` pinned to {listing(sorted(set(pinned)))}" if pinned else "") + ".")


def overall_block(f: Facts) -> str:
    rows = [(code(r["method"]), f"{r['cells']}/{r['cells_total']}", f"{r['units']}/{r['units_total']}",
             "-" if r["acc_mean"] is None else f"{r['acc_mean']:.4f}",
             "-" if r["wins"] is None else f"{r['wins']}/{r['ties']}/{r['losses']}", f"{r['mean_rank_group']:.3f}",
             r["flags"] or "") for r in f.overall]
    return table(("method", "cells", "units", "accuracy over its units", f"wins/ties/losses vs `{REFERENCE}`",
                  "mean rank group", "flags"), rows)


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


# docs/sgg.md blocks -----------------------------------------------------------------------------------------------
def _term_values(f: Facts, column: str) -> List[tuple]:
    """(entry, value) of the SGG rows holding ``column``, the ablation that switches that term off left out."""
    off = {method for method, ablated in f.claims.ABLATED.items() if ablated == column}
    return [(e, e.row[column]) for e in f.entries if e.row.get(column) is not None and base(e.method) not in off]


def terms_summary_block(f: Facts) -> str:
    direction = _term_values(f, "sgg_dir_angle")
    defaults = [v for e, v in direction if "[" not in e.method]
    tuned = [v for e, v in direction if "[tuned]" in e.method]
    extra = [e.row["sgg_step_angle"] - v for e, v in direction if e.row["sgg_step_angle"] is not None]
    align = [v for _, v in _term_values(f, "sgg_align_active")]
    nodir = [e.row["sgg_step_angle"] for e in f.entries
             if e.method == "sgg-no-dir" and e.row["sgg_step_angle"] is not None]
    mag = _term_values(f, "sgg_mag_active")
    never = sorted({e.cell[1] for e, _ in mag} - {e.cell[1] for e, v in mag if v > 0})
    bound: Dict[str, List[float]] = {}
    for e, v in mag:
        if v > 0:
            bound.setdefault(e.cell[1], []).append(v)
    nomag = sorted(e.cell[1] for e in f.entries if e.method == "sgg-no-mag")
    stress = sum(1 for r in f.records if "(lr=" in r["method"])
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
        + ("its rows are not computed yet." if not stress else f"the store holds {n(stress)} of its episodes."))
    return text


V1_METHODS = ("sgg", "sgg-no-dir", "sgg-no-mag", "sgg-no-align", "full_ft", "lora")
V1_COLUMNS = ("grad_norm_cv", "grad_dir_consistency", "source_alignment", "path_efficiency")


def _v1(f: Facts) -> Dict[tuple, object]:
    return {(e.row["task"], str(e.row["k_shot"]), e.method): e for e in f.v1}


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


def shows_block(f: Facts) -> str:
    """The bullets of "What this shows"."""
    return "".join(block(f) for block in (frozen_block, cells_block, ablation_bullet_block, tuning_bullet_block,
                                          gradient_bullet_block, claims_bullet_block))


TIMED_METHODS = ("protonet", "linear_probe", "setfit", "full_ft", "lora", "sgg", "fomaml", "maml")


def timing_block(f: Facts) -> str:
    """README (submitting a method): what each built-in method costs per episode on one core cell, frozen and
    trained, with its one-off costs apart."""
    cell = CELL_BULLETS[0]
    rows = []
    for method in TIMED_METHODS:
        entry = f.entry(cell, method)
        if entry is None or not f.complete(entry):
            rows.append((code(method), "not computed", "-", "-", "-"))
            continue
        row = entry.row
        rows.append((code(method), row["protocol"], n(int(row["trainable_params"] or 0)),
                     f"{row['sec_per_episode']:.3f}",
                     f"{row['meta_train_seconds']:.0f}" if row["meta_train_seconds"] else "-"))
    return paragraph(f"Per built-in method on {code(cell)} (the committed store: one torch thread per process on "
                     f"the shared 2-core CPU VM the campaign ran on; means over the row's ok episodes; `not "
                     f"computed`: the cell's row is not complete yet):") + "\n" + table(
        ("method", "protocol", "trainable parameters", "s/episode", "meta-training, once per cell (s)"), rows)


README_BLOCKS = {
    "v1-summary": v1_summary, "core-suite": core_suite_block, "core-coverage": coverage_block,
    "campaign-status": campaign_block, "computed-by-day": computed_block, "not-computed": not_computed_block,
    "maml-adaptation": maml_block, "maml-defaults": maml_defaults_block, "ablations": ablation_block,
    "claims": lambda f: f.claims_md, "suite-v2": suite_v2_block, "power": power_block,
    "drop-rule-folds": drop_rule_block,
    "compute": compute_block, "missing": missing_block, "tuning-budget": tuning_block, "overall": overall_block,
    "class-level": class_block, "fold-class-level": folds_block, "compare-families": families_block,
    "what-this-shows": shows_block, "v1-paired-sd": v1_paired_sd_block,
}
GUIDE_BLOCKS = {"method-timing": timing_block}
DOCS_BLOCKS = {
    "terms": lambda f: f.terms_md, "terms-summary": terms_summary_block, "v1-header": v1_header_block,
    "v1-results": v1_table_block, "v1-reading": v1_reading_block,
}


# rewrite / check --------------------------------------------------------------------------------------------------
class BlockError(Exception):
    pass


def render(text: str, blocks: Dict[str, object], facts: Facts, where: str) -> str:
    """``text`` with every marked block regenerated; an unknown, missing or repeated block is a BlockError."""
    found = [m.group(1) for m in BLOCK.finditer(text)]
    unknown = sorted(set(found) - set(blocks))
    missing = sorted(set(blocks) - set(found))
    repeated = sorted({name for name in found if found.count(name) > 1})
    if unknown or missing or repeated:
        raise BlockError(f"{where}: " + "; ".join(
            part for part in (f"unknown blocks {', '.join(unknown)}" if unknown else "",
                              f"missing blocks {', '.join(missing)}" if missing else "",
                              f"repeated blocks {', '.join(repeated)}" if repeated else "") if part))
    return BLOCK.sub(lambda m: f"<!-- {m.group(1)} -->\n{blocks[m.group(1)](facts)}<!-- /{m.group(1)} -->", text)


@functools.lru_cache(maxsize=4)
def _facts(paths: Paths, stamp: tuple) -> Facts:
    return Facts(paths)


def facts_for(paths: Paths) -> Facts:
    """Facts of ``paths`` (the files they are read from; not the README and docs they are written into), reused
    while the store file is unchanged (size and mtime): a test checks several copies against one store at once."""
    stat = paths.store.stat()
    return _facts(paths._replace(readme=None, docs=None, guide=None), (stat.st_size, stat.st_mtime_ns))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=str(ROOT / "leaderboard" / "results.sqlite"), help="results store (SQLite)")
    parser.add_argument("--check", action="store_true", help="write nothing; print a diff and exit 1 when a file "
                                                              "differs from what the store gives")
    parser.add_argument("--root", default=str(ROOT), help="repository root the default paths below are under")
    parser.add_argument("--readme", help="the leaderboard README (default ROOT/leaderboard/README.md)")
    parser.add_argument("--docs", help="the SGG page (default ROOT/docs/sgg.md)")
    parser.add_argument("--guide", help="the project README (default ROOT/README.md; 'none': skip it)")
    parser.add_argument("--campaign", help="campaign file (default ROOT/leaderboard/campaign.yaml)")
    parser.add_argument("--v1-store", help="suite-v1 store (default ROOT/leaderboard/v1/results.sqlite)")
    parser.add_argument("--class-cache", help="leaderboard CSV whose class-level CIs are reused for unchanged rows "
                                              "(default ROOT/leaderboard/leaderboard.csv; 'none': compute all)")
    parser.add_argument("--leaderboard", action="store_true", help="then rewrite the leaderboard files beside "
                                                                   "the README with `fewshot-bench leaderboard` "
                                                                   f"(reference {REFERENCE}; minutes)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    cache = args.class_cache or str(root / "leaderboard" / "leaderboard.csv")
    paths = Paths(store=Path(args.store).resolve(),
                  readme=Path(args.readme or root / "leaderboard" / "README.md"),
                  docs=Path(args.docs or root / "docs" / "sgg.md"),
                  guide=None if args.guide == "none" else Path(args.guide or root / "README.md"),
                  campaign=Path(args.campaign or root / "leaderboard" / "campaign.yaml"),
                  v1_store=Path(args.v1_store or root / "leaderboard" / "v1" / "results.sqlite"),
                  class_cache=None if cache == "none" else Path(cache),
                  tuned=tuple(sorted((root / "leaderboard" / "tuning").glob("tuned-*.yaml"))))
    if not paths.store.is_file():
        print(f"error: results store {paths.store} does not exist", file=sys.stderr)
        return 2
    facts = facts_for(paths)
    print(f"class-level CIs: {facts.cached} rows read from {paths.class_cache or 'no cache'} (episodes unchanged), "
          f"{facts.computed} computed from the store", file=sys.stderr)
    status = 0
    targets = [(paths.readme, README_BLOCKS), (paths.docs, DOCS_BLOCKS)]
    for path, blocks in targets + ([(paths.guide, GUIDE_BLOCKS)] if paths.guide is not None else []):
        text = path.read_text(encoding="utf-8")
        try:
            new = render(text, blocks, facts, str(path))
        except BlockError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if new == text:
            continue
        if args.check:
            status = 1
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                       f"{path} (committed)", f"{path} (from {paths.store.name})"))
        else:
            path.write_text(new, encoding="utf-8")
            print(f"wrote {path}")
    if args.check and status == 0:
        print(f"{paths.readme} and {paths.docs} hold the numbers of {paths.store}")
    if args.leaderboard and not args.check:  # after the README: the page shows the claims table written there
        from fewshot_bench.report.leaderboard import write_leaderboard

        write_leaderboard(paths.store, paths.readme.parent / "leaderboard.csv", BOOTSTRAP, REFERENCE)
    return status


if __name__ == "__main__":
    sys.exit(main())
