"""Store shards of a torchrun job: one ``<store>.rank<r>`` SQLite file per rank, and this process's rank."""
from __future__ import annotations

import glob
import os
import re
from typing import List, Tuple


def world() -> Tuple[int, int]:
    """(rank, world size) of this process (0, 1 outside torchrun)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shard_path(store: str, rank: int) -> str:
    return f"{store}.rank{rank}"


def existing_shards(store: str) -> List[str]:
    """Shard stores of ``store`` on disk (``<store>.rank<r>``; not their -wal/-shm companions)."""
    return sorted(path for path in glob.glob(glob.escape(store) + ".rank*") if re.search(r"\.rank\d+$", path))
