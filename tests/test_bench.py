"""bench/bench.py times what `fewshot-bench run` evaluates (evaluate.episode_record), not a loop of its own."""
import importlib.util

import pytest

from helpers import REPO


@pytest.fixture
def bench(monkeypatch):
    """bench/bench.py and the bench_measure module beside it, found as `python bench/bench.py` finds it."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("bench_script", REPO / "bench" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, importlib.import_module("bench_measure")


def test_bench_times_the_run_episode_path(bench, monkeypatch, tmp_path):
    from fewshot_bench.execution import evaluate

    calls = []
    real = evaluate.episode_record

    def spy(*args, **kwargs):
        calls.append(kwargs["autocast"])
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "episode_record", spy)
    script, measure = bench
    args = script.parse_args(["--backbone", "tiny-encoder", "--task", "demo_intents", "--n-way", "3", "--k-shot", "1",
                              "--query", "2", "--episodes", "2", "--steps", "2", "--device", "cpu", "--threads", "1",
                              "--data-dir", str(tmp_path)])
    result = measure.bench_method("full_ft", args)
    assert len(calls) == 3 and calls == [evaluate.autocast_dtype("cpu")] * 3  # warm-up + 2 measured, run's autocast
    assert result["episodes"] == 2 and result["statuses"] == ["ok", "ok"] and result["steps_per_episode"] == 2
