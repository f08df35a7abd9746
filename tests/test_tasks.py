"""Task cards, the registry, real-data loading and every bad input of the foundation issue."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from fewshot_bench import METHODS, TASKS, register_task
from fewshot_bench.cli import main
from fewshot_bench.data.loading import get_task_data, set_data_dir
from fewshot_bench.core.errors import UserError
from fewshot_bench.core.registry import Registry
from fewshot_bench.data.cards import register_cards

from helpers import shared_data_dir

REAL_TASKS = {"banking77": (25, 25, 27), "clinc150": (50, 50, 50), "hwu64": None, "huffpost": (20, 5, 16),
              "fewrel": (8, 3, 5), "fewrel_pubmed": (0, 0, 10), "sst2": (2, 2, 2), "trec": (6, 0, 6), "ag_news": (4, 4, 4)}


@pytest.fixture(autouse=True)
def restore_data_dir(monkeypatch):
    """The CLI's --data-dir sets the env var; monkeypatch puts it back after each test."""
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", os.environ.get("FEWSHOT_BENCH_DATA", ""))


@pytest.fixture
def data_dir(monkeypatch):
    path = shared_data_dir()
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", str(path))
    set_data_dir(path)
    return path


@pytest.mark.parametrize("name", sorted(REAL_TASKS))
def test_every_builtin_card_loads_real_data(name, data_dir):
    data = get_task_data(name)
    counts = tuple(len(data.pools[p].classes) for p in ("source", "validation", "target"))
    if REAL_TASKS[name]:
        assert counts == REAL_TASKS[name]
    assert len(data.ids) == len(set(data.ids)) == len(data.texts) == len(data.labels)
    assert all(t.strip() for t in data.texts)
    config = data.config
    assert config.source.hub_id and config.license and config.citation
    if config.pools.strategy == "classes":  # class-disjoint pools
        pools = [set(data.pools[p].classes) for p in ("source", "validation", "target")]
        assert not (pools[0] & pools[1] or pools[0] & pools[2] or pools[1] & pools[2])
    else:  # example-disjoint pools
        rows = [set(data.pools[p].rows.tolist()) for p in ("source", "validation", "target")]
        assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])


def test_clinc_oos_is_not_a_class_and_folds_differ(data_dir):
    fold1, fold2 = get_task_data("clinc150", 1), get_task_data("clinc150", 2)
    assert "oos" not in fold1.labels and len(set(fold1.labels)) == 150
    assert fold1.pools["target"].classes != fold2.pools["target"].classes


def test_fewrel_marks_both_entities(data_dir):
    text = get_task_data("fewrel").texts[0]
    assert text.count("[E1]") == text.count("[/E1]") == 1 and text.count("[E2]") == 1
    assert "[E1] Cape Girardeau Bridge [/E1]" in text


def test_demo_task_needs_no_data_dir(monkeypatch):
    monkeypatch.delenv("FEWSHOT_BENCH_DATA", raising=False)
    data = get_task_data("demo_intents")
    assert data.config.demo and len(set(data.labels)) >= 8
    assert all(len(data.pools["target"].rows[[data.labels[i] == c for i in data.pools["target"].rows]]) >= 20
               for c in data.pools["target"].classes)


def test_list_tasks_without_and_with_data_dir(capsys, monkeypatch, data_dir):
    monkeypatch.delenv("FEWSHOT_BENCH_DATA")
    assert main(["list", "tasks"]) == 0
    out = capsys.readouterr().out
    assert "demo_intents (demo)" in out and "not loadable" in out
    assert main(["list", "tasks", "--data-dir", str(data_dir)]) == 0
    table = capsys.readouterr().out
    for name in REAL_TASKS:
        assert f"\n{name} " in table
    assert "not loadable" not in table


def _card(tmp_path, body, name="card.yaml"):
    directory = tmp_path / "cards"
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


GOOD = """\
name: {name}
version: 1
description: d
citation: c
license: l
source: {{local_dir: mine}}
splits: [train]
pools: {{strategy: classes, source: [a], validation: [b], target: [c, d]}}
episodes: {{n_way: 2, k_shot: 1, q_query: 1}}
"""


def _write_data(root, rows, folder="mine", split="train"):
    (root / folder).mkdir(parents=True, exist_ok=True)
    with open(root / folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
        for text, label in rows:
            f.write(json.dumps({"text": text, "label": label}) + "\n")


def _cli_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_tasks_dir_card_runs_episode(tmp_path, capsys):
    _card(tmp_path, GOOD.format(name="mytask"))
    _write_data(tmp_path, [(f"text {c} {i}", c) for c in "abcd" for i in range(3)] + [("  ", "c")])
    assert main(["episodes", "mytask", "--tasks-dir", str(tmp_path / "cards"), "--data-dir", str(tmp_path)]) == 0
    episode = json.loads(capsys.readouterr().out)
    assert set(episode["classes"]) == {"c", "d"} and len(episode["support_ids"]) == 2
    TASKS.unregister("mytask")


def test_decorator_and_entry_point_style_registration():
    registry = Registry("thing", None)

    @registry.register("alpha")
    def alpha():
        return 1

    registry.register("beta", "json:dumps")
    assert registry.get("alpha") is alpha and registry.get("beta") is json.dumps
    with pytest.raises(UserError, match="duplicate thing name 'alpha'"):
        registry.register("alpha", object())
    with pytest.raises(UserError, match="did you mean 'alpha'"):
        registry.get("alpah")
    register_task("decorated_demo", lambda: TASKS.get("demo_intents"))
    assert get_task_data("decorated_demo").config.name == "demo_intents"
    TASKS.unregister("decorated_demo")


def test_missing_data_names_paths_hub_and_fix(tmp_path, capsys):
    err = _cli_error(capsys, ["episodes", "banking77", "--data-dir", str(tmp_path)])
    assert str(tmp_path / "banking77" / "train.jsonl") in err and "PolyAI/banking77" in err and "--data-dir" in err


def test_malformed_yaml_names_file_and_line(tmp_path, capsys):
    path = _card(tmp_path, "name: x\nversion: 1\ndescription: [unclosed\n")
    err = _cli_error(capsys, ["list", "tasks", "--tasks-dir", str(path.parent)])
    assert f"{path}:" in err and "malformed YAML" in err


def test_unknown_and_missing_card_fields(tmp_path, capsys):
    path = _card(tmp_path, GOOD.format(name="x") + "lable_field: label\n")
    err = _cli_error(capsys, ["list", "tasks", "--tasks-dir", str(path.parent)])
    assert "unknown field 'lable_field'" in err and "did you mean 'label_field'" in err
    path.write_text(GOOD.format(name="x").replace("license: l\n", ""))
    err = _cli_error(capsys, ["list", "tasks", "--tasks-dir", str(path.parent)])
    assert "missing required field 'license'" in err


def test_absent_text_or_label_field(tmp_path, capsys):
    _card(tmp_path, GOOD.format(name="fieldtask") + "label_field: intent\n")
    _write_data(tmp_path, [("t", "a")])
    err = _cli_error(capsys, ["episodes", "fieldtask", "--tasks-dir", str(tmp_path / "cards"), "--data-dir", str(tmp_path)])
    assert "field 'intent'" in err and "not in the data" in err
    TASKS.unregister("fieldtask")


def test_n_way_too_large_says_both_numbers(capsys, data_dir):
    err = _cli_error(capsys, ["episodes", "banking77", "--n-way", "30", "--k-shot", "5", "--query", "15"])
    assert "n_way=30" in err and "only 27 class(es)" in err


def test_empty_pool(capsys, data_dir):
    err = _cli_error(capsys, ["episodes", "trec", "--pool", "validation"])
    assert "validation pool is empty" in err


def test_unknown_task_did_you_mean(capsys):
    err = _cli_error(capsys, ["episodes", "bankin77"])
    assert "unknown task 'bankin77'" in err and "did you mean 'banking77'" in err


def test_duplicate_task_name(tmp_path, capsys):
    _card(tmp_path, GOOD.format(name="banking77"))
    err = _cli_error(capsys, ["list", "tasks", "--tasks-dir", str(tmp_path / "cards")])
    assert "duplicate task name 'banking77'" in err


def test_empty_rows_skipped_and_non_utf8_refused(tmp_path, capsys, caplog):
    _card(tmp_path, GOOD.format(name="enc"))
    _write_data(tmp_path, [(f"t{c}{i}", c) for c in "abcd" for i in range(2)] + [("", "a"), (" ", "b")])
    register_cards(tmp_path / "cards")
    set_data_dir(tmp_path)
    assert get_task_data("enc").skipped_empty == 2
    with open(tmp_path / "mine" / "train.jsonl", "ab") as f:
        f.write(b'{"text": "caf\xe9", "label": "a"}\n')
    set_data_dir(tmp_path)
    with pytest.raises(UserError, match=r"train.jsonl:11: not UTF-8"):
        get_task_data("enc")
    TASKS.unregister("enc")


def test_class_split_file_naming_absent_classes(tmp_path, capsys):
    body = GOOD.format(name="splitfile").replace(
        "pools: {strategy: classes, source: [a], validation: [b], target: [c, d]}",
        "pools: {strategy: classes, class_splits_file: splits.json}")
    _card(tmp_path, body)
    _write_data(tmp_path, [(f"t{c}{i}", c) for c in "abcd" for i in range(2)])
    (tmp_path / "mine" / "splits.json").write_text(json.dumps({"train": ["a"], "validation": ["b"], "test": ["c", "zzz"]}))
    err = _cli_error(capsys, ["episodes", "splitfile", "--tasks-dir", str(tmp_path / "cards"), "--data-dir", str(tmp_path)])
    assert "splits.json" in err and "absent" in err and "zzz" in err
    TASKS.unregister("splitfile")


def test_installed_wheel_lists_builtin_tasks(tmp_path):
    """A non-editable install ships tasks/, baselines/ and every subpackage under fewshot_bench (built into a target dir)."""
    from helpers import REPO

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                    "--target", str(target), str(REPO)], check=True)
    code = ("import fewshot_bench, fewshot_bench.baselines.full_ft; from fewshot_bench import TASKS, METHODS; "
            "print(fewshot_bench.__file__); print(','.join(TASKS.names())); "
            "print(','.join(n for n in METHODS.names() if METHODS.get(n).__module__.startswith('fewshot_bench.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": ""},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith(str(target))
    assert {"banking77", "clinc150", "demo_intents", "fewrel", "huffpost", "hwu64", "sst2", "trec", "ag_news"} <= set(out[1].split(","))
    assert set(out[2].split(",")) == set(METHODS.names())  # every built-in method imports from the wheel
