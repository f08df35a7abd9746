"""The core suite (tasks/suites/core.yaml): its cells are suite v2's, and the coverage table of
leaderboard/README.md states exactly what the committed store holds for it (the table and its generator,
``coverage_table``, come from leaderboard/readme_numbers.py, which writes every number of that README)."""
import importlib.util
import re

import pytest

from fewshot_bench.execution.run_config import settings_of, spec_list

from helpers import REPO

BOARD = REPO / "leaderboard"
TABLE = re.compile(r"<!-- core-coverage -->\n(.*?)<!-- /core-coverage -->", re.S)


@pytest.fixture(scope="module")
def numbers():
    spec = importlib.util.spec_from_file_location("readme_numbers", BOARD / "readme_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def core(numbers):
    config = numbers.suite_config("core")
    return [s.label for s in settings_of(config)], spec_list(config.methods), config.episodes


def test_core_cells_are_suite_v2_cells_at_fold_1(core, numbers):
    labels, methods, episodes = core
    v2 = {s.label for s in settings_of(numbers.suite_config("default"))}
    assert set(labels) <= v2 and len(labels) == 8 and episodes == 100
    assert all("/fold1/" in label for label in labels)
    assert sum("allway" in label for label in labels) == 1 and "banking77/fold1/allway1shot15q" in labels
    assert {"sgg", "full_ft", "lora", "maml", "fomaml", "sgg-no-align"} <= set(methods)


def test_the_readme_coverage_table_is_the_committed_stores(core, numbers):
    labels, methods, _ = core
    rows = numbers.store_rows(BOARD / "results.sqlite")
    stated = TABLE.search((BOARD / "README.md").read_text(encoding="utf-8"))
    assert stated, "leaderboard/README.md has no core-coverage table"
    assert stated.group(1) == numbers.coverage_table(rows, labels, methods)


def test_coverage_counts_ok_episodes_and_zero_for_missing_rows(numbers):
    rows = [dict(setting="a/fold1/5way1shot15q", method="sgg", episodes=100, failed_episodes=3)]
    table = numbers.coverage_table(rows, ["a/fold1/5way1shot15q", "b/fold1/5way1shot15q"], ["sgg", "lora"])
    assert table.splitlines()[2:] == ["| a/fold1/5way1shot15q | 97 | 0 |", "| b/fold1/5way1shot15q | 0 | 0 |"]
