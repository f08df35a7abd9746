"""validate: a leaderboard CSV from `leaderboard` passes; each kind of broken file is named; store checks."""
import csv

import pytest

from fewshot_bench.cli import main
from fewshot_bench.leaderboard import COLUMNS, aggregate, write_csv
from fewshot_bench.store import ResultsStore
from fewshot_bench.validate import validate_csv, validate_store

from helpers import build_store, record


@pytest.fixture
def good(tmp_path):
    """(store path, CSV path, rows of the CSV as dicts)."""
    store = tmp_path / "results.sqlite"
    build_store(store)
    out = tmp_path / "good.csv"
    write_csv(aggregate(store, bootstrap=200), out)
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


@pytest.mark.parametrize("corrupt, expected", [
    (_full_ft_ci_excludes_mean, "acc_mean: CI [0.6"),
    (_accuracy_above_one, "acc_mean: 1.5 out of range"),
    (_inconsistent_counts, "episodes: 12 (expected 10 like the other rows"),
    (_formula_cell, "backbone: '@SUM(A1)' starts with a formula character"),
    (_wrong_rank, "rank: 1 (expected 2"),
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


def test_missing_or_unreadable_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database")
    assert main(["validate", str(junk)]) == 1
    assert "cannot be read as SQLite" in capsys.readouterr().out


def test_committed_leaderboard_and_store_are_valid(capsys):
    """`fewshot-bench validate` passes on the leaderboard committed in leaderboard/ and on its store."""
    from helpers import REPO

    assert main(["validate", str(REPO / "leaderboard" / "leaderboard.csv")]) == 0, capsys.readouterr().out
    assert main(["validate", str(REPO / "leaderboard" / "results.sqlite")]) == 0, capsys.readouterr().out
