"""fewshot-bench reproduce: a seeded sample of stored episodes re-run here agrees with the store; a changed stored
result is reported as drift (exit 1) with the environment differences; bad input is one line."""
import hashlib
import json
import logging
import re
import sqlite3

import pytest

from fewshot_bench.cli import main
from fewshot_bench.execution.reproduce import sample_episodes
from fewshot_bench.store.results import ResultsStore

from helpers import REPO, shared_data_dir

METHODS = "protonet,full_ft(steps=2),maml(meta_steps=2)"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("reproduce") / "s.sqlite"
    assert main(["run", "--tasks", "demo_intents", "--methods", METHODS, "--n-way", "5", "--k-shot", "1",
                 "--episodes", "3", "--backbone", "tiny-encoder", "--store", str(path), "--out", ""]) == 0
    return path


def test_the_sample_is_seeded_and_per_method(store):
    with ResultsStore(store, create=False) as opened:
        records = opened.episodes()
    first, again = sample_episodes(records, 2, seed=0), sample_episodes(records, 2, seed=0)
    assert sorted(first) == sorted(["protonet", "full_ft(steps=2)", "maml(meta_steps=2)"])
    assert all(len(chosen) == 2 for chosen in first.values())
    assert {m: [r["episode_index"] for r in c] for m, c in first.items()} == \
           {m: [r["episode_index"] for r in c] for m, c in again.items()}
    assert len(sample_episodes(records, 10, seed=0)["protonet"]) == 3  # never more than stored


def test_a_store_reproduces_here(store, capsys, caplog):
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    with caplog.at_level(logging.INFO, logger="fewshot_bench.core.progress"):
        assert main(["reproduce", "--store", str(store), "--sample", "2"]) == 0
    out = capsys.readouterr().out
    progress = [r.getMessage() for r in caplog.records if r.name == "fewshot_bench.core.progress"]
    assert [line.split(" | ")[0] for line in progress] == [f"reproduce {n}/6 ({100 * n / 6:.0f}%)" for n in range(1, 7)]
    assert all("ETA" in line for line in progress)  # episodes done and ETA, per episode
    streamed, _, table = out.partition("\n\n")  # a line per method as it finishes, then the table
    for method in ("protonet", "full_ft(steps=2)", "maml(meta_steps=2)"):
        line = next(line for line in streamed.splitlines() if line.startswith(method + ": "))
        assert "episodes 2/2" in line and line.endswith("verdict ok")
    for method in ("protonet", "full_ft(steps=2)", "maml(meta_steps=2)"):
        line = next(line for line in out.splitlines() if line.startswith(method + " "))
        assert "100.0% of 150" in line and "2/2" in line and "+0.0000 [+0.0000, +0.0000]" in line and line.endswith("ok")
    assert "environment of full_ft(steps=2), maml(meta_steps=2), protonet: no recorded field differs\n" in out
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before  # the store is only read


def test_a_changed_result_is_drift_with_the_environment_differences(store, tmp_path, capsys):
    changed = tmp_path / "changed.sqlite"
    changed.write_bytes(store.read_bytes())
    with sqlite3.connect(changed) as conn:
        for rowid, predictions in conn.execute("SELECT rowid, predictions FROM episodes WHERE method = 'protonet'").fetchall():
            flipped = [(p + 1) % 5 for p in json.loads(predictions)[:30]] + json.loads(predictions)[30:]
            conn.execute("UPDATE episodes SET predictions = ?, accuracy = accuracy + 0.2 WHERE rowid = ?",
                         (json.dumps(flipped), rowid))
        (environment,) = conn.execute("SELECT environment_json FROM runs").fetchone()
        conn.execute("UPDATE runs SET environment_json = ?", (json.dumps({**json.loads(environment), "threads": "64",
                                                                         "torch": "1.0"}),))
    assert main(["reproduce", "--store", str(changed), "--sample", "2", "--methods", "protonet"]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("protonet "))
    assert "60.0% of 150" in line and "0/2" in line and "-0.2000" in line and line.endswith("DRIFT")
    assert "environment of protonet: differs (stored -> here): torch 1.0 -> " in out and "threads 64 -> " in out
    assert "not reproduced: protonet" in out
    assert main(["reproduce", "--store", str(changed), "--sample", "2", "--methods", "protonet",
                 "--tolerance", "0.5"]) == 0


def test_an_episode_whose_config_cannot_be_rebuilt_is_reported(store, tmp_path, capsys):
    changed = tmp_path / "changed.sqlite"
    changed.write_bytes(store.read_bytes())
    with sqlite3.connect(changed) as conn:
        conn.execute("UPDATE episodes SET config_hash = 'other' WHERE method = 'protonet'")
    assert main(["reproduce", "--store", str(changed), "--sample", "1", "--methods", "protonet"]) == 1
    out = capsys.readouterr().out
    assert "NOT RE-RUN" in out and "has its run hash" in out


@pytest.mark.parametrize("argv, message", [
    (["--sample", "0"], "--sample: 0 is not a positive integer"),
    (["--tolerance", "-1"], "--tolerance must be >= 0"),
    (["--methods", "protonett"], "did you mean 'protonet'"),
    (["--tuned", "missing.yaml"], "--tuned missing.yaml does not exist"),
])
def test_bad_input_is_one_line(store, capsys, argv, message):
    assert main(["reproduce", "--store", str(store), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_fields_an_earlier_store_did_not_record_are_named_apart(store, tmp_path, capsys):
    changed = tmp_path / "changed.sqlite"
    changed.write_bytes(store.read_bytes())
    with sqlite3.connect(changed) as conn:
        conn.execute("UPDATE runs SET environment_json = NULL")
    assert main(["reproduce", "--store", str(changed), "--sample", "1", "--methods", "protonet"]) == 0
    out = capsys.readouterr().out
    assert "environment of protonet: no recorded field differs; not recorded in the store: device_name, dtype, " \
           "threads, os" in out


def test_a_tuned_run_whose_file_moved_is_rebuilt_from_the_tuned_file_given(tmp_path, capsys):
    setting = "demo_intents/fold1/5way1shot15q"
    tuned, other = tmp_path / "tuned.yaml", tmp_path / "other.yaml"
    tuned.write_text(f"settings:\n  {setting}:\n    full_ft: {{tuned: true, overrides: {{steps: 3}}}}\n")
    other.write_text(f"settings:\n  {setting}:\n    lora: {{tuned: true, overrides: {{steps: 3}}}}\n")
    store = tmp_path / "board" / "s.sqlite"
    assert main(["run", "--tasks", "demo_intents", "--methods", "full_ft", "--tuned", str(tuned), "--n-way", "5",
                 "--k-shot", "1", "--episodes", "1", "--backbone", "tiny-encoder", "--store", str(store),
                 "--out", ""]) == 0
    moved = tuned.rename(tmp_path / "moved.yaml")
    assert main(["reproduce", "--store", str(store), "--sample", "1"]) == 1
    assert f"its tuned file {tuned} is missing" in capsys.readouterr().out
    assert main(["reproduce", "--store", str(store), "--sample", "1", "--tuned", str(other), "--tuned", str(moved)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("full_ft[tuned] "))
    assert "100.0% of 75" in line and line.endswith("ok")
    (tmp_path / "board" / "tuning").mkdir()
    moved.rename(tmp_path / "board" / "tuning" / "chosen.yaml")  # beside the store (a subfolder): found without --tuned
    assert main(["reproduce", "--store", str(store), "--sample", "1"]) == 0


def test_predictions_that_do_not_come_out_again_are_drift_even_at_equal_accuracy(store, tmp_path, capsys):
    changed = tmp_path / "changed.sqlite"
    changed.write_bytes(store.read_bytes())
    with sqlite3.connect(changed) as conn:  # zeroed predictions, stored accuracy left as it was
        for rowid, predictions in conn.execute("SELECT rowid, predictions FROM episodes WHERE method = 'protonet'").fetchall():
            conn.execute("UPDATE episodes SET predictions = ? WHERE rowid = ?",
                         (json.dumps([0] * len(json.loads(predictions))), rowid))
    assert main(["reproduce", "--store", str(changed), "--sample", "3", "--methods", "protonet"]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("protonet "))
    assert "0/3" in line and "+0.0000" in line and line.endswith("DRIFT")
    drifted = [line for line in out.splitlines() if line.startswith("drifted: protonet demo_intents/fold1/5way1shot15q")]
    assert len(drifted) == 3 and all("stored predictions not reproduced" in line for line in drifted)
    assert "not reproduced: protonet" in out


def test_an_edited_fingerprint_is_drift(store, tmp_path, capsys):
    changed = tmp_path / "changed.sqlite"
    changed.write_bytes(store.read_bytes())
    with sqlite3.connect(changed) as conn:
        conn.execute("UPDATE episodes SET fingerprint = ? WHERE method = 'protonet' AND episode_index = 0", ("ab" * 32,))
    assert main(["reproduce", "--store", str(changed), "--sample", "3", "--methods", "protonet"]) == 1
    out = capsys.readouterr().out
    assert "drifted: protonet demo_intents/fold1/5way1shot15q (tiny-encoder) episode 0: stored fingerprint abababababab" \
           in out and "differs from the regenerated episode's" in out
    line = next(line for line in out.splitlines() if line.startswith("protonet "))
    assert line.endswith("DRIFT")


def test_a_store_of_another_schema_is_one_line(tmp_path, capsys):
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE episodes (a, b)")
        conn.execute("CREATE TABLE runs (run_id TEXT)")
    assert main(["reproduce", "--store", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(foreign) in err and "lacks column(s) run_id" in err


def test_two_frozen_methods_of_the_committed_store_reproduce_with_a_verdict(tmp_path, capsys, monkeypatch):
    """The README's audit command: a sampled episode each of protonet and linear_probe, re-run from (a copy of) the
    committed store, with a line per method and the table's verdicts."""
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", str(shared_data_dir()))
    store = tmp_path / "results.sqlite"
    source, copy = sqlite3.connect(f"file:{REPO / 'leaderboard' / 'results.sqlite'}?mode=ro", uri=True), \
        sqlite3.connect(store)
    source.backup(copy)  # a consistent snapshot, even while a campaign merges into the committed file
    source.close()
    copy.close()
    assert main(["reproduce", "--sample", "1", "--methods", "protonet,linear_probe", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    for method in ("protonet", "linear_probe"):
        assert any(line.startswith(f"{method}: episodes 1/1") and line.endswith("verdict ok")
                   for line in out.splitlines())
        assert re.search(rf"^{method} +1/1 +100\.0% of \d+ +1/1 .* ok$", out, re.M)


def test_a_rerun_uses_the_stored_runs_isolation(tmp_path, capsys, monkeypatch):
    """A method that predicts one class in a worker process and another in the harness's process: stored under
    ``--isolation process``, it reproduces only when reproduce runs it in a worker as run did."""
    method_file = tmp_path / "where.py"
    method_file.write_text(
        "import multiprocessing\nimport torch\nfrom fewshot_bench.methods import Method, Predictor\n\n\n"
        "class Where(Method):\n    name = 'where'\n\n    def adapt(self, ctx):\n"
        "        label = 0 if multiprocessing.parent_process() is not None else 1\n"
        "        return Predictor(lambda batch: torch.nn.functional.one_hot(\n"
        "            torch.full((len(batch.input_ids),), label), ctx.episode.n_way).float())\n")
    path = tmp_path / "s.sqlite"
    assert main(["run", "--tasks", "demo_intents", "--methods", f"{method_file}:Where", "--n-way", "5",
                 "--k-shot", "1", "--episodes", "2", "--backbone", "tiny-encoder", "--isolation", "process",
                 "--store", str(path), "--out", ""]) == 0
    with ResultsStore(path, create=False) as opened:
        assert {tuple(set(r["predictions"])) for r in opened.episodes()} == {(0,)}
    capsys.readouterr()
    assert main(["reproduce", "--store", str(path), "--sample", "2"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("where "))
    assert "100.0% of" in line and line.endswith("ok")
    from fewshot_bench.execution import reproduce
    monkeypatch.setattr(reproduce, "sealed_worker", lambda *args: None)  # in the harness's process: not as stored
    assert main(["reproduce", "--store", str(path), "--sample", "2"]) == 1
    assert "drifted:" in capsys.readouterr().out


def test_the_restarts_of_a_run_reproduce_under_their_own_seeds(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    assert main(["run", "--tasks", "demo_intents", "--methods", "full_ft(steps=2)", "--n-way", "5", "--k-shot", "1",
                 "--episodes", "1", "--restarts", "3", "--backbone", "tiny-encoder", "--store", str(store),
                 "--out", ""]) == 0
    with ResultsStore(store, create=False) as opened:
        records = opened.episodes()
    assert sorted(r.get("restart") or 0 for r in records) == [0, 1, 2]
    assert len({tuple(r["predictions"]) for r in records}) > 1  # the restarts trained differently
    assert main(["reproduce", "--store", str(store), "--sample", "3"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("full_ft(steps=2) "))
    assert "100.0% of 225" in line and "3/3" in line and line.endswith("ok")
