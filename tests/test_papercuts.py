"""Paper cuts a new user hits (issue 37): undefined effect sizes, method-file specs without a class, compare and
leaderboard without a data dir or network, and what the Ctrl-C message promises."""
import contextlib
import csv
import logging
import math
import os
import shutil
import signal
import socket
import textwrap

import numpy as np
import pytest

from fewshot_bench.analysis import compare
from fewshot_bench.analysis.across import across_cells
from fewshot_bench.cli import main
from fewshot_bench.store.schema import COLUMNS
from fewshot_bench.core.errors import UserError
from fewshot_bench.analysis.pairs import pair_table
from fewshot_bench.report.markdown import _across
from fewshot_bench.methods.spec import method_from_spec
from fewshot_bench.analysis.stats import effect_size, format_dz
from fewshot_bench.store.results import ResultsStore

from helpers import REPO, record

# equal differences up to float rounding: 0.3 - 0.2 = 0.09999999999999998, 0.4 - 0.3 = 0.10000000000000003
EQUAL = [0.3 - 0.2, 0.4 - 0.3]


# 1. d_z undefined when the SD of the paired differences is ~0


@pytest.mark.parametrize("differences", [EQUAL, [0.1] * 5, [0.0, 0.0], [0.25], []])
def test_effect_size_is_undefined_without_spread(differences):
    assert effect_size(differences) is None
    assert compare.effect_size(np.array(differences)) is None  # the one helper, re-exported


def test_effect_size_is_mean_over_sd_otherwise():
    assert effect_size([0.1, 0.2, 0.3]) == pytest.approx(0.2 / 0.1)
    assert format_dz(effect_size([0.1, 0.2, 0.3])) == "+2.00"
    assert format_dz(None) == "undefined" and format_dz(None, "+.3f", "-") == "-"


def _entry(cell, method, accuracy):
    row = dict.fromkeys(COLUMNS)
    row.update(method=method, episodes=len(accuracy), episodes_planned=len(accuracy),
               acc_mean=float(np.mean(accuracy)), acc_ci95_low=0.0, acc_ci95_high=1.0)
    fingerprints = [f"{cell[0]}-{i}" for i in range(len(accuracy))]
    return compare.Entry(cell=cell, row=row, accuracy=dict(zip(fingerprints, accuracy)), predictions={},
                         fingerprints=frozenset(fingerprints))


def test_across_cells_d_z_is_undefined_for_equal_unit_differences_and_printed_so():
    entries = []
    for task, (a, b) in (("t1", (0.3, 0.2)), ("t2", (0.4, 0.3))):
        cell = (task, f"{task}/fold1/5way1shot15q", "minilm")
        entries += [_entry(cell, "a", [a] * 3), _entry(cell, "b", [b] * 3)]
    suite = across_cells(entries)
    (pair,) = suite.pairs
    assert pair.units == 2 and pair.mean_diff == pytest.approx(0.1) and pair.dz is None
    table = [line for line in _across(suite) if line.startswith("| a | b |")]
    assert len(table) == 1 and "| undefined |" in table[0], table


def _equal_differences_store(path, methods=("a", "b")):
    """Two methods on two episodes whose per-episode differences are equal up to rounding (0.1 each)."""
    with ResultsStore(path) as store:
        for i, (high, low) in enumerate(((0.3, 0.2), (0.4, 0.3))):
            for method, accuracy in zip(methods, (high, low)):
                store.write_episode(record(method=method, episode_index=i, accuracy=accuracy, predictions=[0] * 75))


def test_pair_table_and_compare_print_an_undefined_d_z_as_a_dash(tmp_path, capsys):
    _equal_differences_store(tmp_path / "s.sqlite")
    from fewshot_bench.report.leaderboard import load_entries

    (row,) = pair_table(load_entries(tmp_path / "s.sqlite", bootstrap=1), [("a", "b")], bootstrap=200)
    assert row["delta"] == pytest.approx(0.1) and row["dz"] is None
    assert main(["compare", "--store", str(tmp_path / "s.sqlite"), "--pair", "a=b", "--bootstrap", "200"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "+0.1000 [" in line)
    assert " - " in line and not any(len(word) > 12 and word.lstrip("+-").replace(".", "").isdigit()
                                     for word in line.split()), line


def test_leaderboard_shows_an_undefined_d_z_as_undefined(tmp_path):
    _equal_differences_store(tmp_path / "s.sqlite", methods=("a", "full_ft"))
    out = tmp_path / "board.csv"
    assert main(["leaderboard", "--store", str(tmp_path / "s.sqlite"), "--out", str(out), "--bootstrap", "200"]) == 0
    row = next(line for line in (tmp_path / "board.md").read_text().splitlines() if line.startswith("| 1 | a |"))
    cells = [c.strip() for c in row.split("|")]
    assert "undefined" in cells and not any(math.isinf(float(c)) for c in cells if c.replace(".", "").isdigit())


# 2. a method file without ":Class", or with a misspelt class: the Method subclasses defined in the file


@pytest.fixture
def method_file(tmp_path):
    path = tmp_path / "l2_centroid.py"
    path.write_text(textwrap.dedent('''
        from dataclasses import dataclass

        from fewshot_bench.baselines.protonet import PrototypicalNetwork  # imported, not defined here
        from fewshot_bench.methods import Method, MethodConfig


        @dataclass
        class L2CentroidConfig(MethodConfig):
            scale: float = 1.0


        class L2CentroidHelper:
            pass


        class L2Centroid(Method):
            name = "l2_centroid_papercut"
            config_class = L2CentroidConfig

            def adapt(self, ctx):
                raise NotImplementedError


        class L2CentroidCosine(L2Centroid):
            name = "l2_centroid_cosine_papercut"
    '''))
    return path


def test_a_method_file_without_a_class_says_so_and_lists_its_method_classes(method_file):
    with pytest.raises(UserError) as caught:
        method_from_spec(str(method_file))
    message = str(caught.value)
    assert f"'{method_file}:ClassName'" in message and f"{method_file}: L2Centroid, L2CentroidCosine;" in message
    assert f"e.g. {method_file}:L2Centroid)" in message
    assert "unknown method" not in message and "PrototypicalNetwork" not in message and "Config" not in message
    with pytest.raises(UserError, match=r"needs the class after the path"):
        method_from_spec(f"{method_file}(scale=2)")


def test_run_with_a_method_file_without_a_class_fails_in_one_line(method_file, tmp_path, capsys):
    assert main(["run", "--methods", str(method_file), "--store", str(tmp_path / "s.sqlite"),
                 "--out", str(tmp_path / "b.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: method file") and f"{method_file}:L2Centroid" in err[-1]
    assert not (tmp_path / "s.sqlite").exists()


def test_a_misspelt_class_is_matched_only_against_the_files_method_classes(method_file):
    with pytest.raises(UserError) as caught:
        method_from_spec(f"{method_file}:L2Centroyd")
    message = str(caught.value)
    assert "has no 'L2Centroyd'; did you mean 'L2Centroid', 'L2CentroidCosine'?" in message
    assert "Config" not in message and "Helper" not in message and "'Method'" not in message
    with pytest.raises(UserError) as caught:  # a class that is not a Method: the file's Method classes
        method_from_spec(f"{method_file}:L2CentroidConfig")
    assert "not a subclass of fewshot_bench.methods.Method" in str(caught.value)
    assert f"{method_file}: L2Centroid, L2CentroidCosine" in str(caught.value)
    assert method_from_spec(f"{method_file}:L2Centroid(scale=2)").config.scale == 2.0


def test_a_missing_method_file_is_named_as_a_file(tmp_path):
    with pytest.raises(UserError, match=r"no such file, and no registered method has that name"):
        method_from_spec(str(tmp_path / "absent.py"))


# 3. compare and leaderboard from the store alone: no data dir, no network; an unreachable dataset fails fast


class Hung(BaseException):
    """Raised by :func:`deadline`; a BaseException, so no retry loop or ``except Exception`` swallows it."""


@contextlib.contextmanager
def deadline(seconds):
    def expire(signum, frame):
        raise Hung(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(params=["no data dir", "empty data dir"])
def no_data_no_network(request, monkeypatch, tmp_path):
    """No data dir (or one with no dataset in it), the hub not switched off (the clients' offline flags too), and
    every connection refused; yields the connections tried."""
    for name in ("FEWSHOT_BENCH_DATA", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    if request.param == "empty data dir":
        (tmp_path / "empty").mkdir()
        monkeypatch.setenv("FEWSHOT_BENCH_DATA", str(tmp_path / "empty"))
    for module in ("huggingface_hub.constants", "datasets.config"):
        imported = pytest.importorskip(module)
        for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            monkeypatch.setattr(imported, flag, False, raising=False)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    from fewshot_bench.data.loading import load_task_data

    load_task_data.cache_clear()
    yield attempts
    load_task_data.cache_clear()


def test_compare_on_the_committed_store_needs_no_data_dir_nor_network(no_data_no_network, tmp_path, capsys):
    store = tmp_path / "results.sqlite"
    shutil.copy(REPO / "leaderboard" / "results.sqlite", store)
    with deadline(120):
        assert main(["compare", "--store", str(store), "--pair", "sgg=full_ft", "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "paired comparisons" in out and "banking77/fold1/5way1shot15q" in out
    assert no_data_no_network == []  # nothing even tried to connect


def _banking77_store(path):
    """full_ft and protonet on 6 banking77 episodes in fold 1 (classes stored with each episode) and fold 2 (not
    stored: regenerating them needs the data)."""
    with ResultsStore(path) as store:
        for fold in (1, 2):
            setting = f"banking77/fold{fold}/5way1shot15q"
            for i in range(6):
                extra = {"classes": list("abcde"), "query_labels": [c for c in range(5) for _ in range(3)]} \
                    if fold == 1 else {}
                for method, right in (("full_ft", 12), ("protonet", 9 + i % 3)):
                    predictions = extra.get("query_labels", [0] * 15)[:right] + [4] * (15 - right)
                    store.write_episode(record(method=method, task="banking77", setting=setting, fold=fold, k_shot=1,
                                               episode_index=i, accuracy=right / 15, predictions=predictions,
                                               extra=extra))


def test_leaderboard_needs_no_data_dir_nor_network(no_data_no_network, tmp_path, caplog):
    _banking77_store(tmp_path / "s.sqlite")
    out = tmp_path / "board" / "leaderboard.csv"
    with deadline(120), caplog.at_level(logging.WARNING):
        assert main(["leaderboard", "--store", str(tmp_path / "s.sqlite"), "--out", str(out),
                     "--bootstrap", "200"]) == 0
    assert no_data_no_network == []  # nothing even tried to connect
    rows = {(r["setting"], r["method"]): r for r in csv.DictReader(out.open(encoding="utf-8"))}
    assert len(rows) == 4
    for method in ("full_ft", "protonet"):  # classes stored: class-level CIs from the store alone
        assert rows[("banking77/fold1/5way1shot15q", method)]["acc_class_ci95_low"] != ""
        assert rows[("banking77/fold2/5way1shot15q", method)]["acc_class_ci95_low"] == ""
    notes = [r.getMessage() for r in caplog.records if "class-level CIs left empty" in r.getMessage()]
    assert len(notes) == 1 and "1 of 2 settings (tasks banking77)" in notes[0] and "--data-dir" in notes[0]


def test_an_unreachable_dataset_fails_in_one_line_within_seconds(no_data_no_network, monkeypatch):
    from fewshot_bench.data.loading import get_task_data

    with deadline(60), pytest.raises(UserError) as caught:
        get_task_data("banking77")
    assert len(no_data_no_network) == 1  # one connect (of at most HUB_PROBE_SECONDS), no hub client retry loop
    message = str(caught.value)
    where = "tried " if os.environ.get("FEWSHOT_BENCH_DATA") else "no data dir is set"
    assert "\n" not in message and where in message and "PolyAI/banking77" in message
    assert "not reachable" in message and "network blocked by the test" in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # switched off: not even tried
    with deadline(60), pytest.raises(UserError, match=r"hub dataset 'PolyAI/banking77' not tried \(offline\)"):
        get_task_data("banking77")


# 4. the Ctrl-C line says episodes were kept only for a command that keeps them


@pytest.mark.parametrize("argv, kept", [
    (["run", "--methods", "protonet"], True),
    ([], True),  # `fewshot-bench` alone is `run`
    (["tune", "--methods", "protonet"], True),
    (["run", "--dry-run"], False),
    (["reproduce", "--store", "x.sqlite"], False),
    (["leaderboard"], False),
    (["compare", "--pair", "a=b"], False),
])
def test_the_interrupt_line_says_episodes_are_kept_only_where_they_are(argv, kept):
    from fewshot_bench.cli import build_parser
    from fewshot_bench.core.interrupts import interrupt_message

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:  # as cli.main does
        args = parser.parse_args(["run", *argv])
    message = interrupt_message(vars(args))
    assert message.startswith("interrupted") and "\n" not in message
    assert ("finished episodes are kept in the store" in message) == kept, message
    if not kept:
        assert "kept" not in message and "nothing was written" in message


def test_the_interrupt_line_of_merge_keeps_what_was_merged():
    from fewshot_bench.cli import build_parser
    from fewshot_bench.core.interrupts import interrupt_message

    message = interrupt_message(vars(build_parser().parse_args(["merge", "a.sqlite", "--store", "b.sqlite"])))
    assert "merged before it is kept" in message and "finished episodes" not in message


def test_every_cli_option_and_argument_has_help():
    """`fewshot-bench COMMAND --help` explains every option and positional argument."""
    import argparse

    from fewshot_bench.cli import build_parser

    missing = []
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += [f"{name} {a.option_strings or a.dest}" for a in sub._actions
                            if not a.help and not isinstance(a, argparse._HelpAction)]
    assert not missing, missing


def test_run_without_full_ft_compares_with_the_best_covered_method(tmp_path):
    """A run without full_ft gets a reference (the method in the most cells) instead of `no-reference` rows, and
    `run --reference` names one."""
    import csv

    from fewshot_bench.cli import main

    def references(*extra):
        store, out = tmp_path / f"s{len(extra)}.sqlite", tmp_path / f"lb{len(extra)}.csv"
        assert main(["run", "--tasks", "demo_intents", "--methods", "protonet,linear_probe", "--n-way", "3",
                     "--k-shot", "1", "--query", "2", "--episodes", "2", "--store", str(store), "--out", str(out),
                     "--isolation", "in-process", *extra]) == 0
        with open(out, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return {r["ref_method"] for r in rows}, {r["flags"] for r in rows}

    chosen, flags = references()
    assert chosen == {"linear_probe"} and not any("no-reference" in f for f in flags)
    assert references("--reference", "protonet")[0] == {"protonet"}
