"""The commands about tasks and their episodes: ``list``, ``episodes``, ``new-task``, ``check-task``, and the
options every command shares (``--data-dir``, ``--tasks-dir``)."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.checks import check_inside, check_name
from ..core.errors import UserError
from ..core.outputs import check_writable, print_table
from ..core.registry import BACKBONES, METHODS, TASKS
from ..data.cards import PLACEHOLDER, get_task_config, register_cards
from ..data.loading import data_dir, get_task_data, set_data_dir
from ..data.skeleton import inspect_folder, skeleton
from ..episodes.check import SHOWN, check_task, format_report
from ..episodes.sampling import sample_episode


def apply_common(args) -> None:
    """Apply --data-dir and register the cards of --tasks-dir."""
    if getattr(args, "data_dir", None):
        set_data_dir(args.data_dir)
    for directory in getattr(args, "tasks_dir", []) or []:
        register_cards(directory)


def cmd_list(args) -> int:
    """``fewshot-bench list {tasks,methods,backbones}``."""
    if args.what == "methods":
        print("\n".join(METHODS.names()))
        return 0
    if args.what == "backbones":
        print("\n".join(BACKBONES.names()))
        return 0
    header = ("task", "source/val/target classes", "examples", "license", "source")
    rows, missing = [], []
    for name in TASKS.names():
        config = get_task_config(name)
        origin = "packaged demo" if config.source.packaged else f"{config.source.local_dir}/ | hub: {config.source.hub_id}"
        try:
            data = get_task_data(name, min(args.fold, config.pools.folds))
        except UserError as exc:
            missing.append(f"{name}: {exc}")
            continue
        counts = "/".join(str(len(data.pools[p].classes)) for p in ("source", "validation", "target"))
        rows.append((name + (" (demo)" if config.demo else ""), counts, str(len(data.ids)), config.license.split(" (")[0], origin))
    print_table(header, rows)
    if missing:
        where = data_dir() or "not set"
        print(f"\n{len(missing)} task(s) not loadable (data dir: {where}; set --data-dir DIR or FEWSHOT_BENCH_DATA=DIR):")
        for line in missing:
            print(f"  {line}")
    return 0


def cmd_episodes(args) -> int:
    """``fewshot-bench episodes TASK``: one episode as JSON."""
    n_way, k_shot, q_query = episode_shape(args, get_task_config(args.task))
    episode = sample_episode(get_task_data(args.task, args.fold), pool=args.pool, n_way=n_way, k_shot=k_shot,
                             q_query=q_query, seed=args.seed, index=args.index)
    print(json.dumps(episode.to_dict(), indent=1, ensure_ascii=False))
    return 0


def episode_shape(args, config) -> tuple:
    """(n_way, k_shot, q_query) from --n-way/--k-shot/--query, each defaulting to the card's ``episodes``."""
    defaults = config.episodes
    n_way = args.n_way if args.n_way is not None else defaults.n_way
    n_way = n_way if n_way == "all" else _positive_int(n_way, "--n-way")
    k_shot = args.k_shot if args.k_shot is not None else defaults.k_shot
    return n_way, k_shot, args.query if args.query is not None else defaults.q_query


def _positive_int(value, flag: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"{flag} expects an integer (or 'all'), got '{value}'") from None


def cmd_new_task(args) -> int:
    """``fewshot-bench new-task NAME [--local-dir FOLDER] [--out FILE]``: the card skeleton of
    :mod:`fewshot_bench.data.skeleton`, never over an existing file."""
    check_name(args.name, "new-task: the task name")
    if args.local_dir is not None:
        check_inside(args.local_dir, "new-task --local-dir", "the data dir")
    out = Path(args.out or f"{args.name}.yaml")
    if out.exists():
        raise UserError(f"{out} exists; pass --out another path (new-task never overwrites a card)")
    check_writable(out, "--out")
    local_dir = args.local_dir or args.name
    root = data_dir()
    text = skeleton(args.name, local_dir, inspect_folder(root / local_dir) if root else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    data_flag = f"--data-dir {root}" if root else "--data-dir DIR"
    print(f"wrote {out}: replace every '{PLACEHOLDER}' and choose the pools, then run "
          f"`fewshot-bench check-task {args.name} --tasks-dir {out.parent} {data_flag}`")
    return 0


def cmd_check_task(args) -> int:
    """``fewshot-bench check-task NAME``: print the report of :mod:`fewshot_bench.episodes.check`; with
    ``--strict``, exit 1 when it has findings."""
    config = get_task_config(args.task)
    n_way, k_shot, q_query = episode_shape(args, config)
    report = check_task(get_task_data(args.task, args.fold), n_way=n_way, k_shot=k_shot, q_query=q_query)
    print(format_report(report, limit=None if getattr(args, "all_duplicates", False) else SHOWN))
    return 1 if args.strict and report.problems else 0
