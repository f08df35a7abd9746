"""``fewshot-bench run --dry-run``: the cells of a run, their tokens and each method's estimated hours on this
machine, before anything runs.

1. **Cells first** (:func:`cell_sizes`): per setting, the mean support and query texts and tokens of its
   episodes 0..4 (tokenized with the backbone's tokenizer; no model runs), printed at once. Support tokens are
   padded as adaptation computes on them (texts x the longest), query tokens per prediction length bucket.
2. **Calibration** (:mod:`fewshot_bench.execution.calibration`): each cost shape once (methods that differ only in
   float config fields, e.g. SGG and two of its ablations, share one), warm, on the median episode (by tokens) of
   the run's cheapest setting: a cost line ``fixed + per support token + per query token``, cached per machine and
   environment, so a second dry run measures nothing.
3. **Estimates**: a cell's episode seconds are its mean tokens through the method's line, times its episodes
   (x restarts), so long-text tasks cost what they cost. One-off costs are apart, never charged per episode:
   the frozen-embedding cache fill (each text once per run and backbone, shared by the frozen methods and by the
   cells of one task/fold/pool; "at most" where the episodes, not the pool, bound the texts) and meta-training
   (once per meta-trained method and cell).

Not in the estimate: tuned configs (``--tuned``: methods are calibrated at the run's configs), meta-trained states
already on disk. Nothing is written but the calibration cache: no store, no leaderboard, no meta-training cache.
:func:`episode_rates` gives the per-(setting, method) episode seconds for progress ETAs and campaign queues.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from . import calibration
from ..methods.backbone import Backbone, load_backbone, resolve_device
from .calibration import CostLine, Probe, cache_file, cache_key, cached_line, episode_tokens, read_cache, write_cache
from ..data.loading import get_task_data
from ..store.environment import fingerprint
from ..episodes.sampling import Setting
from ..methods.api import Method
from ..core.outputs import print_table
from ..core.progress import Progress, log as progress_log
from .run_config import RunConfig, method_specs, settings_of
from .evaluate import autocast_dtype, episode_seed
from ..methods.spec import method_from_spec, parse_spec
from ..core.threads import set_threads

SAMPLED_EPISODES = 5  # episode indices 0..4 of each setting give its mean tokens


@dataclass
class CellSize:
    """Mean texts and tokens of a setting's sampled episodes (see :func:`calibration.episode_tokens`)."""
    setting: Setting
    support_texts: float
    query_texts: float
    support_tokens: float        # padded: texts x the longest text
    query_tokens: float          # padded per length bucket, as predicted
    texts: float                 # distinct texts per episode
    tokens_per_text: float       # unpadded tokens per distinct text
    pool_texts: int              # distinct texts of the evaluated pool
    sampled: List[Tuple[float, int]]  # (S + Q, episode index) of each sampled episode

    @property
    def tokens(self) -> float:
        return self.support_tokens + self.query_tokens


def cell_sizes(config: RunConfig, backbone: Backbone, settings: List[Setting], n_episodes: int
               ) -> Dict[Setting, CellSize]:
    """The :class:`CellSize` of each setting, from its episodes 0..min(5, episodes)-1."""
    pools: Dict[tuple, int] = {}
    sizes, memo = {}, {}
    for setting in settings:
        rows = []
        for index in range(min(SAMPLED_EPISODES, n_episodes)):
            episode = setting.target_episode(config.seed, index)
            rows.append((index, len(episode.support_texts), len(episode.query_texts),
                         *episode_tokens(backbone, episode, memo)))
        key = (setting.task, setting.fold, setting.pool)
        if key not in pools:
            data = get_task_data(setting.task, setting.fold)
            pools[key] = len({data.texts[row] for row in data.pool(setting.pool).rows})
        mean = [sum(column) / len(rows) for column in list(zip(*rows))[1:]]
        sizes[setting] = CellSize(setting, mean[0], mean[1], mean[2], mean[3], mean[5], mean[4] / max(mean[5], 1),
                                  pools[key], [(r[3] + r[4], r[0]) for r in rows])
    return sizes


def probe_of(config: RunConfig, settings: List[Setting], sizes: Dict[Setting, CellSize], backbone: Backbone) -> Probe:
    """The median episode (by tokens) of the cheapest setting (fewest mean tokens per episode)."""
    cheapest = min(settings, key=lambda s: sizes[s].tokens)
    ordered = sorted(sizes[cheapest].sampled)
    index = ordered[(len(ordered) - 1) // 2][1]
    episode = cheapest.target_episode(config.seed, index)
    support, query, _, _ = episode_tokens(backbone, episode)
    return Probe(cheapest, episode, episode_seed(config.seed, cheapest, index), config.seed, support, query,
                 cheapest.source_episodes(config.seed))


@dataclass
class Plan:
    """A run's cells, their sizes, the probe and (after :meth:`calibrate`) each method's :class:`CostLine`."""
    config: RunConfig
    device: str
    settings: List[Setting]
    specs: Dict[str, Dict[str, str]]
    n_episodes: int
    backbones: Dict[str, Backbone]
    sizes: Dict[Setting, CellSize]
    probe: Probe
    environment: Dict[str, str]
    methods: Dict[str, Method] = field(default_factory=dict)
    lines: Dict[str, CostLine] = field(default_factory=dict)
    cached: Set[str] = field(default_factory=set)  # specs whose line came from the calibration cache
    loads: Dict[str, str] = field(default_factory=dict)  # 1-minute load average while each line was measured
    shared: Dict[str, str] = field(default_factory=dict)  # spec: the first spec of its cost shape (itself if first)

    @property
    def autocast(self):
        return autocast_dtype(self.device, self.config.bf16)

    def backbone_for(self, attn: str) -> Backbone:
        if attn not in self.backbones:
            self.backbones[attn] = load_backbone(self.config.backbone, device=self.device, attn_implementation=attn)
        return self.backbones[attn]

    def calibrate(self, *, missing: bool = True, progress: bool = True) -> None:
        """Each method's line: from the calibration cache, else measured (``missing``) and cached; methods of one
        cost shape (:func:`calibration.cost_shape`) share the line of the first of them."""
        path, new, keys = cache_file(), {}, {}
        entries = read_cache(path)
        for spec, overrides in self.specs.items():
            method = self.methods[spec] = method_from_spec(parse_spec(spec)[0], overrides)
            keys[spec] = cache_key(method, self.config.backbone, self.probe, self.environment)
            self.shared[spec] = next(other for other in self.specs if keys.get(other) == keys[spec])
            line = cached_line(entries, keys[spec])
            if line is not None:
                self.lines[spec] = line
                self.cached.add(spec)
                self.loads[spec] = str(entries[keys[spec]].get("load", "?"))
        todo = [spec for spec in self.specs if spec not in self.lines and self.shared[spec] == spec] if missing else []
        bar = Progress(len(todo), "calibrating", unit="method", every=1, interval=0) if progress and todo else None
        for number, spec in enumerate(todo, 1):
            method = self.methods[spec]
            if bar:
                bar.set_current(spec)
                if bar.bar is None:
                    progress_log.info("calibrating %s (%d/%d)...", spec, number, len(todo))
            self.loads[spec] = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"
            line = self.lines[spec] = calibration.measure(method, self.backbone_for(method.attn_implementation),
                                                          self.probe, autocast=self.autocast)
            if line.error is None:
                new[keys[spec]] = {"method": spec, "backbone": self.config.backbone, "probe": self.probe.setting.label,
                                   "line": asdict(line), "environment": self.environment, "load": self.loads[spec]}
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        for spec, first in self.shared.items():
            if spec != first and spec not in self.lines and first in self.lines:
                self.lines[spec], self.loads[spec] = self.lines[first], self.loads[first]
        write_cache(path, new)

    def episode_seconds(self, setting: Setting, spec: str) -> Optional[float]:
        """Estimated seconds of one episode of (setting, spec); None when the method has no line."""
        line, size = self.lines.get(spec), self.sizes[setting]
        if line is None or line.error:
            return None
        return line.episode_seconds(size.support_tokens, size.query_tokens)

    def meta_seconds(self, setting: Setting, spec: str) -> float:
        """One-off meta-training seconds of (setting, spec) (0 for a method that is not meta-trained)."""
        line = self.lines.get(spec)
        return line.meta_train_seconds(self.sizes[setting].tokens) if line and not line.error else 0.0

    def cache_fills(self) -> Dict[Setting, Tuple[float, bool]]:
        """(seconds, at most) of the frozen-embedding cache fill first done in each cell, in run order: the texts of
        a task/fold/pool are embedded once per run and backbone, by whichever frozen method comes first."""
        rates: Dict[str, float] = {}
        for spec, line in self.lines.items():
            if not line.error and line.fill_per_token > 0:
                attn = self.methods[spec].attn_implementation
                rates[attn] = max(rates.get(attn, 0.0), line.fill_per_token)
        remaining: Dict[tuple, float] = {}
        fills = {}
        for setting in self.settings:
            size, key = self.sizes[setting], (setting.task, setting.fold, setting.pool)
            left = remaining.setdefault(key, float(size.pool_texts))
            bound = self.n_episodes * size.texts
            texts = min(left, bound)
            remaining[key] = left - texts
            fills[setting] = (sum(rates.values()) * texts * size.tokens_per_text, bool(rates) and bound < left)
        return fills


def make_plan(config: RunConfig, backbones: Optional[dict] = None) -> Plan:
    """The run's :class:`Plan` before calibration: settings, specs, cell sizes, probe (loads the backbone, or takes
    it from ``backbones``, {(name, device): backbone}, which plans of one command share and this one fills)."""
    settings = settings_of(config)
    specs = method_specs(config)
    n_episodes = min(config.episodes, config.limit) if config.limit else config.episodes
    device = resolve_device(config.device)
    backbones = {} if backbones is None else backbones
    if (config.backbone, device) not in backbones:
        backbones[(config.backbone, device)] = load_backbone(config.backbone, device=device)
    backbone = backbones[(config.backbone, device)]
    sizes = cell_sizes(config, backbone, settings, n_episodes)
    probe = probe_of(config, settings, sizes, backbone)
    return Plan(config, device, settings, specs, n_episodes, {backbone.attn_implementation: backbone}, sizes, probe,
                fingerprint(device, autocast_dtype(device, config.bf16)))


def episode_rates(config: RunConfig, *, calibrate_missing: bool = True) -> Dict[Tuple[str, str], float]:
    """{(setting label, method spec): estimated seconds of one episode} of the run, on this machine (the dry run's
    estimate). ``calibrate_missing=False``: only the methods already in the calibration cache (measures nothing).
    One-off costs (cache fill, meta-training) are not in these rates: :class:`Plan` has them."""
    plan = make_plan(config)
    plan.calibrate(missing=calibrate_missing, progress=False)
    rates = {(s.label, spec): plan.episode_seconds(s, spec) for s in plan.settings for spec in plan.specs}
    return {key: seconds for key, seconds in rates.items() if seconds is not None}


def _hours(seconds: Optional[float], at_most: bool = False) -> str:
    return "?" if seconds is None else ("<=" if at_most else "") + f"{seconds / 3600:.3g}"


def print_cells(plan: Plan) -> None:
    sampled = min(SAMPLED_EPISODES, plan.n_episodes)
    print(f"{len(plan.settings)} setting(s) x {len(plan.specs)} method(s) = {len(plan.settings) * len(plan.specs)} "
          f"cells; mean tokens of episodes 0..{sampled - 1} ({plan.config.backbone} tokenizer; support padded to its "
          f"longest text, queries per length bucket)")
    print_table(("setting", "episodes", "support texts", "support tokens", "query texts", "query tokens",
                 "pool texts"),
                [(s.label, str(plan.n_episodes * plan.config.restarts), f"{z.support_texts:.0f}",
                  f"{z.support_tokens:.0f}", f"{z.query_texts:.0f}", f"{z.query_tokens:.0f}", str(z.pool_texts))
                 for s, z in plan.sizes.items()])
    sys.stdout.flush()


def print_estimates(plan: Plan) -> None:
    episodes = plan.n_episodes * plan.config.restarts
    fills = plan.cache_fills()
    probe, unit = plan.probe, "CPU" if plan.device == "cpu" else "GPU"
    rows, cell_rows = [], []
    totals = {"episodes": 0.0, "fill": sum(seconds for seconds, _ in fills.values()), "meta": 0.0}
    for spec in plan.specs:
        line = plan.lines.get(spec)
        if line is None or line.error:
            rows.append((spec, f"failed: {line.error}" if line else "not calibrated", *["?"] * 7))
            continue
        seconds = sum(episodes * plan.episode_seconds(s, spec) for s in plan.settings)
        meta = sum(plan.meta_seconds(s, spec) for s in plan.settings)
        totals["episodes"] += seconds
        totals["meta"] += meta
        how = ("cached" if spec in plan.cached else "measured") if plan.shared.get(spec, spec) == spec else \
            f"as {plan.shared[spec]}"
        rows.append((spec, how + f" (load {plan.loads.get(spec, '?')})",
                     f"{line.fixed:.3g}",
                     f"{1000 * line.per_support_token:.3g}", f"{1000 * line.per_query_token:.3g}",
                     f"{1000 * line.fill_per_token:.3g}" if line.fill_per_token else "-",
                     f"{line.episode_seconds(probe.support_tokens, probe.query_tokens):.3g}", _hours(seconds),
                     _hours(meta) if meta else "-"))
    print(f"\ncalibration: {probe.setting.label} episode {probe.episode.index} (median by tokens of the cheapest "
          f"setting: {probe.support_tokens:.0f} support + {probe.query_tokens:.0f} query tokens); s/episode = fixed + "
          f"support tokens x s/1k support tok / 1000 + query tokens x s/1k query tok / 1000")
    print_table(("method", "calibration", "fixed s", "s/1k support tok", "s/1k query tok", "cache fill s/1k tok",
                 "s/episode (probe)", "episode h", "meta-train h (one-off)"), rows)
    for setting in plan.settings:
        per_method = [plan.episode_seconds(setting, spec) for spec in plan.specs]
        ep = [episodes * s if s is not None else None for s in per_method]
        meta = sum(plan.meta_seconds(setting, spec) for spec in plan.specs)
        fill, at_most = fills[setting]
        total = sum(s for s in ep if s is not None) + meta + fill
        cell_rows.append((setting.label, *[_hours(s) for s in ep], _hours(fill, at_most) if fill else "-",
                          _hours(meta) if meta else "-", _hours(total, at_most)))
    print(f"\nestimated {unit}-hours per cell ({episodes} episode(s) each; one-off costs in their own columns)")
    print_table(("setting", *plan.specs, "cache fill h", "meta-train h", "total h"), cell_rows)
    bounded = any(at_most for _, at_most in fills.values())
    one_off = totals["fill"] + totals["meta"]
    failed = [spec for spec in plan.specs if spec not in plan.lines or plan.lines[spec].error]
    threads = plan.environment.get("threads", "?")
    fill_text = ("at most " if bounded else "") + _hours(totals["fill"])
    print(f"\none-off: frozen-embedding cache fill {fill_text} h (each text once per run), meta-training "
          f"{_hours(totals['meta'])} h (once per meta-trained method and cell)")
    print(f"{len(plan.settings) * len(plan.specs)} cells, {episodes * len(plan.settings) * len(plan.specs)} episodes, "
          f"{'at most' if bounded else 'about'} {_hours(totals['episodes'] + one_off)} {unit}-hours "
          f"({_hours(totals['episodes'])} h of episodes + {_hours(one_off, bounded)} h one-off) on this machine: "
          f"{plan.environment.get('device_name')} ({plan.device}), {threads} torch thread(s), one process"
          + (f"; no estimate for {', '.join(failed)}" if failed else ""))
    measured = len([spec for spec in plan.lines if spec not in plan.cached and plan.shared.get(spec, spec) == spec])
    shared = len([spec for spec, first in plan.shared.items() if spec != first and spec not in plan.cached])
    print(f"calibration: {measured} method(s) measured, {len(plan.cached)} reused from the calibration cache "
          f"{cache_file()}, {shared} sharing the line of a method of the same cost shape (\"as ...\"; load: the "
          f"1-minute load average while measured, {os.cpu_count()} cores; delete the file to measure again)")
    print(f"nothing written but the calibration cache ({cache_file()}): no store, no leaderboard, no meta-training "
          f"cache")


def dry_run(config: RunConfig) -> int:
    """Print the run's cells at once, then each method's calibration and the estimated hours per method and cell."""
    set_threads(config.threads)
    plan = make_plan(config)
    print_cells(plan)
    plan.calibrate()
    print_estimates(plan)
    return 0
