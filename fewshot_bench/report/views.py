"""The leaderboard's views beside its CSVs (:class:`Views`): ``<stem>.png`` (the summary figure),
``<stem>_summary.md`` (one pivot table of methods x setting groups, the average ranks and the environments),
``<stem>.html`` (:mod:`fewshot_bench.report.html`) and a forest plot per cell in the ``<stem>_cells/`` folder; the
environments are also appended to the full ``<stem>.md``.

Contracts:
  * A *setting group* (:func:`setting_groups`): the cells of a setting without its fold (``folds.without_fold``)
    and backbone that hold the same methods, e.g. folds 2-5 of ``banking77/5way1shot15q``. A pivot entry is the method's mean accuracy over the group's cells, its
    mean Δ vs the reference, and how many of those cells it is significantly better (▲) or worse (▼) than the
    reference after Holm; the best mean of a group is bold. Rows flagged same-class-source are marked ``†``.
  * Forest plot files are named by :func:`cell_slug`; :func:`forest_plot_paths` gives every cell's path.
  * The page's pairs (``html.pair_rows``) are recomputed from the store's episodes with the leaderboard's bootstrap
    count (read from the Markdown written before the views, :func:`bootstrap_count`) and seed 0; the claims shown
    at its top: :func:`claims_text` (``leaderboard/claims.py``'s table beside the store), else none.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..store.schema import cell_key
from ..analysis.compare import ALPHA
from ..analysis.entries import load_entries
from ..store.environment import markdown_section, store_environments
from .forest import leaderboard_figure
from ..analysis.folds import without_fold
from .html import page_data, pair_rows, provenance, write_html
from ..analysis.ranks import RankSummary
from .summary_figure import methods_in_order, summary_figure


def cell_slug(row: Dict) -> str:
    """File-name-safe name of a row's cell: its setting (and backbone), e.g. ``banking77_fold1_5way1shot15q_minilm``."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", f"{row['setting']} {row['backbone']}").strip("_")


def forest_plot_paths(out: Path, rows: List[Dict]) -> Dict[tuple, Path]:
    """{cell key: ``<stem>_cells/<cell_slug>.png`` beside ``out``}."""
    folder = out.with_name(out.stem + "_cells")
    return {cell_key(r): folder / f"{cell_slug(r)}.png" for r in rows}


def bootstrap_count(markdown: Path, default: int = 10000) -> int:
    """The bootstrap resamples the leaderboard Markdown states (``(10,000 resamples)``), else ``default``."""
    found = re.search(r"\(([\d,]+) resamples\)", Path(markdown).read_text(encoding="utf-8"))
    return int(found[1].replace(",", "")) if found else default


def claims_text(store_path) -> Optional[str]:
    """The claims beside the store: ``claims.md``, else the block between ``<!-- claims -->`` markers of
    ``README.md`` (``leaderboard/claims.py``'s table); None when neither holds one."""
    folder = Path(store_path).parent
    if (folder / "claims.md").is_file():
        return (folder / "claims.md").read_text(encoding="utf-8")
    readme = folder / "README.md"
    found = re.search(r"<!-- claims -->\n(.*?)<!-- /claims -->", readme.read_text(encoding="utf-8"), re.S) \
        if readme.is_file() else None
    return found[1].strip() or None if found else None


def setting_groups(rows: List[Dict]) -> Dict[str, List[Dict]]:
    """{group label: its rows}. A group: the cells of one setting without its fold (and backbone, named when there
    are several) that hold the same methods, labelled with their folds (``banking77/5way1shot15q f2-5``), so every
    method of a group is averaged over the same cells."""
    several = len({r["backbone"] for r in rows}) > 1
    cells: Dict[tuple, List[Dict]] = {}
    for row in rows:
        cells.setdefault(cell_key(row), []).append(row)
    grouped: Dict[tuple, List[List[Dict]]] = {}
    for members in cells.values():
        first = members[0]
        key = (without_fold(first["setting"]), first["backbone"], frozenset(r["method"] for r in members))
        grouped.setdefault(key, []).append(members)
    groups: Dict[str, List[Dict]] = {}
    for (setting, backbone, _), members in sorted(grouped.items(), key=lambda item: (item[0][:2], -len(item[0][2]))):
        folds = sorted({m[0]["fold"] for m in members})
        span = f"{folds[0]}-{folds[-1]}" if folds == list(range(folds[0], folds[-1] + 1)) and len(folds) > 1 else \
            ",".join(map(str, folds))
        label = f"{setting} f{span}" + (f" ({backbone})" if several else "")
        groups[label] = [row for cell in members for row in cell]
    return groups


def _entry(members: List[Dict], best: bool) -> str:
    """One pivot entry: mean accuracy (bold when ``best``), mean Δ, ▲/▼ counts, cells averaged, † same-class-source."""
    scored = [r for r in members if r["acc_mean"] is not None]
    if not scored:
        return ""
    text = f"{np.mean([r['acc_mean'] for r in scored]):.3f}"
    text = f"**{text}**" if best else text
    deltas = [r["delta_vs_ref"] for r in scored if r["delta_vs_ref"] is not None]
    if deltas:
        text += f" {np.mean(deltas):+.3f}"
    significant = [r for r in scored if r["p_holm"] is not None and r["p_holm"] < ALPHA]
    up, down = sum(r["delta_vs_ref"] > 0 for r in significant), sum(r["delta_vs_ref"] < 0 for r in significant)
    text += (f" ▲{up}" if up else "") + (f" ▼{down}" if down else "")
    text += f" /{len(scored)}" if len(scored) > 1 else ""
    return text + (" †" if any("same-class-source" in (r["flags"] or "") for r in members) else "")


def pivot_table(rows: List[Dict], ranks: Optional[RankSummary]) -> List[str]:
    """Markdown lines of the pivot table: a row per method (CD order), a column per setting group."""
    groups = setting_groups(rows)
    by_method = {label: {} for label in groups}
    for label, members in groups.items():
        for row in members:
            by_method[label].setdefault(row["method"], []).append(row)
    means = {label: {m: np.mean(v) for m, mine in methods.items()
                     for v in [[r["acc_mean"] for r in mine if r["acc_mean"] is not None]] if v}
             for label, methods in by_method.items()}
    lines = ["| method | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for method in methods_in_order(rows, ranks):
        entries = [_entry(by_method[label].get(method, []),
                          method in means[label] and means[label][method] == max(means[label].values()))
                   for label in groups]
        lines.append(f"| {method} | " + " | ".join(entries) + " |")
    return lines


def write_summary_markdown(rows: List[Dict], ranks: Optional[RankSummary], reference: str, environments: List[dict],
                           path, figure_name: str) -> None:
    """``<stem>_summary.md``: the pivot table, the average ranks, the summary figure and the environments."""
    text = [f"# Leaderboard summary (reference `{reference}`)", "", f"![summary]({figure_name})", "",
            f"Each entry: mean accuracy over the setting's folds (cells), **bold** the best of the column, the mean Δ vs "
            f"`{reference}`, then ▲n / ▼n: in n cells significantly better / worse than `{reference}` (paired "
            f"sign-flip test, Holm p < {ALPHA}), /m: cells averaged; † trained on a source pool holding the evaluated "
            f"classes (not few-shot, ranked apart). Per-cell tables: the full leaderboard Markdown; per-cell forest "
            f"plots: the `_cells/` folder.", ""]
    text += pivot_table(rows, ranks) + [""]
    if ranks is not None:
        text += ["## Average ranks", "",
                 f"Over the {ranks.cells} units (cells sharing target episodes counted once) holding all of {', '.join(ranks.methods)} (1 = best): "
                 + ", ".join(f"{m} {r:.2f}" for m, r in zip(ranks.methods, ranks.average_ranks))
                 + f"; Nemenyi critical difference {ranks.cd:.2f} at alpha {ALPHA}"
                 + (f"; Friedman p = {ranks.friedman_p:.3g}" if ranks.friedman_p is not None else "") + ".", ""]
    text += markdown_section(environments)
    Path(path).write_text("\n".join(text), encoding="utf-8")


class Views:
    """The views of one leaderboard written at ``out`` from ``rows`` of the store at ``store_path``."""

    def __init__(self, out: Path, rows: List[Dict], store_path):
        self.rows, self.store_path = rows, store_path
        self.png, self.html, self.summary_md = (out.with_name(out.stem + s) for s in (".png", ".html", "_summary.md"))
        self.forest_plots = forest_plot_paths(out, rows)
        self.folder = out.with_name(out.stem + "_cells")

    @property
    def paths(self) -> List[Path]:
        """Every file :meth:`write` writes, in the order it takes their temporary paths."""
        return [self.png, self.html, self.summary_md, *self.forest_plots.values()]

    def write(self, overall_rows: List[Dict], ranks: Optional[RankSummary], reference: str, markdown: Path,
              temps: List[Path]) -> None:
        """Write the views to ``temps`` (:attr:`paths` order) and append the environments to ``markdown``;
        ``ranks``: the across-cell average ranks (``across.across_cells(...).ranks``)."""
        png, html, summary_md, *plots = temps
        environments = store_environments(self.store_path)
        with open(markdown, "a", encoding="utf-8") as handle:
            handle.write("\n" + "\n".join(markdown_section(environments)))
        summary_figure(self.rows, ranks, reference).savefig(png, dpi=110)
        write_summary_markdown(self.rows, ranks, reference, environments, summary_md, self.png.name)
        cells: Dict[tuple, List[Dict]] = {}
        for row in self.rows:
            cells.setdefault(cell_key(row), []).append(row)
        for key, plot in zip(self.forest_plots, plots):
            leaderboard_figure(cells[key], reference).savefig(plot, dpi=110)
        pairs = pair_rows(load_entries(self.store_path, 1, class_level=False), bootstrap_count(markdown))
        write_html(page_data(self.rows, overall_rows, ranks, reference, provenance(self.store_path, self.rows), pairs,
                             claims_text(self.store_path)), png.read_bytes(), html)

    def remove_stale_plots(self) -> None:
        """Delete forest plots of the folder whose cells are no longer on the leaderboard."""
        for stale in set(self.folder.glob("*.png")) - set(self.forest_plots.values()):
            stale.unlink()

    def __str__(self) -> str:
        return f"{self.png} (summary), {self.summary_md}, {self.html}, {len(self.forest_plots)} forest plots in {self.folder}/"
