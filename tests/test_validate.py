"""validate: a leaderboard CSV from `leaderboard` passes; each kind of broken file is named; store checks; the
recomputing checks (episodes regenerated, scores recomputed, the CSV against the leaderboard of its store) name each
kind of tampering."""
import argparse
import csv
import json
import shutil
import sqlite3

import pytest

from fewshot_bench.cli import main
from fewshot_bench.store.schema import COLUMNS
from fewshot_bench.report.leaderboard import aggregate, write_csv
from fewshot_bench.store.results import ResultsStore
from fewshot_bench.report.validate import validate_store
from fewshot_bench.report.validate_csv import validate_csv

from helpers import build_store, record


@pytest.fixture
def good(tmp_path):
    """(store path, CSV path, rows of the CSV as dicts); the CSV is compared with the store beside it."""
    store = tmp_path / "results.sqlite"
    build_store(store)
    with sqlite3.connect(store) as conn:  # what `run` records and helpers.build_store leaves out
        conn.execute("INSERT INTO runs (run_id, config_json) VALUES ('run0', '{}')")
        conn.execute("UPDATE episodes SET error = 'RuntimeError: boom' WHERE status = 'failed'")
    out = tmp_path / "good.csv"
    write_csv(aggregate(store), out)
    with open(out, newline="") as handle:
        return store, out, list(csv.DictReader(handle))


def _write(path, rows, columns=COLUMNS):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _row(rows, method):
    return next(r for r in rows if r["method"] == method)


def test_good_csv_and_store_pass(good, capsys):
    store, out, rows = good
    assert validate_csv(out) == [] and validate_store(store) == []
    assert main(["validate", str(out)]) == 0
    assert f"OK: {out} ({len(rows)} rows checked)" in capsys.readouterr().out
    assert main(["validate", str(store)]) == 0
    assert "OK:" in capsys.readouterr().out


def _full_ft_ci_excludes_mean(rows):
    _row(rows, "full_ft")["acc_ci95_high"] = "0.5"


def _accuracy_above_one(rows):
    _row(rows, "full_ft").update(acc_mean="1.5", acc_ci95_high="1.6")


def _inconsistent_counts(rows):
    _row(rows, "protonet")["episodes"] = "12"


def _formula_cell(rows):
    _row(rows, "full_ft")["backbone"] = "@SUM(A1)"


def _wrong_rank(rows):
    _row(rows, "protonet")["rank"] = "1"


def _p_holm_above_one(rows):
    _row(rows, "protonet")["p_holm"] = "1.5"


def _rank_group_contradicts_p(rows):  # protonet loses to full_ft significantly, yet claims the first group
    _row(rows, "protonet").update(rank="1", rank_group="1", beaten_by="")


def _beaten_although_not_significant(rows):
    _row(rows, "protonet").update(p_holm="0.5")


def _delta_outside_its_ci(rows):
    _row(rows, "protonet")["delta_vs_ref"] = "0.3"


def _holm_below_raw_p(rows):
    _row(rows, "protonet")["p_holm"] = "0.001"


def _duplicated_row(rows):
    rows.append(dict(_row(rows, "maml")))


def _beaten_by_a_stranger(rows):
    _row(rows, "maml").update(rank="4", rank_group="4", beaten_by="full_ft;nobody;protonet")


def _saturated_claimed(rows):
    _row(rows, "protonet")["flags"] = "saturated"


def _unfinished_hidden(rows):
    _row(rows, "protonet").update(episodes_planned="20")


@pytest.mark.parametrize("corrupt, expected", [
    (_full_ft_ci_excludes_mean, "acc_mean: CI [0.6"),
    (_accuracy_above_one, "acc_mean: 1.5 out of range"),
    (_inconsistent_counts, "episodes: 12 (expected 10 like the other rows"),
    (_formula_cell, "backbone: '@SUM(A1)' starts with a formula character"),
    (_wrong_rank, "rank: 1 (expected 2"),
    (_p_holm_above_one, "p_holm: 1.5 out of range"),
    (_rank_group_contradicts_p, "rank_group: contradicts p_holm 0.011719 and delta_vs_ref -0.2"),
    (_beaten_although_not_significant, "rank_group: contradicts p_holm 0.5"),
    (_delta_outside_its_ci, "delta_vs_ref: CI [-0.2"),
    (_holm_below_raw_p, "p_holm: 0.001 < p_value 0.003906"),
    (_duplicated_row, "method: 'maml' duplicates the row"),
    (_beaten_by_a_stranger, "beaten_by: nobody not in this cell"),
    (_saturated_claimed, "flags: 'saturated' set (expected it exactly when every acc_mean >= 0.97"),
    (_unfinished_hidden, "flags: 'unfinished' missing (expected it exactly when episodes < episodes_planned)"),
])
def test_bad_csv_is_named(good, tmp_path, capsys, corrupt, expected):
    _, _, rows = good
    corrupt(rows)
    bad = _write(tmp_path / "bad.csv", rows)
    problems = validate_csv(bad)
    assert any(expected in problem for problem in problems), problems
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert expected in out and "INVALID:" in out and f"{bad}:" in out


def test_wrong_column_order(good, tmp_path, capsys):
    _, _, rows = good
    columns = list(COLUMNS)
    columns[1], columns[2] = columns[2], columns[1]
    bad = _write(tmp_path / "order.csv", rows, columns)
    assert main(["validate", str(bad)]) == 1
    assert f"{bad}:1: header: column 2 is 'protocol' (expected 'method')" in capsys.readouterr().out


def test_schema_1_leaderboard_is_named(good, tmp_path, capsys):
    _, _, rows = good
    old = _write(tmp_path / "old.csv", [{c: r[c] for c in COLUMNS[:23]} for r in rows], COLUMNS[:23])
    assert main(["validate", str(old)]) == 1
    assert "a schema 1 leaderboard" in capsys.readouterr().out


def test_store_with_mismatched_fingerprints(good, tmp_path):
    store = tmp_path / "bad.sqlite"
    with ResultsStore(store) as results:
        results.write_episode(record(method="a", episode_index=0))
        results.write_episode(record(method="b", episode_index=0, fingerprint="f" * 64))
        results.write_episode(record(method="c", episode_index=1, accuracy=None))
    problems = validate_store(store)
    assert len(problems) == 2
    assert "fingerprint: b saw a different episode 0" in problems[0]
    assert "accuracy: empty for an ok episode" in problems[1]
    assert main(["validate", str(store)]) == 1


def _planned_store(path, episodes=3):
    """A store whose run config plans ``episodes`` episodes; returns (store, run_id)."""
    store = ResultsStore(path)
    return store, store.start_run({"episodes": episodes, "limit": None}, device="cpu", seed=0)


def test_store_episode_counts_against_the_run_config(tmp_path):
    store, run_id = _planned_store(tmp_path / "missing.sqlite")
    with store:
        for index in (0, 2):
            store.write_episode(record(run_id=run_id, episode_index=index))
    problems = validate_store(tmp_path / "missing.sqlite")
    assert len(problems) == 1 and "full_ft on demo/fold1/5way5shot15q" in problems[0]
    assert "lacks episode(s) 1 of the 3 its run config plans" in problems[0]


def test_store_row_built_from_mixed_configs(tmp_path):
    store, run_id = _planned_store(tmp_path / "mixed.sqlite", episodes=2)
    with store:
        store.write_episode(record(run_id=run_id, episode_index=0, config_hash="cfgA"))
        store.write_episode(record(run_id=run_id, episode_index=1, config_hash="cfgB"))
        store.write_episode(record(run_id=run_id, episode_index=0, config_hash="cfgB"))
    problems = validate_store(tmp_path / "mixed.sqlite")  # the latest rows: all cfgB, but cfgA lacks episode 1
    assert problems == [problem for problem in problems if "cfgA" in problem and "lacks episode(s) 1" in problem]
    with ResultsStore(tmp_path / "mixed.sqlite") as store:  # now the newer cfgA row covers episode 1
        store.write_episode(record(run_id=run_id, episode_index=1, config_hash="cfgA"))
        store.conn.execute("UPDATE episodes SET created_at = '2000-01-01' WHERE config_hash = 'cfgA' AND episode_index = 0")
        store.conn.commit()
    problems = validate_store(tmp_path / "mixed.sqlite")
    assert len(problems) == 1 and "pools episodes of 2 run configs (cfgA, cfgB)" in problems[0]


@pytest.mark.parametrize("column, value", [("grad_dir_consistency", 1.5), ("path_efficiency", -0.1),
                                           ("wall_seconds", -1.0), ("macro_f1", 2.0), ("steps", -3)])
def test_store_metric_out_of_range(tmp_path, column, value):
    with ResultsStore(tmp_path / "range.sqlite") as store:
        store.write_episode(record(**{column: value}))
    problems = validate_store(tmp_path / "range.sqlite")
    assert len(problems) == 1 and f"{column}: {value} out of range" in problems[0]


def test_damaged_store_is_one_line(tmp_path, capsys):
    path = tmp_path / "damaged.sqlite"
    with ResultsStore(path) as store:
        for index in range(200):
            store.write_episode(record(episode_index=index, error="x" * 200))
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xff" * (len(data) - 4096)  # every page after the schema page
    path.write_bytes(bytes(data))
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and "cannot be read as SQLite" in out[0] and out[1] == "INVALID: 1 problem(s)"


def test_missing_or_unreadable_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database")
    assert main(["validate", str(junk)]) == 1
    assert "cannot be read as SQLite" in capsys.readouterr().out


def test_committed_v1_leaderboard_is_valid(capsys):
    """`fewshot-bench validate` passes on the 0.1 leaderboard kept in leaderboard/v1/."""
    from helpers import REPO

    assert main(["validate", str(REPO / "leaderboard" / "v1" / "leaderboard.csv")]) == 0, capsys.readouterr().out


def test_committed_v1_store_problems_are_the_known_source_alignment_values():
    """The v1 store holds three episodes whose source_alignment (a mean of cosines) exceeds 1, which
    validate must report (see leaderboard/v1/README.md); nothing else in it is invalid."""
    from helpers import REPO

    problems = validate_store(REPO / "leaderboard" / "v1" / "results.sqlite")
    assert len(problems) == 3 and all("source_alignment: 1." in p and "out of range" in p for p in problems), problems


# --- recomputation: a small real run on demo_intents, tampered ----------------------------------------------------

@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A real run (protonet, full_ft(steps=2), 3 episodes, tiny backbone): results.sqlite + leaderboard.csv."""
    folder = tmp_path_factory.mktemp("real")
    assert main(["run", "--tasks", "demo_intents", "--methods", "protonet,full_ft(steps=2)", "--n-way", "5",
                 "--k-shot", "1", "--episodes", "3", "--backbone", "tiny-encoder", "--device", "cpu",
                 "--store", str(folder / "results.sqlite"), "--out", str(folder / "leaderboard.csv")]) == 0
    return folder


@pytest.fixture
def copy(real, tmp_path):
    """A copy of the real run's store and CSV (the originals stay untouched)."""
    for name in ("results.sqlite", "leaderboard.csv"):
        shutil.copy(real / name, tmp_path / name)
    return tmp_path / "results.sqlite", tmp_path / "leaderboard.csv"


def _sql(store, *statements):
    with sqlite3.connect(store) as conn:
        for statement in statements:
            conn.execute(statement)


def _tamper_csv(path, change):
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    change(rows)
    _write(path, rows)


def test_the_real_run_validates_with_its_store(copy, capsys):
    store, out = copy
    assert main(["validate", str(store)]) == 0, capsys.readouterr().out
    assert main(["validate", str(out)]) == 0, capsys.readouterr().out
    text = capsys.readouterr().out
    assert "comparing" in text and f"OK: {out} (2 rows checked)" in text


def _zero_predictions(store):
    with sqlite3.connect(store) as conn:
        for rowid, predictions in conn.execute("SELECT rowid, predictions FROM episodes WHERE method = 'protonet'"
                                               ).fetchall():
            conn.execute("UPDATE episodes SET predictions = ? WHERE rowid = ?",
                         (json.dumps([0] * len(json.loads(predictions))), rowid))


STORE_TAMPERINGS = [
    ("predictions zeroed", _zero_predictions, "accuracy: stored"),
    ("accuracy +0.1", lambda s: _sql(s, "UPDATE episodes SET accuracy = accuracy + 0.1 WHERE rowid = "
                                        "(SELECT MIN(rowid) FROM episodes WHERE accuracy <= 0.9)"), "accuracy: stored"),
    ("ok -> diverged", lambda s: _sql(s, "UPDATE episodes SET status = 'diverged' WHERE rowid = 1"),
     "error: empty for a diverged episode"),
    ("rows copied as a method", lambda s: _sql(
        s, "CREATE TEMP TABLE t AS SELECT * FROM episodes WHERE method = 'protonet'", "UPDATE t SET method = 'copycat'",
        "INSERT INTO episodes SELECT * FROM t"),
     "byte-identical rows in everything but the method name"),
    ("method renamed", lambda s: _sql(s, "UPDATE episodes SET method = 'protonet2' WHERE method = 'protonet'"),
     "method: 'protonet2' is not a method of its run"),
    ("runs emptied", lambda s: _sql(s, "DELETE FROM runs"), "is not in the runs table"),
    ("fingerprint edited", lambda s: _sql(s, "UPDATE episodes SET fingerprint = '" + "ab" * 32 + "' WHERE rowid = 1"),
     "differs from the regenerated episode's"),
]


@pytest.mark.parametrize("name, tamper, expected", STORE_TAMPERINGS, ids=[t[0] for t in STORE_TAMPERINGS])
def test_a_tampered_store_is_named(copy, capsys, name, tamper, expected):
    store, _ = copy
    tamper(store)
    assert main(["validate", str(store)]) == 1
    out = capsys.readouterr().out
    assert expected in out and "INVALID:" in out, out


def _add_fake_row(rows):
    rows.append({**rows[0], "method": "fake", "rank": "1"})


def _bump_acc(rows):
    rows[0]["acc_mean"] = f"{float(rows[0]['acc_mean']) - 0.01:.4f}"


def _widen_ci(rows):
    rows[0]["acc_ci95_low"] = f"{float(rows[0]['acc_ci95_low']) - 0.02:.4f}"


CSV_TAMPERINGS = [
    ("fake row", _add_fake_row, "fake on demo_intents/fold1/5way1shot15q (tiny-encoder) is not in the leaderboard"),
    ("acc_mean -0.01", _bump_acc, "acc_mean '"),
    ("widened CI", _widen_ci, "acc_ci95_low '"),
    ("episode_set_sha256 replaced", lambda rows: rows[0].update(episode_set_sha256="0" * 64), "episode_set_sha256 '0000"),
    ("row deleted", lambda rows: rows.pop(), "is missing (expected a row for every stored method"),
]


@pytest.mark.parametrize("name, tamper, expected", CSV_TAMPERINGS, ids=[t[0] for t in CSV_TAMPERINGS])
def test_a_tampered_csv_is_named(copy, capsys, name, tamper, expected):
    store, out = copy
    _tamper_csv(out, tamper)
    assert main(["validate", str(out)]) == 1
    text = capsys.readouterr().out
    assert expected in text and "INVALID:" in text, text


def test_a_method_deleted_from_the_store_is_a_missing_csv_row(copy, capsys):
    store, out = copy
    _sql(store, "DELETE FROM episodes WHERE method = 'protonet'")
    assert main(["validate", str(out)]) == 1
    assert "protonet on demo_intents/fold1/5way1shot15q (tiny-encoder) is not in the leaderboard" in capsys.readouterr().out


def test_store_and_csv_named_explicitly(copy, tmp_path, capsys):
    from fewshot_bench.cli.report_commands import cli_validate

    store, out = copy
    elsewhere = tmp_path / "elsewhere.csv"
    shutil.copy(out, elsewhere)
    assert cli_validate(argparse.Namespace(file=str(elsewhere), store=str(store), bootstrap=10000)) == 0
    assert cli_validate(argparse.Namespace(file=None, store=str(store), bootstrap=10000)) == 0
    _sql(store, "DELETE FROM runs")
    assert cli_validate(argparse.Namespace(file=str(elsewhere), store=str(store), bootstrap=10000)) == 1
    assert "is not in the runs table" in capsys.readouterr().out


def test_identical_predictions_are_a_warning_not_a_failure(copy, capsys):
    store, _ = copy  # another method with protonet's predictions but its own timings: a legit clone
    _sql(store, "CREATE TEMP TABLE t AS SELECT * FROM episodes WHERE method = 'protonet'",
         "UPDATE t SET method = 'full_ft', config_hash = 'clone', wall_seconds = wall_seconds + 1",
         "INSERT INTO episodes SELECT * FROM t")
    main(["validate", str(store)])
    out = capsys.readouterr().out
    assert "warning:" in out and "have identical predictions on all 3 episodes" in out
    assert "byte-identical" not in out


def test_without_the_data_the_skipped_checks_are_one_line(copy, capsys, monkeypatch):
    import fewshot_bench.data.loading as data

    store, _ = copy
    monkeypatch.setattr(data, "local_copy", lambda name: False)
    assert main(["validate", str(store)]) == 0  # newer rows store their query labels: scores still recomputed
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: not regenerated")]
    assert len(notes) == 1 and "demo_intents" in notes[0]


def test_numpy_scores_equal_query_scores():
    import numpy as np
    from fewshot_bench.methods.metrics import query_scores
    from fewshot_bench.report.validate_recompute import scores

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 8))
        labels = rng.integers(0, n, int(rng.integers(1, 40)))
        predictions = rng.integers(0, n + 1, len(labels))
        a, b = query_scores(labels, predictions), scores(labels, predictions)
        assert abs(a["accuracy"] - b["accuracy"]) < 1e-12 and abs(a["macro_f1"] - b["macro_f1"]) < 1e-12


def test_episodes_beyond_the_run_plan_are_named(copy, capsys):
    store, _ = copy
    _sql(store, "CREATE TEMP TABLE t AS SELECT * FROM episodes WHERE method = 'protonet' AND episode_index = 0",
         "UPDATE t SET episode_index = 7", "INSERT INTO episodes SELECT * FROM t")
    assert main(["validate", str(store)]) == 1
    assert "holds episode(s) 7 beyond the 3 its run configs plan" in capsys.readouterr().out
