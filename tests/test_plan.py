"""`fewshot-bench run --dry-run`: cells, episodes and hour estimates printed, nothing written."""
import os

import pytest

from fewshot_bench.cli import main
from fewshot_bench.plan import Calibration, Timing


def test_one_point_scales_adaptation_by_support_and_prediction_by_queries():
    calibration = Calibration([Timing(adapt_seconds=2.0, predict_seconds=1.0, support=5, queries=75)])
    assert calibration.episode_seconds(5, 75) == pytest.approx(3.0)
    assert calibration.episode_seconds(25, 75) == pytest.approx(2.0 * 5 + 1.0)
    assert calibration.episode_seconds(10, 300) == pytest.approx(2.0 * 2 + 1.0 * 4)


def test_two_points_give_a_fixed_cost_plus_a_cost_per_text():
    calibration = Calibration([Timing(adapt_seconds=2.0, predict_seconds=1.0, support=5, queries=75),
                               Timing(adapt_seconds=3.0, predict_seconds=4.0, support=25, queries=375)])
    assert calibration.episode_seconds(5, 75) == pytest.approx(3.0)
    assert calibration.episode_seconds(25, 375) == pytest.approx(7.0)
    assert calibration.episode_seconds(15, 225) == pytest.approx(2.5 + 2.5)  # halfway on both lines
    assert calibration.episode_seconds(45, 75) == pytest.approx(4.0 + 1.0)  # extrapolated: 2 + 0.05 s per text
    noisy = Calibration([Timing(2.0, 1.0, 5, 75), Timing(1.5, 0.5, 25, 375)])  # larger setting timed faster
    assert noisy.episode_seconds(25, 375) == pytest.approx(3.0)  # slopes clamped at 0, never below the small one


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEWSHOT_BENCH_DATA", "")
    monkeypatch.setenv("FEWSHOT_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tmp_path))
    argv = ["run", "--dry-run", "--backbone", "tiny-encoder", "--tasks", "demo_intents", "--k-shot", "1,2",
            "--query", "2", "--episodes", "4", "--methods", "protonet,full_ft(steps=2),fomaml(meta_steps=1)",
            "--store", str(tmp_path / "runs" / "s.sqlite"), "--out", str(tmp_path / "runs" / "lb.csv"), "--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "demo_intents/fold1/5way1shot2q" in out and "demo_intents/fold1/5way2shot2q" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for method in ("protonet", "full_ft(steps=2)", "fomaml(meta_steps=1)"):
        assert lines[method][1:3] == ["2", "8"]  # 2 cells, 8 episodes
        assert float(lines[method][4]) > 0
    assert "+ meta-training" in " ".join(lines["fomaml(meta_steps=1)"])
    assert "6 cells, 24 episodes" in out and "nothing written" in out
    assert set(os.listdir(tmp_path)) == before  # no store, no leaderboard, no meta-training cache
