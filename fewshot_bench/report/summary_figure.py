"""The leaderboard's summary figure: a heatmap of each method's Δ vs the reference in every cell, with significance
marks, above a critical-difference diagram of average ranks (:mod:`fewshot_bench.analysis.ranks`). At most
``MAX_HEIGHT_IN`` inches tall at any number of cells or methods (long axes get smaller labels, not more height)."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from ..store.schema import cell_key
from ..analysis.compare import ALPHA
from ..analysis.ranks import RankSummary

MAX_HEIGHT_IN = 16.0  # x 110 dpi = 1760 px
NO_REFERENCE = "#d9d9d9"


def cell_label(row: Dict) -> str:
    """Short cell name: ``task f1 5w1s`` (``allw``: every class), backbone added by the caller when several."""
    return f"{row['task']} f{row['fold']} {row['n_way']}w{row['k_shot']}s"


def methods_in_order(rows: List[Dict], ranks: Optional[RankSummary]) -> List[str]:
    """The CD design's methods by average rank, then the others by name."""
    ranked = list(ranks.methods) if ranks else []
    return ranked + sorted({r["method"] for r in rows} - set(ranked))


def summary_figure(rows: List[Dict], ranks: Optional[RankSummary], reference: str):
    """Matplotlib figure: heatmap (rows: methods, columns: cells; colour Δ vs ``reference``, ▲/▼ significant
    after Holm, grey with the rank group: the cell has no reference) and the CD diagram (or a note when no design exists)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    cells: Dict[tuple, Dict[str, Dict]] = {}
    for row in rows:
        cells.setdefault(cell_key(row), {})[row["method"]] = row
    several = len({r["backbone"] for r in rows}) > 1
    labels = [cell_label(next(iter(m.values()))) + (f" {key[4]}" if several else "") for key, m in cells.items()]
    methods = methods_in_order(rows, ranks)
    delta = np.full((len(methods), len(cells)), np.nan)
    present = np.zeros_like(delta, dtype=bool)
    for j, members in enumerate(cells.values()):
        for i, method in enumerate(methods):
            row = members.get(method)
            present[i, j] = row is not None
            if row is not None and row["delta_vs_ref"] is not None:
                delta[i, j] = row["delta_vs_ref"]
            elif row is not None and method == reference:
                delta[i, j] = 0.0
    width = min(24.0, max(8.0, 2.5 + 0.22 * len(cells)))
    heat_height = min(MAX_HEIGHT_IN - 4.5, 1.8 + 0.22 * len(methods))
    fig = Figure(figsize=(width, heat_height + 3.5), layout="constrained")
    heat_axis, cd_axis = fig.subplots(2, 1, height_ratios=[heat_height, 3.0])
    limit = float(np.nanmax(np.abs(delta))) if np.isfinite(delta).any() else 0.1
    heat_axis.imshow(np.where(present, 0.0, np.nan), cmap=ListedColormap([NO_REFERENCE]), aspect="auto")
    image = heat_axis.imshow(delta, cmap="RdBu", vmin=-max(limit, 1e-3), vmax=max(limit, 1e-3), aspect="auto")
    for j, members in enumerate(cells.values()):
        for i, method in enumerate(methods):
            row = members.get(method)
            if row is not None and row["p_holm"] is not None and row["p_holm"] < ALPHA:
                heat_axis.text(j, i, "▲" if row["delta_vs_ref"] > 0 else "▼", ha="center", va="center", fontsize=7)
            elif row is not None and np.isnan(delta[i, j]) and row["rank_group"] is not None:
                heat_axis.text(j, i, str(row["rank_group"]), ha="center", va="center", fontsize=6, color="#444444")
    size = "small" if len(cells) <= 30 else 6
    heat_axis.set_xticks(range(len(cells)), labels, rotation=90, fontsize=size)
    heat_axis.set_yticks(range(len(methods)), methods, fontsize="small" if len(methods) <= 20 else 6)
    heat_axis.set_title(f"Δ accuracy vs {reference} per cell (▲/▼ significant after Holm, p < {ALPHA})\n"
                        f"grey: no {reference} in the cell, number: rank group; white: not run", fontsize="medium")
    fig.colorbar(image, ax=heat_axis, label=f"accuracy − {reference}", shrink=0.8)
    cd_diagram(cd_axis, ranks)
    return fig


def cd_diagram(axis, ranks: Optional[RankSummary]) -> None:
    """Average ranks on an axis (1 = best, left), methods labelled alternately above and below, a bar of length CD,
    and a thick line under each group the CD cannot separate."""
    axis.set_yticks([])
    for side in ("left", "right", "top"):
        axis.spines[side].set_visible(False)
    if ranks is None:
        axis.axis("off")
        axis.text(0.5, 0.5, "no critical-difference diagram: no two methods share two cells", ha="center",
                  transform=axis.transAxes)
        return
    k = len(ranks.methods)
    axis.set_xlim(0.5, k + 0.5)
    axis.set_ylim(-1.6, 1.6)
    axis.spines["bottom"].set_position("zero")
    axis.set_xticks(range(1, k + 1))
    for index, (method, rank) in enumerate(zip(ranks.methods, ranks.average_ranks)):
        level = 0.55 + 0.35 * (index // 2 % 3)
        y = level if index % 2 == 0 else -level
        axis.plot([rank, rank], [0, y], color="black", linewidth=0.7)
        axis.text(rank, y + (0.05 if y > 0 else -0.05), f"{method} ({rank:.2f})", ha="center",
                  va="bottom" if y > 0 else "top", fontsize="small")
    for offset, (first, last) in enumerate(ranks.groups):
        y = -0.12 - 0.08 * (offset % 4)
        axis.plot([ranks.average_ranks[first], ranks.average_ranks[last]], [y, y], color="C3", linewidth=3)
    axis.plot([1, 1 + ranks.cd], [1.45, 1.45], color="black", linewidth=2)
    friedman = f", Friedman p = {ranks.friedman_p:.3g}" if ranks.friedman_p is not None else ""
    axis.text(1 + ranks.cd / 2, 1.5, f"CD = {ranks.cd:.2f}", ha="center", va="bottom", fontsize="small")
    axis.set_title(f"Average rank over the {ranks.cells} units holding all {k} methods (1 = best)\nred: not told "
                   f"apart by Nemenyi's CD at alpha {ALPHA}{friedman}", fontsize="medium")
