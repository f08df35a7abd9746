"""The method interface and harness: the four baselines end to end, determinism, a plain-PyTorch
reference for full_ft, failure handling, methods from a file, spec/config errors, LoRA targets, caching."""
import copy
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_bench.data.loading import get_task_data
from fewshot_bench.episodes.sampling import sample_episode
from fewshot_bench.core.errors import UserError
from fewshot_bench.execution.harness import run_episode
from fewshot_bench.methods import EpisodeContext, Method, Predictor
from fewshot_bench.methods.spec import method_from_spec

from helpers import HERE

BASELINES = ["full_ft", "lora", "protonet", "linear_probe"]
TIMING = ("wall_seconds", "peak_mem_mb")


def _run(spec, episode, backbone, seed=7, **overrides):
    return run_episode(method_from_spec(spec, overrides), episode, backbone, seed=seed)


def _without_timing(record):
    return {k: v for k, v in record.items() if k not in TIMING}


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_runs_and_is_deterministic(name, tiny_backbone, demo_episode):
    first = _run(name, demo_episode, tiny_backbone)
    assert first["status"] == "ok", first["error"]
    assert 0.0 <= first["accuracy"] <= 1.0 and 0.0 <= first["macro_f1"] <= 1.0
    assert len(first["predictions"]) == len(demo_episode.query_labels) == 6
    assert all(0 <= p < demo_episode.n_way for p in first["predictions"])
    assert first["wall_seconds"] > 0 and first["peak_mem_mb"] > 0
    second = _run(name, demo_episode, tiny_backbone)
    assert _without_timing(second) == _without_timing(first)
    gradient_based = name in ("full_ft", "lora")
    assert (first["steps"] == 10) if gradient_based else (first["steps"] == 0 and first["grad_norm_cv"] is None)


def test_trainable_parameter_counts(tiny_backbone, demo_episode):
    counts = {name: _run(name, demo_episode, tiny_backbone, steps=1)["trainable_params"] for name in ("full_ft", "lora")}
    counts.update({name: _run(name, demo_episode, tiny_backbone)["trainable_params"]
                   for name in ("protonet", "linear_probe")})
    hidden, n_way = tiny_backbone.hidden_size, demo_episode.n_way
    assert counts["full_ft"] == sum(p.numel() for p in tiny_backbone.pristine.parameters()) + n_way * (hidden + 1)
    # rank 8 on query and value of 2 layers: 2 * 2 * (32*8 + 8*32), plus the head
    assert counts["lora"] == 2 * 2 * (2 * 32 * 8) + n_way * (hidden + 1)
    assert 0 < counts["lora"] < counts["full_ft"]
    assert counts["protonet"] == 0 and counts["linear_probe"] == n_way * (hidden + 1)


def test_full_ft_matches_a_plain_pytorch_loop(tiny_backbone, demo_episode):
    seed, steps, lr, head_lr, wd = 11, 4, 5e-5, 1e-2, 0.01
    tokenizer, episode = tiny_backbone.tokenizer, demo_episode

    def tokens(texts):
        return tokenizer(list(texts), padding=True, truncation=True, max_length=64, return_tensors="pt")

    torch.manual_seed(seed)
    model = copy.deepcopy(tiny_backbone.pristine).train()
    for p in model.parameters():
        p.requires_grad_(True)
    head = nn.Linear(32, episode.n_way)
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "lr": lr},
                                   {"params": list(head.parameters()), "lr": head_lr}], weight_decay=wd)
    support, labels = tokens(episode.support_texts), torch.tensor(episode.support_labels)
    for _ in range(steps):
        optimizer.zero_grad()
        cls = model(input_ids=support["input_ids"], attention_mask=support["attention_mask"]).last_hidden_state[:, 0]
        F.cross_entropy(head(cls), labels).backward()
        optimizer.step()
    model.eval()
    query = tokens(episode.query_texts)
    with torch.no_grad():
        expected = head(model(input_ids=query["input_ids"], attention_mask=query["attention_mask"]).last_hidden_state[:, 0])

    method = method_from_spec("full_ft", {"steps": steps, "lr": lr, "head_lr": head_lr, "weight_decay": wd})
    torch.manual_seed(seed)  # what run_episode does first
    ctx = EpisodeContext(tiny_backbone, episode, seed)
    predictor = method.adapt(ctx)
    with torch.no_grad():
        logits = predictor.predict(ctx.batch(episode, "query"))
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)
    record = run_episode(method, episode, tiny_backbone, seed=seed)
    assert record["predictions"] == expected.argmax(-1).tolist()


def test_adamw_is_fused_only_where_this_torch_has_the_kernel(monkeypatch):
    from fewshot_bench.methods import training
    from fewshot_bench.methods.training import FullFTConfig, adamw

    def groups():
        return [{"params": [nn.Parameter(torch.zeros(3))], "lr": 0.1}]

    monkeypatch.setattr(training, "fused_adamw_devices", lambda: {"cpu", "cuda"})
    assert adamw(groups(), FullFTConfig()).defaults["fused"] is True
    assert not adamw(groups(), FullFTConfig(fused_optimizer=False)).defaults["fused"]
    monkeypatch.setattr(training, "fused_adamw_devices", lambda: {"cuda"})  # e.g. torch < 2.4 on a CPU
    optimizer = adamw(groups(), FullFTConfig())
    assert not optimizer.defaults["fused"]
    optimizer.param_groups[0]["params"][0].grad = torch.ones(3)
    optimizer.step()  # the default implementation runs where no fused kernel exists


class _Raises(Method):
    def adapt(self, ctx):
        raise ValueError("support set too small for this method")


class _NaNLogits(Method):
    def adapt(self, ctx):
        return Predictor(lambda batch: torch.full((len(batch), ctx.n_way), float("nan")))


class _NaNLoss(Method):
    def adapt(self, ctx):
        head = ctx.new_head(ctx.n_way)
        ctx.recorder.record(torch.tensor(float("nan")), list(head.parameters()))
        return Predictor(lambda batch: head(ctx.embed(ctx.backbone.pristine, batch)), 0)


def test_failures_are_recorded_not_raised(tiny_backbone, demo_episode):
    failed = run_episode(_Raises(), demo_episode, tiny_backbone, seed=0)
    assert failed["status"] == "failed" and failed["predictions"] is None and "accuracy" not in failed
    assert "ValueError: support set too small for this method" in failed["error"]
    diverged = run_episode(_NaNLogits(), demo_episode, tiny_backbone, seed=0)
    assert diverged["status"] == "diverged" and "non-finite logits" in diverged["error"]
    assert diverged["predictions"] is None and "accuracy" not in diverged
    nan_loss = run_episode(_NaNLoss(), demo_episode, tiny_backbone, seed=0)
    assert nan_loss["status"] == "diverged" and "non-finite loss" in nan_loss["error"]


def test_method_from_a_python_file(tmp_path, tiny_backbone, demo_episode):
    path = tmp_path / "my_method.py"
    path.write_text(textwrap.dedent('''
        from dataclasses import dataclass
        import torch, torch.nn.functional as F
        from fewshot_bench.core.config import option
        from fewshot_bench.methods import Method, MethodConfig, Predictor

        @dataclass
        class HeadOnlyConfig(MethodConfig):
            steps: int = option(3, help="steps")
            lr: float = option(0.1, help="learning rate")

        class HeadOnly(Method):
            config_class = HeadOnlyConfig

            def adapt(self, ctx):
                features = ctx.backbone.frozen_embeddings(ctx.support_texts)
                head = ctx.new_head(ctx.n_way)
                optimizer = torch.optim.SGD(head.parameters(), lr=self.config.lr)
                for _ in range(self.config.steps):
                    optimizer.zero_grad()
                    loss = F.cross_entropy(head(features), ctx.support.labels)
                    loss.backward()
                    ctx.recorder.record(loss, list(head.parameters()))
                    optimizer.step()
                return Predictor(lambda batch: head(ctx.embed(ctx.backbone.pristine, batch)),
                                 sum(p.numel() for p in head.parameters()))
    '''))
    method = method_from_spec(f"{path}:HeadOnly", {"steps": "5"})
    assert method.name == "HeadOnly" and method.config.steps == 5
    record = run_episode(method, demo_episode, tiny_backbone, seed=0)
    assert record["status"] == "ok", record["error"]
    assert record["steps"] == 5 and record["trainable_params"] == 3 * 33 and len(record["predictions"]) == 6
    with pytest.raises(UserError, match="has no 'Nope'"):
        method_from_spec(f"{path}:Nope")


def test_spec_and_config_errors():
    with pytest.raises(UserError, match="did you mean 'protonet'"):
        method_from_spec("protonett")
    with pytest.raises(UserError, match="no config field 'stepz'"):
        method_from_spec("full_ft", {"stepz": 3})
    with pytest.raises(UserError, match="not a valid int"):
        method_from_spec("full_ft", {"steps": "many"})
    method = method_from_spec("lora", {"rank": "4", "lr": "1e-3", "target_modules": "query,key"})
    assert (method.config.rank, method.config.lr) == (4, 1e-3)
    assert method_from_spec("lora").config.rank == 8  # overrides do not leak into later instances


def test_one_spec_syntax_for_cli_bench_and_labels():
    from fewshot_bench.methods.spec import method_label, parse_method_config, parse_spec, split_specs

    assert split_specs("full_ft,sgg(mode=exact,steps=5), protonet") == ["full_ft", "sgg(mode=exact,steps=5)", "protonet"]
    assert parse_spec("sgg( mode=exact, steps=5 )") == ("sgg", {"mode": "exact", "steps": "5"})
    assert parse_spec("protonet") == ("protonet", {})
    label = method_label("sgg", {"steps": "5", "mode": "exact"})
    assert label == "sgg(mode=exact,steps=5)" and parse_spec(label) == ("sgg", {"mode": "exact", "steps": "5"})
    assert parse_method_config(["sgg.mode=exact", "sgg.steps=5"]) == {"sgg": parse_spec(label)[1]}
    method = method_from_spec("full_ft(steps=3,lr=0.1)", {"head_lr": "0.5"})
    assert (method.config.steps, method.config.lr, method.config.head_lr) == (3, 0.1, 0.5)
    for bad in ("sgg(mode)", "sgg(=exact)"):  # a name with a space is a method file path with a space
        with pytest.raises(UserError, match="must look like"):
            parse_spec(bad)


def test_import_registers_every_builtin_and_adds_no_package_path():
    import subprocess
    import sys

    code = ("import importlib.util, fewshot_bench as f; print(','.join(f.METHODS.names())); "
            "print(','.join(f.BACKBONES.names())); print(importlib.util.find_spec('fewshot_bench.bench'))")
    methods, backbones, bench = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               cwd=HERE, check=True).stdout.split()
    assert set(methods.split(",")) == {"full_ft", "lora", "protonet", "linear_probe", "setfit", "icl", "maml",
                                       "fomaml", "sgg", "sgg-no-dir", "sgg-no-mag", "sgg-no-align"}
    assert set(backbones.split(",")) >= {"minilm", "tiny-encoder", "tiny-decoder"} and bench == "None"


def test_lora_target_modules_per_architecture(tiny_backbone, demo_episode):
    from fewshot_bench.methods.backbone import load_backbone
    from fewshot_bench.methods.adapters import apply_lora, lora_target_modules

    decoder = load_backbone("tiny-decoder", device="cpu")
    assert lora_target_modules(tiny_backbone.pristine) == ["query", "value"]
    assert lora_target_modules(decoder.pristine) == ["c_attn"]
    assert lora_target_modules(decoder.pristine, "c_attn, c_proj") == ["c_attn", "c_proj"]
    wrapped = apply_lora(decoder.fresh_model(), 4, 8)
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and "c_attn" in n for n in trainable)
    record = _run("lora", demo_episode, decoder, steps=3)
    assert record["status"] == "ok", record["error"]
    # c_attn is 32 -> 96: rank 8 gives 32*8 + 8*96 per layer, 2 layers, plus the head
    assert record["trainable_params"] == 2 * (32 * 8 + 8 * 96) + 3 * 33
    assert record["grad_norm_cv"] is not None and record["path_efficiency"] is not None
    with pytest.raises(UserError, match="target_modules"):
        lora_target_modules(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(UserError, match="lora"):
        apply_lora(tiny_backbone.fresh_model(), 4, 8, target_modules=["no_such_module"])


def test_lora_leaves_the_backbone_untouched_and_dropout_is_reproducible(tiny_backbone, demo_episode):
    before = {k: v.clone() for k, v in tiny_backbone.pristine.state_dict().items()}
    runs = [_run("lora", demo_episode, tiny_backbone, steps=3, dropout=0.3) for _ in range(2)]
    assert runs[0]["status"] == "ok" and _without_timing(runs[0]) == _without_timing(runs[1])
    assert all(torch.equal(v, before[k]) for k, v in tiny_backbone.pristine.state_dict().items())
    assert not any(p.requires_grad for p in tiny_backbone.pristine.parameters())


@pytest.mark.parametrize("name", ["protonet", "linear_probe"])
def test_frozen_methods_embed_each_text_once_per_run(name, tiny_backbone, monkeypatch):
    monkeypatch.setattr(tiny_backbone, "_embedding_cache", {})
    embedded = []
    original = tiny_backbone.embed

    def counting_embed(model, batch):
        embedded.append(len(batch))
        return original(model, batch)

    monkeypatch.setattr(tiny_backbone, "embed", counting_embed)
    data = get_task_data("demo_intents")
    episodes = [sample_episode(data, n_way=3, k_shot=2, q_query=2, seed=0, index=i) for i in (0, 1, 0)]
    texts = {t for e in episodes for t in e.support_texts + e.query_texts}
    assert len(texts) < sum(len(e.support_texts + e.query_texts) for e in episodes)  # they share texts
    records = [_run(name, e, tiny_backbone) for e in episodes]
    assert all(r["status"] == "ok" for r in records)
    assert _without_timing(records[0]) == _without_timing(records[2])  # cached vectors give the same answers
    assert sum(embedded) == len(texts) == len(tiny_backbone._embedding_cache)


def test_protonet_predictor_handles_any_batch(tiny_backbone, demo_episode):
    """The query batch is served from the per-text cache; any other batch is embedded directly."""
    method = method_from_spec("protonet")
    torch.manual_seed(0)
    ctx = EpisodeContext(tiny_backbone, demo_episode, 0)
    predictor = method.adapt(ctx)
    query = ctx.batch(demo_episode, "query")
    from_cache = predictor.predict(query)
    other = predictor.predict(query.subset(slice(0, 4)))  # not an episode batch: embedded directly
    assert from_cache.shape == (6, 3) and other.shape == (4, 3)
    torch.testing.assert_close(other, from_cache[:4], atol=1e-5, rtol=1e-5)
    # the support batch is the same as the training points: each is closest to its own class on average
    support_logits = predictor.predict(ctx.support)
    own = support_logits.gather(1, ctx.support.labels[:, None]).mean()
    assert own >= support_logits.mean()
