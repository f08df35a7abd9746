"""``fewshot-bench run --dry-run``: the cells, episodes and device-hours of a run, before anything is written.

Calibration: each method of the run adapts to one warm-up and one timed episode of the run's smallest setting
(fewest support + query texts) and, when the run has a setting with more texts, of its largest one, with
adaptation and query prediction timed apart. Adaptation seconds are affine in the support texts (a fixed
per-step cost, e.g. the optimizer over every parameter, plus a cost per text), prediction seconds affine in the
query texts; both lines go through the two calibration points (through the origin and the one point when there
is one setting). A method's hours are the sum over its cells of episodes × that estimate. Meta-training is not
in the estimate (the method is calibrated from the pretrained weights), nor are tuned configs. Nothing is written: no store, no leaderboard,
no meta-training cache.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List

import torch

from .backbone import load_backbone, resolve_device
from .harness import predict_queries
from .methods import EpisodeContext, Method
from .outputs import print_table
from .run_config import RunConfig, method_specs, settings_of
from .runner import autocast_dtype, episode_seed
from .spec import method_from_spec, parse_spec
from .threads import set_threads


@dataclass
class Timing:
    """Seconds of one timed episode, adaptation and query prediction apart, and its support and query texts."""
    adapt_seconds: float
    predict_seconds: float
    support: int
    queries: int


@dataclass
class Calibration:
    """Per-episode seconds as lines through one or two :class:`Timing` points (see the module docstring)."""
    points: List[Timing]

    @staticmethod
    def _line(xs, ys, x: float) -> float:
        if len(xs) == 1 or xs[0] == xs[1]:
            return ys[0] * x / xs[0]
        slope = max(0.0, (ys[1] - ys[0]) / (xs[1] - xs[0]))  # noise must not make more texts cheaper
        return max(0.0, ys[0] + slope * (x - xs[0]))

    def episode_seconds(self, support: int, queries: int) -> float:
        p = self.points
        return (self._line([t.support for t in p], [t.adapt_seconds for t in p], support)
                + self._line([t.queries for t in p], [t.predict_seconds for t in p], queries))


def time_episode(method: Method, episode, backbone, *, seed: int, autocast, source_episodes) -> Timing:
    """Time ``method`` on ``episode`` (after one untimed warm-up run of it), adaptation and prediction apart."""
    times = []
    for _ in range(2):
        backbone.clear_caches()
        torch.manual_seed(seed)
        ctx = EpisodeContext(backbone, episode, seed, autocast_dtype=autocast, source_episodes=source_episodes)
        started = time.perf_counter()
        predictor = method.adapt(ctx)
        adapted = time.perf_counter()
        predict_queries(predictor, backbone, episode.query_texts, episode.n_way)
        times.append((adapted - started, time.perf_counter() - adapted))
        for model in ctx.models:
            backbone.recycle(model)
    adapt_seconds, predict_seconds = times[-1]
    return Timing(adapt_seconds, predict_seconds, len(episode.support_texts), len(episode.query_texts))


def dry_run(config: RunConfig) -> int:
    """Print the run's cells (setting x method), its episodes and each method's estimated device-hours."""
    set_threads(config.threads)
    settings = settings_of(config)
    specs = method_specs(config)
    n_episodes = min(config.episodes, config.limit) if config.limit else config.episodes
    sizes = {}
    for setting in settings:
        episode = setting.target_episode(config.seed, 0)
        sizes[setting] = (len(episode.support_texts), len(episode.query_texts))
    print_table(("setting", "support texts", "query texts", "episodes"),
                [(s.label, str(a), str(b), str(n_episodes)) for s, (a, b) in sizes.items()])
    smallest = min(settings, key=lambda s: sum(sizes[s]))
    largest = max(settings, key=lambda s: sum(sizes[s]))
    probes = [smallest] if sum(sizes[largest]) == sum(sizes[smallest]) else [smallest, largest]
    device = resolve_device(config.device)
    autocast = autocast_dtype(device, config.bf16)
    backbones: Dict[str, object] = {}
    rows: List[tuple] = []
    unit = "CPU" if device == "cpu" else "GPU"
    for spec, overrides in specs.items():
        method = method_from_spec(parse_spec(spec)[0], overrides)
        attn = method.attn_implementation
        if attn not in backbones:
            backbones[attn] = load_backbone(config.backbone, device=device, attn_implementation=attn)
        calibration = Calibration([time_episode(method, probe.target_episode(config.seed, 0), backbones[attn],
                                                seed=episode_seed(config.seed, probe, 0), autocast=autocast,
                                                source_episodes=probe.source_episodes(config.seed))
                                   for probe in probes])
        seconds = sum(n_episodes * calibration.episode_seconds(*sizes[s]) for s in settings)
        note = " + meta-training" if method.protocol == "meta-trained" else ""
        rows.append((spec, str(len(settings)), str(n_episodes * len(settings)),
                     f"{calibration.episode_seconds(*sizes[smallest]):.2f}", f"{seconds / 3600:.3g}{note}"))
    print()
    print_table(("method", "cells", "episodes", f"s/episode ({smallest.label})", f"estimated {unit}-hours"), rows)
    total = sum(float(r[4].split()[0]) for r in rows)
    print(f"\n{len(settings) * len(specs)} cells, {n_episodes * len(settings) * len(specs)} episodes, about "
          f"{total:.3g} {unit}-hours on this machine ({device}, {torch.get_num_threads()} thread(s)); nothing written")
    return 0
