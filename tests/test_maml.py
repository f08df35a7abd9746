"""MAML / FOMAML (baselines/maml.py): meta-gradients against hand-unrolled autograd and finite
differences (float64), the un-adapted limit, meta-training on a synthetic task family, the state_dict round trip,
early stopping, and the meta-state cache's checks of a file against the config it claims."""
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fewshot_bench.methods.backbone import load_backbone
from fewshot_bench.data.loading import get_task_data
from fewshot_bench.episodes.sampling import Episode, fingerprint, sample_episode
from fewshot_bench.core.errors import UserError
from fewshot_bench.execution.harness import run_episode
from fewshot_bench.methods import EpisodeContext, MetaContext
from fewshot_bench.methods.spec import method_from_spec
from fewshot_bench.methods.architecture import adapted_names
from fewshot_bench.baselines.maml import FOMAML, HEAD_B, HEAD_W, MAML, MAMLConfig

MAML_SPEC = "maml"
FOMAML_SPEC = "fomaml"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Hidden-32 models: one thread is much faster than contended intra-op parallelism."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------- reference implementation
def unrolled(backbone, model, episode, *, adapt, meta, steps, lrs, first_order, head_init=MAMLConfig().head_init,
             head_scale=MAMLConfig().head_scale):
    """Hand-unrolled MAML with torch.autograd.grad(create_graph=True), no torch.func transforms.

    Returns (query loss, {meta name: grad}, {lr name: grad}). The head starts at zero (``head_init`` zero) or from
    prototypes of a separate step-0 forward (proto, scaled by ``head_scale``); each step's gradient is taken w.r.t. per-step aliases of the adapted tensors
    and of the head, i.e. partial derivatives with the head held fixed — the definition in maml.py.
    """
    leaves = {n: p.detach().clone().requires_grad_(n in meta) for n, p in model.named_parameters()}
    log_lrs = {n: torch.tensor(math.log(v), dtype=torch.float64, requires_grad=True) for n, v in lrs.items()}
    support = backbone.tokenize(episode.support_texts, episode.support_labels)
    query = backbone.tokenize(episode.query_texts, episode.query_labels)

    def embed(params, batch):
        out = functional_call(model, params, (), {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
        return out.last_hidden_state[:, 0]  # tiny-encoder pools the CLS vector

    fast = {n: leaves[n] for n in adapt}
    e0 = embed(leaves, support)
    onehot = F.one_hot(support.labels, episode.n_way).double()
    protos = onehot.T @ e0 / onehot.sum(0).unsqueeze(1)
    weight, bias = 2 * head_scale * protos, -head_scale * (protos ** 2).sum(1)
    if head_init == "zero":
        weight, bias = 0 * weight, 0 * bias  # zeros that stay in the graph, so per-step aliases can be differentiated
    for _ in range(steps):
        alias = {n: fast[n].view_as(fast[n]) for n in adapt}
        w_alias, b_alias = weight.view_as(weight), bias.view_as(bias)
        e = embed({**leaves, **alias}, support)
        loss = F.cross_entropy(e @ w_alias.T + b_alias, support.labels)
        grads = torch.autograd.grad(loss, [alias[n] for n in adapt] + [w_alias, b_alias], create_graph=not first_order)
        if first_order:
            grads = [g.detach() for g in grads]
        for n, g in zip(adapt, grads):
            fast[n] = fast[n] - log_lrs[n].exp() * g
        weight = weight - log_lrs[HEAD_W].exp() * grads[-2]
        bias = bias - log_lrs[HEAD_B].exp() * grads[-1]
    q_loss = F.cross_entropy(embed({**leaves, **fast}, query) @ weight.T + bias, query.labels)
    meta_list = [leaves[n] for n in meta]
    lr_list = list(log_lrs.values())
    grads = torch.autograd.grad(q_loss, meta_list + lr_list)
    return q_loss.detach(), dict(zip(meta, grads[: len(meta)])), dict(zip(log_lrs, grads[len(meta):]))


def _double_model(backbone):
    model = backbone.fresh_model().double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _ours(method, backbone, model, episode, *, learn_lr=True):
    loop = method.inner_loop(backbone, model)
    names = method.meta_param_names(model, loop)
    support = backbone.tokenize(episode.support_texts, episode.support_labels)
    query = backbone.tokenize(episode.query_texts, episode.query_labels)
    log_lrs = ({n: torch.tensor(math.log(method.config.inner_lr), dtype=torch.float64) for n in loop.lr_names()}
               if learn_lr else None)
    loss, grads, lr_grads = method.meta_gradient(loop, dict(model.named_parameters()), names, support, query,
                                                 episode.n_way, log_lrs)
    return loop, names, loss, grads, lr_grads


def _close(a, b, rtol=1e-7):
    scale = max(max(float(v.abs().max()) for v in b.values()), 1e-30)
    return all(float((a[n] - b[n]).abs().max()) <= rtol * scale for n in b)


CFG = dict(inner_steps=2, inner_lr=0.5, adapt_params="top-k", top_k=1, meta_params="all")


@pytest.mark.parametrize("head_init", ["zero", "proto"])
@pytest.mark.parametrize("adapt_params", ["top-k", "all"])
def test_maml_meta_gradient_matches_unrolled_and_finite_differences(backbone, demo, adapt_params, head_init):
    episode = demo[1](0, k=2, q=2)
    model = _double_model(backbone)
    method = MAML(MAMLConfig(**{**CFG, "adapt_params": adapt_params, "head_init": head_init}))
    loop, names, loss, grads, lr_grads = _ours(method, backbone, model, episode)
    lrs = {n: method.config.inner_lr for n in loop.lr_names()}
    ref_loss, ref_grads, ref_lr = unrolled(backbone, model, episode, adapt=loop.adapt, meta=names, steps=2, lrs=lrs,
                                           first_order=False, head_init=head_init)
    assert set(grads) == set(names) and loop.adapt  # adapted subset non-empty, meta-gradient over the whole backbone
    assert torch.allclose(loss, ref_loss, rtol=1e-10, atol=0)
    assert _close(grads, ref_grads) and _close(lr_grads, ref_lr)

    # finite differences along a random direction over a few tensors (adapted and outer-only) and the log lrs
    gen = torch.Generator().manual_seed(0)
    picked = [loop.adapt[0], loop.adapt[-1], "embeddings.LayerNorm.weight", "encoder.layer.0.output.dense.weight"]
    direction = {n: torch.randn(model.get_parameter(n).shape, generator=gen, dtype=torch.float64) for n in picked}
    lr_dir = {n: float(torch.randn((), generator=gen)) for n in loop.lr_names()}
    params = {n: p.detach() for n, p in model.named_parameters()}

    def meta_loss(eps):
        moved = {n: t + eps * direction[n] if n in direction else t for n, t in params.items()}
        step_lrs = {n: math.exp(math.log(lrs[n]) + eps * lr_dir[n]) for n in lrs}
        with torch.no_grad():
            sup = backbone.tokenize(episode.support_texts, episode.support_labels)
            qry = backbone.tokenize(episode.query_texts, episode.query_labels)
            return float(loop.episode_loss(moved, step_lrs, sup, qry, episode.n_way, 2, first_order=False))

    eps = 1e-5  # float64: truncation error ~eps^2, round-off ~1e-16/eps
    fd = (meta_loss(eps) - meta_loss(-eps)) / (2 * eps)
    analytic = sum(float((grads[n] * direction[n]).sum()) for n in picked) + sum(
        float(lr_grads[n]) * lr_dir[n] for n in lr_dir)
    assert fd == pytest.approx(analytic, rel=1e-6, abs=1e-12)

    # second-order terms are really there: first order differs along the same direction
    fo = FOMAML(MAMLConfig(**{**CFG, "adapt_params": adapt_params, "head_init": head_init}))
    _, _, _, fo_grads, fo_lr = _ours(fo, backbone, model, episode)
    fo_analytic = sum(float((fo_grads[n] * direction[n]).sum()) for n in picked) + sum(
        float(fo_lr[n]) * lr_dir[n] for n in lr_dir)
    assert abs(fo_analytic - fd) > 1e-3 * abs(fd)


@pytest.mark.parametrize("adapt_params", ["top-k", "head"])
def test_fomaml_equals_unrolled_with_detached_inner_gradients(backbone, demo, adapt_params):
    episode = demo[1](1, k=2, q=2)
    model = _double_model(backbone)
    method = FOMAML(MAMLConfig(**{**CFG, "inner_steps": 3, "adapt_params": adapt_params}))
    loop, names, loss, grads, lr_grads = _ours(method, backbone, model, episode)
    lrs = {n: method.config.inner_lr for n in loop.lr_names()}
    ref_loss, ref_grads, ref_lr = unrolled(backbone, model, episode, adapt=loop.adapt, meta=names, steps=3, lrs=lrs,
                                           first_order=True)
    assert torch.allclose(loss, ref_loss, rtol=1e-10, atol=0)
    assert _close(grads, ref_grads) and _close(lr_grads, ref_lr)
    so_ref = unrolled(backbone, model, episode, adapt=loop.adapt, meta=names, steps=3, lrs=lrs, first_order=False)[1]
    assert not _close(grads, so_ref, rtol=1e-3)


def test_zero_inner_steps_is_the_prototype_head_on_pristine_weights(backbone, demo):
    episode = demo[0]
    ctx = EpisodeContext(backbone, episode, 0)
    predictor = method_from_spec(MAML_SPEC, {"inner_steps": 0, "head_init": "proto", "head_scale": 1.0}).adapt(ctx)
    query = ctx.batch(episode, "query")
    with torch.no_grad():
        logits = predictor.predict(query)
        e_s = backbone.embed(backbone.pristine, ctx.support)
        e_q = backbone.embed(backbone.pristine, query)
    onehot = F.one_hot(ctx.support.labels, episode.n_way).float()
    protos = onehot.T @ e_s / onehot.sum(0).unsqueeze(1)
    expected = -torch.cdist(e_q, protos) ** 2 + (e_q ** 2).sum(1, keepdim=True)  # = 2 e.c - |c|^2
    assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-5)
    assert ctx.recorder.summary()["steps"] == 0


def test_adapt_without_meta_training_records_each_inner_step(backbone, demo):
    episode = demo[0]
    for spec in (MAML_SPEC, FOMAML_SPEC):
        method = method_from_spec(spec, {"inner_steps": 3, "inner_lr": 0.1})
        record = run_episode(method, episode, backbone, seed=0)
        assert record["status"] == "ok", record["error"]
        assert record["steps"] == 3 and record["path_efficiency"] is not None
        assert record["trainable_params"] == 8544 + 5 * 33  # last block of hidden-32 BERT + 5-way head
    assert MAML.attn_implementation == "eager" and FOMAML.attn_implementation == "sdpa"
    assert MAML.protocol == FOMAML.protocol == "meta-trained"


def test_parameter_selection_and_config_errors(backbone):
    names = [n for n, _ in backbone.pristine.named_parameters()]
    top = adapted_names(names, "top-k", 1)
    assert top and all(n.startswith("encoder.layer.1.") for n in top)
    assert adapted_names(names, "head", 1) == [] and adapted_names(names, "all", 1) == names
    decoder = load_backbone("tiny-decoder", device="cpu")
    dnames = [n for n, _ in decoder.pristine.named_parameters()]
    assert set(adapted_names(dnames, "top-k", 1)) == {n for n in dnames if n.startswith(("h.1.", "ln_f."))}
    with pytest.raises(UserError, match="adapt_params"):
        method_from_spec(MAML_SPEC, {"adapt_params": "some"}).adapt(EpisodeContext(
            backbone, sample_episode(get_task_data("demo_intents"), seed=0), 0))


# ------------------------------------------------------------------------------------------- synthetic task family
def _synthetic_family(tokenizer, *, n_classes=12, n_distractors=300, length=6, k=3, q=4, n_way=5):
    """Class = a keyword token placed at a random position among random distractor tokens.

    With a random encoder the CLS vector mixes all tokens about equally, so prototypes are noisy; a
    meta-learned encoder can learn to weigh the keywords, which is what every episode of the family needs.
    """
    vocab = [t for t in tokenizer.convert_ids_to_tokens(range(2000, 8000)) if t.isalpha() and len(t) > 3]
    rng = np.random.default_rng(0)
    words = list(rng.choice(vocab, size=n_classes + n_distractors, replace=False))
    keywords, distractors = words[:n_classes], words[n_classes:]

    def text(keyword, r):
        tokens = list(r.choice(distractors, size=length))
        tokens.insert(int(r.integers(0, length + 1)), keyword)
        return " ".join(tokens)

    def episode(index, pool="source"):
        r = np.random.default_rng([index, 0 if pool == "source" else 1])
        classes = [keywords[i] for i in r.choice(n_classes, size=n_way, replace=False)]
        support = [(text(c, r), y) for y, c in enumerate(classes) for _ in range(k)]
        query = [(text(c, r), y) for y, c in enumerate(classes) for _ in range(q)]
        support = [support[i] for i in r.permutation(len(support))]
        s_ids = tuple(f"{pool}{index}s{i}" for i in range(len(support)))
        q_ids = tuple(f"{pool}{index}q{i}" for i in range(len(query)))
        s_labels, q_labels = tuple(y for _, y in support), tuple(y for _, y in query)
        return Episode(task="synthetic", version=1, fold=1, pool=pool, n_way=n_way, k_shot=k, q_query=q, seed=0,
                       index=index, classes=tuple(classes), support_ids=s_ids,
                       support_texts=tuple(t for t, _ in support), support_labels=s_labels, query_ids=q_ids,
                       query_texts=tuple(t for t, _ in query), query_labels=q_labels,
                       fingerprint=fingerprint(classes, s_ids, s_labels, q_ids, q_labels))

    return episode


def _post_adaptation_loss(method, backbone, episodes):
    losses = []
    for episode in episodes:
        ctx = EpisodeContext(backbone, episode, 0)
        predictor = method.adapt(ctx)
        with torch.no_grad():
            logits = predictor.predict(ctx.batch(episode, "query"))
        losses.append(float(F.cross_entropy(logits, torch.tensor(episode.query_labels))))
    return float(np.mean(losses))


def test_meta_training_lowers_post_adaptation_query_loss(backbone):
    family = _synthetic_family(backbone.tokenizer)
    held_out = [family(i, pool="target") for i in range(8)]
    config = dict(inner_steps=2, inner_lr=0.1, meta_steps=40, meta_batch=2, outer_lr=3e-3)
    plain = MAML(MAMLConfig(**config))
    before = _post_adaptation_loss(plain, backbone, held_out)
    trained = MAML(MAMLConfig(**config))
    trained.meta_train(MetaContext(backbone, 0, family))
    after = _post_adaptation_loss(trained, backbone, held_out)
    assert np.mean(trained.meta_losses[-10:]) < np.mean(trained.meta_losses[:10])
    print("synthetic family: post-adaptation query loss", before, "->", after)
    assert after < 0.8 * before, (before, after)


# ------------------------------------------------------------------------------------------- state
def test_state_dict_round_trip_restores_the_meta_trained_method(backbone, demo):
    """What meta_train learned (weights and learned inner rates) survives state_dict -> load_state_dict."""
    overrides = {"meta_steps": 3, "meta_batch": 2, "learn_inner_lr": True, "inner_steps": 1}
    first = method_from_spec(FOMAML_SPEC, overrides)
    assert first.state_dict() is None  # nothing learned yet: nothing to cache
    first.meta_train(MetaContext(backbone, 0, demo[1]))
    second = method_from_spec(FOMAML_SPEC, overrides)
    second.load_state_dict(first.state_dict())
    assert second.meta_state.keys() == first.meta_state.keys()
    assert all(torch.equal(second.meta_state[n], first.meta_state[n]) for n in first.meta_state)
    assert second.inner_lrs == first.inner_lrs and set(first.inner_lrs) >= {HEAD_W, HEAD_B}
    changed = [n for n, t in first.meta_state.items() if not torch.equal(t, backbone.pristine.get_parameter(n))]
    assert changed  # meta-training moved the weights

    # adapt starts from the meta-learned weights: same predictions from both instances
    target = demo[0]
    a, b = run_episode(first, target, backbone, seed=0), run_episode(second, target, backbone, seed=0)
    assert a["status"] == "ok" and a["predictions"] == b["predictions"]


# ------------------------------------------------------------------------------------------- 1-shot saturation
def test_scaled_prototype_head_lets_the_inner_loop_change_one_shot_predictions(backbone):
    data = get_task_data("demo_intents")
    episode = sample_episode(data, pool="target", n_way=5, k_shot=1, q_query=5, seed=0, index=0)

    def predictions(**config):
        ctx = EpisodeContext(backbone, episode, 0)
        predictor = method_from_spec(FOMAML_SPEC, config).adapt(ctx)
        with torch.no_grad():
            return predictor.predict(ctx.batch(episode, "query")).argmax(-1), ctx.recorder

    before, _ = predictions(inner_steps=0, head_scale=0.01)
    after, recorder = predictions(inner_steps=5, inner_lr=0.5, head_scale=0.01, adapt_params="all")
    assert not torch.equal(before, after) and recorder.summary()["steps"] == 5


def test_head_scale_undoes_the_one_shot_saturation_of_the_prototype_head():
    """One shot: each support vector is its prototype, so with pretrained-sized embeddings (|e| ~ 5) the
    prototype head's support loss is ~0 and the inner loop has nothing to follow; scale 0.01 restores it."""
    from fewshot_bench.baselines.maml_inner import _head_loss, init_head

    e = 5.0 * F.normalize(torch.randn(5, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.arange(5)

    def loss_and_grad(scale):
        weight, bias = init_head(e, labels, 5, "proto", scale)
        weight.requires_grad_(True)
        loss = _head_loss(e, weight, bias, labels)
        return loss.item(), torch.autograd.grad(loss, weight)[0].norm().item()

    saturated, soft = loss_and_grad(1.0), loss_and_grad(0.01)
    assert saturated[0] < 1e-6 and saturated[1] < 1e-5
    assert soft[0] > 0.5 and soft[1] > 1e-2


def test_early_stopping_keeps_the_best_validation_meta_state(backbone, demo, tmp_path):
    data = get_task_data("demo_intents")

    def validation(i):
        return sample_episode(data, pool="validation", n_way=5, k_shot=1, q_query=3, seed=0, index=i)

    method = FOMAML(MAMLConfig(inner_steps=1, meta_steps=4, meta_batch=1, meta_query=2, outer_lr=1e-2, val_every=1,
                               val_episodes=1, patience=1, head_scale=0.1))
    ctx = MetaContext(backbone, 0, lambda i: demo[1](i, k=1, q=2), validation_episodes=validation)
    method.meta_train(ctx)
    curve = [accuracy for _, accuracy in method.validation_curve]
    steps = [step for step, _ in method.validation_curve]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) <= 4
    assert len(steps) == 4 or curve[-1] <= max(curve[:-1])  # stopped only after a check without gain
    assert method.validation_accuracy(ctx, dict(method.meta_state)) == max(curve)


def test_cache_file_is_checked_against_the_config_it_claims(backbone, demo, tmp_path, caplog):
    """A foreign but valid safetensors file, or one with another config's payload or shapes, is not loaded
    (the runner then meta-trains again and overwrites it); the file written for this config is."""
    from safetensors.torch import save_file

    from fewshot_bench.execution.meta_cache import load_meta_state, payload_text, save_meta_state

    overrides = {"meta_steps": 1, "meta_batch": 1, "inner_steps": 1}
    reference = method_from_spec(FOMAML_SPEC, overrides)
    reference.meta_train(MetaContext(backbone, 0, demo[1]))
    good, expected = reference.state_dict(), reference.state_shapes(backbone)
    assert {n: tuple(t.shape) for n, t in good.items()} == expected
    payload = {"method": "fomaml", "config": reference.config_dict()}
    name = next(iter(good))
    text = payload_text(payload)
    path = tmp_path / "state.safetensors"
    poisons = {
        "foreign file": ({"weights": torch.zeros(3)}, {"payload": "{}"}),
        "another config": (good, {"payload": text.replace('"inner_steps": 1', '"inner_steps": 2')}),
        "wrong shape": ({**good, name: torch.zeros(2, 2)}, {"payload": text}),
        "missing tensor": ({n: t for n, t in good.items() if n != name}, {"payload": text}),
    }
    for label, (tensors, metadata) in poisons.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fewshot_bench.execution.meta_cache"):
            assert load_meta_state(path, payload, expected) is None, label
        assert "not used" in caplog.text, label
    path.write_bytes(b"not safetensors")
    assert load_meta_state(path, payload, expected) is None
    save_meta_state(path, good, payload, {"meta_train_seconds": "1.5"})
    state, metadata = load_meta_state(path, payload, expected)
    assert metadata["meta_train_seconds"] == "1.5" and all(torch.equal(state[n], good[n]) for n in good)
    restored = method_from_spec(FOMAML_SPEC, overrides)
    restored.load_state_dict(state)
    a, b = run_episode(reference, demo[0], backbone, seed=0), run_episode(restored, demo[0], backbone, seed=0)
    assert a["status"] == "ok" and a["predictions"] == b["predictions"]


# ------------------------------------------------------------------------------------------- adaptation is measured
def test_default_inner_loop_changes_planted_one_shot_logits():
    """A planted 1-shot episode with MiniLM-sized pooled vectors (norm 5.5): at the defaults (zero head) the support
    loss before the inner loop is ln 5 and the inner steps move the query logits; with the prototype head at
    head_scale 1 (the 0.3 default) the loss is ~0 and nothing moves."""
    from fewshot_bench.baselines.maml_inner import _head_loss, init_head

    g = torch.Generator().manual_seed(0)
    support = 5.5 * F.normalize(torch.randn(5, 32, generator=g), dim=1)
    query = support.repeat(3, 1) + 2.0 * torch.randn(15, 32, generator=g)
    labels = torch.arange(5)

    def adapt(config):
        weight, bias = init_head(support, labels, 5, config.head_init, config.head_scale)
        before = query @ weight.T + bias
        first = None
        for _ in range(config.inner_steps):
            weight, bias = weight.detach().requires_grad_(True), bias.detach().requires_grad_(True)
            loss = _head_loss(support, weight, bias, labels)
            first = float(loss.detach()) if first is None else first
            g_w, g_b = torch.autograd.grad(loss, (weight, bias))
            weight, bias = weight - config.inner_lr * g_w, bias - config.inner_lr * g_b
        return first, (query @ weight.T + bias - before).abs().max().item()

    loss, moved = adapt(MAMLConfig())
    assert loss >= 0.1 and moved > 1e-3
    loss, moved = adapt(MAMLConfig(head_init="proto", head_scale=1.0, inner_lr=1e-2))
    assert loss < 1e-4 and moved < 1e-4


@pytest.mark.parametrize("spec", [MAML_SPEC, FOMAML_SPEC])
def test_harness_reports_what_the_default_inner_loop_did(backbone, spec):
    """The harness stores the support loss before/after the inner loop and the share of changed query predictions."""
    episode = sample_episode(get_task_data("demo_intents"), pool="target", n_way=5, k_shot=1, q_query=5, seed=0, index=0)
    record = run_episode(method_from_spec(spec), episode, backbone, seed=0)
    assert record["status"] == "ok", record["error"]
    assert record["support_loss_before"] >= 0.1
    assert record["support_loss_after"] < record["support_loss_before"]
    assert 0.0 <= record["adapt_changed"] <= 1.0
    unadapted = run_episode(method_from_spec(spec, {"inner_steps": 0}), episode, backbone, seed=0)
    assert unadapted["status"] == "ok" and unadapted.get("adapt_changed") is None  # no inner step: nothing to measure


def test_adaptation_figures_are_the_harness_measure_of_the_two_predictors(tiny_backbone, demo_episode):
    """adapt_changed is the share of query argmaxes that differ; a method without an un-adapted model gets none."""
    from fewshot_bench.methods import Method, Predictor

    n_way = demo_episode.n_way

    def constant(cls):
        return lambda batch: F.one_hot(torch.full((batch.input_ids.shape[0],), cls), n_way).float() * 5

    class Flip(Method):
        name = "flip"

        def adapt(self, ctx):
            return Predictor(constant(0), initial=constant(1))

    class Plain(Method):
        name = "plain"

        def adapt(self, ctx):
            return Predictor(constant(0))

    record = run_episode(Flip(), demo_episode, tiny_backbone, seed=0)
    assert record["adapt_changed"] == 1.0
    labels = torch.tensor(demo_episode.support_labels)
    expected = {cls: float(F.cross_entropy(F.one_hot(torch.full((len(labels),), cls), n_way).float() * 5, labels))
                for cls in (0, 1)}
    assert record["support_loss_after"] == pytest.approx(expected[0], rel=1e-5)
    assert record["support_loss_before"] == pytest.approx(expected[1], rel=1e-5)
    assert "adapt_changed" not in run_episode(Plain(), demo_episode, tiny_backbone, seed=0)
