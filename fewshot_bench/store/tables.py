"""The results store's tables as SQL: the columns of ``runs``, ``episodes`` and ``trials`` with their types and
constraints, the statements that create them (with the figure tables of :mod:`.figures`), the upsert clause every
episode write uses, the values the checked columns admit, and :func:`table_columns` (the columns a file has).
"""
from __future__ import annotations

import sqlite3
from typing import List

from .figures import TABLES
from .schema import ISOLATION_LEVELS, KEY_COLUMNS, METRICS

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
    **{metric.name: metric.sql for metric in METRICS},  # the metric columns are declared in schema.py
    "predictions": "TEXT", "extra": "TEXT", "version": "TEXT NOT NULL", "created_at": "TEXT NOT NULL",
    # training restart of the episode (``run --restarts``; its own config_hash when > 0); NULL (older stores): 0
    "restart": "INTEGER",
    # where the method's code ran (harness.run_episode): in-process, process (sealed worker), sandboxed (Landlock)
    "isolation": f"TEXT CHECK (isolation IS NULL OR isolation IN ({', '.join(map(repr, ISOLATION_LEVELS))}))",
}
EPISODE_COLUMNS = tuple(EPISODE_TYPES)
REQUIRED = tuple(c for c, t in EPISODE_TYPES.items() if "NOT NULL" in t and c not in ("version", "created_at"))
# a new row for a stored key replaces the stored one only when that one failed (failed episodes are retried)
UPSERT = (f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET "
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

CREATE_TABLES = (
    "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, config_hash TEXT, config_json TEXT, git_commit TEXT, "
    "versions_json TEXT, device TEXT, seed INTEGER, started_at TEXT, ended_at TEXT, environment_json TEXT, "
    "data_json TEXT)",
    f"CREATE TABLE IF NOT EXISTS episodes ({', '.join(f'{c} {t}' for c, t in EPISODE_TYPES.items())}, "
    f"UNIQUE ({', '.join(KEY_COLUMNS)}))",
    f"CREATE TABLE IF NOT EXISTS trials ({', '.join(f'{c} {t}' for c, t in TRIAL_TYPES.items())}, "
    f"UNIQUE (study, method, setting, trial))",
    *TABLES,
)

INTEGER_COLUMNS = tuple(c for c, t in EPISODE_TYPES.items() if t.startswith("INTEGER") and "NOT NULL" in t)
NUMBER_COLUMNS = tuple(m.name for m in METRICS)


def table_columns(conn: sqlite3.Connection, table: str, schema: str = "main") -> List[str]:
    """Column names of ``table`` as the file (or the attached ``schema``) has them (empty when the table is absent)."""
    return [row[1] for row in conn.execute(f"PRAGMA {schema}.table_info({table})")]
