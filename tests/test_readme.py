"""Every command in the README's bash blocks parses, and the user-facing ones run (scaled down where costly).

Heavier commands are run elsewhere too: the main command in test_run (default suite on the demo task),
torchrun and merge in test_run's sharding tests, the `pip install` line in test_tasks' wheel test.
"""
import json
import re
import shlex

import pytest

from fewshot_bench.cli import build_parser, main

from helpers import REPO, shared_data_dir

SCALE_DOWN = {"--backbone": "tiny-encoder", "--episodes": "1", "--k-shot": "1"}


def readme_commands():
    """(program, argv) for each command line of the README's ```bash blocks (continuations joined)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            for part in line.split("&&"):
                commands.append(shlex.split(part))
    return commands


def fewshot_argv(words):
    """The fewshot-bench arguments of a `fewshot-bench ...` or `torchrun ... -m fewshot_bench ...` line."""
    if words[0] == "fewshot-bench":
        return words[1:]
    if words[0] == "torchrun":
        return words[words.index("fewshot_bench") + 1:]
    return None


def test_readme_lists_the_commands_we_expect():
    programs = {words[0] for words in readme_commands()}
    assert {"pip", "fewshot-bench", "pytest", "torchrun"} <= programs
    assert ["pip", "install", ".[test]"] in readme_commands() and ["pytest", "-q"] in readme_commands()


@pytest.mark.parametrize("words", [w for w in readme_commands() if fewshot_argv(w) is not None],
                         ids=lambda w: " ".join(w)[:60])
def test_every_readme_command_parses(words):
    build_parser().parse_args(fewshot_argv(words))  # argparse exits (test error) on an unknown flag or choice


def test_readme_task_and_run_commands_work(tmp_path, capsys, monkeypatch):
    data = shared_data_dir()
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", str(data))
    monkeypatch.chdir(tmp_path)  # runs/ and leaderboard/ paths of the README land in tmp_path
    ran = set()
    for words in readme_commands():
        argv = fewshot_argv(words)
        if words[0] != "fewshot-bench" or argv == ["run"] or argv[0] == "merge":
            continue  # bare `run` = the main command, `merge` needs shards: both run in test_run
        argv = [str(data) if a == "../shared/data" else a for a in argv]
        for flag, value in SCALE_DOWN.items():
            if flag in argv:
                argv[argv.index(flag) + 1] = value
        assert main(argv) == 0, " ".join(argv)
        ran.add(argv[0] if argv[0] != "list" else "list " + argv[1])
        out = capsys.readouterr().out
        if argv[0] == "episodes":
            assert len(json.loads(out)["fingerprint"]) == 64
        if argv[:2] == ["list", "tasks"]:
            assert "banking77" in out and "huffpost" in out
    assert ran >= {"list tasks", "episodes", "run", "leaderboard", "validate"}
    assert (tmp_path / "leaderboard" / "leaderboard.csv").is_file()
