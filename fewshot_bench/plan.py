"""``fewshot-bench run --dry-run``: the cells, episodes and device-hours of a run, before anything is written.

Calibration: each method of the run adapts to one warm-up and one timed episode of the run's smallest setting
(fewest support + query texts), with adaptation and query prediction timed apart. An episode of another
setting is estimated as ``adapt × support texts / calibration support texts + predict × query texts /
calibration query texts`` (both scale with the tokens a step or a prediction pass sees); a method's hours are
the sum over its cells of episodes × that estimate. Meta-training is not in the estimate (the method is
calibrated from the pretrained weights), nor are tuned configs. Nothing is written: no store, no leaderboard,
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
class Calibration:
    """Seconds of one episode of the calibration setting, split into adaptation and query prediction."""
    adapt_seconds: float
    predict_seconds: float
    support: int
    queries: int

    def episode_seconds(self, support: int, queries: int) -> float:
        return self.adapt_seconds * support / self.support + self.predict_seconds * queries / self.queries


def calibrate(method: Method, episode, backbone, *, seed: int, autocast, source_episodes) -> Calibration:
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
    return Calibration(adapt_seconds, predict_seconds, len(episode.support_texts), len(episode.query_texts))


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
        calibration = calibrate(method, smallest.target_episode(config.seed, 0), backbones[attn],
                                seed=episode_seed(config.seed, smallest, 0), autocast=autocast,
                                source_episodes=smallest.source_episodes(config.seed))
        seconds = sum(n_episodes * calibration.episode_seconds(*sizes[s]) for s in settings)
        note = " + meta-training" if method.protocol == "meta-trained" else ""
        rows.append((spec, str(len(settings)), str(n_episodes * len(settings)),
                     f"{calibration.adapt_seconds + calibration.predict_seconds:.2f}", f"{seconds / 3600:.3g}{note}"))
    print()
    print_table(("method", "cells", "episodes", f"s/episode ({smallest.label})", f"estimated {unit}-hours"), rows)
    total = sum(float(r[4].split()[0]) for r in rows)
    print(f"\n{len(settings) * len(specs)} cells, {n_episodes * len(settings) * len(specs)} episodes, about "
          f"{total:.3g} {unit}-hours on this machine ({device}, {torch.get_num_threads()} thread(s)); nothing written")
    return 0
