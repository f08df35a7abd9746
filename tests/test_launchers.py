"""run --launcher submitit: a job array through submitit, here its local executor (two tasks, the tiny backbone)."""
import sqlite3

import pytest

from fewshot_bench.cli import main
from fewshot_bench.core.errors import UserError
from fewshot_bench.execution.launchers import SubmititConfig, check_tasks_import_this_package, run_submitit
from fewshot_bench.execution.run_config import RunConfig
from fewshot_bench.execution.runner import run

pytest.importorskip("submitit")

RUN = dict(tasks=["demo_intents"], methods=["protonet", "full_ft(steps=2)"], n_way=[3], k_shot=[1], query=2,
           episodes=3, backbone="tiny-encoder", device="cpu", isolation="in-process", threads=1, out="")
KEY = "method, setting, episode_index, restart, config_hash, fingerprint, status, accuracy, predictions"


def rows(path):
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT {KEY} FROM episodes ORDER BY {KEY}").fetchall()


def test_a_two_task_local_array_gives_the_plain_runs_store(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tasks start here: a source checkout's fewshot_bench/ is not on their path
    plain = run(RunConfig(**RUN, store=str(tmp_path / "plain.sqlite")))
    store = tmp_path / "array.sqlite"
    assert main(["run", "--tasks", "demo_intents", "--methods", "protonet,full_ft(steps=2)", "--n-way", "3",
                 "--k-shot", "1", "--query", "2", "--episodes", "3", "--backbone", "tiny-encoder", "--device", "cpu",
                 "--isolation", "in-process", "--threads", "1", "--store", str(store), "--out", "",
                 "--launcher", "submitit", "--submitit-cluster", "local", "--submitit-tasks", "2",
                 "--submitit-folder", str(tmp_path / "jobs")]) == 0
    assert "submitted 2 array task(s) to local" in capsys.readouterr().out
    assert rows(store) == rows(plain) and len(rows(store)) == 6
    assert not list(tmp_path.glob("array.sqlite.rank*"))  # merged shards are deleted
    assert len(list((tmp_path / "jobs").glob("*_log.out"))) == 2  # one log per array task


def test_a_failed_task_is_named_with_its_log_and_the_finished_shards_kept(tmp_path, monkeypatch):
    from fewshot_bench.execution import launchers

    real = launchers.run

    def second_task_fails(config, *, rank, **kwargs):
        if rank == 1:
            raise RuntimeError("node lost")
        return real(config, rank=rank, **kwargs)

    monkeypatch.setattr(launchers, "run", second_task_fails)
    monkeypatch.setattr("pdb.post_mortem", lambda *args: None)  # submitit's debug executor opens pdb on an error
    monkeypatch.chdir(tmp_path)  # not a source checkout: see test_a_checkout_that_would_shadow_...
    store = tmp_path / "array.sqlite"
    with pytest.raises(UserError, match=r"1 of 2 array task\(s\) failed: task .*node lost.*log: .*submit the same"):
        run_submitit(RunConfig(**RUN, store=str(store)), SubmititConfig(tasks=2, cluster="debug",
                                                                       folder=str(tmp_path / "jobs")))
    assert len(rows(store)) == 3  # task 0's half of the 6 episodes, merged


def test_a_checkout_that_would_shadow_the_installed_package_is_refused(tmp_path):
    (tmp_path / "fewshot_bench").mkdir()
    (tmp_path / "fewshot_bench" / "__init__.py").write_text("")
    with pytest.raises(UserError, match="whose fewshot_bench/ is not the installed package"):
        check_tasks_import_this_package(tmp_path)
    check_tasks_import_this_package(tmp_path / "elsewhere")  # no package there: nothing to refuse


def test_bad_launch_options_are_refused_with_the_field(tmp_path, capsys):
    assert main(["run", "--launcher", "submitit", "--submitit-tasks", "0", "--store", str(tmp_path / "s.sqlite"),
                 "--tasks", "demo_intents", "--backbone", "tiny-encoder"]) == 2
    assert "tasks" in capsys.readouterr().err and not (tmp_path / "s.sqlite").exists()
    with pytest.raises(UserError, match="tasks"):
        SubmititConfig(tasks=0)
    with pytest.raises(UserError, match="cluster"):
        SubmititConfig(cluster="kubernetes")
