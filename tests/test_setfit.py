"""The setfit method (baselines/setfit.py) on the tiny encoder: runs through the setfit library, pair count
and recorded steps, determinism for a seed, the backbone left untouched, config and missing-extra errors."""
import logging
import math
import sys

import pytest
import torch

from fewshot_bench.core.errors import UserError
from fewshot_bench.execution.harness import run_episode
from fewshot_bench.methods.spec import method_from_spec

pytest.importorskip("setfit")


def _run(episode, backbone, seed=3, **overrides):
    return run_episode(method_from_spec("setfit", overrides), episode, backbone, seed=seed)


def test_setfit_trains_on_generated_pairs_and_is_deterministic(tiny_backbone, demo_episode):
    before = [p.clone() for p in tiny_backbone.pristine.parameters()]
    first = _run(demo_episode, tiny_backbone, num_iterations=3, batch_size=8)
    assert first["status"] == "ok", first["error"]
    pairs = 2 * 3 * len(demo_episode.support_texts)  # a positive and a negative pair per iteration and example
    assert first["steps"] == math.ceil(pairs / 8)
    assert first["grad_norm_cv"] is not None and first["final_loss"] > 0
    body = sum(p.numel() for p in tiny_backbone.pristine.parameters())
    assert first["trainable_params"] == body + demo_episode.n_way * (tiny_backbone.hidden_size + 1)
    again = _run(demo_episode, tiny_backbone, num_iterations=3, batch_size=8)
    for key in ("predictions", "final_loss", "grad_norm_cv", "path_efficiency"):
        assert again[key] == first[key]
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_backbone.pristine.parameters()))


def test_setfit_config_errors_and_missing_extra(monkeypatch):
    with pytest.raises(UserError, match="num_iterations"):
        method_from_spec("setfit", {"num_iterations": 0})
    with pytest.raises(UserError, match="body_lr"):
        method_from_spec("setfit", {"body_lr": -1})
    monkeypatch.setitem(sys.modules, "setfit", None)
    with pytest.raises(UserError, match=r'pip install "fewshot-bench\[setfit\]"'):
        method_from_spec("setfit")


def test_setfit_search_space_names_config_fields():
    optuna = pytest.importorskip("optuna")
    method = method_from_spec("setfit")
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    method.search_space.check(type(method.config), "setfit")
    overrides = method.search_space.suggest(trial)
    tuned = method_from_spec("setfit", overrides)
    assert {k: getattr(tuned.config, k) for k in overrides} == overrides


def test_sentence_encoder_wraps_the_given_model_with_the_backbones_pooling(tiny_backbone, demo_episode):
    from fewshot_bench.baselines.setfit import sentence_encoder
    from fewshot_bench.methods import EpisodeContext

    ctx = EpisodeContext(tiny_backbone, demo_episode, seed=0)
    model = ctx.fresh_model().eval()
    with torch.no_grad():
        next(model.parameters()).add_(0.5)  # not the pristine weights: the wrapper must use this very model
        encoded = sentence_encoder(ctx, model).encode(list(demo_episode.query_texts), convert_to_tensor=True)
        embedded = tiny_backbone.embed(model, tiny_backbone.tokenize(demo_episode.query_texts))
    assert torch.allclose(encoded.cpu(), embedded.cpu(), atol=1e-5)


def test_setfit_prints_no_library_bars_and_restores_them(tiny_backbone, demo_episode, capfd):
    """The libraries' own bars (the pair dataset's "Map", saving the template, sentence-transformers' "Batches" when
    its logger is at INFO, as in a dry run), its INFO lines and the CPU pin-memory warning would print once per
    episode between the run's progress lines; the bars' switches and the logger's level are left as they were."""
    from datasets.utils import logging as datasets_logging
    from transformers.utils import logging as transformers_logging

    switches = (datasets_logging, transformers_logging)
    before = [module.is_progress_bar_enabled() for module in switches]
    datasets_logging.enable_progress_bar()
    transformers_logging.disable_progress_bar()
    sentence_logger, handler = logging.getLogger("sentence_transformers"), logging.StreamHandler(sys.stderr)
    level = sentence_logger.level
    sentence_logger.setLevel(logging.INFO)
    sentence_logger.addHandler(handler)
    try:
        capfd.readouterr()
        assert _run(demo_episode, tiny_backbone, num_iterations=2, batch_size=8)["status"] == "ok"
        printed = capfd.readouterr()
        for noise in ("Map", "pin_memory", "Batches", "CoSENTLoss"):
            assert noise not in printed.err + printed.out
        assert [module.is_progress_bar_enabled() for module in switches] == [True, False]
        assert sentence_logger.level == logging.INFO
    finally:
        sentence_logger.removeHandler(handler)
        sentence_logger.setLevel(level)
        for module, enabled in zip(switches, before):
            module.enable_progress_bar() if enabled else module.disable_progress_bar()
