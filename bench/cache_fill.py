"""Frozen-embedding cache fill: texts of one token length embedded together vs one text at a time.

    python bench/cache_fill.py [--data-dir ../shared/data] [--episodes 10] [--repeats 3]

Setting: MiniLM on CPU, the query and support texts of banking77 5-way 1-shot target episodes (fold 1, 15
queries, seed 0, indices 0..E-1), the cache filled episode by episode as protonet/linear_probe fill it. Each
repeat times both fills on a cold cache, alternating (one-at-a-time first, then the batched fill, then the other
order), in one process; the ratio is of the medians. The cached vectors are compared bit for bit.

Ceiling: the encoder's arithmetic (2 x the multiply-adds of the projections and feed-forward layers per token, plus
attention's per token and layer, from the model config) over the texts' tokens, at the rate of one dense matmul of
the feed-forward shape measured in the same process between the repeats. The batched fill's share of that rate is
how much faster any fill of the same texts at the same arithmetic could still be.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from fewshot_bench.methods.backbone import load_backbone
from fewshot_bench.data.loading import get_task_data, set_data_dir
from fewshot_bench.episodes.sampling import sample_episode

REPO = Path(__file__).resolve().parents[1]


def one_at_a_time(backbone, episodes) -> dict:
    cache = {}
    with torch.no_grad():
        for episode in episodes:
            for text in dict.fromkeys(episode.support_texts + episode.query_texts):
                if text not in cache:
                    cache[text] = backbone.embed(backbone.pristine, backbone.tokenize([text]))[0].float()
    return cache


def batched(backbone, episodes) -> dict:
    backbone.clear_caches()
    for episode in episodes:
        backbone.frozen_embeddings(episode.support_texts + episode.query_texts)
    return dict(backbone._embedding_cache)


def encoder_flops(backbone, texts) -> float:
    """Floating-point operations of one forward pass over each of ``texts`` alone (no padding)."""
    config = backbone.pristine.config
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    lengths = [len(ids) for ids in backbone.tokenizer(list(texts), truncation=True,
                                                      max_length=backbone.max_length)["input_ids"]]
    per_token = 2 * layers * (4 * d * d + 2 * d * ff)
    return sum(n * per_token + 2 * layers * 2 * n * n * d for n in lengths)


def matmul_rate(backbone, repeats: int = 10) -> float:
    """FLOP/s of the fastest dense (rows x d) @ (d x ff) matmul on this thread, rows 256 to 4096: the fill's
    arithmetic at its best."""
    config = backbone.pristine.config
    best = 0.0
    for rows in (256, 1024, 4096):
        a, b = torch.randn(rows, config.hidden_size), torch.randn(config.hidden_size, config.intermediate_size)
        a @ b
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        seconds = time.perf_counter() - started
        best = max(best, repeats * 2 * rows * config.hidden_size * config.intermediate_size / seconds)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("FEWSHOT_BENCH_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    set_data_dir(args.data_dir)
    backbone = load_backbone("minilm", device="cpu")
    data = get_task_data("banking77", 1)
    episodes = [sample_episode(data, n_way=5, k_shot=1, q_query=15, seed=0, index=i) for i in range(args.episodes)]
    times = {"one at a time": [], "same-length batches": []}
    rates = []
    for repeat in range(args.repeats):
        rates.append(matmul_rate(backbone))
        order = [("one at a time", one_at_a_time), ("same-length batches", batched)]
        for label, fill in (order if repeat % 2 == 0 else order[::-1]):
            backbone.clear_caches()
            started = time.perf_counter()
            cache = fill(backbone, episodes)
            times[label].append(time.perf_counter() - started)
            if label == "one at a time":
                reference = cache
            else:
                result = cache
    identical = sum(torch.equal(reference[t], result[t]) for t in reference)
    base, new = statistics.median(times["one at a time"]), statistics.median(times["same-length batches"])
    print(f"texts {len(reference)} | one at a time {base:.2f} s | same-length batches {new:.2f} s | "
          f"speed-up {base / new:.2f}x | identical vectors {identical}/{len(reference)}")
    flops, peak = encoder_flops(backbone, list(reference)), statistics.median(rates)
    print(f"arithmetic {flops / 1e9:.1f} GFLOP | dense matmul {peak / 1e9:.1f} GFLOP/s | one at a time "
          f"{flops / base / peak:.0%} of it | same-length batches {flops / new / peak:.0%} of it | ceiling over one "
          f"at a time {base * peak / flops:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
