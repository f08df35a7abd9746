"""Registering a task as a new user: `new-task` skeleton, `check-task` report, and the error messages naming the fix."""
import dataclasses
import json
import re
import typing

import pytest

from fewshot_bench import TASKS
from fewshot_bench.cli import main
from fewshot_bench.core.errors import UserError
from fewshot_bench.data.cards import TaskConfig, load_card
from fewshot_bench.episodes.check import normalise


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Each test in its own cwd and data dir; cards it registers are removed afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", str(tmp_path / "data"))
    before = set(TASKS.names())
    yield
    for name in set(TASKS.names()) - before:
        TASKS.unregister(name)


def _write_split(root, split, rows, folder="mine"):
    path = root / "data" / folder / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for text, label in rows:
            f.write(json.dumps({"utterance": text, "label": label}) + "\n")


def _field_names(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[spec.name]):
            yield from _field_names(hints[spec.name], prefix + spec.name + ".")
        else:
            yield prefix + spec.name


def _keys_in(text):
    """Dotted keys of the skeleton's `key: value` lines (two-space indentation per level)."""
    keys, stack = set(), []
    for line in text.splitlines():
        match = re.match(r"( *)(\w+):", line)
        if not match or line.lstrip().startswith("#"):
            continue
        depth = len(match.group(1)) // 2
        stack = stack[:depth] + [match.group(2)]
        keys.add(".".join(stack))
    return keys


def test_skeleton_lists_every_field_and_loads_once_filled(tmp_path, capsys):
    _write_split(tmp_path, "train", [("hello", "a")])
    _write_split(tmp_path, "test", [("bye", "b")])
    assert main(["new-task", "planted", "--local-dir", "mine", "--out", "cards/planted.yaml"]) == 0
    assert "check-task planted --tasks-dir cards" in capsys.readouterr().out
    card = tmp_path / "cards" / "planted.yaml"
    text = card.read_text()
    assert set(_field_names(TaskConfig)) <= _keys_in(text)
    assert "splits: [test, train]" in text and "text, label" not in text  # split names and fields found
    assert "utterance, label" in text and "text_field: 'FILL IN: one of utterance, label'" in text
    with pytest.raises(UserError, match=r"field 'description' still holds the skeleton placeholder"):
        load_card(card)
    filled = re.sub(r"'FILL IN: one of [^']*'", "utterance", text)
    filled = re.sub(r"'FILL IN:[^\n]*", "'filled in'", filled)
    filled = filled.replace("  fractions: null", "  fractions: {source: 0.5, target: 0.5}")
    card.write_text(filled)
    config = load_card(card)
    assert config.name == "planted" and config.input.text_field == "utterance" and config.splits == ["test", "train"]
    assert main(["new-task", "planted", "--out", "cards/planted.yaml"]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


CARD = """\
name: planted
version: 1
description: d
citation: c
license: l
source: {local_dir: mine}
splits: [train, test]
input: {text_field: utterance}
pools: {strategy: classes, source: [a, b], target: [c, d, e]}
episodes: {n_way: 2, k_shot: 2, q_query: 2}
"""


def _planted(tmp_path):
    """Classes a-e; e has 3 examples (< K+Q = 4); one text in the source and the target pool, one in both splits."""
    train = [(f"train text {c} {i}", c) for c in "abcd" for i in range(4)] + [(f"e text {i}", "e") for i in range(3)]
    train.append(("What is a Leak?", "a"))
    test = [("what is a leak", "c"), ("Train text c 0!", "c")]
    _write_split(tmp_path, "train", train)
    _write_split(tmp_path, "test", test)
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "planted.yaml").write_text(CARD)


def test_check_task_finds_planted_duplicates_and_small_class(tmp_path, capsys):
    _planted(tmp_path)
    assert main(["check-task", "planted", "--tasks-dir", "cards", "--strict"]) == 1
    out = capsys.readouterr().out
    assert "target: 3 class(es), 13 examples; examples per class min 3 / median 4 / max 6" in out
    assert "1 class(es) too small for K+Q: e (3)" in out
    assert "across pools: 1 text(s):" in out and "'what is a leak': train:19 (source, a), test:0 (target, c) [labels differ]" in out
    assert "across splits: 2 text(s):" in out and "train:8 (target, c), test:1 (target, c)\n" in out
    assert "within a pool: 1 text(s):" in out
    assert "episodes: yes: 2-way episodes from 2 class(es) with >= K+Q examples (1 class combination(s))" in out
    TASKS.unregister("planted")  # the next command registers the card again, as a new process would
    assert main(["check-task", "planted", "--tasks-dir", "cards", "--n-way", "3"]) == 0  # a report, no --strict
    assert "episodes: none: n_way=3 needs 3 classes" in capsys.readouterr().out


def test_normalise_ignores_case_punctuation_and_spacing():
    assert normalise("  What’s the\tTIME? ") == normalise("what s the time") == "what s the time"
    assert normalise("ﬁne") == "fine"  # NFKC
    assert normalise("time") != normalise("times")


def _error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    return err


def test_unknown_task_suggests_the_forgotten_tasks_dir(tmp_path, capsys):
    err = _error(capsys, ["check-task", "planted"])
    assert "unknown task 'planted'" in err and "--tasks-dir you forgot" in err
    _planted(tmp_path)
    err = _error(capsys, ["episodes", "planted"])
    assert "a card cards/planted.yaml exists: pass --tasks-dir cards" in err


def test_wrong_split_name_lists_the_split_files_found(tmp_path, capsys):
    _planted(tmp_path)
    (tmp_path / "cards" / "planted.yaml").write_text(CARD.replace("splits: [train, test]", "splits: [trian, test]"))
    err = _error(capsys, ["check-task", "planted", "--tasks-dir", "cards"])
    assert "split 'trian'" in err and "files there: test.jsonl, train.jsonl" in err and "data dir" not in err


def test_k_plus_q_too_large_names_the_largest_allowed(tmp_path, capsys):
    _planted(tmp_path)
    err = _error(capsys, ["episodes", "planted", "--tasks-dir", "cards", "--k-shot", "5", "--query", "5"])
    # target classes c, d, e have 6, 4, 3 examples: two classes reach at most K+Q = 4
    assert "n_way=2 needs 2 classes with >= K+Q = 10 examples, but only 0 class(es)" in err
    assert "largest K+Q this pool allows with n_way=2 is 4" in err and "lower --n-way" not in err
    TASKS.unregister("planted")
    err = _error(capsys, ["episodes", "planted", "--tasks-dir", "cards", "--n-way", "3", "--k-shot", "2", "--query", "2"])
    assert "largest K+Q this pool allows with n_way=3 is 3" in err and "or lower --n-way to <= 2" in err
    TASKS.unregister("planted")
    err = _error(capsys, ["episodes", "planted", "--tasks-dir", "cards", "--n-way", "4"])
    assert "the pool has only 3 class(es)" in err
