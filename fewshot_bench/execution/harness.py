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

from ..methods.backbone import Backbone
from ..store.tables import EPISODE_COLUMNS
from ..store.schema import METRIC, RANGE_TOLERANCE
from ..episodes.sampling import Episode
from ..core.interrupts import is_method_failure
from ..methods.api import EpisodeContext, Method, Predictor
from ..methods.metrics import query_scores
from ..episodes.sealed import EpisodeView


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
def adaptation_figures(predictor: Predictor, backbone: Backbone, episode, logits: torch.Tensor) -> dict:
    """What adaptation did, for a predictor that also gives its un-adapted model (``Predictor.initial``): the
    support cross-entropy before and after, and the share of query predictions (``logits``, the adapted model's)
    that differ from the un-adapted model's (:func:`adaptation_from_logits` of :func:`adaptation_logits`)."""
    return adaptation_from_logits(**adaptation_logits(predictor, backbone, episode), logits=logits,
                                  support_labels=episode.support_labels)


@torch.no_grad()
def adaptation_logits(predictor: Predictor, backbone: Backbone, episode) -> dict:
    """The logits :func:`adaptation_from_logits` needs: the un-adapted model's on the query and support texts,
    the adapted model's on the support texts (``episode``: an Episode or its label-free view)."""
    initial = Predictor(predictor.initial)
    return {"before_query": predict_queries(initial, backbone, episode.query_texts, episode.n_way),
            "before_support": predict_queries(initial, backbone, episode.support_texts, episode.n_way),
            "after_support": predict_queries(predictor, backbone, episode.support_texts, episode.n_way)}


def adaptation_from_logits(*, before_query: torch.Tensor, before_support: torch.Tensor, after_support: torch.Tensor,
                           support_labels, logits: torch.Tensor) -> dict:
    """support_loss_before / support_loss_after (cross-entropy of the support logits before / after adaptation) and
    adapt_changed (share of query argmaxes ``logits`` changed from ``before_query``). Figures of non-finite logits
    are None."""
    labels = torch.tensor(list(support_labels), device=before_support.device)

    def support_loss(support: torch.Tensor):
        return float(torch.nn.functional.cross_entropy(support.float(), labels)) \
            if torch.isfinite(support).all() else None

    changed = (before_query.argmax(-1).cpu() != logits.argmax(-1).cpu()).float().mean().item()
    return {"support_loss_before": support_loss(before_support), "support_loss_after": support_loss(after_support),
            "adapt_changed": changed if torch.isfinite(before_query).all() else None}


def failure_reason(exc: BaseException) -> str:
    """The stored error text of a method's failure: type, message and the innermost frames."""
    return f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"


def checked_figures(method: Method, figures) -> dict:
    """The figures ``method`` put in ``ctx.figures`` that it reported (not None), each declared in
    ``method.figures`` and a finite number in its declared range; raises ValueError naming the first that is not."""
    if not isinstance(figures, dict):
        raise ValueError(f"ctx.figures is a {type(figures).__name__}, not a dict of declared figures")
    declared = {f.name: f for f in getattr(method, "figures", ()) or ()}
    checked = {}
    for name, value in figures.items():
        if name not in declared:
            owner = "the harness measures it" if name in METRIC else "not declared"
            raise ValueError(f"undeclared figure {name!r} in ctx.figures ({owner}); a method may report only the "
                             f"figures it declares in {type(method).__name__}.figures"
                             f"{' (' + ', '.join(declared) + ')' if declared else ' (none)'}")
        if value is not None:
            figure = declared[name]
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not figure.low - RANGE_TOLERANCE <= value <= figure.high + RANGE_TOLERANCE:
                raise ValueError(f"figure {name!r} = {value!r} is not a finite number in [{figure.low}, {figure.high}]")
            checked[name] = float(value)
    return checked


def episode_outcome(method: Method, backbone: Backbone, view: EpisodeView, seed: int, *, autocast_dtype=None,
                    source_episodes: Optional[Callable[[int], Episode]] = None,
                    is_failure: Callable[[BaseException], bool] = is_method_failure) -> dict:
    """Run the method's code on one episode and return what it produced, unchecked: ``logits`` (query, float32),
    ``trainable_params``, ``figures`` (``ctx.figures``), ``stability`` (the gradient recorder's summary), ``initial``
    (:func:`adaptation_logits`, for a predictor with ``initial`` and finite logits), ``error`` (why the method's
    code failed, else None) and ``stability_error``. Sees no query label: :func:`run_episode` runs this in the
    harness's process, the sealed worker (:mod:`fewshot_bench.execution.worker`) in its own, and the harness checks and
    scores the outcome (:func:`record_from_outcome`). Exceptions ``is_failure`` calls the user's are re-raised."""
    torch.manual_seed(seed)
    if backbone.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(backbone.device)
    ctx = EpisodeContext(backbone, view, seed, autocast_dtype=autocast_dtype, source_episodes=source_episodes)
    outcome = {"error": None, "logits": None, "trainable_params": 0, "figures": {}, "initial": None,
               "stability": {}, "stability_error": None}
    try:
        predictor = method.adapt(ctx)
        outcome["trainable_params"] = predictor.trainable_params
        logits = predict_queries(predictor, backbone, view.query_texts, view.n_way)
        if predictor.initial is not None and torch.isfinite(logits).all():
            outcome["initial"] = adaptation_logits(predictor, backbone, view)
        outcome.update(logits=logits, figures=ctx.figures)
    except BaseException as exc:  # one bad episode must not end the run; a real Ctrl-C does
        if not is_failure(exc):
            raise
        outcome.update(error=failure_reason(exc), figures={})
    try:
        outcome["stability"] = ctx.recorder.summary()
    except Exception as exc:  # the method broke the recorder it was given
        outcome["stability_error"] = failure_reason(exc)
    for model in ctx.models:  # the episode is over: the next fresh_model resets one in place instead of copying
        backbone.recycle(model)
    return outcome


class _Refused(Exception):
    """An outcome the harness does not accept (its message is the stored error)."""


def _checked_logits(logits, rows: int, n_way: int, what: str = "logits") -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise _Refused(f"RuntimeError: the predictor's {what} are a {type(logits).__name__}, not a float tensor")
    if tuple(logits.shape) != (rows, n_way):
        raise _Refused(f"RuntimeError: predictor returned {what} of shape {tuple(logits.shape)} for {rows} texts, "
                       f"expected {(rows, n_way)}")
    return logits.float()


def _checked_stability(stability) -> dict:
    if not isinstance(stability, dict) or any(not isinstance(k, str) or not (
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) or (k == "diverged" and
                                                                                     isinstance(v, bool)))
            for k, v in stability.items()):
        raise _Refused("ValueError: the gradient recorder's summary is not a dict of numbers")
    return dict(stability)


def record_from_outcome(method: Method, episode: Episode, outcome: dict) -> dict:
    """The per-episode record of an :func:`episode_outcome` (from this process or a sealed worker, whose outcome
    is checked as untrusted): trainable_params a count, logits of shape [queries, n_way], declared figures in
    range, scores from the query labels kept here. A failure (an error in the method's code, or an outcome
    refused here) gives status 'failed' with the reason; non-finite logits or training give 'diverged'."""
    record = {"status": "ok", "error": None, "trainable_params": 0, "predictions": None, "figures": {}}
    scores, figures = {}, {}
    try:
        if outcome.get("error") is not None:
            raise _Refused(str(outcome["error"]))
        trainable = outcome.get("trainable_params")
        if isinstance(trainable, bool) or not isinstance(trainable, int) or trainable < 0:
            raise _Refused(f"TypeError: Predictor.trainable_params is {trainable!r}, not a count of parameters")
        logits = _checked_logits(outcome.get("logits"), len(episode.query_texts), episode.n_way)
        adaptation, initial = {}, outcome.get("initial")
        if initial is not None and torch.isfinite(logits).all():
            if not isinstance(initial, dict):
                raise _Refused("RuntimeError: the un-adapted model's logits are missing")
            rows = {"before_query": len(episode.query_texts), "before_support": len(episode.support_texts),
                    "after_support": len(episode.support_texts)}
            adaptation = adaptation_from_logits(
                **{k: _checked_logits(initial.get(k), n, episode.n_way, k.replace("_", " ") + " logits")
                   for k, n in rows.items()}, support_labels=episode.support_labels, logits=logits)
        try:
            figures = checked_figures(method, outcome.get("figures"))
        except ValueError as exc:
            raise _Refused(f"ValueError: {exc}") from None
        record["trainable_params"] = trainable
        if not torch.isfinite(logits).all():
            record.update(status="diverged", error="non-finite logits on the query set")
        else:
            predictions = logits.argmax(-1).tolist()
            scores = {"predictions": predictions, **query_scores(episode.query_labels, predictions), **adaptation}
    except _Refused as exc:
        record.update(status="failed", error=str(exc))
        figures = {}
    try:
        stability = _checked_stability(outcome.get("stability") or {})
        if outcome.get("stability_error") is not None:
            raise _Refused(str(outcome["stability_error"]))
    except _Refused as exc:
        stability = {"diverged": False}
        if record["status"] == "ok":
            record.update(status="failed", error=str(exc))
            scores = {}
    if stability.pop("diverged", False) and record["status"] == "ok":
        record.update(status="diverged", error="non-finite loss or gradient during adaptation")
    record["figures"] = figures  # apart from the harness's figures: a method's never replace them
    record.update({k: v for k, v in stability.items() if k in METRIC})
    if record["status"] != "failed":  # a run diverged in training still scored its (finite) predictions
        record.update(scores)
    return record


def run_episode(method: Method, episode: Episode, backbone: Optional[Backbone], *, seed: int, autocast_dtype=None,
                source_episodes: Optional[Callable[[int], Episode]] = None, worker=None) -> dict:
    """Adapt ``method`` on the support set, predict the query set, return the per-episode record.

    The method sees an :class:`~fewshot_bench.episodes.sealed.EpisodeView` (``adapt``) and the query texts tokenized
    without labels, in length buckets (the predictor, :func:`predict_queries`); the query labels stay here and
    score the predictions. Anything escaping the method's code (an exception, ``SystemExit``, a
    ``KeyboardInterrupt`` no Ctrl-C sent: :func:`~fewshot_bench.core.interrupts.is_method_failure`), logits of the wrong
    shape, or an undeclared or out-of-range figure gives status 'failed' with the reason; non-finite logits give
    'diverged'; the run goes on. Method figures never replace the harness's (accuracy, losses, timings). The models
    the method took from ``ctx.fresh_model`` are handed back to the backbone when the episode is over
    (:meth:`Backbone.recycle`).

    ``worker`` (a :class:`fewshot_bench.execution.worker.SealedWorker`): the method's code runs in that sealed process (its
    own backbone; ``backbone`` may be None), under its time limit; a timeout or the worker's death fails the
    episode. The record then also has ``embedding_cache_seconds`` (measured in the worker). ``isolation`` says
    where the code ran: ``in-process``, ``process`` or ``sandboxed``.
    """
    view = EpisodeView.of(episode)
    if worker is not None:
        outcome = worker.episode(method, view, seed=seed, autocast_dtype=autocast_dtype,
                                 source_episodes=source_episodes)
        record = record_from_outcome(method, episode, outcome)
        record.update(wall_seconds=outcome["seconds"], peak_mem_mb=outcome.get("peak_mem_mb"),
                      embedding_cache_seconds=outcome.get("embedding_cache_seconds") or 0.0,
                      isolation=outcome["isolation"])
        return record
    start = time.perf_counter()
    outcome = episode_outcome(method, backbone, view, seed, autocast_dtype=autocast_dtype,
                              source_episodes=source_episodes)
    record = record_from_outcome(method, episode, outcome)
    record["wall_seconds"] = time.perf_counter() - start
    record["peak_mem_mb"] = peak_memory_mb(backbone.device)
    if _store_has_isolation():  # until the store has the column, an in-process record stays as the runner writes it
        record["isolation"] = "in-process"
    return record


def _store_has_isolation() -> bool:
    return "isolation" in EPISODE_COLUMNS
