"""SQLite results store: one row per run (``runs``), one row per evaluated episode (``episodes``), and the
figures methods declare and report (``figures``, ``figure_declarations``: :mod:`.figures`). The tables are
declared in :mod:`.tables`; a file is checked with :mod:`.checks` before it is read or merged.

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
from .checks import check_schema, shard_problems_of
from .figures import copy_figures, declarations, values_by_key, write
from .schema import KEY_COLUMNS, Figure
from .tables import (CREATE_TABLES, EPISODE_COLUMNS, EPISODE_TYPES, REQUIRED, RUN_COLUMNS, RUN_COLUMNS_ADDED_LATER,
                     SQLITE_MAGIC, TRIAL_COLUMNS, UPSERT, table_columns)
from .versions import git_commit, library_versions, package_version


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


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a store written by an earlier version up to the current schema (new columns are nullable)."""
    present = set(table_columns(conn, "episodes"))
    for column, sql_type in EPISODE_TYPES.items():
        if column not in present:
            conn.execute(f"ALTER TABLE episodes ADD COLUMN {column} {sql_type}")
    for column in set(RUN_COLUMNS_ADDED_LATER) - set(table_columns(conn, "runs")):
        conn.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")


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
                    for statement in CREATE_TABLES:
                        self.conn.execute(statement)
                    _add_missing_columns(self.conn)
            # a reader leaves an earlier version's store as it is: columns added since read as NULL
            try:
                check_schema(self.conn, self.path)
            except UserError:
                self.conn.close()
                raise
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
                f"INSERT INTO episodes ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) {UPSERT}",
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
                                      f"SELECT {columns} FROM shard.episodes WHERE true {UPSERT}")
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
