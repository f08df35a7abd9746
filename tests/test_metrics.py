"""GradientRecorder and query_scores on hand-made trajectories with known answers."""
import math

import pytest
import torch

from fewshot_bench.methods.metrics import GradientRecorder, query_scores


def _replay(moves, grads=None, losses=None, source=None):
    """Record one step per move: gradient ``grads[t]``, then move the parameter in place by ``moves[t]``."""
    theta = torch.zeros(2)
    recorder = GradientRecorder()
    for t, move in enumerate(moves):
        grad = torch.tensor(grads[t] if grads else [1.0, 0.0])
        loss = losses[t] if losses else 1.0
        recorder.record(loss, [theta], grads=[grad],
                        source_grads=None if source is None else [torch.tensor(source[t])])
        theta += torch.tensor(move)
    return recorder, recorder.summary()


def test_constant_gradient_is_consistent_with_no_norm_spread():
    _, s = _replay([[-0.1, 0.0]] * 5, grads=[[3.0, 4.0]] * 5)
    assert s["grad_dir_consistency"] == pytest.approx(1.0)
    assert s["grad_norm_cv"] == pytest.approx(0.0, abs=1e-12)
    assert s["steps"] == 5 and s["diverged"] is False and s["final_loss"] == 1.0


def test_grad_norm_cv_and_orthogonal_gradients():
    _, s = _replay([[0.0, 0.0]] * 2, grads=[[1.0, 0.0], [0.0, 3.0]])
    assert s["grad_norm_cv"] == pytest.approx(1.0 / 2.0)  # norms 1, 3: population std 1, mean 2
    assert s["grad_dir_consistency"] == pytest.approx(0.0)


def test_alternating_opposite_gradients_give_consistency_minus_one():
    _, s = _replay([[0.0, 0.0]] * 4, grads=[[1.0, 2.0], [-1.0, -2.0]] * 2)
    assert s["grad_dir_consistency"] == pytest.approx(-1.0)


def test_straight_line_path_has_efficiency_one():
    _, s = _replay([[1.0, 2.0]] * 4)
    assert s["path_efficiency"] == pytest.approx(1.0)


def test_back_and_forth_path_efficiency_is_exact():
    # +2, +2, -3 along x: displacement 1, path length 7
    _, s = _replay([[2.0, 0.0], [2.0, 0.0], [-3.0, 0.0]])
    assert s["path_efficiency"] == pytest.approx(1.0 / 7.0)
    # a right angle: (3, 0) then (0, 4): displacement 5, path length 7
    _, s = _replay([[3.0, 0.0], [0.0, 4.0]])
    assert s["path_efficiency"] == pytest.approx(5.0 / 7.0)
    # (1, 0) then (0, 3): displacement sqrt(10), path length 4
    _, s = _replay([[1.0, 0.0], [0.0, 3.0]])
    assert s["path_efficiency"] == pytest.approx(math.sqrt(10) / 4)


def test_summary_is_idempotent():
    recorder, first = _replay([[2.0, 0.0], [-1.0, 0.0]])
    assert recorder.summary() == first and first["path_efficiency"] == pytest.approx(1.0 / 3.0)
    with pytest.raises(RuntimeError, match="ended the trajectory"):  # its buffers are released
        recorder.record(0.0, recorder.params)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_non_finite_loss_or_gradient_marks_divergence():
    _, s = _replay([[0.1, 0.0]] * 3, losses=[1.0, float("nan"), 0.5])
    assert s["diverged"] is True
    _, s = _replay([[0.1, 0.0]] * 2, grads=[[1.0, 0.0], [math.inf, 0.0]])
    assert s["diverged"] is True


def test_source_alignment():
    _, s = _replay([[0.1, 0.0]] * 3, grads=[[1.0, 2.0]] * 3, source=[[1.0, 2.0]] * 3)
    assert s["source_alignment"] == pytest.approx(1.0)
    _, s = _replay([[0.1, 0.0]] * 2, grads=[[1.0, 0.0]] * 2, source=[[0.0, 5.0], [-2.0, 0.0]])
    assert s["source_alignment"] == pytest.approx((0.0 - 1.0) / 2)
    _, s = _replay([[0.1, 0.0]] * 2)
    assert s["source_alignment"] is None


def test_source_gradients_pair_with_leading_parameters():
    shared, head = torch.zeros(3), torch.zeros(2)
    recorder = GradientRecorder()
    recorder.record(0.5, [shared, head], grads=[torch.tensor([1.0, 1.0, 0.0]), torch.tensor([9.0, 9.0])],
                    source_grads=[torch.tensor([2.0, 2.0, 0.0])])
    assert recorder.summary()["source_alignment"] == pytest.approx(1.0)


@pytest.mark.parametrize("scale", [1e-25, 1e-22, 1e-20])
def test_tiny_gradients_give_exact_cosines(scale):
    # float32 squares of these entries underflow (zero or a few-bit subnormal): cosines must not leave [-1, 1]
    src = [[scale * 1.0, scale * 2.0], [scale * 2.0, scale * -1.0]]
    _, s = _replay([[0.1, 0.0]] * 2, grads=[[3.0, 6.0]] * 2, source=src)
    assert s["source_alignment"] == pytest.approx((1.0 + 0.0) / 2, abs=1e-9)
    _, s = _replay([[0.1, 0.0]] * 3, grads=[[scale, 2 * scale], [scale, 2 * scale], [-scale, -2 * scale]])
    assert s["grad_dir_consistency"] == pytest.approx((1.0 - 1.0) / 2, abs=1e-9)
    assert s["grad_norm_cv"] == pytest.approx(0.0, abs=1e-9)
    _, s = _replay([[scale, 0.0], [scale, 0.0], [0.0, scale]])
    assert s["path_efficiency"] == pytest.approx(math.sqrt(5) / 3, rel=1e-6)


def test_non_contiguous_parameters_and_gradients():
    # a transposed parameter (its .grad has the same strides): the recorder's buffers must still follow it
    theta = torch.zeros(3, 2).t()
    recorder = GradientRecorder()
    for t in range(4):
        grad = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]] if t % 2 else [[3.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
        recorder.record(1.0, [theta], grads=[grad.t().contiguous().t()], source_grads=[grad])
        theta += torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]] if t < 2 else [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    s = recorder.summary()
    cos = (3.0 + 24.0) / (5.0 * math.sqrt(91.0))  # between the two alternating gradients
    assert s["grad_dir_consistency"] == pytest.approx(cos)
    assert s["path_efficiency"] == pytest.approx(math.sqrt(8) / 4)
    assert s["source_alignment"] == pytest.approx(1.0)


def test_default_gradients_are_read_from_params():
    p = torch.nn.Parameter(torch.ones(2))
    recorder = GradientRecorder()
    for _ in range(2):
        p.grad = None
        (p * torch.tensor([3.0, 4.0])).sum().backward()
        recorder.record(torch.tensor(2.0), [p])
    assert recorder.norms == [5.0, 5.0] and recorder.summary()["grad_dir_consistency"] == pytest.approx(1.0)


def test_no_steps_gives_none():
    s = GradientRecorder().summary()
    assert s == {"grad_norm_cv": None, "grad_dir_consistency": None, "path_efficiency": None,
                 "source_alignment": None, "final_loss": None, "steps": 0, "diverged": False}


def test_single_step_has_no_consistency_and_undefined_efficiency():
    _, s = _replay([[0.0, 0.0]])
    assert s["grad_dir_consistency"] is None and s["path_efficiency"] is None and s["steps"] == 1


def test_query_scores_known_example():
    scores = query_scores([0, 0, 1, 1], [0, 1, 1, 1])
    # class 0: P=1, R=1/2 -> F1 2/3; class 1: P=2/3, R=1 -> F1 4/5
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert query_scores([0, 1, 2], [0, 1, 2]) == {"accuracy": 1.0, "macro_f1": 1.0}
