"""Structured Gradient Guidance (fewshot_bench/sgg/): tiny backbone, demo task, CPU, a few seconds."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_bench.baselines.full_ft import FullFineTuning
from fewshot_bench.core.errors import UserError
from fewshot_bench.execution.harness import run_episode
from fewshot_bench.methods import EpisodeContext
from fewshot_bench.methods.spec import method_from_spec
from fewshot_bench.methods.sgg import (SGG, SGGConfig, SGGNoAlign, SGGNoDir, SGGNoMag, exact_guided_gradient,
                               first_order_guided_gradient, flatten, regularisers, unflatten)
from helpers import adapt as _adapt

SEED = 3


def _dot(a, b):
    return torch.dot(flatten(a), flatten(b))


def _norm(a):
    return torch.linalg.vector_norm(flatten(a))


def _cos(a, b):
    return F.cosine_similarity(flatten(a), flatten(b), dim=0)


def _cfg(**kw):
    return SGGConfig(**kw)


# ------------------------------------------------------------------------------------------- identity with full_ft
@pytest.mark.parametrize("mode", ["first_order", "exact"])
def test_all_lambdas_zero_is_exactly_full_ft(backbone, demo, mode):
    episode, source = demo
    ref_logits, ref_ctx = _adapt(FullFineTuning(), backbone, episode)
    logits, ctx = _adapt(SGG(_cfg(mode=mode, lambda_dir=0.0, lambda_mag=0.0, lambda_align=0.0)), backbone, episode,
                         source)  # g_src is still measured (forked RNG): must not perturb the trajectory
    assert torch.equal(logits, ref_logits)
    assert len(ctx.recorder.params) == len(ref_ctx.recorder.params)
    assert all(torch.equal(a, b) for a, b in zip(ctx.recorder.params, ref_ctx.recorder.params))
    ours, theirs = ctx.recorder.summary(), ref_ctx.recorder.summary()
    assert ours["source_alignment"] is not None and theirs["source_alignment"] is None
    for key in ("path_efficiency", "final_loss", "steps"):
        assert ours[key] == theirs[key]


# ------------------------------------------------------------------------------------------- exact-mode gradients
def _tiny_problem(backbone, episode):
    """float64: the last LayerNorm weight (shared, 32) + a 5-way head: a tiny parameter set."""
    torch.manual_seed(0)
    model = backbone.fresh_model().double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    shared = model.encoder.layer[-1].output.LayerNorm.weight
    shared.requires_grad_(True)
    head = nn.Linear(backbone.hidden_size, episode.n_way).double()
    batch = backbone.tokenize(episode.support_texts, episode.support_labels)
    params = [shared, head.weight, head.bias]

    def loss_fn():
        return F.cross_entropy(head(backbone.embed(model, batch)), batch.labels)

    return params, loss_fn


def _objective(loss_fn, params, term, weight, **refs):
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params)
    return float((loss + weight * regularisers(list(grads), 1, **refs)[term]).detach())


@pytest.mark.parametrize("term", ["dir", "mag", "align"])
def test_exact_gradient_matches_finite_differences(backbone, demo, term):
    params, loss_fn = _tiny_problem(backbone, demo[0])
    g0 = [g.detach() for g in torch.autograd.grad(loss_fn(), params)]
    gen = torch.Generator().manual_seed(1)
    refs = {"ref": [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params],
            "tau": 0.3 * float(_norm(g0)),  # R_mag active
            "src": [torch.randn(params[0].shape, generator=gen, dtype=torch.float64)]}
    weight = 0.7
    out = exact_guided_gradient(loss_fn(), params, 1, weights={term: weight}, **refs)
    step, task = unflatten(out.step, params), unflatten(out.task, params)
    assert all(out.used) and out.values[term] > 0
    assert out.values[term] == pytest.approx(float(regularisers(g0, 1, **refs)[term]), rel=1e-9)
    assert all(torch.allclose(a, b) for a, b in zip(task, g0))
    assert any(not torch.allclose(s, t) for s, t in zip(step, task))  # the regulariser contributes
    eps = 1e-6
    for p, g in zip(params, step):
        for i in torch.randperm(p.numel(), generator=gen)[:5].tolist():
            flat = p.data.view(-1)
            old = flat[i].item()
            flat[i] = old + eps
            up = _objective(loss_fn, params, term, weight, **refs)
            flat[i] = old - eps
            down = _objective(loss_fn, params, term, weight, **refs)
            flat[i] = old
            fd = (up - down) / (2 * eps)
            assert g.view(-1)[i].item() == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_regulariser_definitions():
    gen = torch.Generator().manual_seed(0)
    g = [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)]
    r = [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)]
    s = [torch.randn(4, 3, generator=gen)]
    flat = lambda xs: torch.cat([x.reshape(-1) for x in xs])
    terms = regularisers(g, 1, ref=r, tau=0.5, src=s)
    assert float(terms["dir"]) == pytest.approx(1 - float(F.cosine_similarity(flat(g), flat(r), dim=0)), abs=1e-6)
    assert float(terms["mag"]) == pytest.approx(max(0.0, float(flat(g).norm()) - 0.5) ** 2, rel=1e-5)
    assert float(terms["align"]) == pytest.approx(1 - float(F.cosine_similarity(g[0].reshape(-1), s[0].reshape(-1), dim=0)), abs=1e-6)
    assert set(regularisers(g, 1, ref=None, tau=math.inf, src=None)) == set()


# ------------------------------------------------------------------------------------------- magnitude and alignment
def test_magnitude_term_bounds_step_norms_on_exploding_case(backbone, demo):
    episode, _ = demo
    exploding = dict(head_lr=3.0, lr=3e-3, lambda_dir=0.0, lambda_align=0.0, tau_rule="fixed", tau_value=2.0)
    off = SGG(_cfg(lambda_mag=0.0, **exploding))
    _adapt(off, backbone, episode)
    assert max(off.last_trace["task_grad_norm"]) > 5 * 2.0  # the constructed case does explode past the bound
    on = SGG(_cfg(lambda_mag=1.0, **exploding))
    _adapt(on, backbone, episode)
    assert max(on.last_trace["task_grad_norm"]) > 2.0
    assert all(n <= 2.0 * (1 + 1e-5) for n in on.last_trace["step_grad_norm"])
    # the running rule: every step is bounded by tau_mult x the EMA of earlier norms
    ema = SGG(_cfg(lambda_mag=1.0, **{**exploding, "tau_rule": "ema"}, tau_mult=1.0))
    _adapt(ema, backbone, episode)
    trace = ema.last_trace
    assert math.isinf(trace["tau"][0]) and all(math.isfinite(t) for t in trace["tau"][1:])
    assert all(n <= t * (1 + 1e-5) for n, t in zip(trace["step_grad_norm"][1:], trace["tau"][1:]))
    assert any(n > t for n, t in zip(trace["task_grad_norm"][1:], trace["tau"][1:]))


def test_alignment_term_raises_cos_on_constructed_conflict(backbone, demo):
    """Source direction = −(initial target gradient) + noise; a few SGD steps on the exact objective."""
    params, loss_fn = _tiny_problem(backbone, demo[0])
    start = [p.detach().clone() for p in params]
    g0 = torch.autograd.grad(loss_fn(), params)[0].detach()
    src = [-g0 + 0.3 * g0.norm() * torch.randn(g0.shape, generator=torch.Generator().manual_seed(2), dtype=g0.dtype) / g0.numel() ** 0.5]

    def run(weight):
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
        cosines = []
        for _ in range(8):
            out = exact_guided_gradient(loss_fn(), params, 1, weights={"align": weight}, src=src)
            step, task = unflatten(out.step, params), unflatten(out.task, params)
            cosines.append(float(_cos(task[:1], src)))
            with torch.no_grad():
                for p, g in zip(params, step):
                    p.sub_(0.05 * g)
        return cosines

    plain, guided = run(0.0), run(2.0)
    assert plain[0] == guided[0] < -0.5  # a real conflict at the start
    assert sum(guided[1:]) / 7 > sum(plain[1:]) / 7 + 0.05
    assert guided[-1] > plain[-1]


def test_alignment_term_raises_source_alignment_in_adaptation(backbone, demo):
    episode, source = demo
    runs = {}
    for weight in (0.0, 2.0):
        method = SGG(_cfg(mode="exact", lambda_dir=0.0, lambda_mag=0.0, lambda_align=weight, align_schedule="constant"))
        _, ctx = _adapt(method, backbone, episode, source)
        runs[weight] = (ctx.recorder.summary()["source_alignment"], method.last_trace)
    assert runs[2.0][0] > runs[0.0][0] + 0.05  # mean cos(g_t, g_src) over the adaptation
    assert runs[2.0][1]["lambda_align"] == [2.0] * 10 and runs[0.0][1]["align_status"].startswith("off")


# ------------------------------------------------------------------------------------------- first-order transformation
@pytest.mark.parametrize("seed", range(8))
def test_first_order_transformation_properties(seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(6, 4), (7,), (5, 3)]  # the first two are "shared", the last the head
    g = [torch.randn(s, generator=gen) for s in shapes]
    r = [torch.randn(s, generator=gen) for s in shapes]
    src = [torch.randn(s, generator=gen) for s in shapes[:2]]
    tau = 0.5 * float(_norm(g))
    rotated = first_order_guided_gradient(g, 2, lambda_dir=1.0, ref=r)
    assert float(_cos(rotated, r)) >= float(_cos(g, r)) - 1e-6
    assert float(_norm(rotated)) == pytest.approx(float(_norm(g)), rel=1e-5)
    out = first_order_guided_gradient(g, 2, lambda_dir=1.0, lambda_mag=1.0, align_weight=1.0, ref=r, tau=tau, src=src)
    assert float(_norm(out)) <= tau * (1 + 1e-5)
    assert float(_dot(out[:2], src)) >= -1e-5
    if float(_dot(g[:2], src)) < 0:  # conflicting: PCGrad leaves exactly the orthogonal part
        assert float(_dot(out[:2], src)) == pytest.approx(0.0, abs=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(first_order_guided_gradient(g, 2), g))


def test_first_order_method_trace(backbone, demo):
    episode, source = demo
    method = SGG(_cfg(lambda_dir=1.0, lambda_mag=1.0, lambda_align=1.0, align_schedule="constant", tau_mult=1.0,
                      ref_init="half"))
    _, ctx = _adapt(method, backbone, episode, source)
    trace = ctx.recorder.sgg_trace
    assert trace is method.last_trace and len(trace["loss"]) == 10
    assert all(c >= -1e-4 for c in trace["cos_src_step"])
    assert all(n <= t * (1 + 1e-5) for n, t in zip(trace["step_grad_norm"], trace["tau"]))
    assert trace["R_dir"][0] > 0  # ref_init=half: r_0 is another gradient than g_0


# ------------------------------------------------------------------------------------------- harness / config
def test_run_episode_with_and_without_source(backbone, demo):
    episode, source = demo
    record = run_episode(SGG(), episode, backbone, seed=SEED, source_episodes=lambda i: source(i))
    assert record["status"] == "ok", record["error"]
    assert record["source_alignment"] is not None and record["steps"] == 10
    method = SGG()
    record = run_episode(method, episode, backbone, seed=SEED)
    assert record["status"] == "ok" and record["source_alignment"] is None
    assert method.last_trace["align_status"] == "skipped: no source task"
    assert method.last_trace["lambda_align"] == [0.0] * 10


def test_full_ft_and_lora_measure_the_same_source_alignment_without_using_it(backbone, demo):
    from fewshot_bench.baselines.lora import LoRA

    from fewshot_bench.baselines.lora import LoRAConfig
    from fewshot_bench.methods.training import FullFTConfig

    episode, source = demo
    plain_logits, plain = _adapt(FullFineTuning(), backbone, episode, source)  # off by default: a diagnostic
    logits, measured = _adapt(FullFineTuning(FullFTConfig(source_every=2)), backbone, episode, source)
    assert torch.equal(logits, plain_logits)  # g_src is measured, never applied
    assert plain.recorder.summary()["source_alignment"] is None
    _, unguided = _adapt(SGG(_cfg(lambda_dir=0.0, lambda_mag=0.0, lambda_align=0.0)), backbone, episode, source)
    alignment = measured.recorder.summary()["source_alignment"]
    assert alignment == pytest.approx(unguided.recorder.summary()["source_alignment"], abs=1e-6)
    _, lora = _adapt(LoRA(LoRAConfig(source_every=2)), backbone, episode, source)
    assert -1.0 <= lora.recorder.summary()["source_alignment"] <= 1.0
    assert len(lora.recorder.source_cosines) == 10  # one cosine per step; g_src refreshed every 2nd step


def test_protocol_says_whether_source_data_guides_adaptation():
    assert SGG().protocol == SGGNoDir().protocol == SGGNoMag().protocol == "source-guided"
    assert SGGNoAlign().protocol == FullFineTuning().protocol == "target-only"


@pytest.mark.parametrize("mode", ["first_order", "exact"])
def test_lora_parameters(backbone, demo, mode):
    episode, source = demo
    record = run_episode(SGG(_cfg(params="lora", mode=mode)), episode, backbone, seed=SEED, source_episodes=source)
    assert record["status"] == "ok", record["error"]
    full = sum(p.numel() for p in backbone.pristine.parameters())
    assert 0 < record["trainable_params"] < full / 10 and record["source_alignment"] is not None


def test_config_ablations_and_attention():
    assert SGG(_cfg(mode="exact")).attn_implementation == "eager"
    assert SGG().attn_implementation == "sdpa"
    method = method_from_spec("fewshot_bench.methods.sgg:SGG", {"mode": "exact", "lambda_dir": "0.25"})
    assert method.attn_implementation == "eager" and method.config.lambda_dir == 0.25
    assert SGGNoDir().config.lambda_dir == 0 and SGGNoDir().config.lambda_mag > 0
    assert SGGNoMag().config.lambda_mag == 0 and SGGNoMag().config.lambda_align > 0
    assert SGGNoAlign().config.lambda_align == 0 and SGGNoAlign().config.lambda_dir > 0
    base = SGGConfig()
    assert (base.steps, base.lr, base.head_lr, base.weight_decay) == (10, 5e-5, 1e-2, 0.01)
    assert len({SGG().config_hash(), SGGNoDir().config_hash(), SGGNoMag().config_hash(), SGGNoAlign().config_hash()}) == 4
    with pytest.raises(UserError, match="mode"):
        SGG(_cfg(mode="second_order"))
    with pytest.raises(UserError, match="params"):
        SGG(_cfg(params="adapters"))


# ------------------------------------------------------------------------------------------- term activity
def test_term_activity_counters_on_a_constructed_gradient_sequence():
    from fewshot_bench.methods.sgg import first_order_coefficients, gradient_dots, term_activity

    steps = [  # (g, r_t, g_src): step 1 rotates 45°, conflicts with g_src, exceeds τ; step 2 is inert
        (torch.tensor([3.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([-1.0, 0.0])),
        (torch.tensor([0.5, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])),
    ]
    trace = {key: [] for key in ("mag_active", "align_active", "dir_cos", "task_cos")}
    for g, r, s in steps:
        _, _, _, info = first_order_coefficients(gradient_dots(g, 2, r, s), lambda_dir=1.0, lambda_mag=1.0,
                                                 align_weight=1.0, tau=1.0)
        for key in trace:
            trace[key].append(info[key])
    activity = term_activity(trace)
    assert activity["sgg_mag_active"] == 0.5 and activity["sgg_align_active"] == 0.5
    assert activity["sgg_dir_angle"] == pytest.approx((45.0 + 0.0) / 2)
    # step 1: rotated to (1, 1)/√2·3, PCGrad removes the conflicting x-part -> the step is (0, y): 90° from g
    assert activity["sgg_step_angle"] == pytest.approx((90.0 + 0.0) / 2, abs=1e-4)


@pytest.mark.parametrize("mode", ["first_order", "exact"])
def test_term_activity_reaches_the_episode_record(backbone, demo, mode):
    episode, source = demo
    bound = run_episode(SGG(_cfg(mode=mode, steps=4, tau_mult=0.3)), episode, backbone, seed=SEED,
                        source_episodes=source)
    unbounded = run_episode(SGG(_cfg(mode=mode, steps=4, lambda_mag=0.0)), episode, backbone, seed=SEED,
                            source_episodes=source)
    assert bound["figures"]["sgg_mag_active"] == 0.75  # τ is unbounded at step 0, then 0.3 × the norm EMA binds
    assert unbounded["figures"]["sgg_mag_active"] == 0.0
    assert ("sgg_dir_angle" not in bound["figures"]) == (mode == "exact")  # None: not reported
    reported = {f.name for f in SGG.figures} - ({"sgg_dir_angle"} if mode == "exact" else set())
    assert set(bound["figures"]) == reported
    assert run_episode(FullFineTuning(), episode, backbone, seed=SEED)["figures"] == {}



# ------------------------------------------------------------------------------------------- source batch, float64 dots
def test_one_shot_source_batches_hold_two_examples_per_class_and_a_nonzero_gradient(backbone, demo):
    from fewshot_bench.methods.training import source_gradient

    episode, source = demo
    ctx = EpisodeContext(backbone, episode, SEED, source_episodes=lambda i: source(i, k=1, q=5))  # 1-shot source pool
    model = ctx.fresh_model()
    params = [p for p in model.parameters() if p.requires_grad]
    tokenized = []
    original = backbone.tokenize
    backbone.tokenize = lambda texts, labels=None: tokenized.append(list(labels)) or original(texts, labels)
    try:
        grads = source_gradient(ctx, model, params, 0, shots=2)
    finally:
        backbone.tokenize = original
    assert sorted(tokenized[0].count(c) for c in set(tokenized[0])) == [2] * 5  # support example + first query
    assert sum(float(g.pow(2).sum()) for g in grads) > 1e-8  # one example per class would give exactly 0


def test_source_shots_of_one_is_refused():
    with pytest.raises(UserError, match="source_shots' must be 0 or >= 2, got 1"):
        SGGConfig(source_shots=1)


def test_gradient_dots_do_not_underflow_on_a_tiny_source_gradient():
    from fewshot_bench.methods.sgg import gradient_dots

    gen = torch.Generator().manual_seed(0)
    g, ref = torch.randn(700_000, generator=gen), torch.randn(700_000, generator=gen)
    src = (g[:600_000] + torch.randn(600_000, generator=gen)) * 1e-24  # float32 squares of 1e-24 underflow to 0
    d = gradient_dots(g, 600_000, ref, src)
    g64, r64, s64 = g.double(), ref.double(), src.double()
    assert d["ss"] == pytest.approx(float(s64 @ s64), rel=1e-9) and d["ss"] > 0
    assert d["gs"] == pytest.approx(float(g64[:600_000] @ s64), rel=1e-9)
    assert d["rs"] == pytest.approx(float(r64[:600_000] @ s64), rel=1e-9)
    assert d["hgr"] == pytest.approx(float(g64[600_000:] @ r64[600_000:]), rel=1e-6)  # float32 dots: no tiny entries
    cos = d["gs"] / math.sqrt((d["gg"] - d["hgg"]) * d["ss"])
    assert cos == pytest.approx(1 / math.sqrt(2), abs=0.01)  # g_src = g_bb + independent noise of equal size
