"""Training restarts: `run --restarts R` stores R rows per episode (restart index, own store key), resumes, and
the leaderboard reports the mean over restarts, seed SD, failed-run share and paired seed-SD tests."""
import csv
import sqlite3

import numpy as np
import pytest

from fewshot_bench.cli import main
from fewshot_bench.analysis.compare import Entry
from fewshot_bench.analysis.restarts import FAILED_MARGIN, seed_sd_tests, seed_stability
from fewshot_bench.store.results import ResultsStore

from helpers import record


def test_a_restarts_run_stores_one_row_per_restart_and_the_leaderboard_shows_stability(tmp_path, capsys):
    store, out = tmp_path / "r.sqlite", tmp_path / "lb.csv"
    argv = ["run", "--tasks", "demo_intents", "--methods", "full_ft(steps=2),protonet", "--n-way", "5", "--k-shot",
            "1", "--episodes", "2", "--backbone", "tiny-encoder", "--store", str(store), "--out", str(out)]
    assert main(argv + ["--restarts", "3"]) == 0
    with sqlite3.connect(store) as conn:
        rows = conn.execute("SELECT method, episode_index, restart, config_hash FROM episodes").fetchall()
    assert len(rows) == 2 * 2 * 3
    for method in ("full_ft(steps=2)", "protonet"):
        for index in (0, 1):
            assert sorted(r[2] for r in rows if r[:2] == (method, index)) == [0, 1, 2]
        assert len({r[3] for r in rows if r[0] == method}) == 3  # each restart its own store key
    board = {r["method"]: r for r in csv.DictReader(out.open())}
    assert board["full_ft(steps=2)"]["restarts"] == "3" and board["full_ft(steps=2)"]["seed_sd"] != ""
    assert float(board["protonet"]["seed_sd"]) == 0  # no training: every restart predicts alike
    assert 0 <= float(board["full_ft(steps=2)"]["failed_run_share"]) <= 1
    assert "## Stability over training restarts" in (tmp_path / "lb.md").read_text()
    assert board["full_ft(steps=2)"]["acc_class_ci95_low"] != ""  # classes stored with the episodes
    assert main(["validate", str(out)]) == 0 and main(["validate", str(store)]) == 0
    capsys.readouterr()
    assert main(argv) == 0  # without --restarts: restart 0 is the plain run's episode, already stored
    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT COUNT(*) FROM episodes").fetchone()[0] == 12


def test_a_store_without_restarts_reads_as_restart_zero(tmp_path):
    path = tmp_path / "old.sqlite"
    with ResultsStore(path) as store:
        for i in range(3):
            store.write_episode(record(episode_index=i, accuracy=0.5 + 0.1 * i, restart=None))  # as before restarts
    out = tmp_path / "lb.csv"
    assert main(["leaderboard", "--store", str(path), "--out", str(out), "--bootstrap", "100"]) == 0
    row = next(csv.DictReader(out.open()))
    assert (row["restarts"], row["seed_sd"], row["failed_run_share"]) == ("1", "", "0.0")
    assert "Stability over training restarts" not in (tmp_path / "lb.md").read_text()


def _runs(accuracies, status="ok"):
    return [dict(restart=r, status=status, accuracy=a) for r, a in enumerate(accuracies)]


def test_seed_stability_on_known_numbers():
    chance = 1 / 5
    runs = {"e0": _runs([0.6, 0.8, 0.7]), "e1": _runs([0.5, 0.5, chance + FAILED_MARGIN]),
            "e2": _runs([0.9]) + [dict(restart=1, status="failed", accuracy=None)]}
    restarts, seed_sd, failed, sds = seed_stability(runs, 5)
    assert restarts == 2 + 1 and set(sds) == {"e0", "e1"}
    assert sds["e0"] == pytest.approx(0.1) and sds["e1"] == pytest.approx(np.std([0.5, 0.5, 0.25], ddof=1))
    assert seed_sd == pytest.approx(np.median([sds["e0"], sds["e1"]]))
    assert failed == pytest.approx(2 / 8)  # the run at chance + margin and the crashed one


def test_paired_seed_sd_test_finds_the_less_stable_method():
    rng = np.random.default_rng(0)
    fingerprints = [f"f{i}" for i in range(30)]
    stable = {f: float(s) for f, s in zip(fingerprints, rng.uniform(0.01, 0.02, 30))}
    shaky = {f: s + 0.03 for f, s in stable.items()}
    cell = ("demo", "demo/fold1/5way1shot15q", "minilm")
    entries = [Entry(cell, {"method": m}, {}, {}, frozenset(fingerprints), seed_sd=sd)
               for m, sd in (("a", stable), ("b", shaky), ("c", dict(stable)))]
    tests = {(t["a"], t["b"]): t for t in seed_sd_tests(entries)}
    assert tests[("a", "b")]["median_diff"] == pytest.approx(-0.03) and tests[("a", "b")]["p_holm"] < 0.05
    assert tests[("b", "c")]["p_holm"] < 0.05 and tests[("a", "c")]["p"] == 1.0
