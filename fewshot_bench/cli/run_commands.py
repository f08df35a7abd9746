"""The commands that run methods: ``run``, ``tune``, ``reproduce`` and ``campaign``.

Their execution modules import torch, transformers and scikit-learn (3-6 s): each handler imports its own when it
runs, so the commands that train nothing (``list``, ``leaderboard``, ``--help``, ...) start without them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from ..core.checks import check_run_bounds
from ..core.config import from_mapping
from ..core.errors import UserError
from ..core.outputs import print_table
from ..execution.launch_config import SubmititConfig
from ..report.leaderboard import write_leaderboard


def cmd_run(args) -> int:
    """``fewshot-bench run``: the run configuration of the suite, --config and the flags, run (or, with --dry-run,
    planned), then the leaderboard of its store at --out."""
    from ..execution.distributed import run_distributed_or_local  # torch: see the module docstring
    from ..execution.run_config import build_config
    from ..execution.runner import check_run_outputs

    config = build_config(vars(args))
    check_run_bounds(config)
    check_run_outputs(config, config_file=args.config, tasks_dirs=args.tasks_dir)
    if args.dry_run:
        from ..execution.plan import dry_run

        return dry_run(config)
    if args.launcher == "submitit":
        from ..execution.launchers import run_submitit  # torch: see the module docstring

        store_path = run_submitit(config, launch_config(vars(args)))
    else:
        store_path = run_distributed_or_local(config)
    if store_path and config.out:
        write_leaderboard(store_path, config.out, 10000, args.reference)
    return 0


def launch_config(options: Dict[str, object]) -> SubmititConfig:
    """The SubmititConfig of the ``--submitit-FIELD`` options given (the others keep their defaults)."""
    prefix = "submitit_"
    given = {key[len(prefix):]: value for key, value in options.items()
             if key.startswith(prefix) and value is not None}
    return from_mapping(SubmititConfig, given, "--submitit options")


def cmd_campaign(args) -> int:
    """``fewshot-bench campaign {status,run,merge,audit}``."""
    from ..execution import campaign  # torch: see the module docstring

    if args.action == "status":
        return campaign.status(args.file, args.store, args.shards, threads=args.threads)
    if args.action == "merge":
        return campaign.merge(args.file, args.store, args.shards)
    if args.action == "audit":
        return campaign.audit(args.store, args.shards)
    return campaign.run(args.file, args.store, args.shards, processes=args.processes, threads=args.threads,
                        tasks_dirs=args.tasks_dir)


def cli_tune(args) -> int:
    """``fewshot-bench tune``: the options as a :class:`~fewshot_bench.execution.tuning.TuneConfig`, tuned; prints
    each setting's chosen configs."""
    from ..execution.tuning import TuneConfig, tune  # torch: see the module docstring

    values = {"tasks": [t for t in (args.tasks or "").split(",") if t], "methods": args.methods or "all",
              "method_config": list(args.method_config)}
    for name in ("n_way", "k_shot"):
        if getattr(args, name):
            values[name] = [v for v in getattr(args, name).split(",") if v]
    for name in ("query", "episodes", "trials", "sampler", "fold", "seed", "backbone", "device", "store", "out",
                 "isolation", "source_task"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    values["prune"] = bool(args.prune)
    if not values["tasks"]:
        raise UserError("tune: no tasks; pass --tasks NAME[,NAME]")
    config = from_mapping(TuneConfig, values, "tune")
    document = tune(config)
    for label, methods in document["settings"].items():
        for name, entry in methods.items():
            mark = "" if entry["tuned"] else " (untuned: no search space)"
            print(f"{label} {name}: val acc {entry['val_accuracy']:.4f} {entry['val_ci95']}{mark} {entry['overrides']}")
    print(f"chosen configs written to {config.out}")
    return 0


def cli_reproduce(args) -> int:
    """``fewshot-bench reproduce``: the agreement table, the environment differences; exit 1 on drift."""
    from ..execution.reproduce import environment_text, reproduce  # torch: see the module docstring

    if args.sample < 1:
        raise UserError(f"--sample must be >= 1 episode per method, got {args.sample}")
    if args.tolerance < 0:
        raise UserError(f"--tolerance must be >= 0 (an accuracy difference), got {args.tolerance}")
    for path in args.tuned:
        if not Path(path).is_file():
            raise UserError(f"--tuned {path} does not exist; pass a file written by fewshot-bench tune")
    methods = [m for m in (args.methods or "").split(",") if m] or None
    print(f"re-running up to {args.sample} stored episodes per method of {args.store} here (seed {args.seed}); "
          f"a method drifts when |mean Δ accuracy| > {args.tolerance}", flush=True)
    header = ("method", "episodes", "identical predictions", "identical episodes", "Δ accuracy [95% CI]", "verdict")

    def row(a) -> tuple:
        rerun = len(a.deltas)
        delta = f"{np.mean(a.deltas):+.4f} [{a.ci[0]:+.4f}, {a.ci[1]:+.4f}]" if rerun else ""
        verdict = "NOT RE-RUN" if not rerun else "DRIFT" if a.drifts(args.tolerance) else "ok"
        verdict += f" ({len(a.not_rerun)} not re-run)" if a.not_rerun and rerun else ""
        return (a.method, f"{rerun}/{rerun + len(a.not_rerun)}",
                f"{a.same_queries / a.queries:.1%} of {a.queries}" if a.queries else "",
                f"{a.same_episodes}/{rerun}" if rerun else "", delta, verdict)

    def streamed(a) -> None:  # a line per method as soon as its episodes are done; the table follows at the end
        print(f"{a.method}: " + ", ".join(f"{name} {value}" for name, value in zip(header[1:], row(a)[1:]) if value),
              flush=True)

    results = reproduce(args.store, args.sample, args.seed, args.device, args.tuned, methods, args.bootstrap,
                        args.tolerance, on_method=streamed)
    print()
    print_table(header, [row(a) for a in results])
    changes: Dict[str, List[str]] = {}  # text of the differences: the methods that have them
    for a in results:
        for line in a.drifted:
            print(f"drifted: {a.method} {line}")
        for line in a.not_rerun:
            print(f"not re-run: {a.method} {line}")
        changes.setdefault(environment_text(a.environment_changes), []).append(a.method)
    for text, names in changes.items():
        print(f"environment of {', '.join(names)}: {text}")
    failed = [a.method for a in results if a.drifts(args.tolerance) or a.not_rerun]
    if failed:
        print(f"not reproduced: {', '.join(failed)}")
    return 1 if failed else 0
