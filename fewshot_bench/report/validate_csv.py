"""Check a leaderboard CSV (``validate CSV``); each problem is one line "FILE:WHERE: column: what (expected ...)".

Every type and range check comes from the declarations in ``store/schema.py``, and for the method figures (the
columns after the core ones) from the figure declarations of the results store given (``store/figures.py``): each
row's value in its own method's declared range (a ``sum`` figure: that range times the row's episode runs), empty for
a method that declares no such figure. Without a store the figure columns are only checked to be numbers. A header
of an earlier leaderboard schema is named as such. The comparison columns are checked for consistency with each other
(CI contains the mean difference, Holm p >= raw p, rank groups agree with the significant comparisons against the
reference and with ``beaten_by``). ``validate CSV`` also compares the CSV with the leaderboard recomputed from
``--store`` or the ``results.sqlite`` beside it (:func:`.validate_recompute.compare_csv`).
"""
from __future__ import annotations

import csv
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..analysis.compare import ALPHA, SATURATED_ACCURACY, clones, rank_group
from ..core.errors import UserError
from ..store.figures import LEGACY_COLUMNS, declarations, figure_columns
from ..store.schema import (COLUMNS, INF, ISOLATION_LEVELS, LEADERBOARD, LEADERBOARD_SCHEMA_VERSION, Column,
    cell_key)
from ..store.tables import PROTOCOLS
from .leaderboard import FORMULA_PREFIXES
from .validate import Declared, in_range

_SLACK = 1e-6
_SCHEMA_1 = COLUMNS[:23]
# schemas 3 to 5 had SGG's four figures after ``setting``; schema 6 moved them after the core columns (one column
# per declared figure) and added ``isolation``
_SCHEMA_5 = (COLUMNS[:COLUMNS.index("setting") + 1] + LEGACY_COLUMNS
             + COLUMNS[COLUMNS.index("setting") + 1:COLUMNS.index("isolation")])
_COMPARISON = ("delta_vs_ref", "delta_ci95_low", "delta_ci95_high", "p_value", "p_holm")


def _check_header(path, header: List[str], figures: Optional[Tuple[str, ...]]) -> List[str]:
    """Problems of the header; ``figures``: the figure columns the store declares (None: no store, any)."""
    expected = COLUMNS + (tuple(header[len(COLUMNS):]) if figures is None else figures)
    if header == list(expected):
        return []
    if header == list(_SCHEMA_5):
        return [f"{path}:1: header: a schema 5 leaderboard (SGG's figures among the core columns, no isolation) "
                f"(expected schema {LEADERBOARD_SCHEMA_VERSION}: regenerate it with `fewshot-bench leaderboard --store "
                f"STORE`)"]
    if header == list(_SCHEMA_1):
        return [f"{path}:1: header: a schema 1 leaderboard (no paired comparisons) "
                f"(expected schema {LEADERBOARD_SCHEMA_VERSION}: regenerate it with `fewshot-bench leaderboard --store STORE`)"]
    if header == list(_SCHEMA_5[:_SCHEMA_5.index("support_loss_before")]):
        return [f"{path}:1: header: a schema 4 leaderboard (no adaptation figures) (expected schema "
                f"{LEADERBOARD_SCHEMA_VERSION}: regenerate it with `fewshot-bench leaderboard --store STORE`)"]
    if header == list(_SCHEMA_5[:_SCHEMA_5.index("delta_dz")]):
        return [f"{path}:1: header: a schema 3 leaderboard (no d_z; one Holm family over the whole leaderboard) "
                f"(expected schema {LEADERBOARD_SCHEMA_VERSION}: regenerate it with `fewshot-bench leaderboard "
                "--store STORE`)"]
    if header == list(COLUMNS[:COLUMNS.index("fold")]):
        return [f"{path}:1: header: a schema 2 leaderboard (no fold and setting columns: folds of a task share a "
                f"cell) (expected schema {LEADERBOARD_SCHEMA_VERSION}: regenerate it with `fewshot-bench leaderboard "
                "--store STORE`)"]
    problems = []
    for i, (got, want) in enumerate(zip(header, expected), start=1):
        if got != want:
            problems.append(f"{path}:1: header: column {i} is '{got}' (expected '{want}')")
            break
    missing = [c for c in expected if c not in header]
    extra = [c for c in header if c not in expected]
    figures_note = " then the store's figure columns" if figures is None else ""
    if missing:
        problems.append(f"{path}:1: header: missing column(s) {', '.join(missing)} (expected "
                        f"{','.join(expected)}{figures_note})")
    if extra:
        problems.append(f"{path}:1: header: unexpected column(s) {', '.join(extra)} (expected {','.join(expected)}"
                        f"{figures_note})")
    return problems or [f"{path}:1: header: {len(header)} columns (expected {len(expected)})"]


def _figure_range(column: Column, row: Dict[str, str], values: Dict,
                  declared: Optional[Declared]) -> Optional[Tuple[float, float]]:
    """The range of a figure column's cell in ``row``: its method's declaration (a sum: times the row's episode
    runs); (-inf, inf) without a store; None when the method declares no such figure (the cell must be empty)."""
    if declared is None:
        return -INF, INF
    figure = declared.get(row["method"], {}).get(column.name)
    if figure is None:
        return None
    if figure.aggregate != "sum":
        return figure.low, figure.high
    runs = (values.get("episodes") or 1) * (values.get("restarts") or 1)
    return min(figure.low, figure.low * runs), max(figure.high, figure.high * runs)


def _parse_cells(where: str, row: Dict[str, str], figures: Tuple[Column, ...] = (),
                 declared: Optional[Declared] = None) -> Tuple[List[str], Dict]:
    """Type and range of every declared column (``figures``: the figure columns, ranges from ``declared``);
    parsed values (None: empty optional cell; absent: bad cell)."""
    problems, values = [], {}
    for column in LEADERBOARD + figures:
        if column in figures:
            span = _figure_range(column, row, values, declared)
            if span is None and row[column.name].strip():
                problems.append(f"{where}: {column.name}: '{row[column.name]}' for {row['method']}, which declares no "
                                f"figure {column.name} (expected empty)")
                continue
            column = Column(column.name, column.kind, column.help, *(span or (-INF, INF)), True)
        text = row[column.name].strip()
        if column.kind == "text":
            values[column.name] = row[column.name]
            if row[column.name].startswith(FORMULA_PREFIXES):
                problems.append(f"{where}: {column.name}: '{row[column.name]}' starts with a formula character "
                                f"(expected it neutralised with a leading ')")
            continue
        expected = f"expected {'an integer' if column.kind == 'int' else 'a number'} with {column.low} <= value " \
                   f"<= {column.high}{', or empty' if column.optional else ''}"
        if not text:
            if column.optional:
                values[column.name] = None
            else:
                problems.append(f"{where}: {column.name}: empty ({expected})")
            continue
        if column.kind == "int" and not re.fullmatch(r"-?\d+", text):
            problems.append(f"{where}: {column.name}: '{text}' is not an integer ({expected})")
            continue
        try:
            number = int(text) if column.kind == "int" else float(text)
        except ValueError:
            problems.append(f"{where}: {column.name}: '{text}' is not a number ({expected})")
            continue
        if not in_range(number, column.low, column.high):
            problems.append(f"{where}: {column.name}: {text} out of range ({expected})")
        values[column.name] = number
    return problems, values


def _check_row(where: str, row: Dict[str, str], figures: Tuple[Column, ...] = (),
               declared: Optional[Declared] = None) -> Tuple[List[str], Dict]:
    """Problems of one row on its own and its parsed values."""
    problems, values = _parse_cells(where, row, figures, declared)
    unknown = [level for level in row["isolation"].split(";") if level and level not in ISOLATION_LEVELS]
    if unknown:
        problems.append(f"{where}: isolation: '{row['isolation']}' (expected levels among "
                        f"{', '.join(ISOLATION_LEVELS)}, ';'-separated, or empty)")
    if row["protocol"] not in PROTOCOLS:
        problems.append(f"{where}: protocol: '{row['protocol']}' (expected one of {', '.join(PROTOCOLS)})")
    if row["protocol"] == "target-only" and "same-class-source" in (row["flags"] or "").split(";"):
        problems.append(f"{where}: flags: 'same-class-source' on a target-only row (expected it only on rows whose "
                        "method used source-pool data)")
    if not re.fullmatch(r"\d+(-\d+)?", row["k_shot"]):
        problems.append(f"{where}: k_shot: '{row['k_shot']}' (expected an integer or MIN-MAX such as 1-5)")
    if not re.fullmatch(r"[0-9a-f]{64}", row["episode_set_sha256"]):
        problems.append(f"{where}: episode_set_sha256: '{row['episode_set_sha256']}' (expected 64 hex characters)")
    get = values.get
    if get("failed_episodes") is not None and get("episodes") is not None and values["failed_episodes"] > values["episodes"]:
        problems.append(f"{where}: failed_episodes: {values['failed_episodes']} > episodes {values['episodes']} "
                        "(expected failed_episodes <= episodes)")
    if get("episodes_planned") is not None and get("episodes") is not None and values["episodes"] > values["episodes_planned"]:
        problems.append(f"{where}: episodes: {values['episodes']} > episodes_planned {values['episodes_planned']} "
                        "(expected at most the episodes the run configs asked for)")
    ci = [values[c] for c in ("acc_ci95_low", "acc_mean", "acc_ci95_high") if c in values]  # parsed cells only
    if len(ci) == 3 and ci.count(None) not in (0, 3):
        problems.append(f"{where}: acc_mean: accuracy and its CI must be all set or all empty "
                        "(expected empty only when every episode failed)")
    elif len(ci) == 3 and ci[1] is None and get("failed_episodes") != get("episodes"):
        problems.append(f"{where}: acc_mean: empty although not every episode failed "
                        "(expected a mean accuracy when failed_episodes < episodes)")
    elif len(ci) == 3 and None not in ci and not ci[0] - _SLACK <= ci[1] <= ci[2] + _SLACK:
        problems.append(f"{where}: acc_mean: CI [{ci[0]}, {ci[2]}] does not contain the mean {ci[1]} "
                        "(expected acc_ci95_low <= acc_mean <= acc_ci95_high)")
    delta = [values.get(c, "bad") for c in _COMPARISON]
    if "bad" not in delta and delta.count(None) not in (0, len(delta)):
        problems.append(f"{where}: delta_vs_ref: the comparison columns ({', '.join(_COMPARISON)}) must be all set "
                        "or all empty (expected empty only for the reference row or a cell without it)")
    elif "bad" not in delta and None not in delta:
        if not delta[1] - _SLACK <= delta[0] <= delta[2] + _SLACK:
            problems.append(f"{where}: delta_vs_ref: CI [{delta[1]}, {delta[2]}] does not contain the mean difference "
                            f"{delta[0]} (expected delta_ci95_low <= delta_vs_ref <= delta_ci95_high)")
        if delta[4] < delta[3] - _SLACK:
            problems.append(f"{where}: p_holm: {delta[4]} < p_value {delta[3]} (expected a Holm-adjusted p >= the raw p)")
        if not row["ref_method"]:
            problems.append(f"{where}: ref_method: empty although the comparison columns are set (expected the "
                            "reference method's name)")
    beaten_by = [m for m in row["beaten_by"].split(";") if m]
    values["beaten_by"] = beaten_by
    if get("rank") is not None and get("rank_group") is not None and values["rank"] != values["rank_group"]:
        problems.append(f"{where}: rank: {values['rank']} (expected {values['rank_group']}, the rank_group)")
    return problems, values


def _same_class(values: Dict) -> bool:
    return "same-class-source" in (values["flags"] or "").split(";")


def _check_cell(members: List[Tuple[str, Dict]]) -> List[str]:
    """Rows of one cell (task, N, K, Q, backbone) against each other."""
    problems, methods = [], {}
    for where, values in members:
        if values["method"] in methods:
            problems.append(f"{where}: method: '{values['method']}' duplicates the row at {methods[values['method']]} "
                            "(expected one row per method and cell)")
        methods.setdefault(values["method"], where)
    by_method = {values["method"]: values for _, values in members}
    counts = {v["episodes"] for _, v in members if v.get("episodes") is not None}
    scored = [v for _, v in members if v.get("acc_mean") is not None]
    half_widths = sorted((v["acc_ci95_high"] - v["acc_ci95_low"]) / 2 for v in scored)
    means = [v["acc_mean"] for v in scored]
    saturated = bool(scored) and min(means) >= SATURATED_ACCURACY
    significant = any(v["beaten_by"] for _, v in members)
    narrow = len(scored) > 1 and not significant and max(means) - min(means) < float(np.median(half_widths))
    groups = clones([v for _, v in members])
    for where, values in members:
        same_set = [v["episodes"] for _, v in members if v["episode_set_sha256"] == values["episode_set_sha256"]
                    and v.get("episodes") is not None]
        usual = max(set(same_set), key=same_set.count) if same_set else None
        if values.get("episodes") is not None and values["episodes"] != usual:
            problems.append(f"{where}: episodes: {values['episodes']} (expected {usual} like the other rows of "
                            "its episode set: an identical episode set has equal counts)")
        flags = values["flags"].split(";") if values["flags"] else []
        for flag, expected, when in (
                ("mixed-episodes", len(counts) > 1, "the cell's episode counts differ"),
                ("saturated", saturated, f"every acc_mean >= {SATURATED_ACCURACY}"),
                ("narrow-spread", narrow, "best minus worst acc_mean < the median CI half-width (two or more rows) "
                                          "and no row beaten"),
                ("unfinished", values["episodes_planned"] is not None and values["episodes"] < values["episodes_planned"],
                 "episodes < episodes_planned")):
            if expected != any(f.split("(")[0] == flag for f in flags):
                problems.append(f"{where}: flags: '{flag}' {'missing' if expected else 'set'} (expected it exactly "
                                f"when {when})")
        expected_group = rank_group(values["beaten_by"], groups)
        if values.get("rank_group") is not None and values["rank_group"] != expected_group:
            problems.append(f"{where}: rank_group: {values['rank_group']} (expected {expected_group} = 1 + the "
                            f"distinct methods in beaten_by, identical-prediction clones counted once)")
        unknown = [m for m in values["beaten_by"] if m not in by_method]
        if unknown:
            problems.append(f"{where}: beaten_by: {', '.join(unknown)} not in this cell (expected methods of the cell)")
        league = "same-class-source" in flags
        apart = [m for m in values["beaten_by"] if m in by_method and _same_class(by_method[m]) != league]
        if apart:
            problems.append(f"{where}: beaten_by: {', '.join(apart)} {'lack' if league else 'carry'} the flag "
                            "same-class-source (expected rows ranked apart: only rows of the same kind in beaten_by)")
        ref = by_method.get(values["ref_method"]) if values["ref_method"] else None
        if values["ref_method"] and ref is None:
            problems.append(f"{where}: ref_method: '{values['ref_method']}' has no row in this cell "
                            "(expected the cell's reference row, or an empty ref_method)")
        if ref is None or values.get("p_holm") is None or values.get("delta_vs_ref") is None or _same_class(ref) != league:
            continue
        significant = values["p_holm"] < ALPHA
        ref_wins, row_wins = ref["method"] in values["beaten_by"], values["method"] in ref["beaten_by"]
        expected = (significant and values["delta_vs_ref"] < 0, significant and values["delta_vs_ref"] > 0)
        if (ref_wins, row_wins) != expected:
            problems.append(f"{where}: rank_group: contradicts p_holm {values['p_holm']} and delta_vs_ref "
                            f"{values['delta_vs_ref']} (expected {ref['method']} {'in' if expected[0] else 'not in'} "
                            f"this row's beaten_by and {values['method']} {'in' if expected[1] else 'not in'} "
                            f"{ref['method']}'s, significant = p_holm < {ALPHA})")
    return problems


def store_declarations(store) -> Optional[Declared]:
    """The figure declarations of the results store at ``store`` (None: no store, or one that cannot say)."""
    if store is None:
        return None
    try:
        with closing(sqlite3.connect(Path(store).resolve().as_uri() + "?mode=ro", uri=True)) as conn:
            found = declarations(conn)
        figure_columns(found)
        return found
    except (sqlite3.DatabaseError, UserError):  # its own problems are `validate STORE`'s
        return None


def check_csv(path, store=None) -> Tuple[List[str], int]:
    """(problems, rows checked) of a leaderboard CSV; its figure columns are checked against the declarations of
    the results store ``store`` (when given)."""
    try:
        return _check_csv_rows(path, store_declarations(store))
    except (UnicodeDecodeError, csv.Error) as exc:
        return [f"{path}: file: cannot be read as CSV ({exc}) (expected UTF-8 CSV)"], 0


def _check_csv_rows(path, declared: Optional[Declared]) -> Tuple[List[str], int]:
    figures = figure_columns(declared) if declared is not None else None
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return [f"{path}:1: header: empty file (expected {','.join(COLUMNS)})"], 0
        problems = _check_header(path, header, None if figures is None else tuple(c.name for c in figures))
        if problems:
            return problems, 0
        if figures is None:  # no store: the columns after the core ones are figures of unknown declaration
            figures = tuple(Column(name, "float", "method figure", optional=True, source=name)
                            for name in header[len(COLUMNS):])
        cells: Dict[tuple, List[tuple]] = {}
        count = 0
        for cells_of_row in reader:
            count += 1
            where = f"{path}:{reader.line_num}"
            if len(cells_of_row) != len(header):
                problems.append(f"{where}: row: {len(cells_of_row)} cells (expected {len(header)})")
                continue
            row_problems, values = _check_row(where, dict(zip(header, cells_of_row)), figures, declared)
            problems += row_problems
            if not row_problems:  # a row with bad cells would only repeat its problem in the cell checks
                cells.setdefault(cell_key(values), []).append((where, values))
    for members in cells.values():
        problems += _check_cell(members)
    return problems, count


def validate_csv(path) -> List[str]:
    """Problems of a leaderboard CSV (empty list when valid)."""
    return check_csv(path)[0]
