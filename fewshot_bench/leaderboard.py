"""Aggregate a results store into the leaderboard: CSV, per-method overall CSV, Markdown and a figure.

One row per (method, protocol, backbone, task, setting). Conventions:
  * ``task`` is the target task, written ``SOURCE->TASK`` for cross-dataset settings (setting ``SOURCE->TASK/...``).
  * ``episodes`` counts every distinct episode of the group (ok + failed + diverged). An episode is identified by
    its fingerprint; if it was evaluated more than once (e.g. under another run config) the latest row counts.
  * Failed and diverged episodes are EXCLUDED from the accuracy statistics and counted in ``failed_episodes``.
    All other metric columns are means over ok episodes, empty when no ok episode has a value (e.g. prototypical
    networks have no gradients).
  * 95% CI of the mean accuracy: percentile bootstrap over episodes (default 10,000 resamples, 2.5th/97.5th
    percentiles) from a numpy Generator seeded with ``seed``, so it is deterministic. One episode gives
    [mean, mean]; the interval is widened to contain the mean if a tiny ``bootstrap`` count would exclude it.
  * ``rank`` compares methods only on identical episode sets: within rows sharing (task, setting, backbone,
    protocol, episode_set_sha256), by acc_mean descending; ties share the lowest rank, rows without accuracy
    rank last. A row whose episode set no other row shares is rank 1 of its own group.
  * Numbers are rounded to 4 decimals (sec_per_episode and peak_mem_mb to 3).
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .episodes import episode_set_sha256
from .errors import UserError
from .store import ResultsStore

log = logging.getLogger(__name__)

COLUMNS = ("rank", "method", "protocol", "backbone", "task", "n_way", "k_shot", "q_query", "episodes", "acc_mean",
           "acc_ci95_low", "acc_ci95_high", "macro_f1_mean", "grad_norm_cv", "grad_dir_consistency",
           "source_alignment", "path_efficiency", "sec_per_episode", "peak_mem_mb", "trainable_params",
           "failed_episodes", "episode_set_sha256", "version")
OVERALL_COLUMNS = ("method", "protocol", "backbone", "task_settings", "acc_mean", "mean_rank")
# leaderboard column -> (episodes column, decimals) for the plain means over ok episodes
_MEANS = {"macro_f1_mean": ("macro_f1", 4), "grad_norm_cv": ("grad_norm_cv", 4),
          "grad_dir_consistency": ("grad_dir_consistency", 4), "source_alignment": ("source_alignment", 4),
          "path_efficiency": ("path_efficiency", 4), "sec_per_episode": ("wall_seconds", 3),
          "peak_mem_mb": ("peak_mem_mb", 3)}
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_CHUNK = 1000  # bootstrap resamples drawn at once (bounds memory)


def bootstrap_ci(values: Sequence[float], resamples: int = 10000, seed: int = 0) -> tuple:
    """Percentile bootstrap 95% CI (2.5th, 97.5th) of the mean of ``values``, containing the mean."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.concatenate([values[rng.integers(0, len(values), (min(_CHUNK, resamples - done), len(values)))].mean(1)
                            for done in range(0, resamples, _CHUNK)])
    low, high = np.percentile(means, [2.5, 97.5])
    mean = values.mean()
    return float(min(low, mean)), float(max(high, mean))


def rank_of(values: Sequence[Optional[float]]) -> List[int]:
    """Competition ranks, higher is better: 1 + number of strictly better values; None ranks last."""
    keys = [-np.inf if v is None else v for v in values]
    return [1 + sum(other > key for other in keys) for key in keys]


def _mean(values, digits: int) -> Optional[float]:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), digits) if values else None


def _task_label(task: str, setting: str) -> str:
    """``SOURCE->TASK`` for a cross-dataset setting labelled ``SOURCE->TASK/...``, else ``TASK``; a
    validation-pool setting (``.../validation/...``, hyperparameter choice) gets `` [validation]``."""
    head = setting.split("/", 1)[0]
    label = head if head.endswith("->" + task) else task
    return label + " [validation]" if "/validation/" in setting else label


def _summarise(key: tuple, episodes: List[dict], bootstrap: int, seed: int) -> dict:
    task, setting, protocol, backbone, method = key
    ok = [e for e in episodes if e["status"] == "ok"]
    accuracy = [e["accuracy"] for e in ok if e["accuracy"] is not None]
    row = dict.fromkeys(COLUMNS)
    first = episodes[0]
    row.update(method=method, protocol=protocol, backbone=backbone, task=_task_label(task, setting), n_way=first["n_way"],
               k_shot=first["k_shot"], q_query=first["q_query"], episodes=len(episodes),
               failed_episodes=len(episodes) - len(ok),
               episode_set_sha256=episode_set_sha256([e["fingerprint"] for e in episodes]),
               version=";".join(sorted({e["version"] for e in episodes})))
    if accuracy:
        low, high = bootstrap_ci(accuracy, bootstrap, seed)
        row.update(acc_mean=round(float(np.mean(accuracy)), 4), acc_ci95_low=round(low, 4),
                   acc_ci95_high=round(high, 4))
    for column, (source, digits) in _MEANS.items():
        row[column] = _mean([e[source] for e in ok], digits)
    params = _mean([e["trainable_params"] for e in ok], 0)
    row["trainable_params"] = None if params is None else int(params)
    return row


def aggregate(store_path, bootstrap: int = 10000, seed: int = 0) -> List[Dict]:
    """Leaderboard rows (dicts with keys ``COLUMNS``), ordered by task, setting, ranked group and rank."""
    path = Path(store_path)
    if not path.is_file():
        raise UserError(f"results store '{path}' does not exist; run `fewshot-bench run` first or pass --store")
    if bootstrap < 1:
        raise UserError(f"--bootstrap must be >= 1, got {bootstrap}")
    with ResultsStore(path) as store:
        records = store.episodes()
    groups: Dict[tuple, Dict[str, dict]] = {}
    for record in sorted(records, key=lambda r: r["created_at"]):  # stable sort: later rows overwrite earlier
        key = (record["task"], record["setting"], record["protocol"], record["backbone"], record["method"])
        groups.setdefault(key, {})[record["fingerprint"]] = record
    keyed = []
    for key, episodes in groups.items():
        # episode order, not write order (ranks, resumes): the bootstrap CI is a function of the episode set
        episodes = sorted(episodes.values(), key=lambda e: (e["episode_index"], e["fingerprint"]))
        if len({e["config_hash"] for e in episodes}) > 1:
            log.warning("%s: episodes from several run configs are pooled (latest row per episode)", "/".join(key))
        keyed.append((key, _summarise(key, episodes, bootstrap, seed)))
    ranked: Dict[tuple, List[dict]] = {}
    for (task, setting, protocol, backbone, _), row in keyed:
        ranked.setdefault((task, setting, backbone, protocol, row["episode_set_sha256"]), []).append(row)
    for rows in ranked.values():
        for row, rank in zip(rows, rank_of([r["acc_mean"] for r in rows])):
            row["rank"] = rank
    def order(item):
        (task, setting, protocol, backbone, method), row = item
        return task, setting, protocol, backbone, row["episode_set_sha256"], row["rank"], method
    return [row for _, row in sorted(keyed, key=order)]


def neutralise(cell):
    """Prefix text that a spreadsheet would run as a formula with a single quote; numbers stay numbers."""
    return "'" + cell if isinstance(cell, str) and cell.startswith(FORMULA_PREFIXES) else cell


def write_csv(rows: List[Dict], out_path, columns: Sequence[str] = COLUMNS) -> None:
    """Write ``rows`` with header ``columns``; None -> empty cell, formula-like text neutralised."""
    with open(out_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row[c] is None else neutralise(row[c]) for c in columns])


def overall(rows: List[Dict]) -> List[Dict]:
    """Per method x backbone x protocol: mean accuracy over task-settings and mean rank, best first."""
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["protocol"], row["backbone"]), []).append(row)
    result = [dict(zip(OVERALL_COLUMNS, (*key, len(members), _mean([r["acc_mean"] for r in members], 4),
                                         _mean([r["rank"] for r in members], 4))))
              for key, members in groups.items()]
    return sorted(result, key=lambda r: (r["acc_mean"] is None, -(r["acc_mean"] or 0), r["mean_rank"], r["method"]))


def _md_table(header: Sequence[str], body: List[Sequence]) -> List[str]:
    def cell(value):
        return "" if value is None else str(value).replace("|", "\\|")
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(cell(v) for v in line) + " |" for line in body]


def write_markdown(rows: List[Dict], overall_rows: List[Dict], path, bootstrap: int = 10000) -> None:
    """leaderboard.md: per task-setting table, overall table and how to read them."""
    def acc(r):
        return None if r["acc_mean"] is None else f"{r['acc_mean']:.4f} [{r['acc_ci95_low']:.4f}, {r['acc_ci95_high']:.4f}]"
    main = _md_table(
        ("rank", "method", "protocol", "backbone", "task", "N-way", "K-shot", "Q", "episodes", "accuracy [95% CI]",
         "macro-F1", "grad dir. consistency", "s/episode", "failed", "episode set"),
        [(r["rank"], r["method"], r["protocol"], r["backbone"], r["task"], r["n_way"], r["k_shot"], r["q_query"],
          r["episodes"], acc(r), r["macro_f1_mean"], r["grad_dir_consistency"], r["sec_per_episode"],
          r["failed_episodes"], r["episode_set_sha256"][:12]) for r in rows])
    summary = _md_table(("method", "protocol", "backbone", "task-settings", "mean accuracy", "mean rank"),
                        [[r[c] for c in OVERALL_COLUMNS] for r in overall_rows])
    how = [
        "## How to read",
        "",
        "- **accuracy**: mean query accuracy over ok episodes; the 95% CI is a percentile bootstrap over episodes "
        f"({bootstrap:,} resamples, 2.5th/97.5th percentiles).",
        "- **rank** compares methods only on identical episode sets (same `episode set` hash), the same backbone "
        "and the same protocol (target-only, source-guided and meta-trained are never ranked together); ties share a rank.",
        "- **failed** episodes (crashed or diverged) are excluded from accuracy and counted separately.",
        "- Gradient columns are empty for methods that take no gradient steps.",
        "- **overall**: mean over task-settings of accuracy and rank, per method x backbone x protocol.",
    ]
    text = ["# Leaderboard", ""] + main + ["", "## Overall", ""] + summary + [""] + how
    Path(path).write_text("\n".join(text) + "\n", encoding="utf-8")


def _shot_key(k_shot: str) -> tuple:
    return tuple(int(part) for part in k_shot.split("-"))


def leaderboard_figure(rows: List[Dict]):
    """Matplotlib figure: one panel per task and N-way (accuracy vs K-shot per method, 95% CI bars), then accuracy vs gradient
    direction consistency over every row (colour: method, marker: task)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rows = [r for r in rows if r["acc_mean"] is not None]
    single_backbone = len({r["backbone"] for r in rows}) == 1
    label = {id(r): r["method"] if single_backbone else f"{r['method']}/{r['backbone']}" for r in rows}
    labels = sorted(set(label.values()))
    colors = {name: f"C{i % 10}" for i, name in enumerate(labels)}
    shots = sorted({r["k_shot"] for r in rows}, key=_shot_key)
    panels = sorted({(r["task"], r["n_way"]) for r in rows}, key=str)
    markers = {task: "osD^vP*Xh<>p"[i % 12] for i, task in enumerate(sorted({r["task"] for r in rows}))}
    cells = len(panels) + 2  # the per-task panels, the consistency scatter, the legend
    columns = min(3, cells)
    grid_rows = -(-cells // columns)
    fig = Figure(figsize=(4.3 * columns, 3.6 * grid_rows), layout="constrained")
    axes = list(fig.subplots(grid_rows, columns, squeeze=False).ravel())

    def yerr(series):
        return [[r["acc_mean"] - r["acc_ci95_low"] for r in series], [r["acc_ci95_high"] - r["acc_mean"] for r in series]]

    for axis, (task, n_way) in zip(axes, panels):
        for j, name in enumerate(labels):
            series = sorted((r for r in rows if (r["task"], r["n_way"]) == (task, n_way) and label[id(r)] == name),
                            key=lambda r: _shot_key(r["k_shot"]))
            if series:
                offset = (j - (len(labels) - 1) / 2) * 0.03  # side by side, so CI bars do not hide each other
                axis.errorbar([shots.index(r["k_shot"]) + offset for r in series], [r["acc_mean"] for r in series],
                              yerr=yerr(series), fmt="o-", color=colors[name], markersize=3, capsize=2, alpha=0.8)
        axis.set(title=f"{task}, {n_way}-way", xticks=range(len(shots)), xticklabels=shots, xlabel="K-shot",
                 ylabel="query accuracy (95% CI)")
    scatter = axes[len(panels)]
    for r in rows:
        if r["grad_dir_consistency"] is not None:
            scatter.errorbar([r["grad_dir_consistency"]], [r["acc_mean"]], yerr=yerr([r]), fmt=markers[r["task"]],
                             color=colors[label[id(r)]], markersize=4, capsize=2, alpha=0.7)
    scatter.set(title="accuracy vs gradient direction consistency", ylabel="query accuracy (95% CI)",
                xlabel="mean cos of successive step gradients")
    legend = axes[len(panels) + 1]
    legend.axis("off")
    for extra in axes[len(panels) + 2:]:
        extra.remove()
    handles = [Line2D([], [], color=colors[name], marker="o", label=name) for name in labels]
    handles += [Line2D([], [], color="grey", marker=marker, linestyle="", label=task) for task, marker in markers.items()]
    legend.legend(handles=handles, loc="center", fontsize="small", ncols=2, frameon=False)
    return fig


def cli_leaderboard(args) -> int:
    """``fewshot-bench leaderboard``: CSV at --out plus <stem>.md, <stem>_overall.csv and <stem>.png beside it."""
    rows = aggregate(args.store, args.bootstrap)
    if not rows:
        raise UserError(f"no episodes in {args.store}; run `fewshot-bench run` first")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    overall_rows = overall(rows)
    md, overall_csv, png = (out.with_name(out.stem + suffix) for suffix in (".md", "_overall.csv", ".png"))
    write_csv(rows, out)
    write_csv(overall_rows, overall_csv, OVERALL_COLUMNS)
    write_markdown(rows, overall_rows, md, args.bootstrap)
    leaderboard_figure(rows).savefig(png, dpi=110)
    print(f"wrote {out} ({len(rows)} rows), {md}, {overall_csv}, {png}")
    print("overall (mean accuracy over task-settings, mean rank):")
    for r in overall_rows[:10]:
        print(f"  {r['method']:<20} {r['backbone']:<16} {r['protocol']:<13} acc {r['acc_mean']}  rank {r['mean_rank']}")
    return 0
