"""fewshot_bench.evaluate: the Python entry point (README "From Python"), the same loop and store as `run`."""
import os
import re
import sqlite3
import subprocess
import sys

import pytest

import fewshot_bench as fb
from fewshot_bench.core.errors import UserError

from helpers import REPO

TINY = dict(backbone="tiny-encoder", device="cpu", isolation="in-process", threads=1)


def readme_python(name: str) -> str:
    """The README's ```python block whose first line is `# NAME`."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(rf"```python\n# {re.escape(name)}\n(.*?)```", readme, re.S)
    return block


def test_readme_example_runs_as_written(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FEWSHOT_BENCH_DATA"}  # the packaged demo task
    done = subprocess.run([sys.executable, "-c", readme_python("from_python.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [line for line in done.stdout.splitlines() if "linear_probe - protonet" in line]
    assert re.search(r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\], p [\d.e-]+ \(Holm [\d.e-]+\)", line), line
    assert "10 episodes;" in done.stdout
    assert list(tmp_path.iterdir()) == []  # the temporary store is not left in the working folder


def test_results_are_the_stored_episodes_and_compare_is_paired(tmp_path):
    store = tmp_path / "api.sqlite"
    results = fb.evaluate(["linear_probe", "protonet"], ["demo_intents"], n_way=3, k_shot=1, query=2, episodes=4,
                          store=store, **TINY)
    assert len(results) == 8 and {r["method"] for r in results.rows} == {"linear_probe", "protonet"}
    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT COUNT(*) FROM episodes").fetchone()[0] == 8
    accuracy = {(r["method"], r["episode_index"]): r["accuracy"] for r in results.rows}
    expected = sum(accuracy["linear_probe", i] - accuracy["protonet", i] for i in range(4)) / 4
    (row,) = results.compare("linear_probe", "protonet", bootstrap=200)
    assert row["episodes"] == 4 and row["delta"] == pytest.approx(expected)
    assert row["low"] <= row["delta"] <= row["high"] and 0 < row["p"] <= 1 and row["p_holm"] == row["p"]
    means = results.accuracy()
    assert means["protonet", row["setting"]] == pytest.approx(sum(accuracy["protonet", i] for i in range(4)) / 4)
    assert results.frame().shape[0] == 8


def test_a_given_store_is_resumed_not_recomputed(tmp_path, monkeypatch):
    store = tmp_path / "api.sqlite"
    first = fb.evaluate(["protonet"], ["demo_intents"], n_way=3, k_shot=1, query=2, episodes=3, store=store, **TINY)
    from fewshot_bench.execution import evaluate as loop

    def refuse(*args, **kwargs):
        raise AssertionError("a stored episode was evaluated again")

    monkeypatch.setattr(loop, "episode_record", refuse)
    again = fb.evaluate(["protonet"], ["demo_intents"], n_way=3, k_shot=1, query=2, episodes=3, store=store, **TINY)
    assert [r["predictions"] for r in again.rows] == [r["predictions"] for r in first.rows]


@pytest.mark.parametrize("options, named", [({"episodes": 0}, "episodes"), ({"colour": "red"}, "colour"),
                                            ({"isolation": "none"}, "isolation")])
def test_bad_options_raise_a_user_error_naming_them(tmp_path, options, named):
    values = {"n_way": 3, "k_shot": 1, "store": tmp_path / "s.sqlite", **TINY, **options}
    with pytest.raises(UserError, match=named):
        fb.evaluate(["protonet"], ["demo_intents"], **values)
    assert not (tmp_path / "s.sqlite").exists()


def test_the_isolation_default_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_BENCH_ISOLATION", "in-process")
    results = fb.evaluate(["protonet"], ["demo_intents"], n_way=3, k_shot=1, query=2, episodes=1,
                          store=tmp_path / "a.sqlite", backbone="tiny-encoder", device="cpu", threads=1)
    assert [r["isolation"] for r in results.rows] == ["in-process"]
    monkeypatch.setenv("FEWSHOT_BENCH_ISOLATION", "sealed-ish")
    with pytest.raises(UserError, match=r"\$FEWSHOT_BENCH_ISOLATION='sealed-ish' is not an isolation level"):
        fb.evaluate(["protonet"], ["demo_intents"], store=tmp_path / "b.sqlite", backbone="tiny-encoder")
