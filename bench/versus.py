"""Whole-episode speed and predictions of this tree against another commit's, in one process (not a test).

    git archive <commit> | tar -x -C /tmp/old      # the other tree, e.g. the branch point
    python bench/versus.py --old /tmp/old --methods full_ft,lora,sgg,protonet --episodes 20 --data-dir ../shared/data

Both trees' packages are imported into this process (the old one first, then its modules are dropped from
``sys.modules`` and this tree's are imported), each loads MiniLM and runs its own ``harness.run_episode`` on the
same episodes (banking77 fold 1, 5-way K-shot, 15 queries, the run's per-episode seeds and source pool),
alternating old/new with the order swapped every episode. Times are process CPU seconds (run it with
OMP_NUM_THREADS=1); per episode it prints both times and how many query predictions agree.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# each module by its path in today's package, then in older trees (the flat package from before the layout move);
# "seeds" is whichever of its modules defines episode_seed (execution.runner did before execution.evaluate existed)
MODULES = {"backbone": ("methods.backbone", "backbone"), "harness": ("execution.harness", "harness"),
           "spec": ("methods.spec", "spec"), "data": ("data.loading", "data"),
           "episodes": ("episodes.sampling", "episodes"),
           "seeds": ("execution.evaluate", "execution.runner", "runner")}


def _import_first(name: str, paths: tuple):
    """The first of ``paths`` that imports (for "seeds": that defines ``episode_seed``)."""
    for path in paths:
        try:
            module = importlib.import_module(f"fewshot_bench.{path}")
        except ModuleNotFoundError:
            continue
        if name != "seeds" or hasattr(module, "episode_seed"):
            return module
    raise SystemExit(f"no module of {paths} in this tree provides {name!r}")


def load_tree(root: str, data_dir: str) -> dict:
    """The fewshot_bench modules of the tree at ``root`` (any earlier fewshot_bench / baselines modules dropped)."""
    for name in list(sys.modules):
        if name.split(".")[0] in ("fewshot_bench", "baselines"):
            del sys.modules[name]
    sys.path.insert(0, root)
    try:
        mods = {m: _import_first(m, paths) for m, paths in MODULES.items()}
    finally:
        sys.path.remove(root)
    if not mods["harness"].__file__.startswith(str(Path(root).resolve())):
        raise SystemExit(f"{root}: imported {mods['harness'].__file__} instead (is another fewshot_bench installed "
                         f"in editable mode ahead of it on sys.path?)")
    mods["data"].set_data_dir(data_dir)
    return mods


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="folder of the other tree (git archive of a commit)")
    p.add_argument("--methods", default="full_ft", help="comma-separated method specs")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--k-shot", type=int, default=1)
    p.add_argument("--task", default="banking77")
    p.add_argument("--data-dir", default=os.environ.get("FEWSHOT_BENCH_DATA") or str(REPO.parent / "shared" / "data"))
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    methods = args.methods.split(",")
    sides = {}
    for side, root in (("old", args.old), ("new", str(REPO))):
        m = load_tree(root, args.data_dir)
        setting = m["episodes"].Setting(args.task, 5, args.k_shot, 15, 1)
        sides[side] = dict(m=m, backbone=m["backbone"].load_backbone("minilm", device="cpu"), setting=setting,
                           source=setting.source_episodes(0),
                           methods={s: m["spec"].method_from_spec(*m["spec"].parse_spec(s)) for s in methods})

    def episode(side, spec, i):
        d = sides[side]
        episode_ = d["setting"].target_episode(0, i)
        seed = d["m"]["seeds"].episode_seed(0, d["setting"], i)
        d["backbone"].clear_caches()
        started = time.process_time()
        record = d["m"]["harness"].run_episode(d["methods"][spec], episode_, d["backbone"], seed=seed,
                                               source_episodes=d["source"])
        return time.process_time() - started, record

    for spec in methods:
        episode("old", spec, args.episodes), episode("new", spec, args.episodes)  # warm-up, not counted
        totals, same, total = {"old": 0.0, "new": 0.0}, 0, 0
        for i in range(args.episodes):
            records, seconds = {}, {}
            for side in (("old", "new") if i % 2 == 0 else ("new", "old")):
                seconds[side], records[side] = episode(side, spec, i)
                totals[side] += seconds[side]
            a, b = records["old"]["predictions"] or [], records["new"]["predictions"] or []
            agree = sum(x == y for x, y in zip(a, b))
            same, total = same + agree, total + len(a)
            print(f"{spec} episode {i}: old {seconds['old']:.2f} s ({records['old']['status']}), new "
                  f"{seconds['new']:.2f} s ({records['new']['status']}); same predictions {agree}/{len(a)}", flush=True)
        print(f"{spec}: old {totals['old'] / args.episodes:.2f} s, new {totals['new'] / args.episodes:.2f} s per "
              f"episode (CPU): speed-up {totals['old'] / totals['new']:.2f}x; same predictions {same}/{total}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
