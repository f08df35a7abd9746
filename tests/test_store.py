"""Results store: round trip, concurrent writers, crash atomicity, shard merge."""
import multiprocessing
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fewshot_bench.cli import main
from fewshot_bench.core.errors import UserError
from fewshot_bench.store.results import ResultsStore, config_hash
from fewshot_bench.store.tables import EPISODE_COLUMNS

from helpers import REPO, committed_rows, record


def test_round_trip_and_resume(tmp_path):
    with ResultsStore(tmp_path / "sub" / "store.sqlite") as store:
        run_id = store.start_run({"b": 1, "a": [1, 2]}, device="cpu", seed=0)
        assert store.write_episode(record(run_id=run_id, k_shot=(1, 5)))
        assert not store.write_episode(record(run_id=run_id, accuracy=0.1))  # same key: ignored
        store.write_episode(record(episode_index=3, status="failed", accuracy=None, error="boom"))
        store.end_run(run_id)
        rows = store.episodes(method="full_ft")
        assert [r["episode_index"] for r in rows] == [0, 3]
        assert rows[0]["predictions"] == [0, 1, 2] and rows[0]["extra"] == {"note": "x"}
        assert rows[0]["k_shot"] == "1-5" and rows[0]["accuracy"] == 0.8 and rows[0]["version"]
        # a failed episode is not done: it is retried, and the retry's row replaces the failed one
        assert store.done_indices("cfg0", "full_ft", "minilm", "demo", "demo/fold1/5way5shot15q") == {0}
        assert not store.write_episode(record(episode_index=3, status="failed", error="boom again"))
        assert store.write_episode(record(episode_index=3, accuracy=0.6))
        assert not store.write_episode(record(episode_index=3, status="failed", error="never replaces ok"))
        retried = store.episodes(episode_index=3)
        assert len(retried) == 1 and retried[0]["status"] == "ok" and retried[0]["accuracy"] == 0.6
        assert store.done_indices("cfg0", "full_ft", "minilm", "demo", "demo/fold1/5way5shot15q") == {0, 3}
        run = store.runs()[0]
        assert run["config_hash"] == config_hash({"a": [1, 2], "b": 1}) and run["ended_at"] and run["versions_json"]
        with pytest.raises(ValueError, match="bogus"):
            store.write_episode(record(bogus=1))
        with pytest.raises(ValueError, match="fingerprint"):
            store.write_episode(record(fingerprint=None))
        with pytest.raises(ValueError, match="nope"):
            store.episodes(nope=1)


def _writer(path, worker):
    with ResultsStore(path) as store:
        for index in range(worker * 10, worker * 10 + 30):  # overlaps the next two workers
            store.write_episode(record(episode_index=index, extra={"worker": worker}))


def test_concurrent_writers_never_duplicate(tmp_path):
    path = tmp_path / "store.sqlite"
    procs = [multiprocessing.Process(target=_writer, args=(path, w)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0] * 4
    with ResultsStore(path) as store:
        indices = [r["episode_index"] for r in store.episodes()]
    assert sorted(indices) == list(range(60))


_KILLED_WRITER = """
import sys
sys.path.insert(0, {tests!r})
from helpers import record
from fewshot_bench.store.results import ResultsStore
store = ResultsStore({path!r})
for i in range(10**7):
    store.write_episode(record(episode_index=i, predictions=list(range(200)), extra={{"pad": "x" * 2000}}))
"""


def test_killed_writer_leaves_only_complete_rows(tmp_path):
    path = tmp_path / "store.sqlite"
    code = _KILLED_WRITER.format(tests=str(Path(__file__).parent), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path)  # the installed package, not the source tree
    deadline = time.time() + 20
    while time.time() < deadline and committed_rows(path) < 50:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with ResultsStore(path) as store:
        rows = store.episodes()
    assert len(rows) >= 50
    assert all(row[c] is not None for row in rows for c in EPISODE_COLUMNS)
    assert all(len(row["predictions"]) == 200 for row in rows)
    assert sorted(r["episode_index"] for r in rows) == list(range(len(rows)))


def test_merge_shards(tmp_path, capsys):
    shard_a, shard_b, target = tmp_path / "a.sqlite", tmp_path / "b.sqlite", tmp_path / "merged.sqlite"
    with ResultsStore(shard_a) as a, ResultsStore(shard_b) as b:
        a.start_run({"shard": "a"}, "cpu", 0)
        for i in range(5):
            a.write_episode(record(episode_index=i))
        for i in range(3, 8):
            b.write_episode(record(episode_index=i))
    with ResultsStore(target) as store:
        assert store.merge_from([shard_a, shard_b]) == 8
        assert store.merge_from([shard_a, shard_b]) == 0
        assert sorted(r["episode_index"] for r in store.episodes()) == list(range(8))
        assert len(store.runs()) == 1
        with pytest.raises(UserError, match="missing.sqlite"):
            store.merge_from([tmp_path / "missing.sqlite"])
    assert main(["merge", str(shard_a), str(shard_b), "--store", str(tmp_path / "cli.sqlite")]) == 0
    assert "merged 8 episode rows from 2 shards into" in capsys.readouterr().out
    assert main(["merge", str(tmp_path / "missing.sqlite"), "--store", str(target)]) == 2
    assert "missing.sqlite" in capsys.readouterr().err


def test_merge_can_remove_verified_shards(tmp_path):
    shard, target = tmp_path / "s.sqlite.rank0", tmp_path / "s.sqlite"
    with ResultsStore(shard) as writer:
        for i in range(3):
            writer.write_episode(record(episode_index=i))
    with ResultsStore(target) as store:
        assert store.merge_from([shard]) == 3  # by hand: the shard stays
        assert shard.is_file()
        assert store.merge_from([shard], remove_merged=True) == 0
    assert not list(tmp_path.glob("s.sqlite.rank0*"))  # with its -wal/-shm files
    assert committed_rows(target) == 3


def test_source_checkout_has_a_version_and_stores_every_episode(tmp_path, monkeypatch):
    """Not pip-installed (no distribution metadata): the version is pyproject's plus '+src', rows are stored."""
    from importlib import metadata

    from fewshot_bench.store import versions

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(versions.metadata, "version", not_installed)
    # imported from the checkout
    monkeypatch.setattr(versions, "__file__", str(REPO / "fewshot_bench" / "store" / "versions.py"))
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    expected = re.search(r'^version = "(.+)"$', pyproject, re.M).group(1) + "+src"
    assert versions.package_version() == expected
    with ResultsStore(tmp_path / "store.sqlite") as store:
        assert store.write_episode(record(episode_index=0)) and store.write_episode(record(episode_index=1))
        assert [r["version"] for r in store.episodes()] == [expected, expected]


def test_only_the_duplicate_key_is_skipped(tmp_path):
    """Any other constraint violation (NOT NULL, CHECK) raises instead of silently dropping the row."""
    with ResultsStore(tmp_path / "store.sqlite") as store:
        with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
            store.write_episode(record(version=None))
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            store.write_episode(record(status="maybe"))
        assert store.episodes() == []


def test_unrelated_files_are_refused_and_left_unchanged(tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
    before = other.read_bytes()
    for create in (True, False):
        with pytest.raises(UserError, match="without a results .episodes. table"):
            ResultsStore(other, create=create)
    assert other.read_bytes() == before
    with pytest.raises(UserError, match="does not exist"):
        ResultsStore(tmp_path / "missing.sqlite", create=False)
    assert not (tmp_path / "missing.sqlite").exists()


def test_a_reader_leaves_an_earlier_versions_store_unchanged(tmp_path):
    import hashlib

    path = tmp_path / "old.sqlite"
    with ResultsStore(path) as store:
        store.write_episode(record())
    with sqlite3.connect(path) as conn:  # a store written before the same_class_source column existed
        conn.execute("ALTER TABLE episodes DROP COLUMN same_class_source")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with ResultsStore(path, create=False) as store:
        rows = store.episodes()
    assert rows[0]["same_class_source"] is None and rows[0]["accuracy"] == record()["accuracy"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    with ResultsStore(path) as store:  # a writer brings it up to date
        store.write_episode(record(episode_index=1, same_class_source=1))
        assert [r["same_class_source"] for r in store.episodes()] == [None, 1]
