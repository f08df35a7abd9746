"""The one declaration of per-episode metrics, method figures and leaderboard columns.

Derived from here: the store's metric columns (``store.tables.EPISODE_TYPES``), the leaderboard CSV and overall CSV
columns and their order, the per-row means over ok episodes, and every range/type check of ``validate``.
Adding a harness metric is one ``Metric`` line (stored and range-checked), plus one ``mean_of`` line to show its
mean (or sum) on the leaderboard. A method's own per-episode figures are not here: it declares them as
:class:`Figure` s (``Method.figures``); the store keeps them in its ``figures`` table (:mod:`.figures`) and the
leaderboard gains one column per declared figure after the core columns (:func:`figure_column`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

INF = float("inf")
LEADERBOARD_SCHEMA_VERSION = 6
RANGE_TOLERANCE = 1e-4  # float32 cosines and ratios over millions of parameters overshoot [-1, 1] by rounding


@dataclass(frozen=True)
class Metric:
    """A per-episode measurement: one column of the store's ``episodes`` table."""
    name: str
    sql: str  # "REAL" or "INTEGER"
    low: float
    high: float
    help: str
    higher_is_better: Optional[bool] = None  # None: a diagnostic, neither better nor worse


@dataclass(frozen=True)
class Column:
    """A leaderboard CSV column: its kind ("int", "float", "text"), range, whether it may be empty, and for a
    aggregate of a metric over ok episodes, the metric (``source``), ``aggregate`` ("mean" or "sum") and decimals."""
    name: str
    kind: str
    help: str
    low: float = -INF
    high: float = INF
    optional: bool = False
    source: Optional[str] = None  # a metric, or a figure's name (one column per declared figure)
    aggregate: str = "mean"
    decimals: int = 4
    higher_is_better: Optional[bool] = None


METRICS: Tuple[Metric, ...] = (
    Metric("accuracy", "REAL", 0, 1, "query accuracy", True),
    Metric("macro_f1", "REAL", 0, 1, "query macro-F1 (scikit-learn)", True),
    Metric("final_loss", "REAL", 0, INF, "support loss at the last step", False),
    # the four gradient diagnostics: over the trainable parameters, so comparable only at equal trainable_params
    # (gradients.py); the leaderboard help of their columns says so
    Metric("grad_norm_cv", "REAL", 0, INF, "std/mean of the step gradient norms"),
    Metric("grad_dir_consistency", "REAL", -1, 1, "mean cosine of successive step gradients"),
    Metric("path_efficiency", "REAL", 0, 1, "|theta_T - theta_0| / path length"),
    Metric("source_alignment", "REAL", -1, 1, "mean cosine of target and source-task gradients (SGG; full_ft/lora "
                                               "only with source_every > 0, off by default)"),
    Metric("wall_seconds", "REAL", 0, INF, "wall time of the episode", False),
    Metric("peak_mem_mb", "REAL", 0, INF, "peak memory (CUDA allocated or process RSS)", False),
    Metric("trainable_params", "INTEGER", 0, INF, "parameters the method trains"),
    Metric("steps", "INTEGER", 0, INF, "optimisation steps taken"),
    # timings beside wall_seconds: the frozen-embedding cache fill this episode triggered (a one-off cost, not in
    # wall_seconds), and the wall time of the meta-training the episode's method used (NULL: none)
    Metric("embedding_cache_seconds", "REAL", 0, INF, "embedding-cache fill this episode triggered", False),
    Metric("meta_train_seconds", "REAL", 0, INF, "wall time of the meta-training the method used", False),
    # 1: the method trained on a source pool sharing classes with the evaluated pool (not few-shot on them; such
    # rows are ranked apart), 0: on a class-disjoint source pool, NULL: no source data used (target-only)
    Metric("same_class_source", "INTEGER", 0, 1, "whether the source pool the method used shares evaluated classes"),
    # what adaptation did, for methods whose predictor also gives its un-adapted model (Predictor.initial: MAML,
    # FOMAML); NULL for the others
    Metric("support_loss_before", "REAL", 0, INF, "support cross-entropy of the un-adapted model"),
    Metric("support_loss_after", "REAL", 0, INF, "support cross-entropy of the adapted model"),
    Metric("adapt_changed", "REAL", 0, 1, "share of query predictions adaptation changed (vs the un-adapted model)"),
)
METRIC = {m.name: m for m in METRICS}
KEY_COLUMNS = ("config_hash", "method", "backbone", "task", "setting", "episode_index")  # an episode row's key
ISOLATION_LEVELS = ("in-process", "process", "sandboxed")  # where a method's code ran, weakest first


@dataclass(frozen=True)
class Figure:
    """A per-episode figure a method declares (``Method.figures``) and reports in ``ctx.figures``: a finite number
    in [``low``, ``high``] (None: not reported this episode). The leaderboard shows its ``aggregate`` ("mean" or
    "sum") over a row's ok episodes in a column ``name``, rounded to ``decimals``; ``higher_is_better`` None: a
    diagnostic. Checked when the method is built (``methods.spec.check_figures``)."""
    name: str
    low: float
    high: float
    help: str
    aggregate: str = "mean"
    decimals: int = 4
    higher_is_better: Optional[bool] = None


def figure_column(figure: Figure) -> "Column":
    """The leaderboard column of a declared figure (an aggregate over ok episodes, optional)."""
    return Column(figure.name, "float", f"{figure.aggregate} of {figure.help} over ok episodes (method figure)",
                  figure.low, figure.high, True, figure.name, figure.aggregate, figure.decimals,
                  figure.higher_is_better)


GRADIENT_BASIS = ("; a diagnostic computed over the trained parameters: comparable only between rows with equal "
                  "trainable_params (the same trainable set, e.g. 22.7M full vs 75.7k LoRA are not), and it does not "
                  "track accuracy (leaderboard.md, Gradient diagnostics)")


def mean_of(metric: str, name: Optional[str] = None, decimals: int = 4, aggregate: str = "mean") -> Column:
    """Leaderboard column = mean (or sum) of ``metric`` over a row's ok episodes (range and direction from the
    metric); the gradient diagnostics' help names their basis (``GRADIENT_BASIS``)."""
    m = METRIC[metric]
    basis = GRADIENT_BASIS if metric in ("grad_norm_cv", "grad_dir_consistency", "path_efficiency",
                                         "source_alignment") else ""
    return Column(name or metric, "int" if m.sql == "INTEGER" else "float",
                  f"{aggregate} of {m.help} over ok episodes{basis}", m.low, m.high, True, metric, aggregate, decimals,
                  m.higher_is_better)


def _share(name: str, help: str, optional: bool = True) -> Column:
    return Column(name, "float", help, 0, 1, optional)


def _accuracy(mean_help: str, ci_help: str) -> Tuple[Column, ...]:
    """acc_mean, acc_ci95_low, acc_ci95_high."""
    return (_share("acc_mean", mean_help), _share("acc_ci95_low", ci_help + ", low end"),
            _share("acc_ci95_high", ci_help + ", high end"))


def _delta(name: str, help: str) -> Column:
    return Column(name, "float", help, -1, 1, True)


LEADERBOARD: Tuple[Column, ...] = (
    Column("rank", "int", "rank group (equal to rank_group; kept for readers of schema 1)", 1),
    Column("method", "text", "method label (with config overrides)"),
    Column("protocol", "text", "target-only, source-guided or meta-trained"),
    Column("backbone", "text", "backbone name"),
    Column("task", "text", "target task (SOURCE->TASK cross-dataset, [validation] for the validation pool)"),
    Column("n_way", "int", "classes per episode", 2),
    Column("k_shot", "text", "shots per class (MIN-MAX: variable)"),
    Column("q_query", "int", "queries per class", 1),
    Column("episodes", "int", "distinct episodes stored (ok + failed + diverged)", 1),
    *_accuracy("mean query accuracy over ok episodes", "percentile bootstrap 95% CI of acc_mean"),
    mean_of("macro_f1", "macro_f1_mean"),
    mean_of("grad_norm_cv"),
    mean_of("grad_dir_consistency"),
    mean_of("source_alignment"),
    mean_of("path_efficiency"),
    mean_of("wall_seconds", "sec_per_episode", 3),
    mean_of("peak_mem_mb", decimals=3),
    mean_of("trainable_params", decimals=0),
    Column("failed_episodes", "int", "failed or diverged episodes (left out of the accuracy)", 0),
    Column("episode_set_sha256", "text", "sha256 of the sorted episode fingerprints"),
    Column("version", "text", "fewshot-bench version(s) that wrote the episodes"),
    # schema 2
    Column("episodes_planned", "int", "episodes the run configs asked for (empty: no run record)", 1, optional=True),
    Column("ref_method", "text", "reference method of the paired comparison (empty: not in this cell)"),
    _delta("delta_vs_ref", "mean per-episode accuracy difference, this method minus the reference"),
    _delta("delta_ci95_low", "paired percentile bootstrap 95% CI of delta_vs_ref, low end"),
    _delta("delta_ci95_high", "paired percentile bootstrap 95% CI of delta_vs_ref, high end"),
    _share("p_value", "two-sided paired sign-flip p-value against the reference"),
    _share("p_holm", "p_value after Holm's correction over every pairwise comparison of the cell"),
    Column("rank_group", "int", "1 + the number of methods of the cell that beat this one significantly "
                                "(identical-prediction clones count once)", 1),
    Column("beaten_by", "text", "methods of the cell that beat this one significantly (Holm), ';'-separated"),
    _delta("detectable_diff", "smallest accuracy difference the cell detects (80% power, alpha 0.05, paired; "
                              "1.0: none)"),
    Column("flags", "text", "saturated, narrow-spread, unfinished, mixed-episodes, no-reference, "
                            "indistinguishable:METHOD(SHARE), "
                            "same-class-source (ranked apart: its rank group counts only same-class-source rows)"),
    mean_of("embedding_cache_seconds", "embedding_cache_seconds_total", 3, aggregate="sum"),
    mean_of("meta_train_seconds", decimals=3),
    Column("schema_version", "int", "leaderboard schema version", LEADERBOARD_SCHEMA_VERSION,
           LEADERBOARD_SCHEMA_VERSION),
    # schema 3
    Column("fold", "int", "class-split fold of the cell", 1),
    Column("setting", "text", "setting label (source->task/fold/pool/shape): with the backbone, the cell"),
    # schema 4
    Column("delta_dz", "float", "paired effect size d_z of delta_vs_ref: mean / SD of the per-episode differences "
                                "(empty: SD 0)", optional=True),
    Column("restarts", "int", "training restarts per episode (run --restarts; 1: one training seed)", 1),
    _share("seed_sd", "median over episodes of the SD of accuracy over training restarts (empty: one restart)"),
    _share("failed_run_share", "share of runs (episode x restart) that failed or scored <= chance + "
                               "restarts.FAILED_MARGIN (0.05)"),
    _share("acc_class_ci95_low", "class-level (hierarchical: classes, then episodes) bootstrap 95% CI of acc_mean, "
                                 "low end (empty: the episodes' classes unknown)"),
    _share("acc_class_ci95_high", "class-level bootstrap 95% CI of acc_mean, high end"),
    _delta("delta_class_ci95_low", "class-level bootstrap 95% CI of delta_vs_ref, low end"),
    _delta("delta_class_ci95_high", "class-level bootstrap 95% CI of delta_vs_ref, high end"),
    # schema 5
    mean_of("support_loss_before"),
    mean_of("support_loss_after"),
    mean_of("adapt_changed"),
    # schema 6 (SGG's figures left the core columns: one column per declared figure follows these)
    Column("isolation", "text", "where the row's episodes ran the method's code: in-process, process (sealed "
                                "worker) or sandboxed (';'-separated when they differ; empty: not recorded)"),
)
COLUMNS = tuple(c.name for c in LEADERBOARD)
AGGREGATES = tuple(c for c in LEADERBOARD if c.source)

OVERALL: Tuple[Column, ...] = (
    Column("method", "text", "method label"),
    Column("backbone", "text", "backbone name"),
    Column("protocol", "text", "protocol(s) of its rows"),
    Column("cells", "int", "cells (task x setting x backbone) with a row of this method", 1),
    Column("cells_total", "int", "cells of the leaderboard on this backbone", 1),
    Column("units", "int", "units (cells sharing target episodes counted once, e.g. clinc150->hwu64 and hwu64 "
                           "fold 1) with a row of this method", 1),
    Column("units_total", "int", "units of the leaderboard on this backbone", 1),
    *_accuracy("mean over its units of the unit mean accuracy (a unit: mean over its cells)",
               "95% CI of acc_mean (per-cell bootstrap CIs; within a unit half-widths averaged (same episodes: "
               "dependent), across units combined in quadrature (independent))"),
    Column("wins", "int", "units where it beats the reference significantly (Holm) in a cell and loses in none",
           0, optional=True),
    Column("ties", "int", "units where it and the reference cannot be told apart (or the unit's cells disagree)",
           0, optional=True),
    Column("losses", "int", "units where the reference beats it significantly (Holm) in a cell and it wins in none",
           0, optional=True),
    Column("mean_rank_group", "float", "mean over its units of the unit mean rank group", 1),
    Column("flags", "text", "incomplete: missing from some cells (same-class-source rows count as missing), its "
                            "means are not comparable to complete rows"),
)
OVERALL_COLUMNS = tuple(c.name for c in OVERALL)


def cell_key(row: dict) -> tuple:
    """The cell of a leaderboard row as the CSV shows it: (task, N-way, K-shot, Q, backbone, fold, setting)."""
    return row["task"], row["n_way"], row["k_shot"], row["q_query"], row["backbone"], row["fold"], row["setting"]
