"""Following a run in a log: progress lines without a terminal, and timings that mean one thing."""
import io
import logging
import sqlite3

import pytest

from fewshot_bench.cli import main
from fewshot_bench.core.progress import Progress
from fewshot_bench.store.results import KEY_COLUMNS, ResultsStore
from fewshot_bench.store.tables import EPISODE_TYPES

from helpers import record

TINY = ["--backbone", "tiny-encoder", "--tasks", "demo_intents", "--query", "2", "--seed", "0", "--k-shot", "1",
        "--out", ""]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", "")
    monkeypatch.setenv("FEWSHOT_BENCH_CACHE", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "fewshot_bench.core.progress"]


def test_lines_every_n_units_or_m_seconds_with_an_eta_from_work_done_here(caplog):
    clock = Clock()
    progress = Progress(10, "episodes", every=4, interval=30, stream=io.StringIO(), clock=clock)
    progress.skip(2)  # resumed: counted as done, not in the rate
    progress.set_current("full_ft | demo")
    for _ in range(2):
        clock.now += 10
        progress.update()
    assert _lines(caplog) == ["episodes 4/10 (40%) | full_ft | demo | elapsed 00:20 | ETA 01:00"]
    clock.now += 31  # the interval passes before the next 4 units
    progress.update()
    assert _lines(caplog)[-1] == "episodes 5/10 (50%) | full_ft | demo | elapsed 00:51 | ETA 01:25"
    progress.close()  # nothing new since the last line: no repeat
    assert len(_lines(caplog)) == 2
    progress.update()
    progress.close()  # a final line for the unit done after the last one
    assert len(_lines(caplog)) == 3 and _lines(caplog)[-1].startswith("episodes 6/10 (60%)")


def test_with_estimated_costs_the_eta_weighs_the_units_left(caplog):
    """Two cheap units (1 s estimated) done first in 2 s each, eight dear ones (10 s estimated) left: the ETA is the
    dear units' 80 estimated seconds at the measured 2x, not 8 units at the cheap units' pace."""
    clock = Clock()
    progress = Progress(10, "episodes", every=2, interval=600, stream=io.StringIO(), clock=clock, total_cost=82.0)
    for _ in range(2):
        clock.now += 2
        progress.update(1, cost=1.0)
    assert _lines(caplog) == ["episodes 2/10 (20%) | elapsed 00:04 | ETA 02:40"]


def test_terminal_gets_a_bar_and_no_lines(caplog):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    with Progress(3, "episodes", every=1, stream=stream) as progress:
        progress.update(3)
    assert _lines(caplog) == [] and "3/3" in stream.getvalue()


def _rows(path):
    with ResultsStore(path) as store:
        return store.episodes()


def test_captured_run_logs_progress_and_keeps_cache_fill_out_of_episode_time(tmp_path, caplog):
    store = tmp_path / "s.sqlite"
    assert main(["run", *TINY, "--methods", "protonet,full_ft", "--episodes", "2",
                 "--method-config", "full_ft.steps=1", "--store", str(store)]) == 0
    lines = _lines(caplog)
    assert [line.split(" | ")[0] for line in lines] == [f"episodes {i}/4 ({25 * i}%)" for i in range(1, 5)]
    assert lines[0].split(" | ")[1:3] == ["protonet", "demo_intents/fold1/5way1shot2q"]
    assert lines[-1].split(" | ")[1] == "full_ft(steps=1)" and lines[-1].endswith("ETA 00:00")
    rows = {(r["method"], r["episode_index"]): r for r in _rows(store)}
    # protonet's first episode embeds its texts into the run's cache: recorded apart from wall_seconds
    assert rows["protonet", 0]["embedding_cache_seconds"] > 0
    assert all(rows["full_ft(steps=1)", i]["embedding_cache_seconds"] == 0 for i in range(2))
    assert all(r["meta_train_seconds"] is None and r["wall_seconds"] > 0 for r in rows.values())


def test_meta_training_progress_and_wall_time_per_cell(tmp_path, caplog):
    # in-process: the meta-training progress lines are logged where the method runs (a sealed worker logs them to
    # its own stderr, which this log capture does not see)
    args = [*TINY, "--methods", "fomaml", "--episodes", "1", "--method-config", "fomaml.meta_steps=2",
            "--isolation", "in-process"]
    assert main(["run", *args, "--store", str(tmp_path / "a.sqlite")]) == 0
    assert any(line.startswith("meta-train fomaml 2/2 (100%) | query_loss=") for line in _lines(caplog))
    trained = _rows(tmp_path / "a.sqlite")[0]["meta_train_seconds"]
    assert trained > 0
    caplog.clear()
    # a second run loads the cached weights: the cell keeps the wall time of the training that made them
    assert main(["run", *args, "--store", str(tmp_path / "b.sqlite")]) == 0
    assert not any(line.startswith("meta-train fomaml") for line in _lines(caplog))
    assert _rows(tmp_path / "b.sqlite")[0]["meta_train_seconds"] == pytest.approx(trained)


def test_store_of_an_earlier_version_gets_the_timing_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        old_columns = {c: t for c, t in EPISODE_TYPES.items() if not c.endswith(("cache_seconds", "train_seconds"))}
        conn.execute(f"CREATE TABLE episodes ({', '.join(f'{c} {t}' for c, t in old_columns.items())}, "
                     f"UNIQUE ({', '.join(KEY_COLUMNS)}))")  # every store version had the unique episode key
    with ResultsStore(path) as store:
        store.write_episode(record())
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(episodes)")]
        assert conn.execute("SELECT embedding_cache_seconds, meta_train_seconds FROM episodes").fetchall() == [(0.0, 12.5)]
    assert columns[-2:] == ["embedding_cache_seconds", "meta_train_seconds"]
