"""Second order vs first order where it matters: cosine between MAML's and FOMAML's meta-gradients on real episodes.

    python bench/maml_cosine.py [--data-dir ../shared/data] [--episodes 8] [--json out.json]

Setting: MiniLM (eager attention for both, so the two differ only by the second-order terms), banking77 source
pool, fold 1, 5-way 1-shot meta-training episodes with ``meta_query`` queries per class, the pretrained weights
(meta-step 0). For each episode both methods compute :meth:`MAML.meta_gradient` on the same support and query
batch from the same parameters; the row reports the cosine over every meta-learned tensor and the two norms. Rows:
the default config (zero-initialised head, ``inner_lr`` 0.3), the prototype head at ``head_scale`` 0.003 with
``inner_lr`` 0.03 (the 0.4 default), and the prototype head at ``head_scale`` 1 (the 0.3 default, whose 1-shot
support loss was ~0, so the second-order term multiplied a gradient that was ~0).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

from fewshot_bench.methods.backbone import load_backbone
from fewshot_bench.baselines.maml import FOMAML, MAML, MAMLConfig
from fewshot_bench.data.loading import get_task_data, set_data_dir
from fewshot_bench.episodes.sampling import sample_episode
from fewshot_bench.methods.training import first_per_class

REPO = Path(__file__).resolve().parents[1]


def cosine_row(backbone, episodes, overrides: dict) -> dict:
    """Mean/min/max cosine and mean norms of the MAML vs FOMAML meta-gradients over ``episodes``."""
    model = backbone.fresh_model().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    params = dict(model.named_parameters())
    cosines, norms = [], []
    for episode in episodes:
        grads = []
        for cls in (MAML, FOMAML):
            method = cls(MAMLConfig(**overrides))
            loop = method.inner_loop(backbone, model)
            support = backbone.tokenize(episode.support_texts, episode.support_labels)
            query = backbone.tokenize(episode.query_texts, episode.query_labels)
            keep = first_per_class(episode.query_labels, method.config.meta_query)
            query = query.subset(torch.tensor(keep))
            _, g, _ = method.meta_gradient(loop, params, method.meta_param_names(model, loop), support, query,
                                           episode.n_way)
            grads.append(torch.cat([t.reshape(-1).double() for _, t in sorted(g.items())]))
        second, first = grads
        cosines.append(float(torch.nn.functional.cosine_similarity(second, first, dim=0)))
        norms.append((float(second.norm()), float(first.norm())))
    return {"config": overrides or "default", "episodes": len(episodes), "cosine_mean": statistics.mean(cosines),
            "cosine_min": min(cosines), "cosine_max": max(cosines),
            "norm_maml": statistics.mean(n[0] for n in norms), "norm_fomaml": statistics.mean(n[1] for n in norms)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("FEWSHOT_BENCH_DATA", str(REPO.parent / "shared" / "data"))
    parser.add_argument("--data-dir", default=default_data, help="datasets folder (default: %(default)s)")
    parser.add_argument("--episodes", type=int, default=8, help="source-pool episodes (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    set_data_dir(args.data_dir)
    backbone = load_backbone("minilm", device="cpu", attn_implementation="eager")
    data = get_task_data("banking77", 1)
    episodes = [sample_episode(data, pool="source", n_way=5, k_shot=1, q_query=5, seed=0, index=i)
                for i in range(args.episodes)]
    rows = [cosine_row(backbone, episodes, config) for config in (
        {}, {"head_init": "proto", "head_scale": 0.003, "inner_lr": 0.03},
        {"head_init": "proto", "head_scale": 1.0, "inner_lr": 0.03})]
    print("| config | episodes | cosine mean | min | max | norm maml | norm fomaml |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['episodes']} | {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | "
              f"{r['cosine_max']:.4f} | {r['norm_maml']:.3g} | {r['norm_fomaml']:.3g} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
