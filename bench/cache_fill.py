"""Frozen-embedding cache fill: texts of one token length embedded together vs one text at a time.

    python bench/cache_fill.py [--data-dir ../shared/data] [--episodes 10] [--repeats 3]

Setting: MiniLM on CPU, the query and support texts of banking77 5-way 1-shot target episodes (fold 1, 15
queries, seed 0, indices 0..E-1), the cache filled episode by episode as protonet/linear_probe fill it. Each
repeat times both fills on a cold cache, alternating (one-at-a-time first, then the batched fill, then the other
order), in one process; the ratio is of the medians. The cached vectors are compared bit for bit.
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
    for repeat in range(args.repeats):
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
