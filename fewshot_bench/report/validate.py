"""Check a results store (``validate STORE``); each problem is one line "FILE:WHERE: column: what (expected ...)".

Every type and range check comes from the declarations in ``store/schema.py`` (status, protocol, each metric's
range on ok episodes), and for the stored method figures from the figure declarations of the store
(``store/figures.py``): each value in its own method's declared range. An episode index of a task, setting and seed
is the same episode for every method; a run stores every episode its config plans and none beyond; a leaderboard row
pools the episodes of one run config. ``recompute`` adds the checks of :mod:`.validate_recompute`: episodes
regenerated from their keys, accuracy and macro-F1 from the stored predictions, status and runs consistency, copied
rows. A leaderboard CSV is checked by :mod:`.validate_csv`; :func:`is_sqlite` tells the two apart, and
:func:`in_range` is the range test both apply.
"""
from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Dict, List, Tuple

from ..analysis.entries import planned_episodes
from ..store import content
from ..store.checks import schema_problems
from ..store.tables import (EPISODE_COLUMNS, EPISODE_TYPES, PROTOCOLS, RUN_COLUMNS, RUN_COLUMNS_ADDED_LATER,
    SQLITE_MAGIC, STATUSES, table_columns)
from ..store.figures import declarations, values_by_key
from ..store.schema import KEY_COLUMNS, METRICS, RANGE_TOLERANCE, Figure
from .validate_recompute import check_episodes

Declared = Dict[str, Dict[str, Figure]]  # {method label: {figure name: declaration}} of a store


def in_range(value: float, low: float, high: float) -> bool:
    """Whether ``value`` is within [low, high], each bound widened by ``RANGE_TOLERANCE`` (relative, at least 1)."""
    return low - RANGE_TOLERANCE * max(1.0, abs(low)) <= value <= high + RANGE_TOLERANCE * max(1.0, abs(high))


def _store_rows(conn) -> Tuple[List[str], List[dict], Dict[str, int], Dict[str, str]]:
    """Rows of a store; a nullable column a later version added (a writer adds it on open) reads as NULL;
    ``figures``: the row's method figures as sorted (name, value) pairs."""
    tables = {name: table_columns(conn, name) for name in ("runs", "episodes")}
    added_later = {c for c, sql in EPISODE_TYPES.items() if "NOT NULL" not in sql} - set(tables["episodes"])
    problems = [f"{table}: missing column(s) {', '.join(c for c in wanted if c not in tables[table])} "
                f"(expected {', '.join(wanted)})"
                for table, wanted in (("runs", [c for c in RUN_COLUMNS if c not in RUN_COLUMNS_ADDED_LATER]),
                                      ("episodes", [c for c in EPISODE_COLUMNS if c not in added_later]))
                if not set(wanted) <= set(tables[table])]
    if problems:
        return problems, [], {}, {}
    problems = schema_problems(conn)  # text in an integer key column or a metric: each later check would trip on it
    if problems:
        return problems, [], {}, {}
    columns = ("rowid",) + tuple(c for c in EPISODE_COLUMNS if c not in added_later)
    rows = [{**dict.fromkeys(added_later), **dict(zip(columns, r))}
            for r in conn.execute(f"SELECT {', '.join(columns)} FROM episodes ORDER BY rowid")]
    figures = values_by_key(conn)
    for row in rows:
        row["figures"] = tuple(sorted(figures.get(tuple(row[c] for c in KEY_COLUMNS), {}).items()))
    configs = dict(conn.execute("SELECT run_id, config_json FROM runs").fetchall())
    planned = {run_id: planned_episodes(config) for run_id, config in configs.items()}
    return [], rows, planned, configs


def _check_store_rows(path, rows: List[dict], planned_by_run: Dict[str, int], declared: Declared) -> List[str]:
    problems, seen = [], {}
    groups: Dict[tuple, List[dict]] = {}
    latest: Dict[tuple, Dict[str, dict]] = {}
    for row in rows:
        where = f"{path}:episodes[{row['rowid']}]"
        if row["status"] not in STATUSES:
            problems.append(f"{where}: status: '{row['status']}' (expected one of {', '.join(STATUSES)})")
        if row["protocol"] not in PROTOCOLS:
            problems.append(f"{where}: protocol: '{row['protocol']}' (expected one of {', '.join(PROTOCOLS)})")
        if row["status"] == "ok" and row["accuracy"] is None:
            problems.append(f"{where}: accuracy: empty for an ok episode (expected a value in [0, 1])")
        for metric in METRICS if row["status"] == "ok" else ():
            value = row[metric.name]
            if value is not None and not (isinstance(value, (int, float)) and in_range(value, metric.low, metric.high)):
                problems.append(f"{where}: {metric.name}: {value} out of range ({row['method']}, {row['setting']} "
                                f"episode {row['episode_index']}; expected {metric.low} <= value <= {metric.high})")
        for name, value in row["figures"]:
            figure = declared.get(row["method"], {}).get(name)
            if figure is None:
                problems.append(f"{where}: figure {name}: {value} stored for {row['method']}, which declares no such "
                                "figure (expected only declared figures)")
            elif not (isinstance(value, (int, float)) and in_range(value, figure.low, figure.high)):
                problems.append(f"{where}: figure {name}: {value} out of range ({row['method']}, {row['setting']} "
                                f"episode {row['episode_index']}; expected {figure.low} <= value <= {figure.high}, "
                                "as its method declares)")
        first = seen.setdefault((row["task"], row["setting"], row["seed"], row["episode_index"]),
                                (row["fingerprint"], row["method"]))
        if first[0] != row["fingerprint"]:
            problems.append(f"{where}: fingerprint: {row['method']} saw a different episode {row['episode_index']} of "
                            f"{row['task']} {row['setting']} seed {row['seed']} than {first[1]} "
                            "(expected identical episodes across methods)")
        key = (row["method"], row["backbone"], row["task"], row["setting"])
        groups.setdefault((row["config_hash"],) + key, []).append(row)
        latest.setdefault(key + (row["restart"] or 0,), {})  # a restart > 0 has its own config_hash
        by_fingerprint = latest[key + (row["restart"] or 0,)]
        if row["fingerprint"] not in by_fingerprint or row["created_at"] >= by_fingerprint[row["fingerprint"]]["created_at"]:
            by_fingerprint[row["fingerprint"]] = row
    for (config, method, backbone, task, setting), members in groups.items():
        plans = [planned_by_run[r["run_id"]] for r in members if planned_by_run.get(r["run_id"]) is not None]
        beyond = sorted({r["episode_index"] for r in members} - set(range(max(plans)))) if plans else []
        if beyond:
            problems.append(f"{path}: episodes: {method} on {setting} ({backbone}, config {config[:12]}) holds episode(s) "
                            f"{', '.join(map(str, beyond[:10]))}{' ...' if len(beyond) > 10 else ''} beyond the "
                            f"{max(plans)} its run configs plan (expected indices 0..{max(plans) - 1})")
        missing = sorted(set(range(max(plans))) - {r["episode_index"] for r in members}) if plans else []
        if missing:
            problems.append(f"{path}: episodes: {method} on {setting} ({backbone}, config {config[:12]}) lacks episode(s) "
                            f"{', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''} of the "
                            f"{max(plans)} its run config plans (expected all: re-run the same command to resume)")
    for (method, backbone, task, setting, _), by_fingerprint in latest.items():
        configs = sorted({r["config_hash"] for r in by_fingerprint.values()})
        if len(configs) > 1:
            problems.append(f"{path}: config_hash: the leaderboard row of {method} on {setting} ({backbone}) pools "
                            f"episodes of {len(configs)} run configs ({', '.join(c[:12] for c in configs)}) "
                            "(expected one: delete the superseded rows or re-run the missing episodes)")
    return problems


def check_store(path, recompute: bool = False) -> Tuple[List[str], int, List[str]]:
    """(problems, rows checked, warnings and notes); ``recompute``: also the checks of ``validate_recompute``."""
    try:
        with closing(sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)) as conn:
            problems, rows, planned, configs = _store_rows(conn)
            declared = declarations(conn) if not problems else {}
            contents = content.stored(conn) if not problems else {}
    except sqlite3.DatabaseError as exc:
        return [f"{path}: file: cannot be read as SQLite ({exc}) (expected a results store)"], 0, []
    if problems:
        return [f"{path}: {problem}" for problem in problems], 0, []
    problems, remarks = _check_store_rows(path, rows, planned, declared), []
    if recompute:
        more, warnings, notes = check_episodes(path, rows, configs, contents)
        problems, remarks = problems + more, warnings + notes
    return problems, len(rows), remarks


def validate_store(path, recompute: bool = False) -> List[str]:
    """Problems of a results store (empty list when valid); ``recompute``: regenerate episodes and scores too."""
    return check_store(path, recompute)[0]


def is_sqlite(path: Path) -> bool:
    """Whether ``path`` is a results store (by its suffix, else its first bytes), not a CSV."""
    if path.suffix.lower() in (".sqlite", ".sqlite3", ".db"):
        return True
    if path.suffix.lower() == ".csv":
        return False
    with open(path, "rb") as handle:
        return handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
