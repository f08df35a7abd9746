"""`fewshot-bench run` end to end on the tiny backbone: leaderboard, validate, resume after SIGKILL,
bad input, the README's method example, and torchrun sharding."""
import csv
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from fewshot_bench.cli import main
from fewshot_bench.core.errors import UserError
from fewshot_bench.store.shards import existing_shards

from helpers import REPO, committed_rows

TINY = ["--backbone", "tiny-encoder", "--tasks", "demo_intents", "--query", "2", "--seed", "0"]
TIMING = {"sec_per_episode", "peak_mem_mb", "version", "embedding_cache_seconds_total", "meta_train_seconds"}


@pytest.fixture(autouse=True)
def no_data_dir(monkeypatch):
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", "")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _comparable(rows):
    return sorted(tuple((k, v) for k, v in r.items() if k not in TIMING) for r in rows)


def test_run_then_leaderboard_then_validate(tmp_path, capsys):
    args = TINY + ["--methods", "full_ft,protonet", "--k-shot", "1,2", "--episodes", "2",
                   "--method-config", "full_ft.steps=2"]
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        assert main(["run", *args, "--store", str(out / "s.sqlite"), "--out", str(out / "lb.csv")]) == 0
    rows = _rows(first / "lb.csv")
    assert {r["method"] for r in rows} == {"full_ft(steps=2)", "protonet"} and len(rows) == 4
    assert all(r["episodes"] == "2" and r["failed_episodes"] == "0" for r in rows)
    assert _comparable(rows) == _comparable(_rows(second / "lb.csv"))  # same seed, same numbers
    assert main(["leaderboard", "--store", str(first / "s.sqlite"), "--out", str(tmp_path / "again.csv")]) == 0
    assert _comparable(_rows(tmp_path / "again.csv")) == _comparable(rows)
    assert main(["validate", str(tmp_path / "again.csv")]) == 0
    assert main(["validate", str(first / "s.sqlite")]) == 0


def test_main_command_runs_default_suite_on_demo(tmp_path):
    """`fewshot-bench run` with no data dir: the default suite on the demo task, every registered method except the opt-in ones."""
    store, out = tmp_path / "s.sqlite", tmp_path / "lb.csv"
    assert main(["run", "--limit", "1", "--backbone", "tiny-encoder", "--store", str(store), "--out", str(out)]) == 0
    rows = _rows(out)
    from fewshot_bench.execution.run_config import default_method_names, load_suite
    from fewshot_bench.methods.spec import method_label, parse_method_config

    demo = load_suite("default")["demo"]
    overrides = parse_method_config(demo.get("method_config", []))
    expected = demo.get("methods", default_method_names())
    assert {r["method"] for r in rows} == {method_label(m, overrides.get(m, {})) for m in expected}
    assert {r["task"] for r in rows} == {"demo_intents"}
    assert {r["k_shot"] for r in rows} == {str(k) for k in demo["k_shot"]}


def test_bad_run_input_writes_nothing(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    for extra, message in ((["--methods", "ful_ft"], "did you mean 'full_ft'"),
                           (["--methods", "full_ft", "--method-config", "full_ft.stepz=3"], "no config field 'stepz'"),
                           (["--methods", "full_ft", "--n-way", "9"], "n_way=9"),
                           (["--suite", "smok"], "did you mean 'smoke'")):
        assert main(["run", *TINY, *extra, "--store", str(store), "--out", ""]) == 2
        assert message in capsys.readouterr().err
        assert not store.exists()


def test_resume_after_sigkill_loses_nothing(tmp_path):
    store = tmp_path / "s.sqlite"
    cmd = [sys.executable, "-m", "fewshot_bench", "run", *TINY, "--methods", "full_ft", "--k-shot", "2",
           "--episodes", "8", "--method-config", "full_ft.steps=15", "--store", str(store), "--out", ""]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while committed_rows(store) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = committed_rows(store)
    assert 2 <= done < 8, "the run must be killed mid-way"
    with sqlite3.connect(store) as conn:
        before = dict(conn.execute("SELECT episode_index, created_at FROM episodes").fetchall())
    subprocess.run(cmd, cwd=tmp_path, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with sqlite3.connect(store) as conn:
        after = dict(conn.execute("SELECT episode_index, created_at FROM episodes").fetchall())
        assert conn.execute("SELECT COUNT(*) FROM episodes WHERE status = 'ok'").fetchone()[0] == 8
    assert sorted(after) == list(range(8))
    assert all(after[i] == before[i] for i in before), "finished episodes must be skipped, not recomputed"


def test_readme_method_example_runs_from_a_file(tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(# my_method\.py\n.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) < 30 + 3  # the issue asks for an example under 30 lines of code
    path = tmp_path / "my_method.py"
    path.write_text(code)
    out = tmp_path / "lb.csv"
    assert main(["run", *TINY, "--methods", f"{path}:HeadOnly", "--k-shot", "2", "--episodes", "2",
                 "--store", str(tmp_path / "s.sqlite"), "--out", str(out)]) == 0
    row = _rows(out)[0]
    assert row["method"] == "head_only" and row["failed_episodes"] == "0" and float(row["grad_norm_cv"]) >= 0


def test_torchrun_two_ranks_equal_single_process(tmp_path):
    """2 CPU ranks (gloo): the merged leaderboard equals the single-process one for deterministic methods."""
    args = [*TINY, "--methods", "protonet,linear_probe,full_ft", "--k-shot", "1,2", "--episodes", "3",
            "--method-config", "full_ft.steps=2"]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same float reduction order in both runs
    subprocess.run([sys.executable, "-m", "fewshot_bench", "run", *args, "--store", str(single / "s.sqlite"),
                    "--out", str(single / "lb.csv")], cwd=tmp_path, check=True, env=env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    subprocess.run([*torchrun, "-m", "fewshot_bench", "run", *args, "--store", str(sharded / "s.sqlite"),
                    "--out", str(sharded / "lb.csv")], cwd=tmp_path, check=True, env=env)
    assert _comparable(_rows(sharded / "lb.csv")) == _comparable(_rows(single / "lb.csv"))
    assert committed_rows(sharded / "s.sqlite") == 3 * 2 * 3
    assert list(sharded.glob("s.sqlite.rank*")) == []  # merged shards are removed, -wal/-shm included


def test_method_specs_merge_spec_overrides_and_method_config():
    from fewshot_bench.execution.run_config import RunConfig, method_specs

    config = RunConfig(methods="full_ft(steps=2),protonet", method_config=["full_ft.lr=0.1"])
    assert method_specs(config) == {"full_ft(steps=2)": {"steps": "2", "lr": "0.1"}, "protonet": {}}
    with pytest.raises(UserError, match="not in this run"):
        method_specs(RunConfig(methods=["protonet"], method_config=["full_ft.lr=0.1"]))


def test_shards_of_a_killed_torchrun_job_are_resumed_not_recomputed(tmp_path):
    from fewshot_bench.cli import build_parser
    from fewshot_bench.execution.run_config import build_config
    from fewshot_bench.execution.runner import run

    store = tmp_path / "s.sqlite"
    argv = ["run", *TINY, "--methods", "protonet", "--k-shot", "2", "--episodes", "4", "--store", str(store), "--out", ""]
    config = build_config(vars(build_parser().parse_args(argv)))
    run(config, rank=1, world_size=2, store_path=f"{store}.rank1", barrier=lambda: None)  # rank 0 never finished
    assert not store.exists() and committed_rows(f"{store}.rank1") == 2
    with sqlite3.connect(f"{store}.rank1") as conn:
        before = dict(conn.execute("SELECT episode_index, created_at FROM episodes").fetchall())
    assert main(argv) == 0  # single process: merges the shard, runs the two missing episodes
    with sqlite3.connect(store) as conn:
        after = dict(conn.execute("SELECT episode_index, created_at FROM episodes").fetchall())
    assert sorted(after) == [0, 1, 2, 3] and all(after[i] == before[i] for i in before)
    assert not existing_shards(str(store))  # merged, verified, removed


COUNTING_METHOD = '''
from fewshot_bench.baselines.protonet import PrototypicalNetwork


class CountingMetaTrained(PrototypicalNetwork):
    """protonet evaluation; meta_train only appends a line to LOG, so a test can count the calls."""
    name = "counting_meta"
    protocol = "meta-trained"

    def meta_train(self, ctx):
        with open(LOG, "a") as f:
            f.write("meta_train\\n")
'''


def test_resumed_run_does_not_meta_train_finished_cells(tmp_path):
    """Meta-training happens only for (setting, method) cells with episodes left, in one process or sharded."""
    from fewshot_bench.cli import build_parser
    from fewshot_bench.execution.run_config import build_config
    from fewshot_bench.execution.runner import run

    log = tmp_path / "calls.log"
    method_file = tmp_path / "counting.py"
    method_file.write_text(f"LOG = {str(log)!r}\n" + COUNTING_METHOD)
    # the method logs its calls to a file in tmp_path: a sandboxed worker may not write there
    argv = ["run", *TINY, "--isolation", "process", "--methods", f"{method_file}:CountingMetaTrained", "--k-shot", "1,2", "--episodes", "2",
            "--store", str(tmp_path / "s.sqlite"), "--out", ""]
    assert main(argv) == 0
    assert log.read_text().count("meta_train") == 2  # one per setting
    assert main(argv) == 0  # everything stored: nothing to evaluate, nothing to meta-train
    config = build_config(vars(build_parser().parse_args(argv)))
    run(config, rank=0, world_size=2, store_path=str(tmp_path / "s.sqlite.rank0"), barrier=lambda: None)
    assert log.read_text().count("meta_train") == 2
    assert main([*argv[:-4], "--episodes", "3", *argv[-4:]]) == 0  # one more episode per setting: meta-trains again
    assert log.read_text().count("meta_train") == 4


CACHED_METHOD = COUNTING_METHOD + '''

class CachedMetaTrained(CountingMetaTrained):
    """CountingMetaTrained with a state_dict: the runner caches it and loads it instead of meta-training."""
    name = "cached_meta"

    def meta_train(self, ctx):
        super().meta_train(ctx)
        self.state = {"weight": torch.full((2,), float(ctx.seed) + 1.0)}

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        with open(LOG, "a") as f:
            f.write(f"load {state['weight'].tolist()}\\n")
'''


def test_meta_trained_state_is_cached_by_the_runner(tmp_path, monkeypatch):
    """A method's state_dict is saved once per cell (run hash, setting) and loaded by later runs."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEWSHOT_BENCH_CACHE", str(cache))
    log = tmp_path / "calls.log"
    method_file = tmp_path / "cached.py"
    method_file.write_text(f"import torch\nLOG = {str(log)!r}\n" + CACHED_METHOD)
    # the method logs its calls to a file in tmp_path: a sandboxed worker may not write there
    argv = ["run", *TINY, "--isolation", "process", "--methods", f"{method_file}:CachedMetaTrained", "--k-shot", "1,2", "--episodes", "1",
            "--out", ""]
    assert main([*argv, "--store", str(tmp_path / "a.sqlite")]) == 0
    assert log.read_text().count("meta_train") == 2 and "load" not in log.read_text()
    assert len(list((cache / "meta").glob("*.safetensors"))) == 2  # one per setting
    assert main([*argv, "--store", str(tmp_path / "b.sqlite")]) == 0  # a new store: cells to evaluate again
    assert log.read_text().count("meta_train") == 2 and log.read_text().count("load [1.0, 1.0]") == 2
    assert main([*argv, "--seed", "1", "--store", str(tmp_path / "c.sqlite")]) == 0  # another run hash
    assert log.read_text().count("meta_train") == 4


def test_resumed_run_reproduces_the_uninterrupted_one(tmp_path):
    """Frozen-embedding methods: episodes 0-1, then a new process-like run for 0-3 (fresh backbone and caches),
    stores exactly the predictions of one run of 0-3."""
    args = TINY + ["--methods", "protonet,linear_probe", "--k-shot", "3", "--n-way", "4", "--out", ""]
    whole, resumed = tmp_path / "whole.sqlite", tmp_path / "resumed.sqlite"
    assert main(["run", *args, "--episodes", "4", "--store", str(whole)]) == 0
    assert main(["run", *args, "--episodes", "2", "--store", str(resumed)]) == 0
    assert main(["run", *args, "--episodes", "4", "--store", str(resumed)]) == 0

    def predictions(path):
        with sqlite3.connect(path) as conn:
            return sorted(conn.execute("SELECT method, episode_index, predictions, accuracy, macro_f1 FROM episodes"))

    assert len(predictions(whole)) == 8 and predictions(whole) == predictions(resumed)
