"""The method (adapter) interface every method runs through, and the per-episode harness.

A method subclasses :class:`Method`, sets ``config_class`` (a dataclass with defaults and help text)
and implements ``adapt(ctx) -> Predictor``. Methods that learn from source-pool episodes also implement
``meta_train(ctx)`` and set ``protocol = "meta-trained"``. Register with ``@register_method("name")``,
the ``fewshot_bench.methods`` entry-point group, or ``--methods path/to/file.py:Class``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import resource
import sys
import time
import traceback
import typing
from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone, Batch
from .episodes import Episode
from .config import validate
from .errors import UserError
from .metrics import GradientRecorder, query_scores
from .registry import METHODS, import_object, register_method
from .search_space import SearchSpace
from .sealed import EpisodeView


@dataclass
class MethodConfig:
    """Base for method configs (subclass it and add fields with ``fewshot_bench.config.option``, with limits
    ``low``/``high``/``choices`` where a value can be wrong). Types and limits are checked at construction."""

    def __post_init__(self):
        validate(self, f"method config {type(self).__name__}")


@dataclass
class Predictor:
    """What ``adapt`` returns: ``predict(batch) -> logits [B, n_way]``, and how many parameters were trained."""
    predict: Callable[[Batch], torch.Tensor]
    trainable_params: int = 0


class Method:
    """Base class of adaptation methods."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = MethodConfig
    protocol: ClassVar[str] = "target-only"  # or "source-guided" (uses source-pool data while adapting), "meta-trained"
    attn_implementation: ClassVar[str] = "sdpa"  # "eager" when the method needs double backward
    search_space: ClassVar[Optional[SearchSpace]] = None  # what ``tune`` may choose; None: runs its defaults
    opt_in: ClassVar[bool] = False  # True: run only when named, not by `--methods all` (optional extra, backbone kind)

    def __init__(self, config=None):
        self.config = config if config is not None else self.config_class()

    def meta_train(self, ctx: "MetaContext") -> None:
        """Learn from source-pool episodes before evaluation (optional)."""

    def adapt(self, ctx: "EpisodeContext") -> Predictor:
        raise NotImplementedError

    def config_dict(self) -> dict:
        return dataclasses.asdict(self.config)

    def config_hash(self) -> str:
        payload = json.dumps({"method": self.name, "config": self.config_dict()}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class _Shared:
    def __init__(self, backbone: Backbone, seed: int, autocast_dtype: Optional[torch.dtype] = None):
        self.backbone = backbone
        self.device = backbone.device
        self.seed = seed
        self.autocast_dtype = autocast_dtype

    def fresh_model(self) -> nn.Module:
        return self.backbone.fresh_model()

    def new_head(self, n_way: int) -> nn.Linear:
        """A linear classifier over pooled vectors, initialised from the (seeded) torch RNG."""
        return nn.Linear(self.backbone.hidden_size, n_way).to(self.device)

    def embed(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Pooled vectors [B, H] in float32 (the backbone runs under autocast when enabled)."""
        with self.autocast():
            return self.backbone.embed(model, batch).float()

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def batch(self, episode: Union[Episode, EpisodeView], part: str) -> Batch:
        """The tokenized support or query set of ``episode``; labelled when ``episode`` carries those labels
        (an :class:`EpisodeView` has no query labels)."""
        texts = episode.support_texts if part == "support" else episode.query_texts
        labels = episode.support_labels if part == "support" else getattr(episode, "query_labels", None)
        return self.backbone.tokenize(texts, labels)


class EpisodeContext(_Shared):
    """Everything a method may use while adapting to one episode: the support set and a label-free view.

    ``episode`` is an :class:`~fewshot_bench.sealed.EpisodeView` (an :class:`Episode` passed in is reduced
    to one): no query labels, query ids, episode key or fingerprint are reachable from the context.
    """

    def __init__(self, backbone: Backbone, episode: Union[Episode, EpisodeView], seed: int, *, autocast_dtype=None,
                 source_episodes: Optional[Callable[[int], Episode]] = None):
        super().__init__(backbone, seed, autocast_dtype)
        episode = EpisodeView.of(episode) if isinstance(episode, Episode) else episode
        self.episode = episode
        self.n_way = episode.n_way
        self.support = self.batch(episode, "support")
        self.support_texts = episode.support_texts
        self.recorder = GradientRecorder()
        self.figures: Dict[str, float] = {}  # per-episode figures the method reports (results-store columns)
        self._source_episodes = source_episodes

    def source_episode(self, index: int) -> Episode:
        """Episode ``index`` of the source pool (same shape); raises when the setting has no source task."""
        if self._source_episodes is None:
            raise UserError("this setting has no source pool to draw from")
        return self._source_episodes(index)

    @property
    def has_source(self) -> bool:
        return self._source_episodes is not None

    def source_gradient(self, model: nn.Module, params: Sequence[torch.Tensor], step: int, *,
                        shots: int = 2) -> List[torch.Tensor]:
        """g_src: gradient w.r.t. ``params`` of the prototype loss on a source-pool support batch.

        The batch is the support set of source episode ``derived(seed) + step`` cut to ``shots`` examples
        per class (0: all), so every method of one episode sees the same source batches. It runs under a
        forked, seeded RNG: the caller's trajectory (dropout masks) does not change. Parameters the
        source loss does not reach get zeros.
        """
        index = derived_seed(self.seed, "source") % 1_000_000 * 1000 + step
        episode = self.source_episode(index)
        batch = self.batch(episode, "support")
        if shots > 0:
            batch = batch.subset(torch.tensor(first_per_class(episode.support_labels, shots),
                                              device=batch.input_ids.device))
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derived_seed(self.seed, "source", step))
            loss = prototype_loss(self.embed(model, batch), batch.labels)
            grads = torch.autograd.grad(loss, list(params), allow_unused=True)
        return [g.detach() if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]


def first_per_class(labels: Sequence[int], limit: int) -> List[int]:
    """Positions of the first ``limit`` examples of each class in ``labels``."""
    keep, seen = [], {}
    for i, label in enumerate(labels):
        if seen.get(label, 0) < limit:
            keep.append(i)
            seen[label] = seen.get(label, 0) + 1
    return keep


def derived_seed(*key) -> int:
    """A 32-bit seed derived from ``key`` (stable across processes and platforms)."""
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:4], "little")


def prototype_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of −‖e − p_c‖² logits, p_c the (detached) class means of the batch: a parameter-free head."""
    emb = embeddings.float()
    classes = torch.unique(labels)
    protos = torch.stack([emb[labels == c].mean(0) for c in classes]).detach()
    return F.cross_entropy(-torch.cdist(emb, protos).pow(2), torch.searchsorted(classes, labels))


class MetaContext(_Shared):
    """What ``meta_train`` gets: the backbone, functions index -> source-pool episode and index -> validation-pool
    episode (for early stopping; None when the setting has no validation pool), and the cache folder."""

    def __init__(self, backbone: Backbone, seed: int, source_episodes: Callable[[int], Episode], *, autocast_dtype=None,
                 cache_dir: Optional[str] = None, validation_episodes: Optional[Callable[[int], Episode]] = None):
        super().__init__(backbone, seed, autocast_dtype)
        self.source_episode = source_episodes
        self.validation_episode = validation_episodes
        self.cache_dir = cache_dir


def default_method_names() -> List[str]:
    """What ``--methods all`` runs: every registered method except the opt-in ones."""
    return [name for name in METHODS.names() if not getattr(METHODS.get(name), "opt_in", False)]


def method_from_spec(spec: str, overrides: Optional[Dict[str, object]] = None) -> Method:
    """A method instance from a registered name or ``path/to/file.py:Class``, with config overrides
    (command-line strings are converted to each field's annotated type; the config validates itself)."""
    cls = import_object(spec) if ":" in spec else METHODS.get(spec)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise UserError(f"method '{spec}' is {cls!r}, not a subclass of fewshot_bench.methods.Method")
    if not cls.name:
        cls.name = spec.rpartition(":")[2] if ":" in spec else spec
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    hints = typing.get_type_hints(cls.config_class)
    values = {}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise UserError(f"method '{cls.name}' has no config field '{key}' (fields: {', '.join(sorted(fields))})")
        values[key] = _coerce(hints[key], value, f"method '{cls.name}' config field '{key}'")
    try:
        return cls(cls.config_class(**values))
    except UserError as exc:
        raise UserError(f"--method-config {cls.name}: {exc}") from None


def _coerce(hint, value, where: str):
    """``value`` (a command-line string) converted to the annotated type ``hint``; other values unchanged."""
    if not isinstance(value, str):
        return value
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union:
        if value.strip().lower() in ("none", "null") and type(None) in typing.get_args(hint):
            return None
        for arg in args:
            try:
                return _coerce(arg, value, where)
            except UserError:
                continue
        raise UserError(f"{where}: '{value}' is not a valid {' or '.join(getattr(a, '__name__', str(a)) for a in args)}")
    if typing.get_origin(hint) in (list, tuple):
        item = typing.get_args(hint)[0] if typing.get_args(hint) else str
        return [_coerce(item, part.strip(), where) for part in value.split(",") if part.strip()]
    if hint is bool:  # bool("false") is True
        lowered = value.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise UserError(f"{where}: '{value}' is not a boolean; use true or false")
        return lowered in ("true", "1", "yes")
    if hint in (int, float):
        try:
            return hint(value)
        except ValueError:
            raise UserError(f"{where}: '{value}' is not a valid {hint.__name__}") from None
    return value


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def run_episode(method: Method, episode: Episode, backbone: Backbone, *, seed: int, autocast_dtype=None,
                source_episodes: Optional[Callable[[int], Episode]] = None) -> dict:
    """Adapt ``method`` on the support set, predict the query set, return the per-episode record.

    The method sees an :class:`EpisodeView` (``adapt``) and the query texts tokenized without labels (the
    predictor); the query labels stay here and score the predictions. A method that raises or yields
    non-finite logits gets status 'failed' / 'diverged' with the error text; the run goes on.
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


for _name, _target in {
    "full_ft": "fewshot_bench.baselines.full_ft:FullFineTuning",
    "lora": "fewshot_bench.baselines.lora:LoRA",
    "protonet": "fewshot_bench.baselines.protonet:PrototypicalNetwork",
    "linear_probe": "fewshot_bench.baselines.linear_probe:LinearProbe",
    "setfit": "fewshot_bench.baselines.setfit:SetFit",
    "icl": "fewshot_bench.baselines.icl:InContextLearning",
    "maml": "fewshot_bench.baselines.maml:MAML",
    "fomaml": "fewshot_bench.baselines.maml:FOMAML",
    "sgg": "fewshot_bench.sgg:SGG",
    "sgg-no-dir": "fewshot_bench.sgg:SGGNoDir",
    "sgg-no-mag": "fewshot_bench.sgg:SGGNoMag",
    "sgg-no-align": "fewshot_bench.sgg:SGGNoAlign",
}.items():
    register_method(_name, _target, overwrite=True)
