"""The leaderboard figure: a forest plot per cell of each method's accuracy difference to the reference."""
from __future__ import annotations

from typing import Dict, List

from ..store.schema import cell_key
from ..analysis.compare import ALPHA, LEAK_MARK, marked

PROTOCOL_MARKERS = {"target-only": "o", "source-guided": "s", "meta-trained": "^"}
SATURATED_FACE = "#e6e6e6"


def leaderboard_figure(rows: List[Dict], reference: str = "full_ft"):
    """Matplotlib figure: one panel per cell (title: task, setting, episodes, chance level, reference accuracy;
    grey background when saturated). Each method is a point at its mean difference to the reference with its
    paired 95% CI; marker = protocol, filled = significant after Holm; a same-class-source row's label carries
    the leak mark; a cell without the reference says so.
    The last panel is the legend."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    cells: Dict[tuple, List[Dict]] = {}
    for row in rows:
        cells.setdefault(cell_key(row), []).append(row)
    one_backbone = len({r["backbone"] for r in rows}) == 1
    columns = min(3, len(cells) + 1)
    grid_rows = -(-(len(cells) + 1) // columns)
    height = max(len(m) for m in cells.values()) * 0.28 + 1.2
    fig = Figure(figsize=(4.6 * columns, height * grid_rows), layout="constrained")
    axes = list(fig.subplots(grid_rows, columns, squeeze=False).ravel())
    for axis, ((task, n_way, k_shot, _, backbone, fold, _), members) in zip(axes, cells.items()):
        ref = next((r for r in members if r["method"] == reference), None)
        counts = "/".join(str(c) for c in sorted({r["episodes"] for r in members}))
        title = f"{task}/fold{fold} {n_way}-way {k_shot}-shot{'' if one_backbone else ', ' + backbone}, {counts} ep.\n" \
                f"chance {1 / n_way:.2f}"
        title += f", {reference} {ref['acc_mean']:.3f}" if ref and ref["acc_mean"] is not None else ""
        saturated = any("saturated" in (r["flags"] or "") for r in members)
        axis.set_title(title + (" (saturated)" if saturated else ""), fontsize="small")
        if saturated:
            axis.set_facecolor(SATURATED_FACE)
        axis.set_yticks(range(len(members)), [marked(r["method"], "same-class-source" in (r["flags"] or "").split(";"))
                                              + (" (reference)" if r is ref else "") for r in members],
                        fontsize="x-small")
        axis.invert_yaxis()
        axis.axvline(0, color="black", linewidth=0.8)
        if ref is None:
            axis.text(0.5, 0.5, f"{reference} not in this cell", transform=axis.transAxes, ha="center")
            continue
        for y, row in enumerate(members):
            if row["delta_vs_ref"] is None:
                continue
            significant = row["p_holm"] < ALPHA
            color = "C3" if significant else "C0"
            axis.errorbar([row["delta_vs_ref"]], [y], xerr=[[row["delta_vs_ref"] - row["delta_ci95_low"]],
                                                            [row["delta_ci95_high"] - row["delta_vs_ref"]]],
                          fmt=PROTOCOL_MARKERS.get(row["protocol"], "o"), color=color, capsize=2, markersize=5,
                          markerfacecolor=color if significant else "white")
        axis.set_xlabel(f"accuracy − {reference} (paired 95% CI)", fontsize="small")
    legend = axes[len(cells)]
    legend.axis("off")
    for extra in axes[len(cells) + 1:]:
        extra.remove()
    handles = [Line2D([], [], color="grey", marker=m, linestyle="", label=p) for p, m in PROTOCOL_MARKERS.items()]
    handles += [Line2D([], [], color="C3", marker="o", linestyle="", label=f"different (Holm p < {ALPHA})"),
                Line2D([], [], color="C0", marker="o", markerfacecolor="white", linestyle="", label="not different"),
                Line2D([], [], color=SATURATED_FACE, marker="s", markersize=10, linestyle="", label="saturated cell"),
                Line2D([], [], linestyle="", label=f"{LEAK_MARK} same-class source (not few-shot)")]
    legend.legend(handles=handles, loc="center", fontsize="small", frameon=False)
    return fig
