"""CPU threads of a run: --threads, $OMP_NUM_THREADS, else idle cores split between this job's processes."""
import json
import os

import pytest
import torch

from fewshot_bench.core import threads
from fewshot_bench.cli import main
from fewshot_bench.store.results import ResultsStore


@pytest.fixture
def restore_threads():
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.mark.parametrize("cores, load, processes, expected", [(4, 0.0, "", 4), (4, 1.2, "", 3), (4, 1.2, "2", 1),
                                                              (2, 7.0, "", 1), (16, 0.3, "4", 4)])
def test_default_is_idle_cores_per_process(monkeypatch, cores, load, processes, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert threads.default_threads()[0] == expected


def test_omp_num_threads_wins_over_the_estimate(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(threads, "usable_cores", lambda: 64)
    assert threads.default_threads() == (3, "OMP_NUM_THREADS")


def test_run_sets_logs_and_stores_the_threads(tmp_path, monkeypatch, caplog, restore_threads):
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", "")
    store = tmp_path / "s.sqlite"
    argv = ["run", "--backbone", "tiny-encoder", "--tasks", "demo_intents", "--methods", "protonet", "--query", "2",
            "--episodes", "1", "--k-shot", "1", "--threads", "2", "--store", str(store), "--out", ""]
    with caplog.at_level("INFO", logger="fewshot_bench.core.threads"):
        assert main(argv) == 0
    assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
    assert "torch CPU threads: 2 (--threads)" in caplog.text
    with ResultsStore(str(store)) as opened:
        run = opened.runs()[0]
    assert json.loads(run["environment_json"])["threads"] == "2" and json.loads(run["config_json"])["threads"] == 2


def test_negative_threads_are_refused(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    assert main(["run", "--tasks", "demo_intents", "--threads", "-1", "--store", str(store), "--out", ""]) == 2
    assert "threads" in capsys.readouterr().err and not store.exists()
