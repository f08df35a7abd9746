"""Integrity checks of a results store file: whether it can be read as a results store of this version
(:func:`schema_problems`, :func:`check_schema`) and whether a shard may be merged into one (:func:`shard_problems`,
:func:`shard_problems_of`).
"""
from __future__ import annotations

import sqlite3
from typing import List

from ..core.errors import UserError
from .figures import LEGACY_COLUMNS
from .tables import (EPISODE_COLUMNS, EPISODE_TYPES, INTEGER_COLUMNS, NUMBER_COLUMNS, PROTOCOLS, REQUIRED, RUN_COLUMNS,
                     RUN_COLUMNS_ADDED_LATER, STATUSES, table_columns)


def schema_problems(conn: sqlite3.Connection, schema: str = "main", types: bool = True) -> List[str]:
    """What keeps the database ``schema`` (``main`` or an attached shard) from being read as a results store: a
    missing table, a missing required column (a nullable column added later may be absent: it reads as NULL),
    ``types``: text in an integer key column or in a metric. Empty when usable."""
    problems = []
    episodes, runs = table_columns(conn, "episodes", schema), table_columns(conn, "runs", schema)
    required = [c for c, t in EPISODE_TYPES.items() if "NOT NULL" in t]
    for table, present, wanted in (("episodes", episodes, required),
                                   ("runs", runs, [c for c in RUN_COLUMNS if c not in RUN_COLUMNS_ADDED_LATER])):
        if not present:
            problems.append(f"no '{table}' table")
        elif not set(wanted) <= set(present):
            problems.append(f"the {table} table lacks column(s) {', '.join(c for c in wanted if c not in present)}")
    if problems or not types:
        return problems
    checks = [(c, "integer", "typeof({c}) != 'integer'") for c in INTEGER_COLUMNS] + \
             [(c, "number", "{c} IS NOT NULL AND typeof({c}) NOT IN ('integer', 'real')") for c in NUMBER_COLUMNS
              if c in episodes]
    counts = conn.execute("SELECT " + ", ".join(f"COALESCE(SUM({condition.format(c=column)}), 0)"
                                                for column, _, condition in checks)
                          + f" FROM {schema}.episodes").fetchone()  # one pass over the table
    for (column, kind, condition), count in zip(checks, counts):
        if not count:
            continue
        found = conn.execute(f"SELECT COUNT(*), MIN(rowid) FROM {schema}.episodes WHERE "
                             + condition.format(c=column)).fetchone()
        if found[0]:
            (value,) = conn.execute(f"SELECT {column} FROM {schema}.episodes WHERE rowid = ?", (found[1],)).fetchone()
            problems.append(f"episodes.{column} holds {found[0]} value(s) that are not a{'n' if kind[0] == 'i' else ''} "
                            f"{kind} (e.g. {value!r} in row {found[1]})")
    return problems


def check_schema(conn: sqlite3.Connection, path, types: bool = True) -> None:
    """One-line UserError naming the store and what it lacks, unless :func:`schema_problems` finds nothing."""
    problems = schema_problems(conn, types=types)
    if problems:
        raise UserError(f"{path}: not a results store of this version: {'; '.join(problems)} (expected the tables "
                        f"`fewshot-bench run` writes; pass a results store)")


def shard_problems(conn: sqlite3.Connection, schema: str = "shard") -> List[str]:
    """Why the attached store ``schema`` must not be merged: :func:`schema_problems`, columns this version does not
    know (a newer version's store: merging would drop them), rows with a required field empty, an unknown status
    or protocol, or an accuracy outside [0, 1]. Columns an earlier version lacked are fine (they read as NULL)."""
    problems = schema_problems(conn, schema)
    if problems:
        return problems
    for table, known in (("episodes", EPISODE_COLUMNS + LEGACY_COLUMNS), ("runs", RUN_COLUMNS)):
        unknown = [c for c in table_columns(conn, table, schema) if c not in known]
        if unknown:
            problems.append(f"the {table} table has column(s) this version does not know: {', '.join(unknown)} (a "
                            f"newer version's store: merge it with that version, or its columns would be dropped)")
    if problems:
        return problems
    quoted = lambda values: ", ".join(f"'{v}'" for v in values)  # noqa: E731
    for what, condition in (
            ("a required field empty", " OR ".join(f"{c} IS NULL" for c in REQUIRED)),
            (f"a status other than {', '.join(STATUSES)}", f"status NOT IN ({quoted(STATUSES)})"),
            (f"a protocol other than {', '.join(PROTOCOLS)}", f"protocol NOT IN ({quoted(PROTOCOLS)})"),
            ("an accuracy outside [0, 1]", "accuracy IS NOT NULL AND NOT (accuracy BETWEEN 0 AND 1)"),
            ("an ok status without an accuracy", "status = 'ok' AND accuracy IS NULL")):
        count, first = conn.execute(f"SELECT COUNT(*), MIN(rowid) FROM {schema}.episodes WHERE {condition}").fetchone()
        if count:
            problems.append(f"{count} episode row(s) with {what} (first: row {first})")
    return problems


def shard_problems_of(path) -> List[str]:
    """:func:`shard_problems` of the store file at ``path`` (opened read-only)."""
    try:  # not mode=ro: a read-only connection to a WAL store would leave its -wal/-shm files behind
        conn = sqlite3.connect(path, timeout=60)
    except sqlite3.DatabaseError as exc:
        return [f"cannot be opened ({exc})"]
    try:
        return shard_problems(conn, "main")
    except sqlite3.DatabaseError as exc:
        return [f"not a results store ({exc})"]
    finally:
        conn.close()
