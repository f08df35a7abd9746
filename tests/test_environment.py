"""Environment fingerprint: recorded with every run, read from stores written before it existed, shown on the
leaderboard."""
import hashlib
import json
import sqlite3

import torch

from fewshot_bench.cli import main
from fewshot_bench.store.environment import FIELDS, NOT_RECORDED, differences, fingerprint, of_run, store_environments
from fewshot_bench.store.results import ResultsStore
from fewshot_bench.report.validate import validate_store

from helpers import build_store, record


def test_fingerprint_names_versions_device_dtype_threads_and_os():
    env = fingerprint("cpu", torch.bfloat16)
    assert set(env) == set(FIELDS) and all(isinstance(v, str) and v for v in env.values())
    assert env["torch"] == torch.__version__ and env["dtype"] == "bfloat16" and env["device"] == "cpu"
    assert env["threads"] == str(torch.get_num_threads()) and fingerprint("cpu")["dtype"] == "float32"
    other = {**env, "torch": "0.0", "threads": "64"}
    assert differences(env, other) == [("torch", env["torch"], "0.0"), ("threads", env["threads"], "64")]


def test_a_run_records_its_environment(tmp_path):
    run_cmd = ["run", "--tasks", "demo_intents", "--methods", "protonet", "--n-way", "5", "--k-shot", "1",
               "--episodes", "1", "--backbone", "tiny-encoder", "--store", str(tmp_path / "s.sqlite"), "--out", ""]
    assert main(run_cmd) == 0
    with ResultsStore(tmp_path / "s.sqlite", create=False) as store:
        (run,) = store.runs()
    stored = json.loads(run["environment_json"])
    assert stored == of_run(run) and stored["device"] == "cpu" and stored["dtype"] == "float32"
    assert stored["threads"] == str(torch.get_num_threads())


def test_an_earlier_store_without_the_column_is_read_unchanged_and_shown(tmp_path, capsys):
    path = tmp_path / "old.sqlite"
    build_store(path, episodes=4)
    with ResultsStore(path) as store:
        store.start_run({"episodes": 4}, "cpu", 0)
    with sqlite3.connect(path) as conn:  # the runs table of a store written before environment_json existed
        conn.execute("ALTER TABLE runs DROP COLUMN environment_json")
        conn.execute("UPDATE episodes SET run_id = (SELECT run_id FROM runs)")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    assert validate_store(path) == []  # the column is not required of a store written before it
    (entry,) = store_environments(path)
    env = entry["environment"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["threads"] == NOT_RECORDED
    assert entry["runs"] == 1 and entry["episodes"]["full_ft"] == 4
    out = tmp_path / "board.csv"
    assert main(["leaderboard", "--store", str(path), "--out", str(out), "--bootstrap", "100"]) == 0
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # a reader leaves the file as it is
    markdown = (tmp_path / "board.md").read_text()
    assert "## Environment" in markdown and f"torch {torch.__version__}" in markdown
    assert "threads not recorded" in markdown and "full_ft (4)" in markdown
    with ResultsStore(path) as store:  # a writer adds the column; the old run reads as NULL there
        assert store.runs()[0]["environment_json"] is None


def test_merge_copies_the_environment_and_accepts_an_older_shard(tmp_path):
    new, old = tmp_path / "new.sqlite", tmp_path / "old.sqlite"
    with ResultsStore(new) as store:
        store.start_run({"a": 1}, "cpu", 0, environment=fingerprint("cpu"))
        store.write_episode(record())
    with ResultsStore(old) as store:
        store.start_run({"a": 2}, "cpu", 0)
        store.write_episode(record(episode_index=1))
    with sqlite3.connect(old) as conn:
        conn.execute("ALTER TABLE runs DROP COLUMN environment_json")
    with ResultsStore(tmp_path / "merged.sqlite") as store:
        assert store.merge_from([new, old]) == 2
        recorded = [run["environment_json"] for run in store.runs()]
    assert sorted(map(bool, recorded)) == [False, True]
