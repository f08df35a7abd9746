"""Leaderboard: bootstrap CI, ranking on identical episode sets only, failed episodes, CSV safety, CLI."""
import csv

import pytest

from fewshot_bench.cli import main
from fewshot_bench.leaderboard import COLUMNS, aggregate, bootstrap_ci, leaderboard_figure, overall, write_csv
from fewshot_bench.store import ResultsStore

from helpers import build_store, record


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "results.sqlite"
    build_store(path)
    return path


def _by_method(rows):
    return {row["method"]: row for row in rows}


def test_ci_contains_mean_and_is_deterministic(store_path):
    rows = aggregate(store_path, bootstrap=2000, seed=0)
    assert rows == aggregate(store_path, bootstrap=2000, seed=0)
    for row in rows:
        assert list(row) == list(COLUMNS)
        assert row["acc_ci95_low"] <= row["acc_mean"] <= row["acc_ci95_high"]
    full_ft = _by_method(rows)["full_ft"]
    assert full_ft["acc_ci95_low"] < full_ft["acc_mean"] < full_ft["acc_ci95_high"]
    assert bootstrap_ci([0.7]) == (0.7, 0.7)


def test_ci_does_not_depend_on_the_order_episodes_were_written(tmp_path):
    accuracies = [0.5, 0.9, 0.7, 0.6, 1.0, 0.8]
    rows = []
    for name, order in (("forward", range(6)), ("shuffled", [3, 0, 5, 1, 4, 2])):  # e.g. two torchrun ranks
        with ResultsStore(tmp_path / f"{name}.sqlite") as store:
            for i in order:
                store.write_episode(record(episode_index=i, accuracy=accuracies[i]))
        rows.append(aggregate(tmp_path / f"{name}.sqlite", bootstrap=500, seed=0))
    assert rows[0] == rows[1]


def test_ranks_only_on_identical_episode_sets_and_protocols(store_path):
    rows = _by_method(aggregate(store_path, bootstrap=200))
    full_ft, protonet, lora, maml = (rows[m] for m in ("full_ft", "protonet", "lora", "maml"))
    assert full_ft["episode_set_sha256"] == protonet["episode_set_sha256"] == maml["episode_set_sha256"]
    assert (full_ft["rank"], protonet["rank"], rows['=HYPERLINK("http://evil")']["rank"]) == (1, 2, 3)
    assert lora["episode_set_sha256"] != full_ft["episode_set_sha256"] and lora["rank"] == 1  # better, but not comparable
    assert maml["rank"] == 1  # meta-trained is never ranked against target-only
    anil = rows["anil"]  # same episodes, but another setting (cross-dataset): not ranked against maml
    assert anil["episode_set_sha256"] == maml["episode_set_sha256"] and anil["rank"] == 1
    assert (anil["task"], maml["task"]) == ("other->demo", "demo")
    assert rows["-x"]["rank"] == 1  # other backbone


def test_failed_episodes_and_missing_gradients(store_path):
    protonet = _by_method(aggregate(store_path, bootstrap=200))["protonet"]
    assert protonet["episodes"] == 10 and protonet["failed_episodes"] == 1
    assert protonet["acc_mean"] == pytest.approx(0.55)  # mean of the 9 ok episodes
    assert protonet["grad_dir_consistency"] is None and protonet["sec_per_episode"] == 1.5


def test_csv_neutralises_formulas_keeps_numbers(store_path, tmp_path):
    rows = aggregate(store_path, bootstrap=200)
    out = tmp_path / "lb.csv"
    write_csv(rows, out)
    with open(out, newline="") as handle:
        table = list(csv.reader(handle))
    assert tuple(table[0]) == COLUMNS
    cells = {line[1]: dict(zip(COLUMNS, line)) for line in table[1:]}
    evil = cells['\'=HYPERLINK("http://evil")']
    assert evil["grad_dir_consistency"] == "-0.25"
    assert cells["'-x"]["backbone"] == "'+bert"
    assert cells["protonet"]["grad_dir_consistency"] == ""
    assert not any(cell.startswith(("=", "+", "@")) for line in table for cell in line)


def test_overall(store_path):
    summary = {r["method"]: r for r in overall(aggregate(store_path, bootstrap=200))}
    assert summary["full_ft"]["acc_mean"] == pytest.approx(0.735) and summary["full_ft"]["mean_rank"] == 1
    assert summary["protonet"]["task_settings"] == 1


def test_cli_writes_all_outputs(store_path, tmp_path, capsys):
    out = tmp_path / "board" / "leaderboard.csv"
    assert main(["leaderboard", "--store", str(store_path), "--out", str(out), "--bootstrap", "500"]) == 0
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard_overall.csv", "leaderboard.png"):
        assert (out.parent / name).stat().st_size > 0
    assert "How to read" in (out.parent / "leaderboard.md").read_text()
    assert str(out) in capsys.readouterr().out


def test_figure_has_a_panel_per_task_and_the_consistency_scatter(store_path):
    rows = aggregate(store_path, bootstrap=200)
    rows += [{**r, "task": "other", "k_shot": "1"} for r in rows]
    tasks = sorted({r["task"] for r in rows})
    fig = leaderboard_figure(rows)
    titles = [axis.get_title() for axis in fig.axes]
    assert titles[:len(tasks) + 1] == [f"{t}, 5-way" for t in tasks] + ["accuracy vs gradient direction consistency"]
    with_accuracy = [r for r in rows if r["task"] == tasks[0] and r["acc_mean"] is not None]
    assert len(fig.axes[0].lines) >= len(with_accuracy)  # one errorbar series per method of the task
    legend = {t.get_text() for t in fig.axes[len(tasks) + 1].get_legend().get_texts()}
    assert set(tasks) <= legend and "full_ft/minilm" in legend  # several backbones: method/backbone


def test_cli_missing_or_empty_store(tmp_path, capsys):
    assert main(["leaderboard", "--store", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "none.sqlite" in capsys.readouterr().err
    ResultsStore(tmp_path / "empty.sqlite").close()
    assert main(["leaderboard", "--store", str(tmp_path / "empty.sqlite"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "no episodes in" in capsys.readouterr().err
