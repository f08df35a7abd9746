"""Run configuration: the :class:`RunConfig` of ``fewshot-bench run`` from a suite, a ``--config`` YAML and
flags (in that order of precedence), and what it expands to: settings and method specs."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from ..core.config import from_mapping, option, read_yaml, validate
from ..data.loading import data_dir
from ..episodes.sampling import Setting, parse_n_way, parse_shot
from ..core.errors import UserError
from ..core.registry import METHODS, did_you_mean
from ..methods.spec import parse_method_config, parse_spec, split_specs
from ..data.cards import BUILTIN_TASKS_DIR, get_task_config

log = logging.getLogger(__name__)
SUITES_DIR = BUILTIN_TASKS_DIR / "suites"


@dataclass
class SuiteSetting:
    """One entry of a suite's ``settings`` list: a target task, and where it differs from the run's values, its
    source task, episode shapes and folds."""
    task: str = option(help="target task")
    source_task: Optional[str] = option(None, help="draw source-pool data from this task (cross-dataset)")
    n_way: Optional[List] = option(None, help="classes per episode (list; 'all': every class of the pool); "
                                              "default: the run's n_way")
    k_shot: Optional[List] = option(None, help="shots per class (list); default: the run's k_shot")
    folds: object = option(None, help="class-split folds (list), or 'all' (every fold of the task's card); "
                                      "default: the run's folds")


ISOLATIONS = ("sandboxed", "process", "in-process")
ISOLATION_ENV = "FEWSHOT_BENCH_ISOLATION"


def default_isolation() -> str:
    """``$FEWSHOT_BENCH_ISOLATION`` (one of :data:`ISOLATIONS`), else ``sandboxed``: the isolation of a run that
    names none (e.g. ``in-process`` on a machine that only runs trusted methods, to skip the worker's start)."""
    value = os.environ.get(ISOLATION_ENV, "").strip()
    if value and value not in ISOLATIONS:
        raise UserError(f"${ISOLATION_ENV}={value!r} is not an isolation level; set it to one of "
                        f"{', '.join(ISOLATIONS)} or unset it")
    return value or "sandboxed"


@dataclass
class RunConfig:
    """What one ``fewshot-bench run`` evaluates and where it writes (suite YAML, --config YAML and flags)."""
    tasks: List[str] = option(factory=list, help="task names (target tasks)")
    settings: List[dict] = option(factory=list, help="explicit settings: {task, source_task, n_way, k_shot, folds} "
                                                     "(each but task defaults to the run's value)")
    source_task: Optional[str] = option(None, help="draw source-pool data from this task for every target task")
    methods: object = option("all", help="method specs (NAME or NAME(field=value,...)) or 'all' (every registered "
                                         "method except opt-in ones: setfit, icl)")
    n_way: List = option(factory=lambda: [5], help="classes per episode (list), or 'all'")
    k_shot: List = option(factory=lambda: [1, 5], help="shots per class (list); 'MIN-MAX' for variable shot")
    query: int = option(15, help="queries per class", low=1)
    episodes: int = option(20, help="episodes per task x setting", low=1)
    limit: Optional[int] = option(None, help="smoke runs: at most this many episodes per task x setting", low=1)
    fold: int = option(1, help="class-split fold (1-based; a task with fewer folds uses its last)", low=1)
    folds: object = option(None, help="class-split folds (list), or 'all' (every fold of each task's card); "
                                      "default: [fold]")
    pool: str = option("target", help="pool of the evaluated episodes: target, or validation to choose "
                                      "hyperparameters without seeing target classes", choices=("target", "validation"))
    seed: int = option(0, help="episode and training seed", low=0)
    restarts: int = option(1, help="training restarts per episode: each episode is trained with this many training "
                                   "seeds (restart 0 uses the usual one), one stored row each", low=1)
    backbone: str = option("minilm", help="backbone name, Hugging Face id or local path")
    device: str = option("auto", help="auto, cpu, cuda, cuda:N")
    bf16: bool = option(True, help="bf16 autocast on GPUs that support it")
    threads: int = option(0, help="torch CPU threads per process (0: $OMP_NUM_THREADS if set, else the cores not "
                                  "busy with other work divided by this job's processes on the machine)", low=0)
    isolation: str = option(help="where methods' code runs: sandboxed (a sealed worker process confined with "
                                 "Landlock; falls back to process where Landlock is unavailable), process (a sealed "
                                 "worker process), in-process (debugging, trusted methods); default: "
                                 f"${ISOLATION_ENV} if set, else sandboxed", factory=default_isolation,
                            choices=ISOLATIONS)
    episode_timeout: Optional[float] = option(None, help="seconds a method's code may take on one episode in the "
                                                         "sealed worker; past it the episode fails and the worker "
                                                         "restarts (0: no limit; unset: 20x the dry run's estimate for "
                                                         "the method and cell, at least 600, where this machine has "
                                                         "calibrated it, else 3600)", low=0)
    store: str = option("runs/results.sqlite", help="SQLite results store")
    out: str = option("runs/leaderboard.csv", help="leaderboard CSV written at the end ('' to skip)")
    method_config: List[str] = option(factory=list, help="METHOD.FIELD=VALUE overrides of method configs (the same as "
                                                          "METHOD(FIELD=VALUE) in methods)")
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
        _check_methods_value(self.methods, "run config: methods")
        self.n_way = [parse_n_way(v) for v in self.n_way]
        self.k_shot = [parse_shot(v) for v in self.k_shot]
        self.folds = parse_folds(self.folds, "run config: folds")
        self.settings = [from_mapping(SuiteSetting, s, f"run config: settings[{i}]") for i, s in enumerate(self.settings)]
        for i, s in enumerate(self.settings):
            s.n_way = None if s.n_way is None else [parse_n_way(v) for v in _as_list(s.n_way)]
            s.k_shot = None if s.k_shot is None else [parse_shot(v) for v in _as_list(s.k_shot)]
            s.folds = parse_folds(s.folds, f"run config: settings[{i}].folds")
        check_device(self.device, "run config")


def check_device(device, where: str) -> None:
    """Refuse a device name other than auto, cpu, mps, cuda, cuda:N (before anything is loaded or written)."""
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise UserError(f"{where}: device '{device}' is not one of auto, cpu, mps, cuda, cuda:N")


def _check_methods_value(methods, where: str) -> None:
    """``methods`` must be 'all', a comma-separated string of specs or a list of them, naming at least one."""
    if isinstance(methods, str):
        specs = split_specs(methods)
    elif isinstance(methods, (list, tuple)) and all(isinstance(m, str) for m in methods):
        specs = [m for m in methods if m.strip()]
    else:
        raise UserError(f"{where}: expected method names (a list, or 'all'), got {methods!r}; "
                        f"e.g. methods: [protonet, full_ft]")
    if not specs:
        raise UserError(f"{where}: names no method; give at least one, e.g. protonet, or 'all'")


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def parse_folds(value, where: str):
    """None, 'all', or a list of 1-based fold numbers (a single number is a one-element list)."""
    if value is None or value == "all":
        return value
    folds = _as_list(value)
    if not folds or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in folds):
        raise UserError(f"{where}: {value!r} is not a list of folds; use 1-based fold numbers (e.g. [1, 2, 3]) or 'all'")
    return folds


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


def _flag_list(value, flag: str, split=None) -> Optional[list]:
    """The items of a comma-separated flag (None when not given); a flag given with no item is refused."""
    if value is None:
        return None
    items = (split or _split)(value)
    if not items:
        raise UserError(f"{flag} '{value}' names nothing; give a comma-separated list, e.g. {flag} protonet")
    return items


def build_config(options: Mapping[str, Any]) -> RunConfig:
    """The run configuration of ``fewshot-bench run``'s option values (``options``: {option: value}, as its parser
    names them, e.g. ``n_way``; a missing or None option is not given): suite (default 'default') < ``config``
    YAML < the other options; a suite's ``demo`` block applies without a data dir (unless the options or the
    ``config`` file name tasks). The suite's own method_config entries apply to the methods of the run only
    (``--methods protonet`` leaves the suite's maml.meta_steps aside)."""
    given = options.get
    config_file, suite = given("config"), given("suite")
    values = {}
    if config_file:
        values = read_yaml(config_file, "--config") or {}
        if not isinstance(values, dict):
            raise UserError(f"--config {config_file}: expected a mapping of run options (e.g. 'episodes: 5'), "
                            f"got a {type(values).__name__}")
        if isinstance(values.get("tasks"), str):
            values["tasks"] = _split(values["tasks"])
        if isinstance(values.get("methods"), str) and values["methods"] != "all":
            values["methods"] = split_specs(values["methods"])
        # the file on its own is a valid run config, even where flags override some of its values
        from_mapping(RunConfig, {k: v for k, v in values.items() if k != "demo"}, f"--config {config_file}")
    tasks_given = bool(_flag_list(given("tasks"), "--tasks")) or bool(values.get("tasks") or values.get("settings"))
    merged = _with_demo(load_suite(suite or "default"), tasks_given)
    suite_method_config = list(merged.pop("method_config", None) or [])
    if values.get("tasks") and "settings" not in values:  # the file's tasks replace the suite's settings
        merged.pop("settings", None)
    merged.update(_with_demo(values, tasks_given))
    flags = {"tasks": _flag_list(given("tasks"), "--tasks"),
             "methods": _flag_list(given("methods"), "--methods", split_specs),
             "n_way": _split(given("n_way")) or None, "k_shot": _split(given("k_shot")) or None,
             **{key: given(key) for key in ("query", "episodes", "limit", "fold", "pool", "seed", "restarts",
                                            "backbone", "device", "store", "out", "source_task", "tuned", "threads",
                                            "isolation", "episode_timeout")}}
    if flags["tasks"]:
        merged.pop("settings", None)
    overridden = {key for key in ("n_way", "k_shot") if flags[key] is not None}
    overridden |= {"folds"} if given("fold") else set()
    merged["settings"] = [{k: v for k, v in s.items() if k not in overridden} if isinstance(s, dict) else s
                          for s in merged.get("settings", [])]  # flags override the suite's per-setting values too
    if given("fold"):
        merged.pop("folds", None)
    merged.update({k: v for k, v in flags.items() if v is not None})
    _check_methods_value(merged.get("methods", "all"), f"{config_file or 'suite'}: methods")
    if not isinstance(merged.get("method_config", []), list):
        raise UserError(f"{config_file or 'suite'}: method_config must be a list of METHOD.FIELD=VALUE strings")
    run_methods = {parse_spec(spec)[0] for spec in spec_list(merged.get("methods", "all"))}
    suite_method_config = [item for item in suite_method_config
                           if str(item).partition(".")[0] in run_methods]  # the suite's, for methods of this run
    merged["method_config"] = (suite_method_config + list(merged.get("method_config", []))
                               + list(given("method_config") or []))
    return from_mapping(RunConfig, merged, f"{config_file or 'suite ' + repr(suite or 'default')} + flags")


def _folds_of(folds, config: RunConfig, card_folds: int) -> List[int]:
    """Folds to run for a task whose card has ``card_folds``: 'all', a list (folds beyond the card's are left
    out), or the run's ``fold`` (a task with fewer folds uses its last)."""
    if folds == "all":
        return list(range(1, card_folds + 1))
    if folds is None:
        return [min(config.fold, card_folds)]
    return [f for f in folds if f <= card_folds]


def settings_of(config: RunConfig) -> List[Setting]:
    """Every (task, source task) x fold x N x K setting the run evaluates, in run order."""
    entries = config.settings or [SuiteSetting(t, config.source_task) for t in config.tasks]
    if not entries:
        raise UserError("no tasks to run; pass --tasks NAME[,NAME] or --suite NAME")
    settings = []
    for entry in entries:
        card_folds = get_task_config(entry.task).pools.folds
        for fold in _folds_of(entry.folds if entry.folds is not None else config.folds, config, card_folds):
            for n_way in entry.n_way or config.n_way:
                for k_shot in entry.k_shot or config.k_shot:
                    settings.append(Setting(entry.task, n_way, k_shot, config.query, fold, entry.source_task,
                                            config.pool))
    return settings


def method_specs(config: RunConfig) -> Dict[str, Dict[str, str]]:
    """{method spec: config overrides} of the run: each spec's own ``(field=value)`` plus ``method_config``."""
    specs = spec_list(config.methods)
    extra = parse_method_config(config.method_config)
    names = {spec: parse_spec(spec)[0] for spec in specs}
    unknown = set(extra) - set(names.values())
    if unknown:
        raise UserError(f"--method-config names method(s) {sorted(unknown)} that are not in this run ({', '.join(specs)})")
    return {spec: {**parse_spec(spec)[1], **extra.get(names[spec], {})} for spec in specs}


def spec_list(methods) -> List[str]:
    """The method specs of a ``methods`` value: 'all' (:func:`default_method_names`), "a,b(x=1)" or a list."""
    if methods in ("all", ["all"]):
        return default_method_names()
    return split_specs(methods) if isinstance(methods, str) else [str(v).strip() for v in methods]


def default_method_names() -> List[str]:
    """What ``--methods all`` runs: every registered method except the opt-in ones (``Method.opt_in``)."""
    return [name for name in METHODS.names() if not getattr(METHODS.get(name), "opt_in", False)]
