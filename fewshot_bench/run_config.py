"""Run configuration: the :class:`RunConfig` of ``fewshot-bench run`` from a suite, a ``--config`` YAML and
flags (in that order of precedence), and what it expands to: settings and method specs."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional

from .config import from_mapping, option, read_yaml
from .data import data_dir
from .episodes import Setting, parse_shot
from .errors import UserError
from .registry import METHODS, did_you_mean
from .spec import parse_method_config, parse_spec, split_specs
from .task import BUILTIN_TASKS_DIR, get_task_config

log = logging.getLogger(__name__)
SUITES_DIR = BUILTIN_TASKS_DIR / "suites"


@dataclass
class RunConfig:
    """What one ``fewshot-bench run`` evaluates and where it writes (suite YAML, --config YAML and flags)."""
    tasks: List[str] = option(factory=list, help="task names (target tasks)")
    settings: List[dict] = option(factory=list, help="explicit {task, source_task} pairs (cross-dataset suites)")
    source_task: Optional[str] = option(None, help="draw source-pool data from this task for every target task")
    methods: object = option("all", help="method specs (NAME or NAME(field=value,...)) or 'all' (every registered "
                                         "method)")
    n_way: List = option(factory=lambda: [5], help="classes per episode (list), or 'all'")
    k_shot: List = option(factory=lambda: [1, 5], help="shots per class (list); 'MIN-MAX' for variable shot")
    query: int = option(15, help="queries per class")
    episodes: int = option(20, help="episodes per task x setting")
    limit: Optional[int] = option(None, help="smoke runs: at most this many episodes per task x setting")
    fold: int = option(1, help="class-split fold (1-based)")
    pool: str = option("target", help="pool of the evaluated episodes: target, or validation to choose "
                                      "hyperparameters without seeing target classes")
    seed: int = option(0, help="episode and training seed")
    backbone: str = option("minilm", help="backbone name, Hugging Face id or local path")
    device: str = option("auto", help="auto, cpu, cuda, cuda:N")
    bf16: bool = option(True, help="bf16 autocast on GPUs that support it")
    store: str = option("runs/results.sqlite", help="SQLite results store")
    out: str = option("leaderboard/leaderboard.csv", help="leaderboard CSV written at the end ('' to skip)")
    method_config: List[str] = option(factory=list, help="METHOD.FIELD=VALUE overrides of method configs (the same as "
                                                          "METHOD(FIELD=VALUE) in methods)")
    description: str = option("", help="what the suite is for")
    progress_every: int = option(0, help="output that is not a terminal: a progress line every N episodes "
                                         "(0: every 5% of the run); a terminal gets a bar")
    progress_seconds: float = option(60.0, help="output that is not a terminal: a progress line at least "
                                                "every this many seconds")


def load_suite(name: str) -> dict:
    """The run options of the named suite (``tasks/suites/<name>.yaml``)."""
    path = SUITES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))
        raise UserError(f"unknown suite '{name}'{did_you_mean(name, known)} (known: {', '.join(known)})")
    return read_yaml(path, "suite")


def _split(value) -> list:
    if value is None:
        return []
    return [v.strip() for v in str(value).split(",") if v.strip()] if isinstance(value, str) else list(value)


def _with_demo(values: dict, tasks_given: bool) -> dict:
    """Apply a ``demo`` block when no data dir is set (so the suite runs on the packaged demo task)."""
    demo = values.pop("demo", None)
    if demo and data_dir() is None and not tasks_given:
        log.info("no data dir set: using the demo values %s", demo)
        values.pop("settings", None)
        values.update(demo)
    return values


def build_config(args) -> RunConfig:
    """Suite (default 'default') < --config YAML < flags; a suite's ``demo`` block applies without a data dir."""
    tasks_given = bool(_split(args.tasks))
    merged = _with_demo(load_suite(args.suite or "default"), tasks_given)
    if args.config:
        merged.update(_with_demo(read_yaml(args.config, "--config") or {}, tasks_given))
    flags = {"tasks": _split(args.tasks) or None, "methods": split_specs(args.methods or "") or None,
             "n_way": _split(args.n_way) or None, "k_shot": _split(args.k_shot) or None, "query": args.query,
             "episodes": args.episodes, "limit": args.limit, "fold": args.fold, "pool": args.pool, "seed": args.seed,
             "backbone": args.backbone, "device": args.device, "store": args.store, "out": args.out,
             "source_task": args.source_task}
    if flags["tasks"]:
        merged.pop("settings", None)
    merged.update({k: v for k, v in flags.items() if v is not None})
    merged["method_config"] = list(merged.get("method_config", [])) + list(args.method_config)
    return from_mapping(RunConfig, merged, args.config or f"suite '{args.suite or 'default'}'")


def settings_of(config: RunConfig) -> List[Setting]:
    """Every (task, source task) x N x K setting the run evaluates, in run order."""
    pairs = [(s["task"], s.get("source_task")) for s in config.settings] or [(t, config.source_task) for t in config.tasks]
    if not pairs:
        raise UserError("no tasks to run; pass --tasks NAME[,NAME] or --suite NAME")
    settings = []
    for task, source in pairs:
        task_config = get_task_config(task)
        fold = min(config.fold, task_config.pools.folds)
        for n_way in config.n_way:
            n_way = n_way if n_way == "all" else int(n_way)
            for k_shot in config.k_shot:
                settings.append(Setting(task, n_way, parse_shot(k_shot), int(config.query), fold, source,
                                        config.pool))
    return settings


def method_specs(config: RunConfig) -> Dict[str, Dict[str, str]]:
    """{method spec: config overrides} of the run: each spec's own ``(field=value)`` plus ``method_config``."""
    specs = METHODS.names() if config.methods in ("all", ["all"]) else _methods_list(config.methods)
    extra = parse_method_config(config.method_config)
    names = {spec: parse_spec(spec)[0] for spec in specs}
    unknown = set(extra) - set(names.values())
    if unknown:
        raise UserError(f"--method-config names method(s) {sorted(unknown)} that are not in this run ({', '.join(specs)})")
    return {spec: {**parse_spec(spec)[1], **extra.get(names[spec], {})} for spec in specs}


def _methods_list(value) -> List[str]:
    return split_specs(value) if isinstance(value, str) else [str(v).strip() for v in value]
