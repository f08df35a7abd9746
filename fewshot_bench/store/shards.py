"""Store shards of a torchrun job: one ``<store>.rank<r>`` SQLite file per rank, and this process's rank."""
from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

from ..core.errors import UserError
from .results import KEY_COLUMNS, ResultsStore


def world() -> Tuple[int, int]:
    """(rank, world size) of this process (0, 1 outside torchrun)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shard_path(store: str, rank: int) -> str:
    return f"{store}.rank{rank}"


def existing_shards(store: str) -> List[str]:
    """Shard stores of ``store`` on disk (``<store>.rank<r>``; not their -wal/-shm companions)."""
    return sorted(path for path in glob.glob(glob.escape(store) + ".rank*") if re.search(r"\.rank\d+$", path))


# what must agree between two stored rows of one episode key (a failed row is retried, so it never conflicts)
_SIGNATURE = ("status", "fingerprint", "accuracy", "predictions", "restart")


def check_no_conflicts(paths: Iterable) -> None:
    """Refuse (before anything is merged) when two of the stores in ``paths`` hold different non-failed rows for
    the same episode key: merging would keep one silently. Identical rows (a shard merged again) are fine."""
    seen: Dict[tuple, Tuple[tuple, str]] = {}
    for path in paths:
        if not Path(path).is_file():
            continue
        with ResultsStore(path, create=False) as store:
            present = set(store.columns)
            # an earlier version's store lacks the restart column: its rows are restart 0
            columns = ", ".join(KEY_COLUMNS + tuple(c if c in present else ("0" if c == "restart" else "NULL")
                                                    for c in _SIGNATURE))
            rows = store.conn.execute(f"SELECT {columns} FROM episodes WHERE status != 'failed'").fetchall()
        for row in rows:
            key, signature = row[:len(KEY_COLUMNS)], row[len(KEY_COLUMNS):-1] + (row[-1] or 0,)
            first = seen.setdefault(key, (signature, str(path)))
            if first[0] != signature:
                raise UserError(f"{first[1]} and {path} hold different results for the same episode ({key[1]} on "
                                f"{key[4]}, episode {key[5]}); merging would keep one silently: merge only shards of "
                                f"one run, or remove the stale one")
