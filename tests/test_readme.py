"""Every command in the README's bash blocks parses, and the user-facing ones run (scaled down where costly).

The "Add a task" walk-through writes a skeleton card with `new-task`; the test then replaces it with the
README's filled-in card (the ```yaml block headed `# my_cards/<name>.yaml`), as the reader would edit it.
Heavier commands are run elsewhere too: the main command in test_run (default suite on the demo task),
torchrun and merge in test_run's sharding tests, the `pip install` line in test_tasks' wheel test.
"""
import json
import re
import shlex
from pathlib import Path

import pytest

from fewshot_bench import TASKS
from fewshot_bench.cli import build_parser, main
from fewshot_bench.data.cards import PLACEHOLDER

from helpers import REPO, shared_data_dir

SCALE_DOWN = {"--backbone": "tiny-encoder", "--episodes": "1", "--k-shot": "1", "--trials": "1"}


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


def readme_cards():
    """{path: text} of the README's ```yaml blocks whose first line is a `# path/to/card.yaml` comment."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n# (\S+\.yaml)\n(.*?)```", readme, re.S)
    return {path: text for path, text in blocks}


def fill_in_skeleton(path):
    """Replace the skeleton `new-task` wrote at ``path`` by the README's filled-in card (same top-level fields)."""
    skeleton, filled = path.read_text(), readme_cards()[path.as_posix()]
    assert PLACEHOLDER in skeleton
    top_level = lambda text: set(re.findall(r"^(\w+):", text, re.M))  # noqa: E731
    assert top_level(filled) <= top_level(skeleton)
    path.write_text(filled)


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
    ran, registered = set(), set(TASKS.names())
    for words in readme_commands():
        argv = fewshot_argv(words)
        if words[0] != "fewshot-bench" or argv == ["run"] or argv[0] == "merge" or "--launcher" in argv:
            continue  # bare `run` = the main command, `merge` needs shards: both run in test_run; the job array in
            # test_launchers
        argv = [str(data) if a == "../shared/data" else a for a in argv]
        if argv[0] == "reproduce":  # the committed store takes minutes: the README's own small run store stands in
            argv = ["runs/results.sqlite" if a == "leaderboard/results.sqlite" else a for a in argv]
        for flag, value in SCALE_DOWN.items():
            if flag in argv:
                argv[argv.index(flag) + 1] = value
        assert main(argv) == 0, " ".join(argv)
        ran.add(argv[0] if argv[0] != "list" else "list " + argv[1])
        out = capsys.readouterr().out
        if argv[0] == "new-task":
            fill_in_skeleton(Path(argv[argv.index("--out") + 1]))
        if argv[0] == "check-task":
            assert "duplicate texts" in out and "episodes: yes" in out
        if argv[0] == "episodes":
            assert len(json.loads(out)["fingerprint"]) == 64
        if argv[:2] == ["list", "tasks"]:
            assert "banking77" in out and "huffpost" in out
    for name in set(TASKS.names()) - registered:  # the walk-through's card
        TASKS.unregister(name)
    assert ran >= {"list tasks", "episodes", "run", "leaderboard", "validate", "new-task", "check-task", "reproduce"}
    assert (tmp_path / "leaderboard" / "leaderboard.csv").is_file()
