"""TouchedRowAdamW: bit-identical to fused AdamW over whole tensors, touching only the rows with a gradient."""
import pytest
import torch
import torch.nn.functional as F

from fewshot_bench.data.loading import get_task_data
from fewshot_bench.episodes.sampling import sample_episode
from fewshot_bench.methods.row_adamw import TouchedRowAdamW
from fewshot_bench.methods.training import fused_adamw_devices

pytestmark = pytest.mark.skipif("cpu" not in fused_adamw_devices(), reason="this torch has no fused CPU AdamW")


def _batches(backbone, steps):
    """A different support set each step, so rows touched once keep moving on their Adam moments later."""
    data = get_task_data("demo_intents")
    episodes = [sample_episode(data, n_way=3, k_shot=2, q_query=1, seed=1, index=i) for i in range(steps)]
    return [backbone.tokenize(e.support_texts, e.support_labels) for e in episodes]


@pytest.mark.parametrize("weight_decay", [0.01, 0.0])
def test_ten_steps_are_bit_identical_to_dense_fused_adamw(tiny_backbone, weight_decay):
    torch.manual_seed(0)
    models = [tiny_backbone.fresh_model().eval() for _ in range(2)]
    head = torch.nn.Linear(tiny_backbone.hidden_size, 3)
    heads = [head, torch.nn.Linear(tiny_backbone.hidden_size, 3)]
    heads[1].load_state_dict(head.state_dict())
    optimizers = []
    for model, h, sparse in zip(models, heads, (False, True)):
        groups = [{"params": list(model.parameters()), "lr": 1e-2}, {"params": list(h.parameters()), "lr": 3e-2}]
        rows = [model.get_input_embeddings().weight] if sparse else []
        optimizers.append(TouchedRowAdamW(groups, weight_decay=weight_decay, fused=True, row_params=rows))
    embedding = models[1].get_input_embeddings().weight
    for batch in _batches(tiny_backbone, 10):
        for model, h, optimizer in zip(models, heads, optimizers):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(h(tiny_backbone.embed(model, batch)), batch.labels).backward()
            optimizer.step()
        for a, b in zip(list(models[0].parameters()) + list(heads[0].parameters()),
                        list(models[1].parameters()) + list(heads[1].parameters())):
            assert torch.equal(a, b)
    touched = optimizers[1].touched_rows([embedding])[0][0]
    assert 0 < int(touched.sum()) < embedding.shape[0] // 10  # the sparse path really skipped most rows
    assert embedding not in optimizers[1].state  # its moments are the compact ones, not torch's dense state


def test_touched_rows_grow_with_each_gradient_and_report_the_decay_factor():
    weight = torch.nn.Parameter(torch.ones(6, 2))
    optimizer = TouchedRowAdamW([{"params": [weight], "lr": 0.1}], weight_decay=0.5, fused=True, row_params=[weight])
    for rows in ([1], [4, 1]):
        weight.grad = torch.zeros(6, 2)
        weight.grad[rows] = 1.0
        mask, factor = optimizer.touched_rows([weight])[0]
        optimizer.step()
    assert mask.nonzero().reshape(-1).tolist() == [1, 4] and factor == pytest.approx(0.95)
    assert torch.equal(weight[[0, 2, 3, 5]], torch.full((4, 2), 0.95 * 0.95))  # untouched: decay only


def test_row_sparse_needs_the_fused_kernel():
    weight = torch.nn.Parameter(torch.ones(4, 2))
    with pytest.raises(ValueError, match="fused"):
        TouchedRowAdamW([{"params": [weight]}], weight_decay=0.0, fused=None, row_params=[weight])


@pytest.mark.parametrize("with_source", [False, True])
def test_recorder_on_touched_rows_equals_the_dense_recorder(tiny_backbone, with_source):
    """One trajectory, two recorders: the dense one over every element, the row-sparse one on the touched rows
    plus the closed form of the decayed rest (weight decay large enough that the rest matters)."""
    from fewshot_bench.methods.metrics import GradientRecorder

    torch.manual_seed(0)
    model, head = tiny_backbone.fresh_model().eval(), torch.nn.Linear(tiny_backbone.hidden_size, 3)
    params = list(model.parameters()) + list(head.parameters())
    embedding = model.get_input_embeddings().weight
    optimizer = TouchedRowAdamW([{"params": params, "lr": 1e-2}], weight_decay=1.0, fused=True, row_params=[embedding])
    dense, sparse = GradientRecorder(), GradientRecorder()
    src = None
    for t, batch in enumerate(_batches(tiny_backbone, 6)):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(head(tiny_backbone.embed(model, batch)), batch.labels)
        loss.backward()
        if with_source and t % 2 == 0:  # a source gradient on other rows too, reused for two steps
            src = [torch.zeros_like(p) for p in model.parameters()]
            src[0][torch.randint(0, embedding.shape[0], (40,))] = torch.randn(40, embedding.shape[1])
            for s in src[1:]:
                s.normal_()
        rows = optimizer.touched_rows(params)
        assert list(rows) == [0]
        dense.record(loss, params, source_grads=src)
        sparse.record(loss, params, source_grads=src, rows=rows)
        optimizer.step()
    a, b = dense.summary(), sparse.summary()
    assert a.keys() == b.keys() and (a["source_alignment"] is None) == (not with_source)
    for key, value in a.items():
        assert b[key] == (value if value is None else pytest.approx(value, rel=1e-6, abs=1e-9)), key
