"""The committed leaderboard (suite v2): valid, and its cells and episode counts are the suite's."""
import csv

import pytest

from fewshot_bench.cli import main
from fewshot_bench.core.config import from_mapping
from fewshot_bench.execution.run_config import RunConfig, load_suite, settings_of
from fewshot_bench.report.validate import validate_store

from helpers import REPO

BOARD = REPO / "leaderboard"
FROZEN = ("protonet", "linear_probe")  # computed on every cell of the suite (leaderboard/README.md)


@pytest.fixture(scope="module")
def suite():
    values = {k: v for k, v in load_suite("default").items() if k != "demo"}
    config = from_mapping(RunConfig, values, "suite default")
    return config, {s.label for s in settings_of(config)}


@pytest.fixture(scope="module")
def rows():
    with open(BOARD / "leaderboard.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_committed_csv_and_store_validate(capsys):
    assert main(["validate", str(BOARD / "leaderboard.csv")]) == 0, capsys.readouterr().out
    assert validate_store(BOARD / "results.sqlite") == []


def test_every_row_is_a_suite_cell_planned_with_the_suites_episode_count(suite, rows):
    config, labels = suite
    assert {r["setting"] for r in rows} <= labels
    assert {r["episodes_planned"] for r in rows} == {str(config.episodes)}
    unfinished = [r for r in rows if int(r["episodes"]) < config.episodes]
    assert all("unfinished" in r["flags"] for r in unfinished)


def test_frozen_backbone_methods_cover_every_cell_with_every_episode(suite, rows):
    config, labels = suite
    for method in FROZEN:
        done = {r["setting"]: int(r["episodes"]) for r in rows if r["method"] == method}
        assert set(done) == labels, sorted(labels - set(done))[:5]
        assert set(done.values()) == {config.episodes}
