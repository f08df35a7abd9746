"""Speed and memory benchmark (not a test): seconds per episode / per step and peak memory per method.

    python bench/bench.py --data-dir ../shared/data [--episodes 3] [--methods full_ft,lora,protonet,linear_probe]

MiniLM, banking77 5-way 5-shot, 15 queries, 10 steps. A plain hand-written PyTorch loop (AdamW on the
encoder + a linear head over the CLS vector, max length 64, tokenized per episode as a user would) runs
on the identical episodes; each method's time is also given relative to it. Prints JSON, then a
Markdown table.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch
import torch.nn.functional as F

from fewshot_bench.backbone import load_backbone
from fewshot_bench.data import get_task_data, set_data_dir
from fewshot_bench.episodes import sample_episode
from fewshot_bench.methods import method_from_spec, peak_memory_mb, run_episode


def plain_loop(backbone, episode, steps: int, seed: int) -> float:
    """The loop a user would write: returns seconds for one episode (adapt + predict)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = copy.deepcopy(backbone.pristine).train()
    for p in model.parameters():
        p.requires_grad_(True)
    head = torch.nn.Linear(backbone.hidden_size, episode.n_way)
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "lr": 5e-5},
                                   {"params": list(head.parameters()), "lr": 1e-2}], weight_decay=0.01)
    tok = backbone.tokenizer
    support = tok(list(episode.support_texts), padding=True, truncation=True, max_length=64, return_tensors="pt")
    labels = torch.tensor(episode.support_labels)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(head(model(**support).last_hidden_state[:, 0]), labels).backward()
        optimizer.step()
    model.eval()
    query = tok(list(episode.query_texts), padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        head(model(**query).last_hidden_state[:, 0]).argmax(-1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--methods", default="full_ft,lora,protonet,linear_probe")
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args()
    set_data_dir(args.data_dir)
    data = get_task_data("banking77")
    episodes = [sample_episode(data, n_way=5, k_shot=5, q_query=15, seed=0, index=i) for i in range(args.episodes)]
    backbones = {}
    rows = []
    plain_backbone = load_backbone("minilm", device="cpu")
    plain_loop(plain_backbone, episodes[0], 1, 0)  # warm-up: thread pools, allocator
    plain = [plain_loop(plain_backbone, ep, args.steps, i) for i, ep in enumerate(episodes)]
    plain_sec = sum(plain) / len(plain)
    rows.append({"method": "plain PyTorch loop", "sec_per_episode": plain_sec, "sec_per_step": plain_sec / args.steps,
                 "peak_mem_mb": peak_memory_mb(torch.device("cpu")), "vs_plain": 1.0})
    for name in args.methods.split(","):
        overrides = {"steps": args.steps} if hasattr(method_from_spec(name).config, "steps") else {}
        method = method_from_spec(name, overrides)
        attn = method.attn_implementation
        backbone = backbones.setdefault(attn, load_backbone("minilm", device="cpu", attn_implementation=attn))
        records = [run_episode(method, ep, backbone, seed=i) for i, ep in enumerate(episodes)]
        seconds = [r["wall_seconds"] for r in records]
        steps = max(records[0]["steps"], 1)
        row = {"method": name, "sec_per_episode": sum(seconds) / len(seconds),
               "sec_per_step": sum(seconds) / len(seconds) / steps if records[0]["steps"] else None,
               "peak_mem_mb": max(r["peak_mem_mb"] for r in records),
               "vs_plain": sum(seconds) / len(seconds) / plain_sec,
               "accuracy": sum(r.get("accuracy") or 0 for r in records) / len(records)}
        if not records[0]["steps"]:  # frozen-embedding methods: cache now warm
            start = time.perf_counter()
            warm = [run_episode(method, ep, backbone, seed=i) for i, ep in enumerate(episodes)]
            row["warm_episodes_per_sec"] = len(warm) / (time.perf_counter() - start)
        rows.append(row)
    result = {"setting": "MiniLM, banking77 5-way 5-shot, 15 queries", "steps": args.steps, "episodes": args.episodes,
              "threads": torch.get_num_threads(), "rows": rows}
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    columns = ["method", "sec_per_episode", "sec_per_step", "peak_mem_mb", "vs_plain", "warm_episodes_per_sec", "accuracy"]
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        cells = [row.get(c) for c in columns]
        print("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else ("" if c is None else str(c)) for c in cells) + " |")


if __name__ == "__main__":
    main()
