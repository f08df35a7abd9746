"""SQLite results store: one row per run (``runs``), one row per evaluated episode (``episodes``), and the
figures methods declare and report (``figures``, ``figure_declarations``: :mod:`.figures`).

Crash and concurrency safety: WAL journal, a busy timeout so parallel writers wait instead of failing, and every
episode is written in its own transaction with ``ON CONFLICT (<unique key>)`` on the UNIQUE key
(config_hash, method, backbone, task, setting, episode_index). A process killed mid-run therefore leaves only
complete rows, and re-running or merging shards never duplicates an episode. Only that key conflict is
handled: any other constraint violation (a NULL in a NOT NULL column, an unknown status) raises.

Failed episodes (the method raised) are retried: they do not count as done (:meth:`ResultsStore.done_indices`),
and a later row for the same key replaces a ``failed`` row; an ``ok`` or ``diverged`` row is never replaced.
"""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set

import numpy as np

from ..core.errors import UserError
from ..core.hashing import config_hash
from . import content
from .figures import LEGACY_COLUMNS, TABLES, copy_figures, declarations, values_by_key, write
from .schema import ISOLATION_LEVELS, KEY_COLUMNS, METRICS, Figure
from .versions import git_commit, library_versions, package_version

# environment_json: environment.fingerprint; data_json: data.pinning.data_record (both nullable)
RUN_COLUMNS = ("run_id", "config_hash", "config_json", "git_commit", "versions_json", "device", "seed",
               "started_at", "ended_at", "environment_json", "data_json")
RUN_COLUMNS_ADDED_LATER = ("environment_json", "data_json")  # a store written before them lacks them until a writer opens it
EPISODE_TYPES = {
    "run_id": "TEXT NOT NULL", "config_hash": "TEXT NOT NULL", "method": "TEXT NOT NULL",
    "protocol": "TEXT NOT NULL CHECK (protocol IN ('target-only', 'source-guided', 'meta-trained'))",
    "backbone": "TEXT NOT NULL", "task": "TEXT NOT NULL", "setting": "TEXT NOT NULL",
    "n_way": "INTEGER NOT NULL", "k_shot": "TEXT NOT NULL", "q_query": "INTEGER NOT NULL", "fold": "INTEGER NOT NULL",
    "seed": "INTEGER NOT NULL", "episode_index": "INTEGER NOT NULL", "fingerprint": "TEXT NOT NULL",
    "status": "TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'diverged'))", "error": "TEXT",
    **{metric.name: metric.sql for metric in METRICS},  # the metric columns are declared in columns.py
    "predictions": "TEXT", "extra": "TEXT", "version": "TEXT NOT NULL", "created_at": "TEXT NOT NULL",
    # training restart of the episode (``run --restarts``; its own config_hash when > 0); NULL (older stores): 0
    "restart": "INTEGER",
    # where the method's code ran (harness.run_episode): in-process, process (sealed worker), sandboxed (Landlock)
    "isolation": f"TEXT CHECK (isolation IS NULL OR isolation IN ({', '.join(map(repr, ISOLATION_LEVELS))}))",
}
EPISODE_COLUMNS = tuple(EPISODE_TYPES)
REQUIRED = tuple(c for c, t in EPISODE_TYPES.items() if "NOT NULL" in t and c not in ("version", "created_at"))
# a new row for a stored key replaces the stored one only when that one failed (failed episodes are retried)
_UPSERT = (f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET "
           + ", ".join(f"{c} = excluded.{c}" for c in EPISODE_COLUMNS if c not in KEY_COLUMNS)
           + " WHERE episodes.status = 'failed' AND excluded.status != 'failed'")
STATUSES = ("ok", "failed", "diverged")
PROTOCOLS = ("target-only", "source-guided", "meta-trained")
SQLITE_MAGIC = b"SQLite format 3\x00"
# one row per ``fewshot-bench tune`` trial: a config evaluated on the study's validation episodes
TRIAL_TYPES = {
    "study": "TEXT NOT NULL", "method": "TEXT NOT NULL", "backbone": "TEXT NOT NULL", "task": "TEXT NOT NULL",
    "setting": "TEXT NOT NULL", "seed": "INTEGER NOT NULL", "trial": "INTEGER NOT NULL", "state": "TEXT NOT NULL",
    "config": "TEXT NOT NULL", "cost": "REAL", "episodes": "INTEGER NOT NULL", "episode_set_sha256": "TEXT",
    "accuracy": "REAL", "acc_ci95_low": "REAL", "acc_ci95_high": "REAL", "wall_seconds": "REAL",
    "figures": "TEXT", "chosen": "INTEGER NOT NULL DEFAULT 0", "created_at": "TEXT NOT NULL",
}
TRIAL_COLUMNS = tuple(TRIAL_TYPES)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, config_hash TEXT, config_json TEXT, git_commit TEXT, "
    "versions_json TEXT, device TEXT, seed INTEGER, started_at TEXT, ended_at TEXT, environment_json TEXT, "
    "data_json TEXT)",
    f"CREATE TABLE IF NOT EXISTS episodes ({', '.join(f'{c} {t}' for c, t in EPISODE_TYPES.items())}, "
    f"UNIQUE ({', '.join(KEY_COLUMNS)}))",
    f"CREATE TABLE IF NOT EXISTS trials ({', '.join(f'{c} {t}' for c, t in TRIAL_TYPES.items())}, "
    f"UNIQUE (study, method, setting, trial))",
    *TABLES,
)


def now() -> str:
    """Current time, ISO 8601 UTC."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _plain(value):
    """numpy scalars -> Python scalars so sqlite3 can bind them."""
    return value.item() if isinstance(value, np.generic) else value


def _enable_wal(conn: sqlite3.Connection, attempts: int = 100) -> None:
    """Switch to WAL; retried because SQLite reports 'locked' without waiting when writers race on a new file."""
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)


def table_columns(conn: sqlite3.Connection, table: str, schema: str = "main") -> List[str]:
    """Column names of ``table`` as the file (or the attached ``schema``) has them (empty when the table is absent)."""
    return [row[1] for row in conn.execute(f"PRAGMA {schema}.table_info({table})")]


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a store written by an earlier version up to the current schema (new columns are nullable)."""
    present = set(table_columns(conn, "episodes"))
    for column, sql_type in EPISODE_TYPES.items():
        if column not in present:
            conn.execute(f"ALTER TABLE episodes ADD COLUMN {column} {sql_type}")
    for column in set(RUN_COLUMNS_ADDED_LATER) - set(table_columns(conn, "runs")):
        conn.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")


INTEGER_COLUMNS = tuple(c for c, t in EPISODE_TYPES.items() if t.startswith("INTEGER") and "NOT NULL" in t)
NUMBER_COLUMNS = tuple(m.name for m in METRICS)


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


class ResultsStore:
    """A results store file. Usable as a context manager.

    ``create=True`` (writers) creates the folder, the file and the tables when absent; ``create=False``
    (readers) requires an existing store and changes nothing. Either way an existing file that is not SQLite,
    or an SQLite database without this schema's tables, is refused with a UserError and left untouched.
    ``columns``: the episode columns the file has (a reader leaves an earlier version's store without the ones added
    since).
    """

    def __init__(self, path, *, create: bool = True):
        self.path = Path(path)
        if not self.path.is_file() and (not create or self.path.exists()):
            raise UserError(f"results store '{self.path}' does not exist (or is not a file); "
                            f"run `fewshot-bench run` first or pass --store")
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as handle:
                if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                    raise UserError(f"{self.path}: not an SQLite file, so not a results store; pass a results store "
                                    f"(or a new path for a new one)")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=60)
            tables = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if (tables or not create) and "episodes" not in tables:
                self.conn.close()
                raise UserError(f"{self.path}: an SQLite database without a results 'episodes' table (found: "
                                f"{', '.join(sorted(tables)) or 'none'}); pass a results store or a new path")
            if create:
                _enable_wal(self.conn)
                self.conn.execute("PRAGMA synchronous=NORMAL")
                # One write transaction for the whole schema: a concurrent writer opening the file sees either no
                # tables or all of them, never 'runs' without 'episodes' (which would read as an unrelated file).
                self.conn.execute("BEGIN IMMEDIATE")
            if create:
                with self.conn:
                    for statement in _SCHEMA:
                        self.conn.execute(statement)
                    _add_missing_columns(self.conn)
            # a reader leaves an earlier version's store as it is: columns added since read as NULL
            problems = schema_problems(self.conn)
            if problems:
                self.conn.close()
                check_schema_text = f"{self.path}: not a results store of this version: {'; '.join(problems)}"
                raise UserError(check_schema_text + " (expected the tables `fewshot-bench run` writes; pass a "
                                                    "results store)")
            present = set(table_columns(self.conn, "episodes"))
            self.columns = tuple(c for c in EPISODE_COLUMNS if c in present)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise UserError(f"{self.path}: locked by another process for more than 60 s ({exc}); wait for the "
                                f"other writer to finish, then run the command again") from None
            raise UserError(f"{self.path}: not a usable results store ({exc})") from None
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path}: not a usable results store ({exc})") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # runs -------------------------------------------------------------------------------------------------------
    def start_run(self, config: dict, device: str, seed: int, environment: Optional[dict] = None,
                  data: Optional[dict] = None) -> str:
        """Record a run (config, project git commit, library versions, the ``environment`` fingerprint, the ``data``
        it reads: :func:`fewshot_bench.data.pinning.data_record`) and return its new run_id."""
        run_id = uuid.uuid4().hex
        row = (run_id, config_hash(config), json.dumps(config, sort_keys=True, default=str), git_commit(),
               json.dumps(library_versions()), device, seed, now(), None,
               json.dumps(environment, sort_keys=True) if environment is not None else None,
               json.dumps(data, sort_keys=True) if data is not None else None)
        with self.conn:
            self.conn.execute(f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(row))})", row)
        return run_id

    def end_run(self, run_id: str) -> None:
        with self.conn:
            self.conn.execute("UPDATE runs SET ended_at = ? WHERE run_id = ?", (now(), run_id))

    def runs(self) -> List[dict]:
        """Run rows (every ``RUN_COLUMNS`` key; a column an earlier store lacks reads as None)."""
        present = [c for c in RUN_COLUMNS if c in table_columns(self.conn, "runs")]
        cursor = self.conn.execute(f"SELECT {', '.join(present)} FROM runs ORDER BY started_at, run_id")
        return [{**dict.fromkeys(RUN_COLUMNS), **dict(zip(present, row))} for row in cursor]

    # episodes ---------------------------------------------------------------------------------------------------
    def write_episode(self, record: Dict, declarations: Sequence[Figure] = ()) -> bool:
        """Insert one episode row, its method's figure ``declarations`` and its ``figures`` in one transaction;
        returns False when that episode was already stored (a stored ``failed`` row is replaced by a row that did
        not fail). Other constraint violations raise.

        ``k_shot`` may be an int or a (min, max) pair; ``predictions`` a list of ints; ``extra`` a dict;
        ``figures`` {declared name: value} (None: not reported; a failed row's are not stored); ``version`` and
        ``created_at`` default to the package version and now.
        """
        record = dict(record)
        figures = record.pop("figures", None) or {}
        unknown = sorted(set(record) - set(EPISODE_COLUMNS))
        if unknown:
            raise ValueError(f"unknown episode field(s): {', '.join(unknown)} (known: {', '.join(EPISODE_COLUMNS)})")
        undeclared = sorted(set(figures) - {f.name for f in declarations})
        if undeclared:
            raise ValueError(f"undeclared figure(s) {', '.join(undeclared)}: pass the method's declarations")
        missing = [c for c in REQUIRED if record.get(c) is None]
        if missing:
            raise ValueError(f"missing required episode field(s): {', '.join(missing)}")
        row = {c: _plain(v) for c, v in record.items()}
        if isinstance(row["k_shot"], (list, tuple)):
            row["k_shot"] = "-".join(str(int(k)) for k in row["k_shot"])
        row["k_shot"] = str(row["k_shot"])
        if row.get("predictions") is not None:
            row["predictions"] = json.dumps([int(p) for p in row["predictions"]])
        if row.get("extra") is not None:
            row["extra"] = json.dumps(row["extra"], sort_keys=True, default=str)
        row.setdefault("version", package_version())
        row.setdefault("created_at", now())
        columns = list(row)
        with self.conn:
            cursor = self.conn.execute(
                f"INSERT INTO episodes ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) {_UPSERT}",
                [row[c] for c in columns])
            write(self.conn, [row[c] for c in KEY_COLUMNS], declarations,
                  figures if row["status"] != "failed" else {}, replace=cursor.rowcount == 1)
        return cursor.rowcount == 1

    def done_indices(self, config_hash: str, method: str, backbone: str, task: str, setting: str) -> Set[int]:
        """Episode indices stored as done (ok or diverged; failed ones are retried) for this config x method x
        backbone x task x setting."""
        cursor = self.conn.execute(
            "SELECT episode_index FROM episodes WHERE config_hash = ? AND method = ? AND backbone = ? AND task = ? "
            "AND setting = ? AND status != 'failed'", (config_hash, method, backbone, task, setting))
        return {row[0] for row in cursor}

    def episodes(self, **filters) -> List[dict]:
        """Episode rows (insertion order) whose columns equal ``filters``; predictions/extra JSON-decoded;
        ``figures``: {name: value} of the method figures reported (:func:`.figures.values_by_key`)."""
        unknown = sorted(set(filters) - set(EPISODE_COLUMNS))
        if unknown:
            raise ValueError(f"unknown episode filter(s): {', '.join(unknown)}")
        where = " AND ".join(f"e.{c} = ?" for c in filters)
        cursor = self.conn.execute(f"SELECT {', '.join(self.columns)} FROM episodes e"
                                   f"{' WHERE ' + where if where else ''} ORDER BY rowid", list(filters.values()))
        rows = [{**dict.fromkeys(EPISODE_COLUMNS), **dict(zip(self.columns, row))} for row in cursor]
        figures = values_by_key(self.conn, where, list(filters.values()))
        for row in rows:
            for column in ("predictions", "extra"):
                if row[column] is not None:
                    row[column] = json.loads(row[column])
            row["figures"] = figures.get(tuple(row[c] for c in KEY_COLUMNS), {})
        return rows

    def declarations(self) -> Dict[str, Dict[str, Figure]]:
        """{method label: {figure name: declaration}} (:func:`.figures.declarations`)."""
        return declarations(self.conn)

    # tuning trials -----------------------------------------------------------------------------------------------
    def write_trial(self, record: Dict) -> None:
        """Insert (or replace: a re-run study) one tuning trial; ``config`` / ``figures`` are dicts."""
        row = {c: _plain(v) for c, v in record.items()}
        row["config"] = json.dumps(row["config"], sort_keys=True, default=str)
        row["figures"] = json.dumps(row.get("figures") or {}, sort_keys=True)
        row.setdefault("created_at", now())
        columns = list(row)
        with self.conn:
            self.conn.execute(f"INSERT OR REPLACE INTO trials ({', '.join(columns)}) "
                              f"VALUES ({', '.join('?' * len(columns))})", [row[c] for c in columns])

    def mark_chosen(self, study: str, method: str, setting: str, trial: int) -> None:
        with self.conn:
            self.conn.execute("UPDATE trials SET chosen = (trial = ?) WHERE study = ? AND method = ? AND setting = ?",
                              (trial, study, method, setting))

    def trials(self, **filters) -> List[dict]:
        """Trial rows (insertion order) whose columns equal ``filters``; config/figures JSON-decoded."""
        where = " AND ".join(f"{c} = ?" for c in filters)
        cursor = self.conn.execute(f"SELECT {', '.join(TRIAL_COLUMNS)} FROM trials"
                                   f"{' WHERE ' + where if where else ''} ORDER BY rowid", list(filters.values()))
        rows = [dict(zip(TRIAL_COLUMNS, row)) for row in cursor]
        for row in rows:
            row["config"], row["figures"] = json.loads(row["config"]), json.loads(row["figures"])
        return rows

    def merge_from(self, paths: Iterable, *, remove_merged: bool = False) -> int:
        """Copy runs, episodes and figures of the shard stores in ``paths``; returns episode rows added or replacing a
        failed row.

        ``remove_merged``: delete each shard (and its -wal/-shm files) once every one of its episodes is
        verified to be in this store (a shard that is not is kept)."""
        paths = [Path(p) for p in paths]
        for path in paths:
            if not path.is_file():
                raise UserError(f"shard '{path}' does not exist")
        for path in paths:  # every shard checked before anything is merged
            problems = shard_problems_of(path)
            if problems:
                raise UserError(f"shard '{path}' cannot be merged: {'; '.join(problems)}; nothing was merged")
        problems = content.conflicts(self.conn, paths)
        if problems:
            raise UserError(f"{problems[0]}{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; "
                            f"nothing was merged")
        added = 0
        key_match = " AND ".join(f"m.{c} = s.{c}" for c in KEY_COLUMNS)
        for path in paths:
            verified = False
            try:
                self.conn.execute("ATTACH DATABASE ? AS shard", (str(path),))
            except sqlite3.DatabaseError as exc:
                raise UserError(f"shard '{path}' cannot be opened ({exc})") from None
            try:
                shard_columns = {row[1] for row in self.conn.execute("PRAGMA shard.table_info(runs)")}
                run_columns = ", ".join(c for c in RUN_COLUMNS if c in shard_columns)  # a shard may predate a column
                with self.conn:
                    self.conn.execute(f"INSERT INTO runs ({run_columns}) SELECT {run_columns} FROM shard.runs WHERE true "
                                      f"ON CONFLICT (run_id) DO NOTHING")
                    before = self.conn.total_changes
                    # "WHERE true": SQLite's parser needs a WHERE before the upsert clause of INSERT ... SELECT
                    # a shard written before a nullable column (e.g. restart) lacks it: NULL, read as its default
                    present = set(table_columns(self.conn, "episodes", "shard"))
                    columns = ", ".join(c for c in EPISODE_COLUMNS if c in present)
                    self.conn.execute(f"INSERT INTO episodes ({columns}) "
                                      f"SELECT {columns} FROM shard.episodes WHERE true {_UPSERT}")
                    added += self.conn.total_changes - before
                    copy_figures(self.conn, "shard")  # legacy sgg_* columns of an older shard into the figures table
                    content.merge(self.conn, "shard")
                if remove_merged:  # every shard episode's key is in this store now
                    verified = not self.conn.execute(f"SELECT COUNT(*) FROM shard.episodes s WHERE NOT EXISTS "
                                                     f"(SELECT 1 FROM main.episodes m WHERE {key_match})").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                raise UserError(f"shard '{path}' is not a results store ({exc})") from None
            finally:
                self.conn.execute("DETACH DATABASE shard")
            if verified:
                for companion in ("", "-wal", "-shm", "-journal"):
                    Path(f"{path}{companion}").unlink(missing_ok=True)
        return added


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
