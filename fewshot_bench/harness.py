"""The per-episode harness: seed, adapt on the support set, predict the query set, score, measure.

The query labels never reach the method: it gets an :class:`~fewshot_bench.methods.EpisodeContext` over a
label-free view and returns a :class:`~fewshot_bench.methods.Predictor`; scoring happens here.
"""
from __future__ import annotations

import math
import resource
import sys
import time
import traceback
from typing import Callable, Optional

import torch

from .backbone import Backbone
from .columns import METRIC, METHOD_FIGURES, RANGE_TOLERANCE
from .episodes import Episode
from .interrupts import is_method_failure
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


@torch.no_grad()
def adaptation_figures(predictor: Predictor, backbone: Backbone, episode: Episode, logits: torch.Tensor) -> dict:
    """What adaptation did, for a predictor that also gives its un-adapted model (``Predictor.initial``): the
    support cross-entropy before and after, and the share of query predictions (``logits``, the adapted model's)
    that differ from the un-adapted model's. Figures of non-finite logits are None."""
    initial = Predictor(predictor.initial)
    before_query = predict_queries(initial, backbone, episode.query_texts, episode.n_way)
    labels = torch.tensor(episode.support_labels, device=logits.device)

    def support_loss(model: Predictor):
        support = predict_queries(model, backbone, episode.support_texts, episode.n_way)
        return float(torch.nn.functional.cross_entropy(support, labels)) if torch.isfinite(support).all() else None

    changed = (before_query.argmax(-1) != logits.argmax(-1)).float().mean().item()
    return {"support_loss_before": support_loss(initial), "support_loss_after": support_loss(predictor),
            "adapt_changed": changed if torch.isfinite(before_query).all() else None}


def failure_reason(exc: BaseException) -> str:
    """The stored error text of a method's failure: type, message and the innermost frames."""
    return f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"


def checked_figures(method: Method, figures) -> dict:
    """The figures ``method`` put in ``ctx.figures``, each declared in ``method.figures`` (a store column a method
    may write) and None or a finite number in that column's range; raises ValueError naming the first that is not."""
    if not isinstance(figures, dict):
        raise ValueError(f"ctx.figures is a {type(figures).__name__}, not a dict of declared figures")
    declared = set(getattr(method, "figures", ()) or ()) & set(METHOD_FIGURES)
    checked = {}
    for name, value in figures.items():
        if name not in declared:
            owner = "the harness measures it" if name in METRIC else "it is not a store column"
            raise ValueError(f"undeclared figure {name!r} in ctx.figures ({owner}); a method may report only the "
                             f"figures it declares in {type(method).__name__}.figures, out of "
                             f"{', '.join(METHOD_FIGURES)}")
        if value is not None:
            metric = METRIC[name]
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not metric.low - RANGE_TOLERANCE <= value <= metric.high + RANGE_TOLERANCE:
                raise ValueError(f"figure {name!r} = {value!r} is not a finite number in [{metric.low}, {metric.high}]")
            value = float(value)
        checked[name] = value
    return checked


def run_episode(method: Method, episode: Episode, backbone: Backbone, *, seed: int, autocast_dtype=None,
                source_episodes: Optional[Callable[[int], Episode]] = None) -> dict:
    """Adapt ``method`` on the support set, predict the query set, return the per-episode record.

    The method sees an :class:`~fewshot_bench.sealed.EpisodeView` (``adapt``) and the query texts tokenized
    without labels, in length buckets (the predictor, :func:`predict_queries`); the query labels stay here and
    score the predictions. Anything escaping the method's code (an exception, ``SystemExit``, a
    ``KeyboardInterrupt`` no Ctrl-C sent: :func:`~fewshot_bench.interrupts.is_method_failure`), logits of the wrong
    shape, or an undeclared or out-of-range figure gives status 'failed' with the reason; non-finite logits give
    'diverged'; the run goes on. Method figures never replace the harness's (accuracy, losses, timings). The models
    the method took from ``ctx.fresh_model`` are handed back to the backbone when the episode is over
    (:meth:`Backbone.recycle`).
    """
    torch.manual_seed(seed)
    if backbone.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(backbone.device)
    start = time.perf_counter()
    view = EpisodeView.of(episode)
    ctx = EpisodeContext(backbone, view, seed, autocast_dtype=autocast_dtype, source_episodes=source_episodes)
    record = {"status": "ok", "error": None, "trainable_params": 0, "predictions": None}
    scores, figures = {}, {}
    try:
        predictor = method.adapt(ctx)
        trainable = predictor.trainable_params
        if isinstance(trainable, bool) or not isinstance(trainable, int) or trainable < 0:
            raise TypeError(f"Predictor.trainable_params is {trainable!r}, not a count of parameters")
        logits = predict_queries(predictor, backbone, view.query_texts, view.n_way)
        adaptation = (adaptation_figures(predictor, backbone, episode, logits)
                      if predictor.initial is not None and torch.isfinite(logits).all() else {})
        figures = checked_figures(method, ctx.figures)
        record["trainable_params"] = trainable
        if not torch.isfinite(logits).all():
            record.update(status="diverged", error="non-finite logits on the query set")
        else:
            predictions = logits.argmax(-1).tolist()
            scores = {"predictions": predictions, **query_scores(episode.query_labels, predictions), **adaptation}
    except BaseException as exc:  # one bad episode must not end the run; a real Ctrl-C does
        if not is_method_failure(exc):
            raise
        record.update(status="failed", error=failure_reason(exc))
        figures = {}
    try:
        stability = ctx.recorder.summary()
    except Exception as exc:  # the method broke the recorder it was given
        stability = {"diverged": False}
        if record["status"] == "ok":
            record.update(status="failed", error=failure_reason(exc))
            scores = {}
    if stability.pop("diverged", False) and record["status"] == "ok":
        record.update(status="diverged", error="non-finite loss or gradient during adaptation")
    record.update(figures)  # first: the harness's figures below are written over anything of the same name
    record.update({k: v for k, v in stability.items() if k in METRIC})
    if record["status"] != "failed":  # a run diverged in training still scored its (finite) predictions
        record.update(scores)
    for model in ctx.models:  # the episode is over: the next fresh_model resets one in place instead of copying
        backbone.recycle(model)
    record["wall_seconds"] = time.perf_counter() - start
    record["peak_mem_mb"] = peak_memory_mb(backbone.device)
    return record
