"""SGG's flat vectors with a row-sparse input-embedding matrix (fewshot_bench/methods/sgg/flat_vectors.py): the same
vectors as dense passes, element for element; inner products equal to rounding; the same SGG episode."""
import pytest
import torch

from fewshot_bench.methods.metrics import gram
from fewshot_bench.methods.sgg import SGG, SGGConfig, flatten
from fewshot_bench.methods.sgg import method as sgg_method
from fewshot_bench.methods.sgg.flat_vectors import FlatVectors
from fewshot_bench.methods.sgg.guidance import apply_coefficients, gradient_dots
from helpers import adapt


def _params():
    """A bias, an embedding-like matrix (40 rows), a dense weight; the last one plays the head."""
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(6, generator=gen), torch.randn(40, 8, generator=gen), torch.randn(8, 5, generator=gen),
            torch.randn(5, 3, generator=gen)]


def _gradient(params, rows, seed):
    """Random dense gradients, the matrix non-zero in ``rows`` only."""
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    mask = torch.zeros(40, 1)
    mask[list(rows)] = 1.0
    grads[1] = grads[1] * mask
    return grads


def test_flat_vectors_build_the_dense_vectors_and_their_inner_products():
    params = _params()
    shared = params[:3]
    k = sum(p.numel() for p in shared)
    flat = FlatVectors(params, [params[1]])
    task, step, src_buf = flat.zeros(), flat.zeros(), flat.zeros(k)
    ref = None
    for t, (rows, src_rows) in enumerate([((1, 5), (2, 30)), ((7,), (5, 39)), ((0, 1, 39), (11,))]):
        grads = _gradient(params, rows, seed=t)
        task = flat.flatten_into(task, grads)
        assert torch.equal(task, flatten(grads))  # rows of earlier steps are zero again
        src = flat.flatten_into(src_buf, _gradient(shared, src_rows, seed=10 + t))
        assert torch.equal(src, flatten(_gradient(shared, src_rows, seed=10 + t)))
        if ref is None:
            ref = task.clone()
        vectors = [task[:k], ref[:k], src]
        assert torch.allclose(flat.gram(vectors), gram(vectors), rtol=1e-6, atol=1e-9)
        dense, sparse = gradient_dots(task, k, ref, src), gradient_dots(task, k, ref, src, flat)
        assert sparse.keys() == dense.keys()
        assert all(sparse[key] == pytest.approx(dense[key], rel=1e-6) for key in dense)
        for a, b, c in [(0.7, 0.3, 0.0), (1.0, 0.0, 0.2), (0.5, -0.25, 0.125)]:
            expected = apply_coefficients(task, k, a, b, c, ref, src)
            assert torch.equal(flat.combine(task, k, a, b, c, ref, src, out=step), expected)
        expected = ref.clone().mul_(0.9).add_(task, alpha=0.1)
        assert torch.equal(flat.average_(ref, task, 0.9), expected)
    assert flat.reached[0].index.tolist() == [1, 5, 2, 30, 7, 39, 0, 11]  # U: every row seen, in order of first sight


def test_without_row_sparse_matrices_the_passes_are_the_dense_ones():
    params = _params()
    flat = FlatVectors(params)
    task = flat.flatten_into(flat.zeros(), _gradient(params, (3,), seed=0))
    ref = flatten(_gradient(params, (4,), seed=1))
    assert torch.equal(flat.gram([task, ref]), gram([task, ref]))
    assert gradient_dots(task, 20, ref, None, flat) == gradient_dots(task, 20, ref, None)


def test_a_nan_row_counts_as_non_zero():
    params = _params()
    flat = FlatVectors(params, [params[1]])
    grads = _gradient(params, (), seed=0)
    grads[1][17, 3] = float("nan")
    task = flat.flatten_into(flat.zeros(), grads)
    assert flat.reached[0].index.tolist() == [17] and torch.isnan(task).any()


@pytest.mark.parametrize("lambdas", [dict(), dict(lambda_dir=1.0, lambda_mag=1.0, lambda_align=1.0,
                                                   align_schedule="constant", tau_mult=1.0, ref_init="half")])
def test_an_sgg_episode_predicts_what_dense_passes_predict(backbone, demo, monkeypatch, lambdas):
    episode, source = demo
    made = []
    monkeypatch.setattr(sgg_method, "FlatVectors",
                        lambda params, row_params=(): made.append(FlatVectors(params, row_params)) or made[-1])
    logits, ctx = adapt(SGG(SGGConfig(**lambdas)), backbone, episode, source)
    assert len(made[0].segments) == 1 and 0 < made[0].reached[0].index.numel() < 1000  # the word embeddings, row-sparse
    monkeypatch.setattr(sgg_method, "FlatVectors", lambda params, row_params=(): FlatVectors(params))
    dense_logits, dense_ctx = adapt(SGG(SGGConfig(**lambdas)), backbone, episode, source)
    assert torch.equal(logits.argmax(-1), dense_logits.argmax(-1))
    assert torch.allclose(logits, dense_logits, rtol=1e-4, atol=1e-5)
    ours, theirs = ctx.recorder.sgg_trace, dense_ctx.recorder.sgg_trace
    assert ours["align_active"] == theirs["align_active"] and ours["mag_active"] == theirs["mag_active"]
    assert ours["task_grad_norm"] == pytest.approx(theirs["task_grad_norm"], rel=1e-4)
