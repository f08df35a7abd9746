"""Seconds per MAML / FOMAML meta-step (torch.func implementation) vs a naive one (deepcopy + autograd.grad).

    python bench/bench_maml.py [--data-dir ../shared/data] [--repeats 3] [--rows LABEL,...] [--json out.json]

Setting: MiniLM, banking77 source pool, one 5-way 5-shot episode with 5 queries, 3 inner steps,
meta_batch 1. The comparison with the naive implementation uses adapt_params=all (every backbone tensor is
adapted in the inner loop and meta-learned); the default config (top-k, k=1) is timed too. Every row starts
from the pretrained weights with a fresh Adam; the first meta-step is a warm-up, the next ``--repeats`` are
timed (median and min reported). ``query_loss`` is the outer loss of the first meta-step and
``loss_after`` the post-adaptation query loss after its Adam update: equal for ours and naive.

Naive = what learn2learn's MAML does: deep-copy the module, put differentiable clones of the meta
parameters in it, take inner gradients with torch.autograd.grad(create_graph=True) (first order: without),
write the updated tensors back into the copy, backpropagate the query loss. The prototype head comes from a
separate forward of the meta model (so its inner gradient is the partial derivative, as in ours).
When learn2learn is importable (install recipe in the README), rows ``maml learn2learn`` and ``fomaml
learn2learn`` run the same meta-step through ``learn2learn.algorithms.MAML`` (baselines/maml_l2l.py), and
every row with the same parameters reports its time as a ratio to them, measured in this process.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F

from fewshot_bench.methods.backbone import load_backbone
from fewshot_bench.methods.architecture import adapted_names
from fewshot_bench.baselines.maml import FOMAML, MAML, MAMLConfig
from fewshot_bench.baselines.maml_inner import init_head
from fewshot_bench.baselines.maml_l2l import Learn2LearnEpisode, learn2learn_maml_class
from fewshot_bench.data.loading import get_task_data, set_data_dir
from fewshot_bench.episodes.sampling import sample_episode

REPO = Path(__file__).resolve().parents[1]


def _set_param(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    (module.get_submodule(owner) if owner else module)._parameters[leaf] = value


def _get_param(module: torch.nn.Module, name: str) -> torch.Tensor:
    owner, _, leaf = name.rpartition(".")
    return (module.get_submodule(owner) if owner else module)._parameters[leaf]


class Naive:
    """learn2learn-style MAML meta-step on a deep copy of the module."""

    def __init__(self, backbone, cfg: MAMLConfig, first_order: bool):
        self.backbone, self.cfg, self.first_order = backbone, cfg, first_order
        self.model = backbone.fresh_model().eval()
        names = [n for n, _ in self.model.named_parameters()]
        self.adapt = adapted_names(names, cfg.adapt_params, cfg.top_k)
        self.meta = adapted_names(names, "all", 0) if cfg.meta_params == "all" else list(self.adapt)
        for n, p in self.model.named_parameters():
            p.requires_grad_(n in self.meta)
        self.optimizer = torch.optim.Adam([self.model.get_parameter(n) for n in self.meta], lr=cfg.outer_lr)

    def episode_loss(self, support, query, n_way):
        clone = copy.deepcopy(self.model)
        for n, p in self.model.named_parameters():
            _set_param(clone, n, p.clone())  # differentiable clone (learn2learn clone_module)
        weight, bias = init_head(self.backbone.embed(self.model, support), support.labels, n_way, self.cfg.head_init)
        lr = self.cfg.inner_lr
        for _ in range(self.cfg.inner_steps):
            fast = [_get_param(clone, n) for n in self.adapt]
            loss = F.cross_entropy(self.backbone.embed(clone, support) @ weight.T + bias, support.labels)
            grads = torch.autograd.grad(loss, fast + [weight, bias], create_graph=not self.first_order)
            for n, p, g in zip(self.adapt, fast, grads):
                _set_param(clone, n, p - lr * g)
            weight, bias = weight - lr * grads[-2], bias - lr * grads[-1]
        return F.cross_entropy(self.backbone.embed(clone, query) @ weight.T + bias, query.labels)

    def step(self, support, query, n_way) -> float:
        loss = self.episode_loss(support, query, n_way)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def eval_loss(self, support, query, n_way) -> float:
        return float(self.episode_loss(support, query, n_way).detach())


class Learn2Learn(Naive):
    """The same meta-step through learn2learn.algorithms.MAML."""

    def __init__(self, backbone, cfg: MAMLConfig, first_order: bool):
        self.cfg = cfg
        self.reference = Learn2LearnEpisode(backbone, backbone.fresh_model(), cfg, first_order)
        self.optimizer = torch.optim.Adam(self.reference.meta_parameters(), lr=cfg.outer_lr)

    def episode_loss(self, support, query, n_way):
        return self.reference.episode_loss(support, query, n_way, self.cfg.inner_steps)


def learn2learn_available() -> bool:
    try:
        learn2learn_maml_class()
    except ImportError:
        return False
    return True


class Ours:
    def __init__(self, backbone, cfg: MAMLConfig, first_order: bool):
        self.method = (FOMAML if first_order else MAML)(cfg)
        self.model = backbone.fresh_model().eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.loop = self.method.inner_loop(backbone, self.model)
        self.meta = self.method.meta_param_names(self.model, self.loop)
        self.named = dict(self.model.named_parameters())
        self.optimizer = torch.optim.Adam([self.named[n] for n in self.meta], lr=cfg.outer_lr)

    def step(self, support, query, n_way) -> float:
        return self.method.meta_step(self.loop, self.named, self.meta, self.optimizer, [(support, query, n_way)])

    def eval_loss(self, support, query, n_way) -> float:
        lrs = {n: self.method.config.inner_lr for n in self.loop.lr_names()}
        with torch.no_grad():  # torch.func's inner gradients still run; no outer graph
            loss = self.loop.episode_loss(dict(self.named), lrs, support, query, n_way,
                                          self.method.config.inner_steps, first_order=True)
        return float(loss)


def _rows() -> List[tuple]:
    rows = [  # (label, implementation, first order, config overrides)
        ("maml", Ours, False, {"adapt_params": "all"}),
        ("maml naive", Naive, False, {"adapt_params": "all"}),
        ("fomaml", Ours, True, {"adapt_params": "all"}),
        ("fomaml naive", Naive, True, {"adapt_params": "all"}),
        ("maml default (top-k=1)", Ours, False, {}),
        ("fomaml default (top-k=1)", Ours, True, {}),
        ("maml top-k=1, meta_params=adapted", Ours, False, {"meta_params": "adapted"}),
    ]
    if learn2learn_available():
        rows += [("maml learn2learn", Learn2Learn, False, {"adapt_params": "all"}),
                 ("fomaml learn2learn", Learn2Learn, True, {"adapt_params": "all"})]
    return rows


def run(args) -> List[dict]:
    """Time every row; returns one dict per row (seconds per meta-step, losses, ratios)."""
    if args.data_dir:
        set_data_dir(args.data_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = get_task_data("banking77")
    episode = sample_episode(data, pool="source", n_way=5, k_shot=5, q_query=5, seed=0, index=0)
    backbones = {}
    results = []
    wanted = [r.strip() for r in args.rows.split(",")] if args.rows else None
    for label, impl, first_order, overrides in _rows():
        if wanted is not None and label not in wanted:
            continue
        cfg = MAMLConfig(**{"inner_steps": 3, "meta_batch": 1, **overrides})
        attn = (FOMAML if first_order else MAML).attn_implementation
        if attn not in backbones:
            backbones[attn] = load_backbone("minilm", device=args.device, attn_implementation=attn)
        backbone = backbones[attn]
        support = backbone.tokenize(episode.support_texts, episode.support_labels)
        query = backbone.tokenize(episode.query_texts, episode.query_labels)
        runner = impl(backbone, cfg, first_order)
        times, losses = [], []
        for i in range(args.repeats + 1):
            if backbone.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            losses.append(runner.step(support, query, episode.n_way))
            if backbone.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            if i == 0:
                loss_after = runner.eval_loss(support, query, episode.n_way)
        timed = times[1:] or times
        kind = "fomaml" if first_order else "maml"
        row = {"row": label, "impl": impl.__name__.lower(), "method": kind, "adapt_params": cfg.adapt_params,
               "top_k": cfg.top_k, "meta_params": cfg.meta_params, "attn": attn,
               "sec_per_step": statistics.median(timed), "sec_min": min(timed), "warmup_sec": times[0],
               "query_loss": losses[0], "loss_after": loss_after}
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    for row in results:
        same = [r for r in results if r["method"] == row["method"] and r["adapt_params"] == row["adapt_params"]
                and r["meta_params"] == row["meta_params"]]
        l2l = next((r for r in same if r["impl"] == "learn2learn"), None)
        if l2l:
            row["ratio_vs_learn2learn"] = row["sec_per_step"] / l2l["sec_per_step"]
            row["query_loss_diff_vs_learn2learn"] = abs(l2l["query_loss"] - row["query_loss"])
        naive = next((r for r in same if r["impl"] == "naive"), None)
        if row["impl"] == "ours" and naive:
            row["speedup_vs_naive"] = naive["sec_per_step"] / row["sec_per_step"]
            row["query_loss_diff_vs_naive"] = abs(naive["query_loss"] - row["query_loss"])
            row["loss_after_diff_vs_naive"] = abs(naive["loss_after"] - row["loss_after"])
    return results


def markdown(results: List[dict]) -> str:
    lines = ["| row | adapt | meta | attn | s / meta-step (median) | min | time / learn2learn's (this process) | vs naive | query loss | loss after step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        speed = f"{r['speedup_vs_naive']:.2f}x faster" if "speedup_vs_naive" in r else ""
        adapt = r["adapt_params"] + (f" k={r['top_k']}" if r["adapt_params"] == "top-k" else "")
        ratio = f"{r['ratio_vs_learn2learn']:.2f}x" if "ratio_vs_learn2learn" in r else "n/a (no learn2learn)"
        lines.append(f"| {r['row']} | {adapt} | {r['meta_params']} | {r['attn']} | {r['sec_per_step']:.2f} | "
                     f"{r['sec_min']:.2f} | {ratio} | {speed} | "
                     f"{r['query_loss']:.6f} | {r['loss_after']:.6f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("FEWSHOT_BENCH_DATA") or str(REPO.parent / "shared" / "data")
    parser.add_argument("--data-dir", default=default_data, help="datasets folder (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed meta-steps per row, after one warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--rows", help="comma-separated row labels to time, e.g. 'maml,maml learn2learn' (default: all)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = run(args)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "repeats": args.repeats}
    payload = {"meta": meta, "results": results}
    print(json.dumps(payload, indent=2))
    print()
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
