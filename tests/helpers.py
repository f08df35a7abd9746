"""Test helpers shared by several test modules."""
import os
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
