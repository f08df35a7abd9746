"""Bad input to every subcommand: exit code 2, one line on stderr, no traceback, no file created or changed.

Each case prepares its input files in a tmp dir (the working directory, so default output paths land there
too, and the cache dir), snapshots that tree, runs the command in-process, and compares the tree after.
"""
import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from fewshot_bench.cli import main

RUN = ["run", "--tasks", "demo_intents", "--backbone", "tiny-encoder", "--methods", "protonet", "--episodes", "1"]
CARD = {"name": "bad_inputs_card", "version": 1, "description": "d", "citation": "c", "license": "l",
        "source": {"local_dir": "demo_intents", "packaged": True}, "splits": ["data"],
        "pools": {"strategy": "classes", "source": ["play_music", "set_timer", "weather_forecast"],
                  "validation": ["translate_phrase", "add_calendar_event"],
                  "target": ["movie_showtimes", "water_plants", "pay_utility_bill", "find_parking"]}}


def write(path: Path, text) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text, encoding="utf-8")


def card(tmp: Path, **changes) -> None:
    import yaml

    write(tmp / "cards" / "card.yaml", yaml.safe_dump({**CARD, **changes}))


def unrelated_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
        conn.execute("INSERT INTO notes VALUES ('keep me')")


def truncated_backbone(tmp: Path) -> None:
    from fewshot_bench.methods.backbone import _minilm_path

    folder = tmp / "broken_model"
    shutil.copytree(_minilm_path(), folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "onnx",
                                                                           "openvino", "*.h5", "*.ot", "*.msgpack"))
    weights = Path(_minilm_path()) / "model.safetensors"
    write(folder / "model.safetensors", weights.read_bytes()[:4096])


# (id, argv, setup(tmp) or None); "{tmp}" in argv is the case's tmp dir
CASES = [
    # run: numbers and choices
    ("k-shot-word", RUN + ["--k-shot", "two"], None),
    ("k-shot-negative", RUN + ["--k-shot", "-3"], None),
    ("k-shot-zero", RUN + ["--k-shot", "0"], None),
    ("k-shot-reversed-range", RUN + ["--k-shot", "5-1"], None),
    ("n-way-word", RUN + ["--n-way", "x"], None),
    ("n-way-one", RUN + ["--n-way", "1"], None),
    ("n-way-too-many", RUN + ["--n-way", "9"], None),
    ("query-word", RUN + ["--query", "x"], None),
    ("query-zero", RUN + ["--query", "0"], None),
    ("episodes-negative", RUN + ["--episodes", "-3"], None),
    ("episodes-word", RUN + ["--episodes", "abc"], None),
    ("limit-zero", RUN + ["--limit", "0"], None),
    ("fold-zero", RUN + ["--fold", "0"], None),
    ("seed-negative", RUN + ["--seed", "-1"], None),
    ("pool-source", RUN + ["--pool", "source"], None),
    ("device-unknown", RUN + ["--device", "tpu"], None),
    ("device-absent-gpu", RUN + ["--device", "cuda:7"], None),
    ("unknown-flag", RUN + ["--epochs", "3"], None),
    # run: backbones
    ("backbone-unknown", RUN + ["--backbone", "tiny-encodr"], None),
    ("backbone-empty-folder", RUN + ["--backbone", "{tmp}/empty_model"], lambda t: (t / "empty_model").mkdir()),
    ("backbone-truncated-weights", RUN + ["--backbone", "{tmp}/broken_model"], truncated_backbone),
    # run: methods and their configs
    ("method-unknown", RUN + ["--methods", "protonett"], None),
    ("method-file-syntax-error", RUN + ["--methods", "{tmp}/m.py:M"], lambda t: write(t / "m.py", "def broken(:\n")),
    ("method-file-missing-class", RUN + ["--methods", "{tmp}/m.py:M"], lambda t: write(t / "m.py", "X = 1\n")),
    ("method-file-not-a-method", RUN + ["--methods", "{tmp}/m.py:M"], lambda t: write(t / "m.py", "class M: pass\n")),
    ("method-file-raises", RUN + ["--methods", "{tmp}/m.py:M"], lambda t: write(t / "m.py", "1 / 0\n")),
    ("method-file-missing", RUN + ["--methods", "{tmp}/nope.py:M"], None),
    ("method-config-negative-steps", RUN + ["--methods", "full_ft", "--method-config", "full_ft.steps=-5"], None),
    ("method-config-word-steps", RUN + ["--methods", "full_ft", "--method-config", "full_ft.steps=abc"], None),
    ("method-config-unknown-field", RUN + ["--methods", "full_ft", "--method-config", "full_ft.stepz=3"], None),
    ("method-config-malformed", RUN + ["--methods", "full_ft", "--method-config", "steps=3"], None),
    ("method-config-other-method", RUN + ["--method-config", "lora.rank=4"], None),
    ("method-config-bad-choice", RUN + ["--methods", "maml", "--method-config", "maml.adapt_params=some"], None),
    ("method-config-out-of-range", RUN + ["--methods", "lora", "--method-config", "lora.dropout=2"], None),
    ("method-config-bad-bool", RUN + ["--methods", "full_ft", "--method-config", "full_ft.fused_optimizer=maybe"], None),
    # run: tasks, source pools, suites, config files
    ("task-unknown", ["run", "--tasks", "demo_intent", "--methods", "protonet"], None),
    ("source-task-unknown", RUN + ["--source-task", "nosuch"], None),
    ("meta-trained-without-source-pool", ["run", "--tasks-dir", "{tmp}/cards", "--tasks", "bad_inputs_card", "--methods",
                                          "protonet,maml", "--backbone", "tiny-encoder", "--n-way", "2"],
     lambda t: card(t, pools={**CARD["pools"], "source": []})),
    ("suite-unknown", ["run", "--suite", "smok"], None),
    ("config-missing", RUN + ["--config", "{tmp}/none.yaml"], None),
    ("config-malformed", RUN + ["--config", "{tmp}/c.yaml"], lambda t: write(t / "c.yaml", "episodes: [1\n")),
    ("config-unknown-field", RUN + ["--config", "{tmp}/c.yaml"], lambda t: write(t / "c.yaml", "epochs: 3\n")),
    ("config-string-number", ["run", "--config", "{tmp}/c.yaml"], lambda t: write(t / "c.yaml", "episodes: '3'\n")),
    ("config-scalar-k-shot", ["run", "--config", "{tmp}/c.yaml"],
     lambda t: write(t / "c.yaml", "tasks: [demo_intents]\nk_shot: x\n")),
    ("config-not-a-mapping", ["run", "--config", "{tmp}/c.yaml"], lambda t: write(t / "c.yaml", "- 1\n- 2\n")),
    # run: outputs
    ("store-is-a-folder", RUN + ["--store", "{tmp}/folder"], lambda t: (t / "folder").mkdir()),
    ("store-under-a-file", RUN + ["--store", "{tmp}/file.txt/s.sqlite"], lambda t: write(t / "file.txt", "x")),
    ("store-unrelated-sqlite", RUN + ["--store", "{tmp}/other.sqlite"], lambda t: unrelated_sqlite(t / "other.sqlite")),
    ("store-text-file", RUN + ["--store", "{tmp}/notes.txt"], lambda t: write(t / "notes.txt", "my notes\n")),
    ("out-under-a-file", RUN + ["--out", "{tmp}/file.txt/lb.csv"], lambda t: write(t / "file.txt", "x")),
    # task cards (any command registers --tasks-dir)
    ("card-string-q-query", ["list", "tasks", "--tasks-dir", "{tmp}/cards"],
     lambda t: card(t, episodes={"n_way": 2, "k_shot": 1, "q_query": "3"})),
    ("card-splits-string", ["list", "tasks", "--tasks-dir", "{tmp}/cards"], lambda t: card(t, splits="data")),
    ("card-version-word", ["list", "tasks", "--tasks-dir", "{tmp}/cards"], lambda t: card(t, version="abc")),
    ("card-unknown-field", ["list", "tasks", "--tasks-dir", "{tmp}/cards"], lambda t: card(t, labels="x")),
    ("card-not-utf8", ["list", "tasks", "--tasks-dir", "{tmp}/cards"],
     lambda t: write(t / "cards" / "card.yaml", b"name: caf\xe9\n")),
    # leaderboard
    ("leaderboard-missing-store", ["leaderboard", "--store", "{tmp}/none.sqlite", "--out", "{tmp}/lb.csv"], None),
    ("leaderboard-unrelated-sqlite", ["leaderboard", "--store", "{tmp}/other.sqlite", "--out", "{tmp}/lb.csv"],
     lambda t: unrelated_sqlite(t / "other.sqlite")),
    ("leaderboard-text-store", ["leaderboard", "--store", "{tmp}/notes.txt", "--out", "{tmp}/lb.csv"],
     lambda t: write(t / "notes.txt", "my notes\n")),
    ("leaderboard-bootstrap-zero", ["leaderboard", "--store", "{tmp}/s.sqlite", "--bootstrap", "0"],
     lambda t: _store(t / "s.sqlite")),
    ("leaderboard-bootstrap-word", ["leaderboard", "--bootstrap", "many"], None),
    ("leaderboard-out-under-a-file", ["leaderboard", "--store", "{tmp}/s.sqlite", "--out", "{tmp}/file.txt/lb.csv"],
     lambda t: (_store(t / "s.sqlite"), write(t / "file.txt", "x"))),
    # compare
    ("compare-pair-without-equals", ["compare", "--store", "{tmp}/s.sqlite", "--pair", "full_ft"],
     lambda t: _store(t / "s.sqlite")),
    ("compare-unknown-method", ["compare", "--store", "{tmp}/s.sqlite", "--pair", "ful_ft=full_ft"],
     lambda t: _store(t / "s.sqlite")),
    # validate, merge, list, episodes
    ("validate-missing", ["validate", "{tmp}/none.csv"], None),
    ("merge-missing-shard", ["merge", "{tmp}/none.rank0", "--store", "{tmp}/merged.sqlite"], None),
    ("merge-unrelated-shard", ["merge", "{tmp}/s.sqlite", "{tmp}/other.sqlite", "--store", "{tmp}/merged.sqlite"],
     lambda t: (_store(t / "s.sqlite"), unrelated_sqlite(t / "other.sqlite"))),
    ("merge-store-under-a-file", ["merge", "{tmp}/s.sqlite", "--store", "{tmp}/file.txt/m.sqlite"],
     lambda t: (_store(t / "s.sqlite"), write(t / "file.txt", "x"))),
    ("merge-without-store", ["merge", "{tmp}/s.sqlite"], None),
    ("list-unknown", ["list", "datasets"], None),
    ("list-fold-word", ["list", "tasks", "--fold", "x"], None),
    ("episodes-unknown-task", ["episodes", "demo_intent"], None),
    ("episodes-n-way-word", ["episodes", "demo_intents", "--n-way", "x"], None),
    ("episodes-k-shot-word", ["episodes", "demo_intents", "--k-shot", "two"], None),
    ("episodes-query-zero", ["episodes", "demo_intents", "--query", "0"], None),
    ("episodes-n-way-too-many", ["episodes", "demo_intents", "--n-way", "50"], None),
    ("episodes-unknown-pool", ["episodes", "demo_intents", "--pool", "test"], None),
    ("new-task-out-under-a-file", ["new-task", "x", "--out", "{tmp}/file.txt/x.yaml"],
     lambda t: write(t / "file.txt", "x")),
    ("new-task-existing-card", ["new-task", "x", "--out", "{tmp}/x.yaml"], lambda t: write(t / "x.yaml", "name: x\n")),
    ("check-task-unknown", ["check-task", "nosuch"], None),
]


def _store(path: Path) -> None:
    """A valid results store with one episode (the input of leaderboard/merge cases)."""
    from fewshot_bench.store.results import ResultsStore

    from helpers import record

    with ResultsStore(path) as store:
        store.write_episode(record())


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def test_there_are_at_least_forty_cases_across_every_subcommand():
    assert len(CASES) >= 40 and len({name for name, _, _ in CASES}) == len(CASES)
    assert {argv[0] for _, argv, _ in CASES} == {"run", "leaderboard", "validate", "merge", "list", "episodes",
                                                 "new-task", "check-task", "compare"}


@pytest.mark.parametrize("argv, setup", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(argv, setup, tmp_path, monkeypatch, capsys):
    from fewshot_bench.core.registry import TASKS

    monkeypatch.setattr(TASKS, "_entries", dict(TASKS._entries))  # cards of --tasks-dir stay in this test
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEWSHOT_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FEWSHOT_BENCH_DATA", raising=False)
    if setup:
        setup(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    try:
        code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert snapshot(tmp_path) == before, err
    assert not os.path.exists(tmp_path / "runs")
