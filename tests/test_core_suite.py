"""The core suite (tasks/suites/core.yaml): its cells are suite v2's, the committed store holds every unit of the
compute campaign (leaderboard/campaign.yaml) in full, and the coverage table of
leaderboard/README.md states exactly what the committed store holds for it (the table and its generator,
``coverage_table``, come from leaderboard/readme_numbers.py, which writes every number of that README)."""
import importlib.util
import re
import sqlite3

import pytest
import yaml

from fewshot_bench.execution.campaign_queue import load_campaign
from fewshot_bench.execution.run_config import settings_of, spec_list

from helpers import REPO, shared_data_dir

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


def test_the_committed_store_holds_every_campaign_unit_with_all_its_episodes_ok(core, tmp_path, monkeypatch):
    """The campaign (the 8 core cells x the 11 core methods; restarts 1 and 2 of full_ft, lora and sgg on banking77
    and hwu64 5-way 1-shot; the stress suite; the tuned ablation rows) is computed to its last episode, each unit
    under the store keys `run` writes."""
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", str(shared_data_dir()))
    labels, methods, episodes = core
    units = load_campaign(BOARD / "campaign.yaml").units
    planned = {(u.setting.label, u.label, u.restart) for u in units}
    assert {(cell, method, 0) for cell in labels for method in methods} <= planned
    assert {(f"{task}/fold1/5way1shot15q", method, restart) for task in ("banking77", "hwu64")
            for method in ("full_ft", "lora", "sgg") for restart in range(3)} <= planned
    (tmp_path / "stress.yaml").write_text(yaml.safe_dump({"entries": [{"suite": "stress"}]}))
    assert {(u.setting.label, u.label, u.restart) for u in load_campaign(tmp_path / "stress.yaml").units} <= planned
    assert sorted(u.label for u in units if u.label.endswith("[tuned]")) == sorted(
        ["sgg-no-dir[tuned]", "sgg-no-mag[tuned]", "sgg-no-align[tuned]"] * 2 + ["sgg[tuned]", "full_ft[tuned]"])
    with sqlite3.connect(f"file:{BOARD / 'results.sqlite'}?mode=ro", uri=True) as conn:
        ok = {tuple(key): n for *key, n in conn.execute(
            "SELECT config_hash, method, backbone, task, setting, COUNT(DISTINCT episode_index) FROM episodes "
            "WHERE status = 'ok' AND episode_index < ? GROUP BY config_hash, method, backbone, task, setting",
            (episodes,))}
    short = [f"{u}: {ok.get(u.key, 0)}/{u.episodes}" for u in units if ok.get(u.key, 0) < u.episodes]
    assert not short and {u.episodes for u in units} == {episodes}, short
