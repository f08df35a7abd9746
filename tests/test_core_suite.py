"""The core suite (tasks/suites/core.yaml): its cells are suite v2's, and the coverage table of
leaderboard/README.md states exactly what the committed leaderboard holds for it."""
import csv
import re

import pytest

from fewshot_bench.core.config import from_mapping
from fewshot_bench.execution.run_config import RunConfig, load_suite, settings_of, spec_list

from helpers import REPO

BOARD = REPO / "leaderboard"
TABLE = re.compile(r"<!-- core-coverage -->\n(.*?)<!-- /core-coverage -->", re.S)


def _suite(name):
    values = {k: v for k, v in load_suite(name).items() if k != "demo"}
    return from_mapping(RunConfig, values, f"suite {name}")


@pytest.fixture(scope="module")
def core():
    config = _suite("core")
    return [s.label for s in settings_of(config)], spec_list(config.methods), config.episodes


def ok_episodes(rows, labels, methods):
    """{(cell, method): ok episodes} of the leaderboard rows for the suite's cells and methods (0: no row)."""
    found = {(r["setting"], r["method"]): int(r["episodes"]) - int(r["failed_episodes"]) for r in rows}
    return {(cell, method): found.get((cell, method), 0) for cell in labels for method in methods}


def coverage_table(rows, labels, methods):
    """The Markdown table leaderboard/README.md carries between the core-coverage markers."""
    counts = ok_episodes(rows, labels, methods)
    lines = ["| cell | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    lines += ["| " + cell + " | " + " | ".join(str(counts[cell, m]) for m in methods) + " |" for cell in labels]
    return "\n".join(lines) + "\n"


def test_core_cells_are_suite_v2_cells_at_fold_1(core):
    labels, methods, episodes = core
    v2 = {s.label for s in settings_of(_suite("default"))}
    assert set(labels) <= v2 and len(labels) == 8 and episodes == 100
    assert all("/fold1/" in label for label in labels)
    assert sum("allway" in label for label in labels) == 1 and "banking77/fold1/allway1shot15q" in labels
    assert {"sgg", "full_ft", "lora", "maml", "fomaml", "sgg-no-align"} <= set(methods)


def test_the_readme_coverage_table_is_the_committed_leaderboards(core):
    labels, methods, _ = core
    with open(BOARD / "leaderboard.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    stated = TABLE.search((BOARD / "README.md").read_text(encoding="utf-8"))
    assert stated, "leaderboard/README.md has no core-coverage table"
    assert stated.group(1) == coverage_table(rows, labels, methods)
