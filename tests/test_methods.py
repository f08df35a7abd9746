"""Method interface and baselines on the tiny backbone and the demo task."""
import copy

import pytest
import torch
import torch.nn.functional as F

from fewshot_bench.backbone import load_backbone
from fewshot_bench.data import get_task_data
from fewshot_bench.episodes import sample_episode
from fewshot_bench.errors import UserError
from fewshot_bench.methods import EpisodeContext, Method, Predictor, method_from_spec, run_episode

BASELINES = ["full_ft", "lora", "protonet", "linear_probe"]


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny-encoder", device="cpu")


@pytest.fixture(scope="module")
def episode():
    return sample_episode(get_task_data("demo_intents"), n_way=3, k_shot=2, q_query=2, seed=0, index=0)


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_runs_and_is_deterministic(name, backbone, episode):
    first = run_episode(method_from_spec(name), episode, backbone, seed=5)
    second = run_episode(method_from_spec(name), episode, backbone, seed=5)
    assert first["status"] == "ok", first["error"]
    assert 0.0 <= first["accuracy"] <= 1.0 and len(first["predictions"]) == len(episode.query_ids)
    volatile = {"wall_seconds", "peak_mem_mb"}
    assert {k: v for k, v in first.items() if k not in volatile} == {k: v for k, v in second.items() if k not in volatile}
    if name in ("full_ft", "lora"):
        assert first["steps"] == 10 and first["grad_norm_cv"] is not None
    else:
        assert first["steps"] == 0 and first["grad_norm_cv"] is None


def test_full_ft_equals_a_hand_written_loop(backbone, episode):
    seed = 11
    torch.manual_seed(seed)
    ctx = EpisodeContext(backbone, episode, seed)
    predictor = method_from_spec("full_ft").adapt(ctx)
    with torch.no_grad():
        framework = predictor.predict(ctx.batch(episode, "query"))

    torch.manual_seed(seed)
    model = copy.deepcopy(backbone.pristine).train()
    for p in model.parameters():
        p.requires_grad_(True)
    head = torch.nn.Linear(backbone.hidden_size, episode.n_way)
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "lr": 5e-5},
                                   {"params": list(head.parameters()), "lr": 1e-2}], weight_decay=0.01)
    support = backbone.tokenizer(list(episode.support_texts), padding=True, truncation=True, max_length=64, return_tensors="pt")
    labels = torch.tensor(episode.support_labels)
    for _ in range(10):
        optimizer.zero_grad()
        loss = F.cross_entropy(head(model(**support).last_hidden_state[:, 0]), labels)
        loss.backward()
        optimizer.step()
    model.eval()
    query = backbone.tokenizer(list(episode.query_texts), padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        plain = head(model(**query).last_hidden_state[:, 0])
    torch.testing.assert_close(framework, plain, atol=1e-6, rtol=0)


class Raises(Method):
    name = "raises"

    def adapt(self, ctx):
        raise RuntimeError("boom in adapt")


class ReturnsNaN(Method):
    name = "returns_nan"

    def adapt(self, ctx):
        return Predictor(lambda batch: torch.full((len(batch), ctx.n_way), float("nan")))


def test_failed_and_diverged_episodes_are_recorded(backbone, episode):
    failed = run_episode(Raises(), episode, backbone, seed=0)
    assert failed["status"] == "failed" and "boom in adapt" in failed["error"] and "accuracy" not in failed
    diverged = run_episode(ReturnsNaN(), episode, backbone, seed=0)
    assert diverged["status"] == "diverged" and "non-finite" in diverged["error"]
    assert diverged.get("predictions") is None and "accuracy" not in diverged


def test_method_from_a_file(tmp_path, backbone, episode):
    path = tmp_path / "plugin.py"
    path.write_text(
        "import torch\n"
        "from fewshot_bench.methods import Method, Predictor\n"
        "class FirstClass(Method):\n"
        "    def adapt(self, ctx):\n"
        "        return Predictor(lambda batch: torch.nn.functional.one_hot(torch.zeros(len(batch), dtype=torch.long), ctx.n_way).float())\n")
    method = method_from_spec(f"{path}:FirstClass")
    record = run_episode(method, episode, backbone, seed=0)
    assert method.name == "FirstClass" and record["status"] == "ok"
    assert record["accuracy"] == pytest.approx(1 / episode.n_way)


def test_unknown_method_and_config_field():
    with pytest.raises(UserError, match="did you mean 'full_ft'"):
        method_from_spec("fullft")
    with pytest.raises(UserError, match="no config field 'stepz'"):
        method_from_spec("full_ft", {"stepz": 3})
    assert method_from_spec("full_ft", {"steps": "3"}).config.steps == 3


def test_lora_trains_fewer_parameters_also_on_a_decoder(backbone, episode):
    lora = run_episode(method_from_spec("lora"), episode, backbone, seed=0)
    full = run_episode(method_from_spec("full_ft"), episode, backbone, seed=0)
    assert 0 < lora["trainable_params"] < full["trainable_params"]
    decoder = load_backbone("tiny-decoder", device="cpu")
    assert run_episode(method_from_spec("lora"), episode, decoder, seed=0)["status"] == "ok"


def test_frozen_embeddings_are_computed_once_per_text(episode):
    fresh = load_backbone("tiny-encoder", device="cpu")
    run_episode(method_from_spec("protonet"), episode, fresh, seed=0)
    cached = dict(fresh._embedding_cache)
    assert set(cached) == set(episode.support_texts) | set(episode.query_texts)
    run_episode(method_from_spec("linear_probe"), episode, fresh, seed=0)
    assert all(fresh._embedding_cache[t] is cached[t] for t in cached)


def test_fresh_model_is_an_independent_copy(backbone):
    model = backbone.fresh_model()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert not torch.equal(next(model.parameters()), next(backbone.pristine.parameters()))
    assert all(not p.requires_grad for p in backbone.pristine.parameters())
