"""The inputs of leaderboard/readme_numbers.py and :class:`Facts`, everything its blocks print, computed once.

:class:`Paths` names the files read (the store, the campaign file, the suite-v1 store, the class-level CI cache, the
tuned configs) and the files written (README, docs, guide). ``Facts(paths)`` reads them: the leaderboard's entries
annotated against :data:`REFERENCE` (:data:`BOOTSTRAP` resamples, :data:`SEED`), the claims tables, the suite summary,
the fold summaries, the compare families (:data:`FAMILIES`), the raw episodes and runs tables, the core and default
suites, the class-level CIs (from the cache where a row's episodes are unchanged, else computed), the campaign's
progress and the suite-v1 entries. The block functions (readme_blocks_*.py) write their text from these.
"""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import sqlite3
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
REFERENCE = "protonet"   # the leaderboard's reference (fewshot-bench leaderboard --reference protonet)
BOOTSTRAP = 10000        # the leaderboard's resamples
SEED = 0
FROZEN = ("protonet", "linear_probe")  # frozen-backbone methods (no gradient through the encoder)
CELL_BULLETS = ("banking77/fold1/5way1shot15q", "hwu64/fold1/5way1shot15q")
FOLD_EXAMPLES = (("hwu64/5way1shot15q", "linear_probe"), ("banking77/allway5shot15q", "linear_probe"))
# the named comparisons of `fewshot-bench compare`, two Holm families (the README prints these commands)
FAMILIES = ((("sgg", "full_ft"), ("full_ft[tuned]", "full_ft"), ("sgg[tuned]", "sgg"), ("fomaml[tuned]", "fomaml"),
             ("sgg-no-align", "sgg"), ("sgg-no-mag", "sgg"), ("sgg-no-dir", "full_ft"), ("fomaml[tuned]", "full_ft")),
            (("lora[tuned]", "lora"), ("sgg", "lora"), ("lora", "full_ft")))


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
