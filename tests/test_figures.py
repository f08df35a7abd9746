"""Method figures: declared by a method (``Figure``), checked by the harness, kept in the store's figures table,
one leaderboard column each, range-checked by ``validate``; stores with SGG's legacy columns still read and merge."""
import csv
import re
import sqlite3
from contextlib import closing

import pytest

from fewshot_bench.cli import main
from fewshot_bench.core.errors import UserError
from fewshot_bench.methods import Figure, Method
from fewshot_bench.methods.sgg.method import SGG
from fewshot_bench.methods.spec import check_declarations
from fewshot_bench.report.leaderboard import aggregate, write_leaderboard
from fewshot_bench.report.validate import check_store
from fewshot_bench.report.validate_csv import _SCHEMA_5, check_csv
from fewshot_bench.store.figures import LEGACY, copy_figures
from fewshot_bench.store.results import ResultsStore
from fewshot_bench.store.schema import COLUMNS, ISOLATION_LEVELS
from fewshot_bench.store.tables import EPISODE_COLUMNS

from helpers import REPO, record

PLUGIN = '''
import torch
from fewshot_bench.methods import Figure, Method, Predictor


class Margin(Method):
    """A submitted method reporting two figures of its own."""
    name = "margin"
    figures = (Figure("support_share", 0, 1, "share of support examples in class 0"),
               Figure("support_seen", 0, 1000, "support examples seen", aggregate="sum", decimals=0))

    def adapt(self, ctx):
        labels = list(ctx.episode.support_labels)
        ctx.figures["support_share"] = labels.count(0) / len(labels)
        ctx.figures["support_seen"] = len(labels)
        n_way = ctx.n_way
        return Predictor(lambda batch: torch.zeros(len(batch), n_way))
'''
SGG_VALUES = [dict(sgg_mag_active=0.25 * i, sgg_align_active=0.5, sgg_dir_angle=10.0 + i,
                   sgg_step_angle=None if i == 0 else 20.0) for i in range(3)]


def _csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.sealed  # the default isolation: the declarations travel to the harness as plain data
def test_a_plugin_figure_is_stored_shown_as_a_column_and_range_checked(tmp_path, capsys):
    (tmp_path / "plugin.py").write_text(PLUGIN, encoding="utf-8")
    store, board = tmp_path / "s.sqlite", tmp_path / "lb.csv"
    assert main(["run", "--tasks", "demo_intents", "--backbone", "tiny-encoder", "--device", "cpu", "--methods",
                 f"protonet,{tmp_path}/plugin.py:Margin", "--episodes", "2", "--k-shot", "1", "--query", "2",
                 "--store", str(store), "--out", str(board)]) == 0, capsys.readouterr().err
    with closing(sqlite3.connect(store)) as conn:
        stored = conn.execute("SELECT method, episode_index, name, value FROM figures ORDER BY episode_index, "
                              "name").fetchall()
    assert stored == [("margin", i, name, value) for i in range(2)
                      for name, value in (("support_seen", 5.0), ("support_share", 0.2))]
    with ResultsStore(store, create=False) as results:
        assert [r["figures"] for r in results.episodes(method="margin")] == [{"support_share": 0.2,
                                                                              "support_seen": 5.0}] * 2
    rows = _csv(board)
    assert list(rows[0]) == [*COLUMNS, "support_share", "support_seen"]  # after the core columns
    by = {r["method"]: r for r in rows}
    assert (by["margin"]["support_share"], by["margin"]["support_seen"]) == ("0.2", "10")  # mean, sum
    assert by["protonet"]["support_share"] == by["protonet"]["support_seen"] == ""
    assert {r["isolation"] for r in rows} <= {"process", "sandboxed"}
    assert main(["validate", str(board), "--store", str(store)]) == 0, capsys.readouterr().out
    # tampered figure cells: out of the declared range, or set for a method that declares no such figure
    for method, column, value, expected in (
            ("margin", "support_share", "1.5", "support_share: 1.5 out of range"),
            ("margin", "support_seen", "2001", "support_seen: 2001 out of range"),  # a sum: 1000 x 2 episodes
            ("protonet", "support_share", "0.2", "for protonet, which declares no figure support_share")):
        tampered = [{**r, column: value} if r["method"] == method else r for r in rows]
        problems, _ = check_csv(_write_csv(tmp_path / "t.csv", tampered), store)
        assert problems and expected in problems[0], problems  # (then the cell checks miss the bad row)
    with closing(sqlite3.connect(store)) as conn, conn:
        conn.execute("UPDATE figures SET value = 3 WHERE name = 'support_share' AND episode_index = 1")
    problems, _, _ = check_store(store)
    assert len(problems) == 1 and "figure support_share: 3.0 out of range" in problems[0], problems


def test_the_readme_figure_example_runs_as_written(tmp_path, capsys):
    (block,) = re.findall(r"```python\n# my_figure.py\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"),
                          re.S)
    (tmp_path / "my_figure.py").write_text(block, encoding="utf-8")
    assert main(["run", "--tasks", "demo_intents", "--backbone", "tiny-encoder", "--device", "cpu", "--methods",
                 f"{tmp_path}/my_figure.py:NearestMean", "--episodes", "2", "--k-shot", "2", "--query", "2",
                 "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "lb.csv")]) == 0, \
        capsys.readouterr().err
    (row,) = _csv(tmp_path / "lb.csv")
    assert list(row)[-1] == "mean_spread" and 0 <= float(row["mean_spread"]) <= 2 and row["failed_episodes"] == "0"
    assert row["isolation"] == "in-process"  # the test suite's default (conftest)


@pytest.mark.parametrize("figures, expected", [
    ("sgg_mag_active", "figures 'sgg_mag_active' is not a tuple of fewshot_bench.methods.Figure"),
    (("sgg_mag_active",), "figure 'sgg_mag_active' is a str, not a fewshot_bench.methods.Figure"),
    ((Figure("accuracy", 0, 1, "x"),), "figure 'accuracy': the harness measures or stores a figure of that name"),
    ((Figure("isolation", 0, 1, "x"),), "figure 'isolation': the harness measures"),
    ((Figure("acc_mean", 0, 1, "x"),), "figure 'acc_mean': the harness measures"),
    ((Figure("My share", 0, 1, "x"),), "figure 'My share': name it with lowercase letters"),
    ((Figure("share", 0, 1, "x"), Figure("share", 0, 1, "y")), "figure 'share': it is declared twice"),
    ((Figure("share", 1, 0, "x"),), "figure 'share': its range [1, 0] must be two numbers, low < high"),
    ((Figure("share", float("nan"), 1, "x"),), "figure 'share': its range [nan, 1]"),
    ((Figure("share", 0, 1, " "),), "figure 'share': give it a help text"),
    ((Figure("share", 0, 1, "x", aggregate="median"),), "figure 'share': aggregate 'median' must be 'mean' or 'sum'"),
    ((Figure("share", 0, 1, "x", decimals=11),), "figure 'share': decimals 11 must be an integer from 0 to 10"),
    ((Figure("share", 0, 1, "x", higher_is_better="yes"),), "figure 'share': higher_is_better 'yes' must be True"),
])
def test_bad_declarations_are_one_line_errors(figures, expected):
    class Mine(Method):
        name = "mine"

    Mine.figures = figures
    with pytest.raises(UserError) as raised:
        check_declarations(Mine())
    assert str(raised.value).startswith("method 'mine': ") and expected in str(raised.value)
    assert "\n" not in str(raised.value)


def test_good_declarations_pass_and_sgg_declares_the_legacy_columns():
    class Mine(Method):
        name = "mine"
        figures = (Figure("share", 0, 1, "x"), Figure("total", -float("inf"), float("inf"), "y", aggregate="sum",
                                                       decimals=0, higher_is_better=False))

    check_declarations(Mine())
    check_declarations(SGG())
    assert SGG.figures == LEGACY  # what stores before the figures table hold as episodes columns


def test_the_store_keeps_figures_of_stored_rows_only(tmp_path):
    share = Figure("share", 0, 1, "x")
    with ResultsStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(ValueError, match="undeclared figure"):
            store.write_episode(record(figures={"share": 0.5}))
        assert store.write_episode(record(status="failed", accuracy=None, error="boom", figures={"share": 0.5}),
                                   (share,))
        assert store.episodes()[0]["figures"] == {}  # a failed row keeps none
        assert store.declarations() == {"full_ft": {"share": share}}
        assert store.write_episode(record(figures={"share": 0.25, "other": None}), (share, Figure("other", 0, 1, "y")))
        assert not store.write_episode(record(figures={"share": 0.75}), (share,))  # stored already: unchanged
        assert [r["figures"] for r in store.episodes()] == [{"share": 0.25}]


def _legacy_store(path, episodes=3):
    """A store as versions before the figures table wrote it: SGG's figures in episodes columns."""
    with ResultsStore(path) as store:
        for i, values in enumerate(SGG_VALUES[:episodes]):
            store.write_episode(record(method="sgg", episode_index=i, figures=values), SGG.figures)
            store.write_episode(record(method="full_ft", config_hash="cfg1", episode_index=i))
    with closing(sqlite3.connect(path)) as conn, conn:
        for figure in LEGACY:
            conn.execute(f"ALTER TABLE episodes ADD COLUMN {figure.name} REAL")
            conn.execute(f"UPDATE episodes SET {figure.name} = (SELECT value FROM figures f WHERE f.name = ? AND "
                         "f.config_hash = episodes.config_hash AND f.method = episodes.method AND f.episode_index = "
                         "episodes.episode_index)", (figure.name,))
        conn.execute("DROP TABLE figures")
        conn.execute("DROP TABLE figure_declarations")
    return path


def _expected(values):
    return {k: v for k, v in values.items() if v is not None}


def test_an_old_store_with_sgg_columns_reads_validates_and_merges(tmp_path, capsys):
    old = _legacy_store(tmp_path / "old.sqlite")
    with ResultsStore(old, create=False) as store:
        assert [r["figures"] for r in store.episodes(method="sgg")] == [_expected(v) for v in SGG_VALUES]
        assert [r["figures"] for r in store.episodes(method="full_ft")] == [{}] * 3
        assert store.declarations() == {"sgg": {f.name: f for f in LEGACY}}
    rows = {r["method"]: r for r in aggregate(old, bootstrap=100)}
    assert (rows["sgg"]["sgg_mag_active"], rows["sgg"]["sgg_dir_angle"], rows["sgg"]["sgg_step_angle"]) == \
        (0.25, 11.0, 20.0)
    assert rows["full_ft"]["sgg_mag_active"] is None
    write_leaderboard(old, tmp_path / "lb.csv", bootstrap=100)
    assert list(_csv(tmp_path / "lb.csv")[0])[-4:] == [f.name for f in LEGACY]
    assert check_csv(tmp_path / "lb.csv", old)[0] == [] and check_store(old)[0] == []
    # merged into a store of this version: the legacy values land in the figures table, once
    target = tmp_path / "new.sqlite"
    for _ in range(2):
        assert main(["merge", str(old), "--store", str(target)]) == 0, capsys.readouterr().err
    with closing(sqlite3.connect(target)) as conn:
        assert not {f.name for f in LEGACY} & {r[1] for r in conn.execute("PRAGMA table_info(episodes)")}
        assert conn.execute("SELECT COUNT(*) FROM figures").fetchone()[0] == 11
        assert conn.execute("SELECT DISTINCT method FROM figure_declarations").fetchall() == [("sgg",)]
    assert aggregate(target, bootstrap=100) == aggregate(old, bootstrap=100)
    # a tampered legacy value is out of SGG's declared range
    with closing(sqlite3.connect(old)) as conn, conn:
        conn.execute("UPDATE episodes SET sgg_dir_angle = 200 WHERE method = 'sgg' AND episode_index = 2")
    problems = check_store(old)[0]
    assert len(problems) == 1 and "figure sgg_dir_angle: 200.0 out of range" in problems[0], problems


def test_a_partial_copy_carries_the_figures_of_its_rows(tmp_path):
    """What ``campaign merge`` does with the complete units of an old-style shard."""
    old = _legacy_store(tmp_path / "old.sqlite")
    with ResultsStore(tmp_path / "subset.sqlite") as subset:
        subset.conn.execute("ATTACH DATABASE ? AS shard", (str(old),))
        with subset.conn:
            columns = ", ".join(EPISODE_COLUMNS)
            subset.conn.execute(f"INSERT INTO episodes ({columns}) SELECT {columns} FROM shard.episodes WHERE "
                                "episode_index < 2")
            copy_figures(subset.conn, "shard", "e.method = ? AND e.episode_index < ?", ("sgg", 2))
        subset.conn.execute("DETACH DATABASE shard")
        assert [r["figures"] for r in subset.episodes(method="sgg")] == [_expected(v) for v in SGG_VALUES[:2]]


def test_the_committed_store_reads_sggs_figures():
    with ResultsStore(REPO / "leaderboard" / "results.sqlite", create=False) as store:
        declared = store.declarations()
        rows = store.episodes(method="sgg", task="banking77")
    assert declared["sgg"] == {f.name: f for f in SGG.figures}
    assert rows and all(r["figures"].get("sgg_mag_active") is not None for r in rows if r["status"] == "ok")


def test_the_isolation_column_names_every_level_of_the_rows_episodes(tmp_path):
    path = tmp_path / "s.sqlite"
    with ResultsStore(path) as store:
        for i, level in enumerate(["process", "in-process", "process"]):
            store.write_episode(record(episode_index=i, isolation=level))
            store.write_episode(record(method="old", episode_index=i, isolation=None))
    rows = {r["method"]: r for r in aggregate(path, bootstrap=100)}
    assert rows["full_ft"]["isolation"] == "in-process;process" and rows["old"]["isolation"] is None
    write_leaderboard(path, tmp_path / "lb.csv", bootstrap=100)
    board = _csv(tmp_path / "lb.csv")
    assert check_csv(tmp_path / "lb.csv", path)[0] == []
    problems, _ = check_csv(_write_csv(tmp_path / "t.csv", [{**board[0], "isolation": "root"}, *board[1:]]), path)
    assert "isolation: 'root'" in problems[0] and ISOLATION_LEVELS[0] in problems[0], problems


def test_a_schema_5_leaderboard_is_named(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text(",".join(_SCHEMA_5) + "\n", encoding="utf-8")
    (problem,) = check_csv(path)[0]
    assert "a schema 5 leaderboard (SGG's figures among the core columns, no isolation)" in problem
