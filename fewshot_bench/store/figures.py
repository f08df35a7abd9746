"""Method figures in a results store: the ``figures`` table (one row per episode row and reported figure) and the
``figure_declarations`` table (one row per method label and declared :class:`~.schema.Figure`).

Contracts:
  * A figure row is keyed like its episode row (:data:`~.schema.KEY_COLUMNS`) plus the figure's ``name``; only the
    figures of a non-failed episode are stored, and only reported values (a finite number, never None).
  * Every stored figure is declared for its row's method (label); the last declaration written for a (method,
    name) wins.
  * Stores written before these tables (leaderboard schema <= 5) hold SGG's four figures as columns of
    ``episodes`` (:data:`LEGACY`). Readers take those as figures of their row, declared as :data:`LEGACY` says,
    for every method with a value (a row of the tables wins over a legacy column); :func:`copy_figures` (every
    merge) writes them into the tables. Nothing writes the legacy columns.
"""
from __future__ import annotations

import sqlite3
from typing import Dict, List, Sequence, Tuple

from ..core.errors import UserError
from .schema import KEY_COLUMNS, Column, Figure, figure_column

# SGG's figures as the ``episodes`` columns of stores before the figures table (methods.sgg.method declares the
# same; sgg.guidance.term_activity computes them)
LEGACY: Tuple[Figure, ...] = (
    Figure("sgg_mag_active", 0, 1, "share of steps the SGG magnitude bound acted"),
    Figure("sgg_align_active", 0, 1, "share of steps the SGG alignment projection fired"),
    Figure("sgg_dir_angle", 0, 180, "mean degrees the SGG direction term rotated g", decimals=2),
    Figure("sgg_step_angle", 0, 180, "mean degrees between the task gradient and the applied step", decimals=2),
)
LEGACY_COLUMNS = tuple(f.name for f in LEGACY)

_KEY = ", ".join(KEY_COLUMNS)
_DECLARATION = ("method", "name", "position", "low", "high", "help", "aggregate", "decimals", "higher_is_better")
TABLES = (
    f"CREATE TABLE IF NOT EXISTS figures ({', '.join(f'{c} TEXT NOT NULL' for c in KEY_COLUMNS[:-1])}, "
    f"episode_index INTEGER NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, UNIQUE ({_KEY}, name))",
    "CREATE TABLE IF NOT EXISTS figure_declarations (method TEXT NOT NULL, name TEXT NOT NULL, position INTEGER "
    "NOT NULL, low REAL NOT NULL, high REAL NOT NULL, help TEXT NOT NULL, aggregate TEXT NOT NULL CHECK (aggregate "
    "IN ('mean', 'sum')), decimals INTEGER NOT NULL, higher_is_better INTEGER, UNIQUE (method, name))",
)
_UPDATE = "ON CONFLICT (method, name) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _DECLARATION[2:])
_DECLARE = (f"INSERT INTO main.figure_declarations ({', '.join(_DECLARATION)}) VALUES "
            f"({', '.join('?' * len(_DECLARATION))}) {_UPDATE}")


def _tables(conn: sqlite3.Connection, schema: str = "main") -> set:
    return {row[0] for row in conn.execute(f"SELECT name FROM {schema}.sqlite_master WHERE type = 'table'")}


def legacy_columns(conn: sqlite3.Connection, schema: str = "main") -> List[Tuple[int, Figure]]:
    """(position, declaration) of the :data:`LEGACY` columns the ``episodes`` table of ``schema`` has."""
    present = {row[1] for row in conn.execute(f"PRAGMA {schema}.table_info(episodes)")}
    return [(position, f) for position, f in enumerate(LEGACY) if f.name in present]


def _row(method: str, position: int, figure: Figure) -> tuple:
    return (method, figure.name, position, figure.low, figure.high, figure.help, figure.aggregate, figure.decimals,
            None if figure.higher_is_better is None else int(figure.higher_is_better))


def write(conn: sqlite3.Connection, key: Sequence, declarations: Sequence[Figure], values: Dict[str, float],
          replace: bool) -> None:
    """Declare ``declarations`` for the method of the episode ``key`` and, when ``replace`` (its row was just
    written), make ``values`` its figures. The caller holds the transaction."""
    conn.executemany(_DECLARE, [_row(key[1], position, f) for position, f in enumerate(declarations)])
    if replace:
        conn.execute(f"DELETE FROM figures WHERE {' AND '.join(f'{c} = ?' for c in KEY_COLUMNS)}", tuple(key))
        conn.executemany(f"INSERT INTO figures ({_KEY}, name, value) VALUES ({', '.join('?' * (len(KEY_COLUMNS) + 2))})",
                         [(*key, name, float(value)) for name, value in values.items() if value is not None])


def values_by_key(conn: sqlite3.Connection, where: str = "", params: Sequence = ()) -> Dict[tuple, Dict[str, float]]:
    """{episode key: {figure name: value}} of the episode rows matching ``where`` (SQL over ``episodes e``), from
    the figures table and the legacy columns (see the module docstring)."""
    found: Dict[tuple, Dict[str, float]] = {}
    condition = f" AND ({where})" if where else ""
    keys = ", ".join(f"e.{c}" for c in KEY_COLUMNS)
    for _, figure in legacy_columns(conn):
        for *key, value in conn.execute(f"SELECT {keys}, e.{figure.name} FROM episodes e WHERE e.{figure.name} IS "
                                        f"NOT NULL{condition}", tuple(params)):
            found.setdefault(tuple(key), {})[figure.name] = value
    if "figures" in _tables(conn):
        match = " AND ".join(f"f.{c} = e.{c}" for c in KEY_COLUMNS)
        for *key, name, value in conn.execute(f"SELECT {keys}, f.name, f.value FROM figures f JOIN episodes e ON "
                                              f"{match}{' WHERE ' + where if where else ''} ORDER BY f.rowid",
                                              tuple(params)):
            found.setdefault(tuple(key), {})[name] = value
    return found


def declarations(conn: sqlite3.Connection) -> Dict[str, Dict[str, Figure]]:
    """{method label: {figure name: declaration}} in declaration order (legacy columns first, see the module
    docstring); methods by name."""
    found: Dict[str, Dict[str, Figure]] = {}
    for _, figure in legacy_columns(conn):
        for (method,) in conn.execute(f"SELECT DISTINCT method FROM episodes WHERE {figure.name} IS NOT NULL"):
            found.setdefault(method, {})[figure.name] = figure
    if "figure_declarations" in _tables(conn):
        for method, name, _, low, high, help, aggregate, decimals, higher in conn.execute(
                f"SELECT {', '.join(_DECLARATION)} FROM figure_declarations ORDER BY method, position"):
            found.setdefault(method, {})[name] = Figure(name, low, high, help, aggregate, int(decimals),
                                                        None if higher is None else bool(higher))
    return dict(sorted(found.items()))


def figure_columns(declared: Dict[str, Dict[str, Figure]]) -> Tuple[Column, ...]:
    """One leaderboard column per declared figure name, in declaration order of the methods by name; its range
    spans every method's declaration. Raises UserError when two methods declare a name with another aggregate or
    decimals (one column cannot show both)."""
    first: Dict[str, Tuple[str, Figure]] = {}
    spans: Dict[str, Tuple[float, float]] = {}
    for method in sorted(declared):
        for figure in declared[method].values():
            other, seen = first.setdefault(figure.name, (method, figure))
            if (seen.aggregate, seen.decimals) != (figure.aggregate, figure.decimals):
                raise UserError(f"figure '{figure.name}' is declared as the {seen.aggregate} to {seen.decimals} "
                                f"decimals by {other} and as the {figure.aggregate} to {figure.decimals} decimals by "
                                f"{method}: the leaderboard has one column per figure name; rename one of them")
            low, high = spans.get(figure.name, (figure.low, figure.high))
            spans[figure.name] = (min(low, figure.low), max(high, figure.high))
    return tuple(figure_column(Figure(name, *spans[name], seen.help, seen.aggregate, seen.decimals,
                                      seen.higher_is_better)) for name, (_, seen) in first.items())


def copy_figures(conn: sqlite3.Connection, schema: str, where: str = "true", params: Sequence = ()) -> None:
    """Copy into ``main`` the figures and declarations of the non-failed episode rows of the attached store
    ``schema`` that match ``where`` (SQL over ``{schema}.episodes e``), legacy columns into the tables; a figure
    ``main`` already holds stays. The caller holds the transaction and copies the episode rows."""
    tables, columns = _tables(conn, schema), f"{_KEY}, name, value"
    keys = ", ".join(f"e.{c}" for c in KEY_COLUMNS)
    if "figures" in tables:
        match = " AND ".join(f"f.{c} = e.{c}" for c in KEY_COLUMNS)
        conn.execute(f"INSERT INTO main.figures ({columns}) SELECT {keys}, f.name, f.value FROM {schema}.figures f "
                     f"JOIN {schema}.episodes e ON {match} WHERE e.status != 'failed' AND ({where}) "
                     f"ON CONFLICT DO NOTHING", tuple(params))
    if "figure_declarations" in tables:
        conn.execute(f"INSERT INTO main.figure_declarations ({', '.join(_DECLARATION)}) SELECT "
                     f"{', '.join(_DECLARATION)} FROM {schema}.figure_declarations WHERE method IN (SELECT e.method "
                     f"FROM {schema}.episodes e WHERE {where}) {_UPDATE}", tuple(params))
    for position, figure in legacy_columns(conn, schema):
        conn.execute(f"INSERT INTO main.figures ({columns}) SELECT {keys}, ?, e.{figure.name} FROM {schema}.episodes "
                     f"e WHERE e.{figure.name} IS NOT NULL AND e.status != 'failed' AND ({where}) "
                     f"ON CONFLICT DO NOTHING", (figure.name, *params))
        declared = _row("", position, figure)[1:]
        conn.execute(f"INSERT INTO main.figure_declarations ({', '.join(_DECLARATION)}) SELECT DISTINCT e.method, "
                     f"{', '.join('?' * len(declared))} FROM {schema}.episodes e WHERE e.{figure.name} IS NOT NULL "
                     f"AND ({where}) ON CONFLICT DO NOTHING", (*declared, *params))
