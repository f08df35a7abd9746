"""``fewshot-bench tune``: the same hyperparameter budget for every method, on validation-pool episodes only.

Contract:
  * Cross-domain (``source_task``): a target task without a validation pool (every class of it is evaluated,
    e.g. fewrel_pubmed) is tuned on the validation pool of its source task, so nothing of the target domain is
    seen (N-way capped at that pool's class count); the chosen configs are filed under the cross-domain target
    setting that ``run --tuned`` looks up, and the entry names the setting it was validated on (``validated_on``).
  * Every method with a ``search_space`` gets ``trials`` Optuna trials (TPESampler, or GridSampler with
    ``sampler: grid``, both seeded with ``seed``, the same seed for every method); each trial is one config
    scored on the same ``episodes`` validation-pool episodes (indices 0..episodes-1 of ``seed``) with the
    same per-episode training seeds as ``run``. Target-pool episodes are never drawn.
  * A method without a search space is evaluated once with its defaults on the same episodes and marked
    untuned. ``--method-config METHOD.FIELD=VALUE`` pins a field: it leaves that method's space.
  * Score: mean query accuracy over the episodes (a failed or diverged episode scores 0). Choice: the best
    score; ties go to the cheaper config (``SearchSpace.cost``), then to the earlier trial.
  * ``prune``: Optuna's MedianPruner may stop a trial after some episodes (its row then says ``pruned`` and
    how many episodes it used); off by default, so every trial uses every episode.
  * Every trial is a row of the store's ``trials`` table (config, accuracy with its bootstrap 95% CI, wall
    time, mean per-episode figures such as SGG's term activity); the chosen configs are written to a YAML
    file that ``fewshot-bench run --tuned FILE`` reads (:mod:`fewshot_bench.execution.tuned`).
  * Resumable: the same command on the same store replays each study's seeded sampler and reads back every trial
    the store already holds for that study (same trial number and config) instead of running it, so an
    interrupted tune loses at most the trial in flight and ends with the configs an uninterrupted one chooses.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from ..analysis.stats import bootstrap_ci
from ..core.config import option, validate
from ..core.errors import UserError
from ..core.hashing import config_hash
from ..core.interrupts import watch_sigint
from ..core.outputs import check_outputs
from ..data.loading import get_task_data
from ..episodes.sampling import Setting, episode_set_sha256
from ..methods.backbone import resolve_device
from ..methods.spec import method_from_spec, parse_method_config
from ..store.results import ResultsStore
from .evaluate import Executor, Unit, evaluate, sealed_worker
from .run_config import (ISOLATIONS, RunConfig, _check_methods_value, check_device, default_isolation, settings_of,
                         spec_list)

log = logging.getLogger(__name__)
SAMPLERS = ("tpe", "grid")
FIGURES = ("final_loss",)  # the harness's figures a trial reports, besides every figure its method declares


@dataclass
class TuneConfig:
    tasks: List[str] = option(factory=list, help="task names (their validation pools are used)")
    source_task: Optional[str] = option(None, help="cross-dataset: the source task of every setting (its "
                                                   "validation pool scores trials where the target has none)")
    methods: object = option("all", help="method names or 'all' (every registered method)")
    n_way: List = option(factory=lambda: [5], help="classes per episode (list)")
    k_shot: List = option(factory=lambda: [1, 5], help="shots per class (list)")
    query: int = option(15, help="queries per class")
    episodes: int = option(10, help="validation episodes every trial is scored on")
    trials: int = option(20, help="configurations per method (the same for every method)")
    sampler: str = option("tpe", help="tpe (Optuna TPESampler) or grid (GridSampler; ranges must be discrete)")
    prune: bool = option(False, help="let Optuna's MedianPruner stop hopeless trials early (fewer episodes)")
    fold: int = option(1, help="class-split fold (1-based)")
    seed: int = option(0, help="episode, training and sampler seed")
    backbone: str = option("minilm", help="backbone name, Hugging Face id or local path")
    device: str = option("auto", help="auto, cpu, cuda, cuda:N")
    store: str = option("runs/results.sqlite", help="SQLite results store (trials go to its trials table)")
    out: str = option("runs/tuned.yaml", help="YAML file of the chosen configs (for run --tuned)")
    method_config: List[str] = option(factory=list, help="METHOD.FIELD=VALUE: pin a field (it leaves the space)")
    isolation: str = option(help="where methods' code runs, as for run (not part of the study's identity)",
                            factory=default_isolation, choices=ISOLATIONS)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise UserError(f"tune: sampler is '{self.sampler}'; use one of {', '.join(SAMPLERS)}")
        validate(self, "tune")
        for name in ("episodes", "trials", "query"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"tune: {name} must be >= 1, got {getattr(self, name)}")
        _check_methods_value(self.methods, "tune: methods")
        check_device(self.device, "tune")


def _optuna():
    try:  # an optional extra (fewshot-bench[tune]): imported when tune runs, with a one-line error without it
        import optuna
    except ImportError:
        raise UserError("fewshot-bench tune needs Optuna: pip install 'fewshot-bench[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _score(record: dict) -> float:
    return float(record["accuracy"]) if record["status"] == "ok" else 0.0


class _Study:
    """One method on one validation setting: its trials, scored on the shared episodes, stored as they finish."""

    def __init__(self, tuner: "Tuner", setting, name: str, base: Dict[str, str]):
        self.tuner, self.setting, self.name, self.base = tuner, setting, name, base
        method = method_from_spec(name, base)
        space = type(method).search_space
        if space is not None:
            space.check(type(method).config_class, name)
            space = space.without(*base)
        self.space = space if space is not None and space.fields else None
        self.results: List[dict] = []

    def stored(self, overrides: Dict[str, object], number: int) -> Optional[dict]:
        """The store's row of trial ``number`` of this study, if it scored these ``overrides`` to the end: a tune
        run again after an interruption replays the seeded sampler and reads its finished trials back."""
        for row in self.tuner.store.trials(study=self.tuner.study_id, method=self.name, setting=self.setting.label,
                                           trial=number):
            if row["state"] != "pruned" and all(row["config"].get(k) == v for k, v in overrides.items()):
                return row
        return None

    def evaluate(self, overrides: Dict[str, object], number: int, trial=None) -> float:
        """Score one config on the study's episodes through the executor (as ``run`` evaluates them: the same
        training seeds, meta-training with its cache, timings); store the trial row; return the mean accuracy.
        A trial the store already holds (:meth:`stored`) is read back, not run again."""
        tuner, setting = self.tuner, self.setting
        row = self.stored(overrides, number)
        if row is not None:
            self.results.append({**row, "overrides": overrides})
            log.info("%s %s trial %d: accuracy %.4f (stored, not run again)", setting.label, self.name, number,
                     row["accuracy"])
            return row["accuracy"]
        executor, values = tuner.executor, {**self.base, **overrides}
        cell = executor.cell(setting, self.name, values)
        if cell.method.protocol == "meta-trained" and cell.source_episodes is None:
            raise UserError(f"method '{self.name}' meta-trains on a source pool, but {setting.label} has none")
        executor.prepare_cell(cell)
        state, scores, records = "complete", [], []
        if cell.meta_error is not None:  # the method's failure scores this config 0; a real Ctrl-C stops tune
            log.warning("%s on %s: %s; the trial scores 0", self.name, setting.label,
                        cell.meta_error.splitlines()[0])
            scores, state = [0.0] * tuner.config.episodes, "failed"
        units = [Unit(setting, self.name, i) for i in range(tuner.config.episodes)] if cell.meta_error is None else []
        for i, record in enumerate(evaluate(executor, units, overrides=values)):
            records.append(record.values)
            scores.append(_score(record.values))
            if trial is not None and tuner.config.prune:
                trial.report(sum(scores) / len(scores), i)
                if trial.should_prune():
                    state = "pruned"
                    break
        method = cell.method
        executor.release(cell)  # a trial's meta-trained state is not needed again (it is cached on disk)
        accuracy = sum(scores) / len(scores)
        low, high = bootstrap_ci(scores)
        config = method.config_dict()
        row = {"study": tuner.study_id, "method": self.name, "backbone": tuner.config.backbone, "task": setting.task,
               "setting": setting.label, "seed": tuner.config.seed, "trial": number,
               "state": state if self.space is not None else "untuned", "config": config,
               "cost": self.space.cost_of(config) if self.space is not None else None,
               "episodes": len(scores), "episode_set_sha256": tuner.episode_set(setting, len(scores)),
               "accuracy": accuracy, "acc_ci95_low": low, "acc_ci95_high": high,
               "wall_seconds": sum(r["wall_seconds"] or 0.0 for r in records) + (cell.meta_train_seconds or 0.0),
               "figures": _mean_figures(records)}
        tuner.store.write_trial(row)
        self.results.append({**row, "overrides": overrides})
        log.info("%s %s trial %d: accuracy %.4f [%.4f, %.4f] %s", setting.label, self.name, number, accuracy, low,
                 high, overrides)
        if state == "pruned":
            raise tuner.optuna.TrialPruned()
        return accuracy

    def run(self) -> dict:
        """Run the budget and return the chosen entry of the tuned-config file."""
        optuna, cfg = self.tuner.optuna, self.tuner.config
        if self.space is None:
            self.evaluate({}, 0)
        else:
            if cfg.sampler == "grid":
                grid = self.space.grid()
                if grid is None:
                    raise UserError(f"tune: {self.name}'s search space has float ranges; use --sampler tpe")
                sampler = optuna.samplers.GridSampler(grid, seed=cfg.seed)
            else:
                sampler = optuna.samplers.TPESampler(seed=cfg.seed)
            study = optuna.create_study(direction="maximize", sampler=sampler,
                                        pruner=optuna.pruners.MedianPruner() if cfg.prune else optuna.pruners.NopPruner())
            study.optimize(lambda trial: self.evaluate(self.space.suggest(trial), trial.number, trial),
                           n_trials=cfg.trials, catch=())
        done = [r for r in self.results if r["state"] != "pruned"]
        best = min(done, key=lambda r: (-r["accuracy"], r["cost"] or 0.0, r["trial"]))
        self.tuner.store.mark_chosen(self.tuner.study_id, self.name, self.setting.label, best["trial"])
        chosen = {name: best["config"][name] for name in {**self.base, **best["overrides"]}}  # typed values
        return {"tuned": self.space is not None, "overrides": chosen,
                "config": best["config"], "val_accuracy": round(best["accuracy"], 4),
                "val_ci95": [round(best["acc_ci95_low"], 4), round(best["acc_ci95_high"], 4)],
                "trials": len(self.results), "episodes": cfg.episodes, "trial": best["trial"],
                "figures": best["figures"]}


def _mean_figures(records: List[dict]) -> Dict[str, float]:
    """Means over the ok episodes of :data:`FIGURES` and of the method's own figures (e.g. SGG's term activity)."""
    ok = [r for r in records if r["status"] == "ok"]
    named = [{**{name: r.get(name) for name in FIGURES}, **(r.get("figures") or {})} for r in ok]
    means = {}
    for name in dict.fromkeys(name for figures in named for name in figures):
        values = [figures[name] for figures in named if figures.get(name) is not None]
        if values:
            means[name] = sum(values) / len(values)
    return means


class Tuner:
    """Shared state of a tune run: settings, backbones, validation episodes, the store."""

    def __init__(self, config: TuneConfig):
        self.optuna = _optuna()
        self.config = config
        run_like = RunConfig(tasks=config.tasks, methods=spec_list(config.methods), n_way=config.n_way,
                             k_shot=config.k_shot, query=config.query, fold=config.fold, pool="validation",
                             seed=config.seed, backbone=config.backbone, isolation=config.isolation,
                             source_task=config.source_task)
        # (target setting label the chosen configs are filed under, the validation setting that scores the trials)
        self.settings = [(target_label(s), validation_setting(s)) for s in settings_of(run_like)]
        for _, setting in self.settings:  # fail fast on a task without a usable validation pool
            setting.target_episode(config.seed, 0)
        budget = {k: v for k, v in dataclasses.asdict(config).items()
                  if k not in ("store", "out", "device", "isolation") and not (k == "source_task" and v is None)}
        self.study_id = config_hash(budget)[:16]
        device = resolve_device(config.device)
        self.worker = sealed_worker(run_like, device, [config.store])  # trials run in it, as run's episodes do
        self.executor = Executor(run_like, device, worker=self.worker)  # autocast as run's (bf16 on GPUs)
        self._episodes: Dict[str, list] = {}
        self.store = ResultsStore(config.store)

    def episodes(self, setting) -> list:
        """The validation-pool episodes every trial of ``setting`` is scored on."""
        if setting.label not in self._episodes:
            self._episodes[setting.label] = [setting.target_episode(self.config.seed, i)
                                             for i in range(self.config.episodes)]
        return self._episodes[setting.label]

    def episode_set(self, setting, count: int) -> str:
        return episode_set_sha256([e.fingerprint for e in self.episodes(setting)[:count]])


def target_label(setting: Setting) -> str:
    """The setting label ``run`` uses for the target pool of a tuned (validation) setting."""
    return dataclasses.replace(setting, pool="target").label


def validation_setting(setting: Setting) -> Setting:
    """The validation setting that scores trials for ``setting`` (pool validation): itself, or, for a cross-domain
    target task without validation classes, the same shape on its source task's validation pool, N-way capped at
    that pool's class count (fewrel's holds 3 relations: its episodes are 3-way)."""
    source = setting.source_task
    if not source or source == setting.task or len(get_task_data(setting.task, setting.fold).pools["validation"].rows):
        return setting
    classes = len(get_task_data(source, 1).pools["validation"].classes)
    n_way = setting.n_way if setting.n_way == "all" or int(setting.n_way) <= classes else classes
    return dataclasses.replace(setting, task=source, source_task=None, fold=1, n_way=n_way)


def tune(config: TuneConfig) -> dict:
    """Run every method's budget on every validation setting; write and return the tuned-config mapping."""
    names = spec_list(config.methods)
    pinned = parse_method_config(config.method_config)  # same METHOD.FIELD=VALUE syntax as run
    unknown = set(pinned) - set(names)
    if unknown:
        raise UserError(f"--method-config names method(s) {sorted(unknown)} that are not in this tune run")
    for name in names:  # every method and pinned config checked before the store is created
        method_from_spec(name, pinned.get(name, {}))
    inputs = [(name.rpartition(":")[0], f"the method file of {name}") for name in names if ":" in name]
    check_outputs([(config.store, "--store"), (config.out, "--out")], inputs)
    tuner = Tuner(config)
    studies = [(target, _Study(tuner, s, name, pinned.get(name, {}))) for target, s in tuner.settings for name in names]
    chosen: Dict[str, Dict[str, dict]] = {}
    try:
        with watch_sigint():  # a method raising KeyboardInterrupt fails its episode; a real Ctrl-C stops the study
            for target, study in studies:
                entry = study.run()
                if target != target_label(study.setting):
                    entry["validated_on"] = study.setting.label
                chosen.setdefault(target, {})[study.name] = entry
    finally:
        tuner.store.close()
        if tuner.worker is not None:
            tuner.worker.close()
    budget = {"study": tuner.study_id, "trials": config.trials, "episodes": config.episodes, "sampler": config.sampler,
              "prune": config.prune, "seed": config.seed, "pool": "validation", "backbone": config.backbone,
              "query": config.query, "fold": config.fold,
              **({"source_task": config.source_task} if config.source_task else {}),
              **({"pinned": list(config.method_config)} if config.method_config else {})}
    document = {"budget": budget, "settings": chosen}
    if config.out:
        Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        Path(config.out).write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return document
