"""One episode loop: a method's code is called from one place, and every entry point reaches it through
fewshot_bench.execution.evaluate (README "Layout"). A second loop written anywhere in the package or bench/
fails here."""
import ast

import pytest

from helpers import REPO

# callee -> the files that may call it (paths relative to the repository)
ALLOWED = {
    # the method's own code: adapt on the support set, predict the query texts
    "adapt": {"fewshot_bench/execution/harness.py",
              "fewshot_bench/execution/calibration.py"},  # the dry run wraps adapt to time it; the harness calls it
    "predict": {"fewshot_bench/execution/harness.py"},
    "meta_train": {"fewshot_bench/execution/evaluate.py",        # Executor.prepare_cell, in this process or the worker
                   "fewshot_bench/execution/worker_process.py",  # the worker's side of the same call
                   "fewshot_bench/execution/calibration.py"},    # the dry run times one meta-step of a copy
    "MetaContext": {"fewshot_bench/execution/evaluate.py", "fewshot_bench/execution/worker_process.py"},
    # the harness: what runs and scores one episode
    "episode_outcome": {"fewshot_bench/execution/harness.py", "fewshot_bench/execution/worker_process.py"},
    "run_episode": {"fewshot_bench/execution/evaluate.py"},
    # one episode as a run evaluates it: the executor, and what times it (dry-run calibration, bench/)
    "episode_record": {"fewshot_bench/execution/evaluate.py", "fewshot_bench/execution/calibration.py",
                       "bench/bench_measure.py", "bench/worker_overhead.py"},
}
# bench/versus.py times two checkouts against each other, each through its own harness (a tree from before the
# one loop has no evaluate module), so it calls run_episode of whichever tree it loaded
EXEMPT = {"bench/versus.py"}


def calls(source: str) -> set:
    """Names called in ``source``: f(...) and obj.f(...) both give 'f'."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.id if isinstance(func, ast.Name) else getattr(func, "attr", None))
    return names


def offending_calls() -> list:
    found = []
    files = sorted(REPO.glob("fewshot_bench/**/*.py")) + sorted(REPO.glob("bench/*.py"))
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        if rel in EXEMPT:
            continue
        for name in calls(path.read_text(encoding="utf-8")) & set(ALLOWED):
            if rel not in ALLOWED[name]:
                found.append(f"{rel} calls {name}() (allowed only in {', '.join(sorted(ALLOWED[name]))})")
    return found


def test_a_methods_code_is_called_from_the_one_loop_only():
    assert offending_calls() == []


def test_the_check_sees_a_second_loop():
    second_loop = "for episode in episodes:\n    predictor = method.adapt(ctx)\n    logits = predictor.predict(batch)\n"
    assert {"adapt", "predict"} <= calls(second_loop)
    assert calls("record = harness.run_episode(method, episode, backbone, seed=0)") == {"run_episode"}


@pytest.mark.parametrize("entry", ["execution/runner.py", "execution/reproduce.py", "execution/tuning.py",
                                   "execution/api.py"])
def test_every_entry_point_goes_through_the_executor(entry):
    source = (REPO / "fewshot_bench" / entry).read_text(encoding="utf-8")
    imported = {alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)
                and node.module in ("evaluate", "runner") and node.level == 1 for alias in node.names}
    assert imported & {"Executor", "evaluate", "run"}, f"{entry} does not use the executor"
