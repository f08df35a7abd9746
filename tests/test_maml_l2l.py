"""learn2learn cross-check of the maml baseline (skipped when learn2learn is not importable): the same
episode, parameters, inner steps and learning rate through ``learn2learn.algorithms.MAML`` and through
``MAML.meta_gradient`` give the same post-adaptation query loss and the same meta-gradient."""
import pytest
import torch

from fewshot_bench.baselines.maml import FOMAML, MAML, MAMLConfig

maml_l2l = pytest.importorskip("fewshot_bench.baselines.maml_l2l")
try:
    maml_l2l.learn2learn_maml_class()
except ImportError as exc:
    pytest.skip(f"learn2learn is not importable: {exc}", allow_module_level=True)


@pytest.mark.parametrize("method_class", [MAML, FOMAML])
@pytest.mark.parametrize("overrides", [{"adapt_params": "all"}, {"meta_params": "adapted"}])
def test_learn2learn_and_ours_agree_on_loss_and_meta_gradient(backbone, demo, method_class, overrides):
    episode, _ = demo
    cfg = MAMLConfig(inner_steps=2, inner_lr=0.5, **overrides)
    support = backbone.tokenize(episode.support_texts, episode.support_labels)
    query = backbone.tokenize(episode.query_texts, episode.query_labels)

    ours = method_class(cfg)
    model = backbone.fresh_model().double().eval()
    loop = ours.inner_loop(backbone, model)
    meta = ours.meta_param_names(model, loop)
    params = dict(model.named_parameters())
    loss, grads, _ = ours.meta_gradient(loop, params, meta, support, query, episode.n_way)
    _, unadapted, _ = ours.meta_gradient(loop, params, meta, support, query, episode.n_way, steps=0)

    reference = maml_l2l.Learn2LearnEpisode(backbone, backbone.fresh_model().double(), cfg, method_class.first_order)
    assert reference.meta_names == meta
    ref_loss = reference.episode_loss(support, query, episode.n_way, cfg.inner_steps)
    ref_grads = dict(zip(meta, torch.autograd.grad(ref_loss, reference.meta_parameters(), allow_unused=True)))
    ref_grads = {n: torch.zeros_like(grads[n]) if g is None else g for n, g in ref_grads.items()}

    assert abs(float(ref_loss.detach()) - float(loss)) < 1e-4
    assert _max_difference(grads, ref_grads) <= 1e-6 * _max_abs(ref_grads)
    assert _max_difference(unadapted, ref_grads) > 1e-3 * _max_abs(ref_grads)  # the inner steps matter here


def _max_abs(tensors):
    return max(float(t.abs().max()) for t in tensors.values())


def _max_difference(a, b):
    return max(float((a[n] - b[n]).abs().max()) for n in b)
