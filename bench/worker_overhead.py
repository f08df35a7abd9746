"""What the sealed worker costs per episode: the same episodes run in-process and in a SealedWorker, alternately.

    python bench/worker_overhead.py [--backbone minilm] [--methods protonet,full_ft] [--episodes 6] [--steps 10]
                                    [--isolation sandboxed] [--threads 1] [--json out.json]

One process, one thread for torch by default (the harness and the worker take turns, so they do not compete). Per
method: one warm-up episode each way (index E, not counted: the worker's start, lazy initialisation), then episodes
0..E-1 alternately in-process and in the worker (which goes first alternates too), each timed around
``evaluate.episode_record`` (the whole call: pickling the view, the pipe, the source-pool answers, checking the outcome).
Reported: the median seconds per episode each way, their ratio, the median paired difference, and the worker's start
time. Episodes: the packaged demo task (5-way 5-shot, 5 queries per class), so no data dir is needed; predictions
are checked equal both ways.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fewshot_bench.methods.backbone import load_backbone
from fewshot_bench.data.loading import get_task_data
from fewshot_bench.episodes.sampling import sample_episode
from fewshot_bench.execution.evaluate import episode_record
from fewshot_bench.methods.spec import method_from_spec
from fewshot_bench.execution.worker import SealedWorker


def timed(method, episode, backbone, seed, worker=None):
    started = time.perf_counter()
    record = episode_record(method, episode, backbone, seed=seed, autocast=None, source_episodes=None, worker=worker)
    seconds = time.perf_counter() - started
    if record["status"] != "ok":
        raise RuntimeError(f"{method.name}: {record['error']}")
    return seconds, record


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--methods", default="protonet,full_ft")
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10, help="full_ft steps")
    parser.add_argument("--isolation", default="sandboxed", choices=("sandboxed", "process"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = get_task_data("demo_intents")
    episodes = [sample_episode(data, n_way=5, k_shot=5, q_query=5, seed=0, index=i) for i in range(args.episodes + 1)]
    backbone = load_backbone(args.backbone, device="cpu")
    rows = []
    with SealedWorker(args.backbone, device="cpu", threads=args.threads, isolation=args.isolation) as worker:
        started = time.perf_counter()
        level = worker.start()
        start_seconds = time.perf_counter() - started
        for name in args.methods.split(","):
            overrides = {"steps": args.steps} if name == "full_ft" else {}
            here, there = method_from_spec(name, overrides), method_from_spec(name, overrides)
            warm = episodes[-1]
            timed(here, warm, backbone, 0)
            timed(there, warm, None, 0, worker)
            own, sealed = [], []
            for i, episode in enumerate(episodes[:-1]):
                order = [(here, None, own), (there, worker, sealed)]
                results = {}
                for method, host, times in (order if i % 2 == 0 else order[::-1]):
                    seconds, record = timed(method, episode, backbone if host is None else None, i + 1, host)
                    times.append(seconds)
                    results[host is None] = record["predictions"]
                assert results[True] == results[False], f"{name}: predictions differ on episode {i}"
            row = {"method": name, "in_process_s": statistics.median(own), "worker_s": statistics.median(sealed),
                   "extra_ms": 1000 * statistics.median(b - a for a, b in zip(own, sealed)),
                   "in_process_all": own, "worker_all": sealed}
            row["ratio"] = row["worker_s"] / row["in_process_s"]
            rows.append(row)
    result = {"backbone": args.backbone, "isolation": level, "threads": args.threads, "episodes": args.episodes,
              "worker_start_s": start_seconds, "rows": rows}
    print(json.dumps(result, indent=1))
    print(f"\nworker start: {start_seconds:.1f} s (isolation {level})\n")
    print("| method | in-process s/episode | worker s/episode | ratio | extra ms (median paired) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['in_process_s']:.3f} | {row['worker_s']:.3f} | {row['ratio']:.2f} | "
              f"{row['extra_ms']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
