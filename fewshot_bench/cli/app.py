"""Command line: ``fewshot-bench {list,episodes,new-task,check-task,run,tune,leaderboard,compare,power,reproduce,
validate,merge,campaign}``: the parser and :func:`main`; the handlers are in ``task_commands``, ``run_commands``
and ``report_commands``.

Bad input ends with one line on stderr and exit code 2 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sqlite3
import sys
from typing import List, Optional

from ..core.errors import UserError
from ..core.interrupts import interrupt_message
from ..core.outputs import disk_full, disk_full_message
from ..execution.launch_config import SubmititConfig
from . import report_commands, run_commands, task_commands
from .task_commands import apply_common
from .types import bounded_int, finite_float, positive_int


def _common() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--data-dir", help="folder holding the datasets (<task>/<split>.jsonl); also $FEWSHOT_BENCH_DATA")
    common.add_argument("--tasks-dir", action="append", default=[], help="extra folder of YAML task cards (repeatable)")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    return common


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), like every other bad-input error of the CLI."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _episode_flags() -> argparse.ArgumentParser:
    """Flags shared by ``run`` and ``tune``: which tasks, methods and episode shapes, on what."""
    flags = _Parser(add_help=False)
    flags.add_argument("--tasks", help="comma-separated task names")
    flags.add_argument("--methods", help="comma-separated method specs: NAME or path/to/file.py:Class, optionally "
                                         "with config overrides, e.g. full_ft,sgg(mode=exact,steps=5)")
    flags.add_argument("--n-way", help="classes per episode (comma-separated list allowed, or 'all')")
    flags.add_argument("--k-shot", help="shots per class, comma-separated (e.g. 1,5); MIN-MAX for variable shot")
    flags.add_argument("--query", type=bounded_int, help="queries per class")
    flags.add_argument("--fold", type=bounded_int, help="class-split fold (1-based)")
    flags.add_argument("--seed", type=bounded_int, help="episode and training seed")
    flags.add_argument("--backbone", help="backbone name, Hugging Face id or local path (default: minilm)")
    flags.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    flags.add_argument("--method-config", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                       help="set a method config field (repeatable), e.g. full_ft.steps=5 (the same as "
                            "--methods 'full_ft(steps=5)'); tune: pins it (it leaves the search space)")
    return flags


def _isolation_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--isolation", choices=["sandboxed", "process", "in-process"],
                   help="where methods' code runs (default: $FEWSHOT_BENCH_ISOLATION, else sandboxed: a sealed worker "
                        "process confined with Landlock, process without Landlock where it is unavailable; "
                        "in-process: debugging)")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    episode_flags = _episode_flags()
    parser = _Parser(prog="fewshot-bench", description="Episodic few-shot NLU benchmark.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", parents=[common], help="list registered tasks, methods or backbones")
    p.add_argument("what", choices=["tasks", "methods", "backbones"], help="what to list")
    p.add_argument("--fold", type=bounded_int, default=1, help="fold used to count classes per pool")
    p.set_defaults(handler=task_commands.cmd_list)

    p = sub.add_parser("episodes", parents=[common], help="print one episode as JSON")
    p.add_argument("task", help="registered task name (fewshot-bench list tasks)")
    p.add_argument("--pool", default="target", choices=["source", "validation", "target"],
                   help="class pool to draw from")
    p.add_argument("--n-way", default=None, help="classes per episode, or 'all' (default: the card's)")
    p.add_argument("--k-shot", default=None, help="shots per class, or MIN-MAX for variable shot (default: the card's)")
    p.add_argument("--query", type=bounded_int, default=None, help="queries per class (default: the card's)")
    p.add_argument("--seed", type=bounded_int, default=0, help="episode seed (default 0)")
    p.add_argument("--index", type=bounded_int, default=0, help="episode index in the seeded sequence")
    p.add_argument("--fold", type=bounded_int, default=1, help="class-split fold (1-based)")
    p.set_defaults(handler=task_commands.cmd_episodes)

    p = sub.add_parser("new-task", parents=[common], help="write a commented task-card skeleton listing every field")
    p.add_argument("name", help="registry name of the new task")
    p.add_argument("--local-dir", help="its dataset folder under the data dir (default: NAME); split names and "
                                       "fields found there are pre-filled")
    p.add_argument("--out", help="card file to write (default: NAME.yaml); never overwritten")
    p.set_defaults(handler=task_commands.cmd_new_task)

    p = sub.add_parser("check-task", parents=[common],
                       help="report a task's pools, class sizes, duplicate texts and the episodes it can make")
    p.add_argument("task", help="registered task name (fewshot-bench list tasks)")
    p.add_argument("--n-way", default=None, help="classes per episode, or 'all' (default: the card's)")
    p.add_argument("--k-shot", default=None, help="shots per class, or MIN-MAX (default: the card's)")
    p.add_argument("--query", type=bounded_int, default=None, help="queries per class (default: the card's)")
    p.add_argument("--fold", type=bounded_int, default=1, help="class-split fold (1-based)")
    p.add_argument("--strict", action="store_true", help="exit 1 when the report has findings")
    p.add_argument("--all-duplicates", action="store_true",
                   help="list every duplicate text (default: the first 5 of each kind)")
    p.set_defaults(handler=task_commands.cmd_check_task)

    p = sub.add_parser("run", parents=[common, episode_flags], help="run methods on task episodes into a results store")
    p.add_argument("--config", help="YAML file of run options; flags override it")
    p.add_argument("--suite", help="named suite (smoke, default, core, cross-domain) choosing task x setting combinations")
    p.add_argument("--reference", help="the leaderboard written at the end compares every method with this one, cell by "
                                       "cell (default: full_ft, else the method with rows in the most cells)")
    p.add_argument("--source-task", help="cross-dataset: draw source-pool data from this task")
    p.add_argument("--episodes", type=bounded_int, help="episodes per task x setting")
    p.add_argument("--pool", choices=["target", "validation"],
                   help="evaluate on target-pool episodes (default) or validation-pool ones (hyperparameter choice)")
    p.add_argument("--store", help="SQLite results store (default: runs/results.sqlite)")
    p.add_argument("--out", help="leaderboard CSV written at the end (default: runs/leaderboard.csv)")
    p.add_argument("--limit", type=bounded_int, help="smoke runs: at most this many episodes per task x setting")
    p.add_argument("--restarts", type=bounded_int, help="train each episode with this many training seeds (default 1): "
                                                "the leaderboard then shows seed SD and failed-run share")
    p.add_argument("--tuned", help="YAML file written by 'fewshot-bench tune': run each method with its chosen config")
    p.add_argument("--threads", type=bounded_int, help="torch CPU threads per process (default: $OMP_NUM_THREADS if set, else "
                                                "the idle cores divided by the processes of this job)")
    _isolation_flag(p)
    p.add_argument("--episode-timeout", type=float, metavar="SECONDS",
                   help="fail an episode whose method takes longer than this in the sealed worker (default: 20x "
                        "the dry run's estimate for the method and cell, at least 600, where this machine has "
                        "calibrated it (run --dry-run once), else 3600; 0: no limit)")
    p.add_argument("--dry-run", action="store_true", help="print the cells, episodes and estimated CPU/GPU-hours per "
                                                           "method (from a short calibration here); write nothing")
    p.add_argument("--launcher", choices=["local", "submitit"], default="local",
                   help="local: this process, or the ranks of a torchrun job (default); submitit: a Slurm job array "
                        "through submitit (pip install 'fewshot-bench[slurm]'), one task per shard, merged at the end")
    for field in dataclasses.fields(SubmititConfig):  # --submitit-FIELD, 1:1 with the launcher's config
        numeric = field.type in ("int", int)
        p.add_argument(f"--submitit-{field.name.replace('_', '-')}", dest=f"submitit_{field.name}",
                       type=bounded_int if numeric else str, metavar="N" if numeric else "VALUE",
                       help=f"--launcher submitit: {field.metadata['help']}"
                            + ("" if "default" in field.metadata["help"] else f" (default: {field.default})"))
    p.set_defaults(handler=run_commands.cmd_run)

    p = sub.add_parser("tune", parents=[common, episode_flags],
                       help="choose each method's config on validation-pool episodes, same budget for every method")
    p.add_argument("--episodes", type=bounded_int, help="validation episodes every trial is scored on (default 10)")
    p.add_argument("--trials", type=positive_int, help="configurations per method (default 20)")
    p.add_argument("--sampler", choices=["tpe", "grid"], help="Optuna sampler (default tpe), seeded with --seed")
    p.add_argument("--prune", action="store_true", help="Optuna MedianPruner: stop hopeless trials early")
    p.add_argument("--source-task", help="cross-dataset: the source task; a target task without validation classes "
                                         "is tuned on this task's validation pool")
    _isolation_flag(p)
    p.add_argument("--store", help="results store for the trials (default: runs/results.sqlite)")
    p.add_argument("--out", help="YAML file of the chosen configs (default: runs/tuned.yaml)")
    p.set_defaults(handler=run_commands.cli_tune)

    p = sub.add_parser("leaderboard", parents=[common], help="aggregate a results store into the leaderboard CSV")
    p.add_argument("--store", default="runs/results.sqlite", help="results store to aggregate (default: %(default)s)")
    p.add_argument("--out", default="runs/leaderboard.csv",
                   help="leaderboard CSV to write; the .md, .html, .png and _*.csv files are named after it "
                        "(default: %(default)s)")
    p.add_argument("--bootstrap", type=positive_int, default=10000, help="bootstrap resamples for the 95%% CI")
    p.add_argument("--reference", help="method every other one is compared with, cell by cell (default: full_ft, "
                                       "else the method with rows in the most cells)")
    p.set_defaults(handler=report_commands.cli_leaderboard)

    p = sub.add_parser("compare", parents=[common], help="paired comparison of named method pairs, per cell (Holm)")
    p.add_argument("--store", default="runs/results.sqlite",
                   help="results store holding both methods of each pair (default: %(default)s)")
    p.add_argument("--pair", action="append", default=[], metavar="METHOD=OTHER",
                   help="compare METHOD with OTHER in every cell holding both (repeatable), e.g. 'sgg[tuned]=sgg'")
    p.add_argument("--bootstrap", type=positive_int, default=10000, help="bootstrap resamples for the 95%% CI")
    p.set_defaults(handler=report_commands.cli_compare)

    p = sub.add_parser("power", parents=[common], help="episodes needed to tell adjacent methods apart, per cell")
    p.add_argument("--store", default="runs/results.sqlite", help="results store to size (default: %(default)s)")
    p.add_argument("--delta", default="0.01,0.02", help="accuracy differences to detect, comma-separated")
    p.add_argument("--power", type=finite_float, default=0.8, help="probability of detecting each difference")
    p.set_defaults(handler=report_commands.cli_power)

    p = sub.add_parser("reproduce", parents=[common],
                       help="re-run a seeded sample of a store's episodes here and report agreement (exit 1: drift)")
    p.add_argument("--store", default="runs/results.sqlite", help="the results store to check (only read)")
    p.add_argument("--sample", type=positive_int, default=5, help="episodes re-run per method (default 5)")
    p.add_argument("--seed", type=bounded_int, default=0, help="seed of the sample and of the bootstrap CI")
    p.add_argument("--tolerance", type=finite_float, default=0.01,
                   help="a method drifts when |mean accuracy difference| exceeds this (default 0.01)")
    p.add_argument("--methods", help="comma-separated method names of the store (default: every method)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--tuned", action="append", default=[], metavar="FILE",
                   help="tuned-config file to try for runs whose stored --tuned path is missing (repeatable)")
    p.add_argument("--bootstrap", type=positive_int, default=10000, help="bootstrap resamples for the 95%% CI")
    p.set_defaults(handler=run_commands.cli_reproduce)

    p = sub.add_parser("validate", parents=[common], help="check a leaderboard CSV or a results store")
    p.add_argument("file", nargs="?", help="a leaderboard CSV or a results store (.sqlite)")
    p.add_argument("--store", help="the results store a CSV is recomputed from (default: results.sqlite beside it)")
    p.add_argument("--bootstrap", type=positive_int, default=10000,
                   help="bootstrap resamples the CSV was made with (default 10000)")
    p.set_defaults(handler=report_commands.cli_validate)

    p = sub.add_parser("merge", parents=[common], help="merge results-store shards into one store")
    p.add_argument("shards", nargs="+", help="shard stores to merge into --store")
    p.add_argument("--store", required=True, help="the store to merge into")
    p.set_defaults(handler=report_commands.cli_merge)

    p = sub.add_parser("campaign", parents=[common],
                       help="a resumable compute queue: status (what is missing, CPU-hours), run (worker processes "
                            "into shards), merge (complete units into the store), audit (estimates vs hours taken)")
    p.add_argument("action", choices=["status", "run", "merge", "audit"],
                   help="status: what is left; run: compute it; merge: complete units into --store; audit: each "
                        "complete unit's estimate when run started it vs the CPU-hours it took")
    p.add_argument("--file", default="leaderboard/campaign.yaml", help="campaign file: 'entries', an ordered list of "
                                                                        "run configurations (default: %(default)s)")
    p.add_argument("--store", default="leaderboard/results.sqlite",
                   help="results store, only read by status and run (default: %(default)s)")
    p.add_argument("--shards", default="runs/campaign", help="folder of the workers' shard stores "
                                                             "shard<i>.sqlite and logs (default: %(default)s)")
    p.add_argument("--processes", type=bounded_int, default=1, help="run: worker processes, 1 to 64 (default 1)")
    p.add_argument("--threads", type=bounded_int, default=1,
                   help="torch threads per worker (run), or the workers' threads whose calibrated rates estimate "
                        "units nothing stored measures (status) (default 1)")
    p.set_defaults(handler=run_commands.cmd_campaign)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:  # argparse's own errors (one line, exit 2) and --help end here, returned like every other exit code
        args = parser.parse_args(argv)
        if not args.command:
            args = parser.parse_args(["run"] + list(argv if argv is not None else sys.argv[1:]))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        apply_common(args)
        return int(args.handler(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupt_message(vars(args)), file=sys.stderr)
        return 130
    except sqlite3.OperationalError as exc:  # another process held the store's write lock past the timeout
        if not args.debug and disk_full(exc):
            print(f"error: {disk_full_message(exc)}", file=sys.stderr)
            return 2
        if args.debug or "locked" not in str(exc):
            raise
        print(f"error: the results store is locked by another process ({exc}) and stayed locked past the 60 s "
              f"wait; finished episodes are kept: wait for the other writer to finish, then run the command again "
              f"(it resumes)", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout went away (e.g. `| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a full disk is the user's to fix, in one line; anything else is a bug
        if args.debug or not disk_full(exc):
            raise
        print(f"error: {disk_full_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
