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
from .methods import EpisodeContext, Method, Predictor
from .metrics import query_scores
from .sealed import EpisodeView


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


# Query texts per prediction batch. Sorted by length, so each batch is padded to about its own texts' length
# (MiniLM on banking77: a batch padded to the longest of 75 queries is ~3x the tokens of the texts).
QUERY_BUCKET_ROWS = 16


@torch.no_grad()
def predict_queries(predictor: Predictor, backbone: Backbone, texts, n_way: int,
                    rows: int = QUERY_BUCKET_ROWS) -> torch.Tensor:
    """Logits [len(texts), n_way] (float32, in the order of ``texts``) from ``predictor`` on length buckets of at
    most ``rows`` texts (:meth:`Backbone.length_buckets`): the same as one batch of every text up to float
    rounding, since a predictor scores each text on its own (padding is masked). Raises RuntimeError when the
    predictor returns logits of another shape."""
    buckets = backbone.length_buckets(texts, rows)
    parts = []
    for chunk, batch in buckets:
        part = predictor.predict(batch).float()
        if tuple(part.shape) != (len(chunk), n_way):
            raise RuntimeError(f"predictor returned logits of shape {tuple(part.shape)} for {len(chunk)} query "
                               f"texts, expected {(len(chunk), n_way)}")
        parts.append(part)
    logits = torch.cat(parts)
    positions = torch.tensor([i for chunk, _ in buckets for i in chunk], device=logits.device)
    return torch.empty_like(logits).index_copy_(0, positions, logits)


def run_episode(method: Method, episode: Episode, backbone: Backbone, *, seed: int, autocast_dtype=None,
                source_episodes: Optional[Callable[[int], Episode]] = None) -> dict:
    """Adapt ``method`` on the support set, predict the query set, return the per-episode record.

    The method sees an :class:`~fewshot_bench.sealed.EpisodeView` (``adapt``) and the query texts tokenized
    without labels, in length buckets (the predictor, :func:`predict_queries`); the query labels stay here and
    score the predictions. A method that raises or yields non-finite logits gets status 'failed' / 'diverged'
    with the error text; the run goes on. The models the method took from ``ctx.fresh_model`` are handed back
    to the backbone when the episode is over (:meth:`Backbone.recycle`).
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
        logits = predict_queries(predictor, backbone, view.query_texts, view.n_way)
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
    for model in ctx.models:  # the episode is over: the next fresh_model resets one in place instead of copying
        backbone.recycle(model)
    record["wall_seconds"] = time.perf_counter() - start
    record["peak_mem_mb"] = peak_memory_mb(backbone.device)
    return record
