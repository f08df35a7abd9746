"""Test helpers shared by several test modules."""
import os
import sqlite3
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The real datasets: $FEWSHOT_BENCH_DATA or ../shared/data. Missing in CI is a failure, not a skip."""
    path = Path(os.environ.get("FEWSHOT_BENCH_DATA") or REPO.parent / "shared" / "data")
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide the datasets at {path} (set FEWSHOT_BENCH_DATA)")
        pytest.skip(f"no datasets at {path}")
    return path


def committed_rows(path) -> int:
    """Episode rows committed to the store at ``path``; 0 until a writer has created the file and its schema."""
    if not os.path.exists(path):
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]
    except sqlite3.DatabaseError:  # file created, schema not written yet
        return 0
