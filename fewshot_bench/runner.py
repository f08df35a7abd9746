"""``fewshot-bench run``: methods x tasks x settings x episodes into a results store, resumable.

Work units are (setting, method, episode index). A unit already in the store (same config hash) is
skipped, so re-running a command resumes it; each finished episode is one committed transaction.
Under torchrun, units are split across ranks by index (see :mod:`fewshot_bench.distributed`).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from .config import from_mapping, option, validate
from .data import data_dir, get_task_data
from .episodes import Setting, parse_n_way, parse_shot
from .errors import UserError
from .outputs import check_writable
from .progress import Progress
from .sealed import SourcePool
from .task import BUILTIN_TASKS_DIR, get_task_config

log = logging.getLogger(__name__)
SUITES_DIR = BUILTIN_TASKS_DIR / "suites"


@dataclass
class RunConfig:
    tasks: List[str] = option(factory=list, help="task names (target tasks)")
    settings: List[dict] = option(factory=list, help="explicit {task, source_task} pairs (cross-dataset suites)")
    source_task: Optional[str] = option(None, help="draw source-pool data from this task for every target task")
    methods: object = option("all", help="method names or 'all' (every registered method except opt-in ones: setfit, icl)")
    n_way: List = option(factory=lambda: [5], help="classes per episode (list), or 'all'")
    k_shot: List = option(factory=lambda: [1, 5], help="shots per class (list); 'MIN-MAX' for variable shot")
    query: int = option(15, help="queries per class", low=1)
    episodes: int = option(20, help="episodes per task x setting", low=1)
    limit: Optional[int] = option(None, help="smoke runs: at most this many episodes per task x setting", low=1)
    fold: int = option(1, help="class-split fold (1-based)", low=1)
    pool: str = option("target", help="pool of the evaluated episodes: target, or validation to choose "
                                      "hyperparameters without seeing target classes", choices=("target", "validation"))
    seed: int = option(0, help="episode and training seed", low=0)
    backbone: str = option("minilm", help="backbone name, Hugging Face id or local path")
    device: str = option("auto", help="auto, cpu, cuda, cuda:N")
    bf16: bool = option(True, help="bf16 autocast on GPUs that support it")
    store: str = option("runs/results.sqlite", help="SQLite results store")
    out: str = option("runs/leaderboard.csv", help="leaderboard CSV written at the end ('' to skip)")
    method_config: List[str] = option(factory=list, help="METHOD.FIELD=VALUE overrides of method configs")
    tuned: Optional[str] = option(None, help="YAML file of configs chosen by 'fewshot-bench tune' (per setting and "
                                             "method; --method-config still overrides them)")
    description: str = option("", help="what the suite is for")
    progress_every: int = option(0, help="output that is not a terminal: a progress line every N episodes "
                                         "(0: every 5% of the run); a terminal gets a bar")
    progress_seconds: float = option(60.0, help="output that is not a terminal: a progress line at least "
                                                "every this many seconds")

    def __post_init__(self):
        """Types and limits of every field; n_way and k_shot entries parsed (``'5'`` -> 5, ``'1-5'`` -> (1, 5))."""
        validate(self, "run config")
        self.n_way = [parse_n_way(v) for v in self.n_way]
        self.k_shot = [parse_shot(v) for v in self.k_shot]
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise UserError(f"run config: device '{self.device}' is not one of auto, cpu, mps, cuda, cuda:N")


def load_suite(name: str) -> dict:
    path = SUITES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))
        import difflib
        close = difflib.get_close_matches(name, known, n=1)
        raise UserError(f"unknown suite '{name}'" + (f"; did you mean '{close[0]}'?" if close else "")
                        + f" (known: {', '.join(known)})")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


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


def _read_yaml(path: str) -> dict:
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise UserError(f"cannot read --config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"malformed YAML in {path}{f':{mark.line + 1}' if mark else ''}: "
                        f"{getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"--config {path} is not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: expected a mapping of run options (e.g. 'episodes: 5'), "
                        f"got a {type(values).__name__}")
    return values


def build_config(args) -> RunConfig:
    """Suite (default 'default') < --config YAML < flags; a suite's ``demo`` block applies without a data dir."""
    tasks_given = bool(_split(args.tasks))
    merged = _with_demo(load_suite(args.suite or "default"), tasks_given)
    if args.config:
        merged.update(_with_demo(_read_yaml(args.config), tasks_given))
    flags = {"tasks": _split(args.tasks) or None, "methods": _split(args.methods) or None,
             "n_way": _split(args.n_way) or None, "k_shot": _split(args.k_shot) or None, "query": args.query,
             "episodes": args.episodes, "limit": args.limit, "fold": args.fold, "pool": args.pool, "seed": args.seed,
             "backbone": args.backbone, "device": args.device, "store": args.store, "out": args.out,
             "source_task": args.source_task, "tuned": getattr(args, "tuned", None)}
    if flags["tasks"]:
        merged.pop("settings", None)
    merged.update({k: v for k, v in flags.items() if v is not None})
    merged["method_config"] = list(merged.get("method_config", [])) + list(args.method_config)
    return from_mapping(RunConfig, merged, f"{args.config or 'suite ' + repr(args.suite or 'default')} + flags")


def _settings(config: RunConfig) -> List[Setting]:
    pairs = [(s["task"], s.get("source_task")) for s in config.settings] or [(t, config.source_task) for t in config.tasks]
    if not pairs:
        raise UserError("no tasks to run; pass --tasks NAME[,NAME] or --suite NAME")
    settings = []
    for task, source in pairs:
        task_config = get_task_config(task)
        fold = min(config.fold, task_config.pools.folds)
        for n_way in config.n_way:
            for k_shot in config.k_shot:
                settings.append(Setting(task, n_way, k_shot, config.query, fold, source, config.pool))
    return settings


def _method_overrides(config: RunConfig) -> Dict[str, Dict[str, str]]:
    overrides: Dict[str, Dict[str, str]] = {}
    for item in config.method_config:
        key, sep, value = item.partition("=")
        method, dot, field = key.partition(".")
        if not (sep and dot and method and field):
            raise UserError(f"--method-config '{item}' must look like METHOD.FIELD=VALUE, e.g. full_ft.steps=5")
        overrides.setdefault(method, {})[field] = value
    return overrides


def method_label(name: str, overrides: Dict[str, str]) -> str:
    """Leaderboard name: the method, plus its non-default settings so different configs never share a row."""
    return name + ("(" + ",".join(f"{k}={v}" for k, v in sorted(overrides.items())) + ")" if overrides else "")


def _source_available(setting: Setting) -> bool:
    source = setting.source_task or setting.task
    data = get_task_data(source, setting.fold if source == setting.task else 1)
    return len(data.pools["source"].rows) > 0


def episode_seed(seed: int, setting: Setting, index: int) -> int:
    """Training seed of one episode: the same for every method, so head inits match."""
    digest = hashlib.sha256(json.dumps([seed, setting.label, index]).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def autocast_dtype(device: str, bf16: bool = True):
    """torch.bfloat16 on a CUDA device that supports it when ``bf16``, else None (no autocast)."""
    import torch

    return torch.bfloat16 if (bf16 and device.startswith("cuda") and torch.cuda.is_bf16_supported()) else None


def run(config: RunConfig, *, rank: int = 0, world_size: int = 1, store_path: Optional[str] = None,
        barrier=None) -> str:
    """Execute the run; returns the store path written (a shard path when ``world_size > 1``).

    With several ranks, the meta-trainings (meta-trained method x setting) are shared out round-robin and
    cached on disk ($FEWSHOT_BENCH_CACHE: put it on a shared filesystem for multi-node jobs); after
    ``barrier()`` every rank loads them instead of training again.
    """
    from . import methods as methods_module
    from .backbone import load_backbone, resolve_device
    from .distributed import existing_shards
    from .store import ResultsStore, config_hash

    device = resolve_device(config.device)
    import torch
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = autocast_dtype(device, config.bf16)
    names = methods_module.default_method_names() if config.methods == "all" or config.methods == ["all"] else _split(config.methods)
    overrides = _method_overrides(config)
    tuned = None
    if config.tuned:
        from .tuning import load_tuned, tuned_overrides
        tuned = load_tuned(config.tuned)
    unknown = set(overrides) - set(names)
    if unknown:
        raise UserError(f"--method-config names method(s) {sorted(unknown)} that are not in this run ({', '.join(names)})")
    # everything a run can trip over is checked before the store is created: methods and their configs,
    # settings, source pools, the outputs, the backbone
    checked = {name: methods_module.method_from_spec(name, overrides.get(name)) for name in names}
    settings = _settings(config)
    has_source = {}
    for setting in settings:
        setting.target_episode(config.seed, 0)
        for name in names if tuned is not None else ():  # every (setting, method) has a tuned entry
            tuned_overrides(tuned, config.tuned, setting.label, name)
        has_source[setting] = _source_available(setting)
        meta_trained = [n for n, m in checked.items() if m.protocol == "meta-trained"]
        if meta_trained and not has_source[setting]:
            raise UserError(f"method(s) {', '.join(meta_trained)} meta-train on a source pool, but {setting.label} has "
                            f"none; pass --source-task TASK or drop them from --methods")
    for path in dict.fromkeys([config.store, store_path or config.store]):  # the store, and this rank's shard
        check_writable(path, "--store")
    if config.out:
        check_writable(config.out, "--out")
    backbones = {(attn, config.backbone): load_backbone(config.backbone, device=device, attn_implementation=attn)
                 for attn in sorted({m.attn_implementation for m in checked.values()})}
    n_episodes = min(config.episodes, config.limit) if config.limit else config.episodes
    store = ResultsStore(store_path or config.store)
    # resume: episodes finished in the run's store or in any shard of an earlier (killed) torchrun job
    finished_elsewhere = [ResultsStore(path) for path in [config.store, *existing_shards(config.store)]
                          if Path(path) != store.path and Path(path).is_file()]
    run_id = store.start_run(dataclasses.asdict(config), device, config.seed)
    units = [(s, m, i) for s in settings for m in names for i in range(n_episodes)]
    mine = units[rank::world_size]
    method_instances: Dict[tuple, object] = {}

    def instance(setting, name):
        """The method of (setting, name), created once: label, run hash and the episodes already stored."""
        method = method_instances.get((setting, name))
        if method is None:
            chosen = tuned_overrides(tuned, config.tuned, setting.label, name) if tuned is not None else None
            method = methods_module.method_from_spec(name, {**(chosen or {}), **overrides.get(name, {})})
            method.label = method_label(method.name, overrides.get(name, {})) + ("[tuned]" if chosen is not None else "")
            method.run_hash = config_hash({"method": method.name, "config": method.config_dict(), "seed": config.seed,
                                           "backbone": config.backbone, "source_task": setting.source_task})
            method.done = set().union(*(other.done_indices(method.run_hash, method.label, config.backbone, setting.task,
                                                           setting.label) for other in [store, *finished_elsewhere]))
            method_instances[(setting, name)] = method
        return method

    def prepare(setting, name):
        """(method, backbone, source episodes) ready to evaluate: backbone loaded, meta-trained if it must be."""
        method = instance(setting, name)
        key = (method.attn_implementation, config.backbone)
        source_episodes = SourcePool(setting, config.seed) if has_source[setting] else None
        if method.protocol == "meta-trained" and not getattr(method, "meta_trained", False):
            log.info("meta-training %s for %s", method.label, setting.label)
            started = time.perf_counter()
            validation_episodes = lambda i, s=setting: s.source_episode(config.seed, i, pool="validation")  # noqa: E731
            method.meta_train(methods_module.MetaContext(backbones[key], config.seed, source_episodes,
                                                         autocast_dtype=autocast, validation_episodes=validation_episodes))
            # a method that loaded cached weights reports the wall time of the training that produced them
            method.meta_train_seconds = getattr(method, "meta_train_seconds", None) or time.perf_counter() - started
            log.info("meta-trained %s for %s: %.1f s", method.label, setting.label, method.meta_train_seconds)
            method.meta_trained = True
        return method, backbones[key], source_episodes

    if world_size > 1:  # meta-training is shared out round-robin, cached on disk, then loaded by every rank
        # only (setting, method) pairs with episodes left to evaluate: a finished cell is never meta-trained again
        pairs = [(s, m) for s, m in dict.fromkeys((s, m) for s, m, _ in units)
                 if instance(s, m).protocol == "meta-trained" and set(range(n_episodes)) - instance(s, m).done]
        for setting, name in pairs[rank::world_size]:
            prepare(setting, name)
        barrier()
    bar = Progress(len(mine), "episodes", every=config.progress_every, interval=config.progress_seconds)
    for setting, name, index in mine:
        if index in instance(setting, name).done:  # resume: stored in this store or a shard of a killed job
            bar.skip(1)
            continue
        method, backbone, source_episodes = prepare(setting, name)
        bar.set_current(f"{method.label} | {setting.label}")
        episode = setting.target_episode(config.seed, index)
        cache_before = backbone.embedding_cache_seconds
        record = methods_module.run_episode(method, episode, backbone, seed=episode_seed(config.seed, setting, index),
                                            autocast_dtype=autocast, source_episodes=source_episodes)
        record.pop("diverged", None)
        # one-off cost: embedding texts the run's frozen-embedding cache did not hold yet, kept out of wall_seconds
        record["embedding_cache_seconds"] = backbone.embedding_cache_seconds - cache_before
        record["wall_seconds"] -= record["embedding_cache_seconds"]
        record["meta_train_seconds"] = getattr(method, "meta_train_seconds", None)
        store.write_episode({
            **record, "run_id": run_id, "config_hash": method.run_hash, "method": method.label,
            "protocol": method.protocol if source_episodes is not None else "target-only", "backbone": config.backbone, "task": setting.task, "setting": setting.label,
            "n_way": episode.n_way, "k_shot": "-".join(map(str, setting.k_shot)) if isinstance(setting.k_shot, tuple) else str(setting.k_shot),
            "q_query": setting.q_query, "fold": setting.fold, "seed": config.seed, "episode_index": index,
            "fingerprint": episode.fingerprint, "extra": {"source_task": setting.source_task},
        })
        if record["status"] != "ok":
            log.warning("%s on %s episode %d: %s", method.label, setting.label, index, (record["error"] or "").splitlines()[0])
        bar.update(1)
    bar.close()
    store.end_run(run_id)
    for opened in (store, *finished_elsewhere):
        opened.close()
    return store.path


def cli_run(args) -> int:
    from .distributed import run_distributed_or_local

    config = build_config(args)
    store_path = run_distributed_or_local(config)
    if store_path and config.out:
        from .leaderboard import cli_leaderboard

        cli_leaderboard(argparse.Namespace(store=store_path, out=config.out, bootstrap=10000))
    return 0
