"""Calibration of ``run --dry-run`` (:mod:`fewshot_bench.execution.plan`): each method's episode seconds as a line in tokens
and its one-off costs, measured once on one probe episode, cached per machine and environment.

**The line.** An episode of a cell costs ``fixed + per_support_token x S + per_query_token x Q`` seconds: S is the
support set's padded tokens (texts x the longest text's tokens: the full batch every adaptation step computes
on), Q the query texts' tokens as :func:`~fewshot_bench.execution.harness.predict_queries` pads them (length buckets). The
seconds are the runner's ``wall_seconds`` (:func:`~fewshot_bench.execution.evaluate.episode_record`: the whole harness, the
frozen-embedding cache fill left out), so each cell's estimate is its own mean tokens through the line: a task of
long texts costs what its tokens cost.

**Measurement** (:func:`measure`) on the probe, the median episode (by tokens) of the run's cheapest setting: one
untimed warm-up (thread pools, allocator, lazy initialisation; it also fills the frozen-embedding cache, which
gives the fill's seconds per token), then timed points: adaptation on the probe and on the probe with its support
set repeated r times (every text and label r times: S grows r-fold, Q and the texts' lengths stay; r = 2, or more
up to 16 so that S reaches ``SECOND_POINT_TOKENS``: a slope over ~50 tokens would be noise on a loaded machine).
The two adaptation times give (fixed, per support token); what follows adaptation on the probe (query
prediction, scoring), divided by Q, gives per query token. The points whose queries are not timed keep one query
per class (:func:`trimmed_queries`). A config with a ``steps`` field above 3 (full_ft, lora, sgg) is timed at 1
and 3 steps instead of its n (and warms up at 1 step): adaptation = set-up + steps x one step, both affine in S,
so the four points (1 and 3 steps, at S and at r x S) give its time at n steps, at S and r x S, for a fraction of
n steps' cost. The repeated support is a fair second point for a full-batch gradient method (full_ft, lora, sgg,
MAML's inner loop): each step runs forward and backward over the whole padded support batch, so its per-step
fixed part (optimizer over every parameter, model reset, head) stays and its token part grows r-fold, exactly as
in an rK-shot episode of texts of the same length. For a cached / frozen method (protonet, linear_probe) the
repeated texts hit the embedding cache: the slope is then only its work on cached vectors, which is what its
episodes cost once the cache is filled; embedding the texts is the one-off cache fill, estimated apart.

**One-off costs**, never charged per episode: the cache fill (seconds per token of the texts the warm-up
embedded; a cell's fill is that rate x its distinct texts' tokens) and meta-training: ``meta_train`` timed once
on the probe setting's source pool with ``meta_steps=1`` (and ``val_every=0``) where the config has those fields,
times the configured ``meta_steps`` (the set-up of the first step counted each time: on the high side; early
stopping would end sooner, its validation checks are not counted), scaled to a cell by its tokens per episode
(S + Q) over the probe's. A config without ``meta_steps`` is meta-trained whole, as configured.

**Shapes** (:func:`cost_shape`): methods whose code (the class, or the base of a subclass that only renames it and
changes config defaults), attention implementation, protocol and non-float config fields agree do the same work
per episode: floats (learning rates, loss weights, temperatures) change the numbers computed, not how many. One of
them is measured and the others share its line (sgg-no-dir and sgg-no-mag share sgg's; sgg-no-align, target-only,
is its own shape; a method whose float switches a term off is estimated on the high side).

**Cache**: ``<cache root>/calibration.json`` (``$FEWSHOT_BENCH_CACHE``, else ``~/.cache/fewshot_bench``, as
:mod:`fewshot_bench.execution.meta_cache`), one entry per :func:`cache_key`: the cost shape, backbone, probe setting
and episode fingerprint, and the environment fingerprint (device and its name — the CPU model —, dtype, torch
threads, torch / transformers / Python versions, OS). A second dry run on the same machine reuses them.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..methods.backbone import Backbone
from ..episodes.sampling import Episode, Setting
from .harness import QUERY_BUCKET_ROWS
from ..core.hashing import config_hash
from .meta_cache import cache_root
from ..methods.api import Method
from .evaluate import episode_record, meta_context

log = logging.getLogger(__name__)

CALIBRATION_VERSION = 2  # bump when what is measured changes: older entries are then not used
SECOND_POINT_TOKENS = 512  # padded support tokens the second calibration point aims at (r <= 16)
STEP_POINTS = (1, 3)  # steps of a stepped method's timed points: two apart, so a term of every second step counts
CACHE_FILE = "calibration.json"


@dataclass
class CostLine:
    """A method's measured costs (see the module docstring); seconds, tokens as :func:`episode_tokens` counts."""
    fixed: float = 0.0
    per_support_token: float = 0.0
    per_query_token: float = 0.0
    fill_per_token: float = 0.0  # frozen-embedding cache fill, s per token (0: the method embeds nothing into it)
    meta_seconds: float = 0.0    # meta-training at the probe's tokens (0: none)
    probe_tokens: float = 0.0    # S + Q of the probe episode
    error: Optional[str] = None  # why the method could not be measured (no estimate then)

    def episode_seconds(self, support_tokens: float, query_tokens: float) -> float:
        return self.fixed + self.per_support_token * support_tokens + self.per_query_token * query_tokens

    def meta_train_seconds(self, tokens: float) -> float:
        """Meta-training of a cell whose episodes have ``tokens`` (S + Q) on average."""
        return self.meta_seconds * tokens / self.probe_tokens if self.meta_seconds and self.probe_tokens else 0.0


@dataclass
class Probe:
    """The calibration episode: the median episode (by tokens) of the run's cheapest setting."""
    setting: Setting
    episode: Episode
    seed: int                   # the episode's training seed (evaluate.episode_seed)
    run_seed: int               # the run's seed (meta-training)
    support_tokens: float
    query_tokens: float
    source_episodes: Optional[Callable[[int], Episode]] = None


def token_lengths(backbone: Backbone, texts: Sequence[str], memo: Optional[Dict[str, int]] = None) -> List[int]:
    """Tokens of each text as the backbone tokenizes it (truncated to its max length); no model runs. ``memo``
    ({text: tokens}) keeps the counts across calls, so a text drawn again is not tokenized again."""
    memo = {} if memo is None else memo
    missing = [t for t in dict.fromkeys(texts) if t not in memo]
    if missing:
        encoded = backbone.tokenizer(missing, truncation=True, max_length=backbone.max_length,
                                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        memo.update(zip(missing, map(len, encoded)))
    return [memo[t] for t in texts]


def episode_tokens(backbone: Backbone, episode: Episode, memo: Optional[Dict[str, int]] = None) -> tuple:
    """(S, Q, unpadded tokens of the episode's distinct texts, its distinct texts) of ``episode``: S = support texts
    x their longest, Q = the query texts padded per length bucket of ``QUERY_BUCKET_ROWS``."""
    memo = {} if memo is None else memo
    support = token_lengths(backbone, episode.support_texts, memo)
    query = sorted(token_lengths(backbone, episode.query_texts, memo))
    buckets = [query[i:i + QUERY_BUCKET_ROWS] for i in range(0, len(query), QUERY_BUCKET_ROWS)]
    distinct = set(episode.support_texts) | set(episode.query_texts)
    return (len(support) * max(support, default=0), sum(len(b) * b[-1] for b in buckets),
            sum(memo[t] for t in distinct), len(distinct))


def repeated_support(episode: Episode, times: int) -> Episode:
    """``episode`` with every support text (and label) ``times`` times: the second calibration point."""
    return dataclasses.replace(episode, support_ids=episode.support_ids * times,
                               support_texts=episode.support_texts * times,
                               support_labels=episode.support_labels * times)


def trimmed_queries(episode: Episode) -> Episode:
    """``episode`` with only the first query of each class: a calibration point whose query time is not used."""
    first: Dict[object, int] = {}
    for position, label in enumerate(episode.query_labels):
        first.setdefault(label, position)
    keep = sorted(first.values())
    return dataclasses.replace(episode, query_ids=tuple(episode.query_ids[i] for i in keep),
                               query_texts=tuple(episode.query_texts[i] for i in keep),
                               query_labels=tuple(episode.query_labels[i] for i in keep))


def repeats(support_tokens: float) -> int:
    """r of the second calibration point: 2, or more (at most 16) so that r x S reaches SECOND_POINT_TOKENS."""
    return max(2, min(16, math.ceil(SECOND_POINT_TOKENS / max(support_tokens, 1.0))))


def _sync(backbone: Backbone) -> None:
    if backbone.device.type == "cuda":
        torch.cuda.synchronize(backbone.device)


def _timed_episode(method: Method, episode: Episode, backbone: Backbone, probe: Probe, autocast) -> tuple:
    """(adaptation seconds, the runner's episode record) of one episode; cache fill left out of both."""
    spent: List[float] = []
    adapt = method.adapt

    def timed_adapt(ctx):
        fill, started = backbone.embedding_cache_seconds, time.perf_counter()
        predictor = adapt(ctx)
        _sync(backbone)
        spent.append(time.perf_counter() - started - (backbone.embedding_cache_seconds - fill))
        return predictor

    method.adapt = timed_adapt  # the instance's attribute, removed below: the class's method is untouched
    try:
        record = episode_record(method, episode, backbone, seed=probe.seed, autocast=autocast,
                                source_episodes=probe.source_episodes)
    finally:
        del method.adapt
    if record["status"] == "failed":
        raise RuntimeError((record["error"] or "failed").splitlines()[0])
    return (spent[0] if spent else 0.0), record


def _config_fields(method: Method) -> Dict[str, object]:
    """{field name: declared type} of ``method``'s config ({} when it is not a dataclass)."""
    config = method.config
    return {f.name: f.type for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else {}


def _with(method: Method, **values) -> Method:
    """A new instance of ``method``'s class with ``values`` replacing its config's fields."""
    return type(method)(dataclasses.replace(method.config, **values) if values else method.config)


SHAPE_NEUTRAL = {"name", "config_class", "search_space", "opt_in"}  # class attributes that change no computation


def _code_class(cls: type) -> type:
    """The class whose code ``cls`` runs: its base, for a subclass that sets only ``SHAPE_NEUTRAL`` attributes (a
    name and config defaults, as SGG's ablations)."""
    while cls.__bases__ and issubclass(cls.__bases__[0], Method) and cls.__bases__[0] is not Method and \
            not {k for k in vars(cls) if not k.startswith("__")} - SHAPE_NEUTRAL:
        cls = cls.__bases__[0]
    return cls


def cost_shape(method: Method) -> dict:
    """What ``method``'s cost depends on (see the module docstring): the class whose code it runs
    (:func:`_code_class`), its attention implementation, protocol and config fields not declared float."""
    code, types = _code_class(type(method)), _config_fields(method)
    config = {k: v for k, v in method.config_dict().items() if types.get(k) not in (float, "float")}
    return {"class": f"{code.__module__}.{code.__qualname__}", "attn": method.attn_implementation,
            "protocol": method.protocol, "config": config}


def measure(method: Method, backbone: Backbone, probe: Probe, *, autocast=None) -> CostLine:
    """Measure ``method``'s :class:`CostLine` on ``probe`` (see the module docstring: warm-up, the timed points,
    and meta-training when the method is meta-trained); a failure gives a line with ``error`` set."""
    try:
        backbone.clear_caches()
        filled_before = backbone.embedding_cache_seconds
        stepped = "steps" in _config_fields(method) and int(method.config.steps) > STEP_POINTS[1]
        warm = (_with(method, steps=STEP_POINTS[0]), trimmed_queries(probe.episode)) if stepped else \
            (method, probe.episode)
        _timed_episode(*warm, backbone, probe, autocast)  # warm-up, untimed
        fill = backbone.embedding_cache_seconds - filled_before
        filled = list(getattr(backbone, "_embedding_cache", {}))
        fill_tokens = sum(token_lengths(backbone, filled))
        times = repeats(probe.support_tokens)
        repeated = trimmed_queries(repeated_support(probe.episode, times))
        if stepped:  # adaptation at n steps from 1 and 3 steps, at S and at r x S
            one, three = (_with(method, steps=steps) for steps in STEP_POINTS)
            x1, record = _timed_episode(one, probe.episode, backbone, probe, autocast)
            x3 = _timed_episode(three, trimmed_queries(probe.episode), backbone, probe, autocast)[0]
            y1 = _timed_episode(one, repeated, backbone, probe, autocast)[0]
            y3 = _timed_episode(three, repeated, backbone, probe, autocast)[0]
            per_step = (int(method.config.steps) - STEP_POINTS[0]) / (STEP_POINTS[1] - STEP_POINTS[0])
            adapts = [x1 + per_step * (x3 - x1), y1 + per_step * (y3 - y1)]
        else:
            adapt, record = _timed_episode(method, probe.episode, backbone, probe, autocast)
            adapts = [adapt, _timed_episode(method, repeated, backbone, probe, autocast)[0]]
        rest = max(0.0, record["wall_seconds"] - (x1 if stepped else adapts[0]))
        meta = measure_meta(method, backbone, probe, autocast) if method.protocol == "meta-trained" else 0.0
    except Exception as exc:  # a method that cannot run the probe gets no estimate; the dry run goes on
        return CostLine(error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    slope = max(0.0, (adapts[1] - adapts[0]) / ((times - 1) * probe.support_tokens)) if probe.support_tokens else 0.0
    fixed = adapts[0] - slope * probe.support_tokens if slope else sum(adapts) / 2
    return CostLine(fixed=max(0.0, fixed), per_support_token=slope,
                    per_query_token=rest / probe.query_tokens if probe.query_tokens else 0.0,
                    fill_per_token=fill / fill_tokens if fill > 0 and fill_tokens else 0.0, meta_seconds=meta,
                    probe_tokens=probe.support_tokens + probe.query_tokens)


def measure_meta(method: Method, backbone: Backbone, probe: Probe, autocast=None) -> float:
    """Seconds of ``method``'s configured meta-training on the probe setting's source pool: one meta-step
    (``meta_steps=1``, ``val_every=0``) x ``meta_steps`` where the config has that field, else all of it."""
    if probe.source_episodes is None:
        raise RuntimeError(f"{probe.setting.label} has no source pool to meta-train on")
    fields, probe_method, scale = _config_fields(method), _with(method), 1
    if "meta_steps" in fields:
        scale = int(method.config.meta_steps)
        if scale == 0:
            return 0.0
        probe_method = _with(method, meta_steps=1, **({"val_every": 0} if "val_every" in fields else {}))
    started = time.perf_counter()
    probe_method.meta_train(meta_context(backbone, probe.run_seed, probe.setting, probe.source_episodes, autocast))
    _sync(backbone)
    return (time.perf_counter() - started) * scale


def cache_file() -> Path:
    return cache_root() / CACHE_FILE


def cache_key(method: Method, backbone_name: str, probe: Probe, environment: Dict[str, str]) -> str:
    """The cache entry of ``method``'s :func:`cost_shape` measured on ``probe`` in ``environment``
    (:func:`environment.fingerprint`)."""
    return config_hash({"version": CALIBRATION_VERSION, "shape": cost_shape(method),
                        "backbone": backbone_name, "probe": probe.setting.label,
                        "probe_fingerprint": probe.episode.fingerprint, "environment": environment})


def read_cache(path: Path) -> Dict[str, dict]:
    """The cached entries at ``path`` ({} when there is no such file or it cannot be read)."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def cached_line(entries: Dict[str, dict], key: str) -> Optional[CostLine]:
    entry = entries.get(key)
    try:
        return CostLine(**entry["line"]) if entry and entry.get("version") == CALIBRATION_VERSION else None
    except (TypeError, KeyError):
        return None


def write_cache(path: Path, new: Dict[str, dict]) -> None:
    """Add ``new`` entries to the cache file at ``path`` (atomic; what another process wrote meanwhile is kept)."""
    if not new:
        return
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    entries = {**read_cache(path), **{key: {**entry, "version": CALIBRATION_VERSION, "measured": stamp}
                                      for key, entry in new.items()}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not cache the calibration at %s: %s", path, exc)
        tmp.unlink(missing_ok=True)
