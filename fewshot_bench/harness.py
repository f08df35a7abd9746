"""The per-episode harness: seed, adapt on the support set, predict the query set, score, measure.

The query labels never reach the method: it gets an :class:`~fewshot_bench.methods.EpisodeContext` over a
label-free view and returns a :class:`~fewshot_bench.methods.Predictor`; scoring happens here.
"""
from __future__ import annotations

import resource
import sys
import time
import traceback
from typing import Callable, Optional

import torch

from .backbone import Backbone
from .episodes import Episode
from .methods import EpisodeContext, Method
from .metrics import query_scores
from .sealed import EpisodeView


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def run_episode(method: Method, episode: Episode, backbone: Backbone, *, seed: int, autocast_dtype=None,
                source_episodes: Optional[Callable[[int], Episode]] = None) -> dict:
    """Adapt ``method`` on the support set, predict the query set, return the per-episode record.

    The method sees an :class:`~fewshot_bench.sealed.EpisodeView` (``adapt``) and the query texts tokenized
    without labels (the predictor); the query labels stay here and score the predictions. A method that raises
    or yields non-finite logits gets status 'failed' / 'diverged' with the error text; the run goes on.
    """
    torch.manual_seed(seed)
    if backbone.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(backbone.device)
    start = time.perf_counter()
    view = EpisodeView.of(episode)
    ctx = EpisodeContext(backbone, view, seed, autocast_dtype=autocast_dtype, source_episodes=source_episodes)
    record = {"status": "ok", "error": None, "trainable_params": 0, "predictions": None}
    try:
        predictor = method.adapt(ctx)
        record["trainable_params"] = int(predictor.trainable_params)
        with torch.no_grad():
            logits = predictor.predict(ctx.batch(view, "query")).float()
        expected = (len(view.query_texts), view.n_way)
        if tuple(logits.shape) != expected:
            raise RuntimeError(f"predictor returned logits of shape {tuple(logits.shape)}, expected {expected}")
        if not torch.isfinite(logits).all():
            record.update(status="diverged", error="non-finite logits on the query set")
        else:
            predictions = logits.argmax(-1).tolist()
            record["predictions"] = predictions
            record.update(query_scores(episode.query_labels, predictions))
    except Exception as exc:  # one bad episode must not end the run
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
    stability = ctx.recorder.summary()
    if stability.pop("diverged") and record["status"] == "ok":
        record.update(status="diverged", error="non-finite loss or gradient during adaptation")
    record.update(stability)
    record.update(ctx.figures)
    record["wall_seconds"] = time.perf_counter() - start
    record["peak_mem_mb"] = peak_memory_mb(backbone.device)
    return record
