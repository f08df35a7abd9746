"""Gradient-stability metrics on known trajectories, and query scores."""
import math

import pytest
import torch

from fewshot_bench.metrics import GradientRecorder, query_scores


def _trajectory(gradients, lr=1.0, source=None):
    theta = torch.zeros(len(gradients[0]), requires_grad=True)
    recorder = GradientRecorder()
    for step, g in enumerate(gradients):
        g = torch.tensor(g, dtype=torch.float32)
        recorder.record(torch.tensor(1.0 / (step + 1)), [theta], grads=[g],
                        source_grads=None if source is None else [torch.tensor(source[step], dtype=torch.float32)])
        with torch.no_grad():
            theta -= lr * g
    return recorder.summary()


def test_constant_gradient_is_consistent_and_straight():
    out = _trajectory([[1.0, 2.0, 2.0]] * 5)
    assert out["grad_dir_consistency"] == pytest.approx(1.0)
    assert out["grad_norm_cv"] == pytest.approx(0.0)
    assert out["path_efficiency"] == pytest.approx(1.0)
    assert out["steps"] == 5 and out["final_loss"] == pytest.approx(0.2) and not out["diverged"]


def test_back_and_forth_path():
    out = _trajectory([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    assert out["grad_dir_consistency"] == pytest.approx(-1.0)
    assert out["path_efficiency"] == pytest.approx(1.0 / 3.0)  # net 1, travelled 3


def test_norm_cv_and_orthogonal_steps():
    out = _trajectory([[1.0, 0.0], [0.0, 3.0]])
    assert out["grad_norm_cv"] == pytest.approx(1.0 / 2.0)  # norms 1 and 3: std 1, mean 2
    assert out["grad_dir_consistency"] == pytest.approx(0.0)
    assert out["path_efficiency"] == pytest.approx(math.sqrt(10) / 4)


def test_source_alignment_uses_the_shared_prefix():
    out = _trajectory([[1.0, 0.0]] * 2, source=[[1.0, 0.0], [-1.0, 0.0]])
    assert out["source_alignment"] == pytest.approx(0.0)
    theta, head = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    recorder = GradientRecorder()
    recorder.record(1.0, [theta, head], grads=[torch.tensor([1.0, 1.0]), torch.ones(3)], source_grads=[torch.tensor([2.0, 2.0])])
    assert recorder.summary()["source_alignment"] == pytest.approx(1.0)


def test_non_finite_loss_or_gradient_marks_divergence():
    assert _trajectory([[1.0], [float("nan")]])["diverged"]
    recorder = GradientRecorder()
    recorder.record(float("inf"), [torch.zeros(1, requires_grad=True)], grads=[torch.ones(1)])
    assert recorder.summary()["diverged"]


def test_reads_param_grad_by_default():
    theta = torch.zeros(2, requires_grad=True)
    (theta * torch.tensor([3.0, 4.0])).sum().backward()
    recorder = GradientRecorder()
    recorder.record(torch.tensor(0.5), [theta])
    assert recorder.norms == [pytest.approx(5.0)]


def test_no_steps_gives_none():
    out = GradientRecorder().summary()
    assert out["grad_norm_cv"] is None and out["path_efficiency"] is None and out["steps"] == 0


def test_query_scores():
    scores = query_scores([0, 0, 1, 1], [0, 1, 1, 1])
    assert scores["accuracy"] == 0.75 and scores["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
