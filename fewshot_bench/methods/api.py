"""The public method (adapter) API: :class:`Method`, :class:`MethodConfig`, :class:`Predictor` and the
contexts a method is given (:class:`EpisodeContext` while adapting, :class:`MetaContext` while meta-training).

A method subclasses :class:`Method`, sets ``config_class`` (a dataclass with defaults and help text)
and implements ``adapt(ctx) -> Predictor``. Methods that learn from source-pool episodes also implement
``meta_train(ctx)`` and set ``protocol = "meta-trained"``. Per-episode figures a method reports go in
``ctx.figures`` under the names it declares in ``figures``, a tuple of :class:`Figure` (name, range, help,
aggregate, decimals; checked when the method is built, names other than the harness's). The harness checks each
reported value (a finite number in its declared range, or None) and keeps figures apart from its own measurements
(accuracy, losses, timings): an undeclared or bad figure fails the episode. The store keeps them in its figures
table and the leaderboard shows one column per declared figure. Register with ``@register_method("name")``,
the ``fewshot_bench.methods.api`` entry-point group, or ``--methods path/to/file.py:Class``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .backbone import Backbone, Batch
from ..episodes.sampling import Episode
from ..core.config import validate
from ..core.errors import UserError
from ..core.hashing import config_hash
from ..store.schema import Figure
from .metrics import GradientRecorder
from .search_space import SearchSpace
from ..episodes.sealed import EpisodeView


@dataclass
class MethodConfig:
    """Base for method configs (subclass it and add fields with ``fewshot_bench.core.config.option``, with limits
    ``low``/``high``/``choices`` where a value can be wrong). Types and limits are checked at construction."""

    def __post_init__(self):
        validate(self, f"method config {type(self).__name__}")


@dataclass
class Predictor:
    """What ``adapt`` returns: ``predict(batch) -> logits [B, n_way]``, and how many parameters were trained.

    ``initial`` (optional): the same classifier before the method's training steps (e.g. MAML's meta-learned
    model with its initial episode head). Given it, the harness measures how much adaptation did: the support
    loss before and after, and the share of query predictions adaptation changed."""
    predict: Callable[[Batch], torch.Tensor]
    trainable_params: int = 0
    initial: Optional[Callable[[Batch], torch.Tensor]] = None


class Method:
    """Base class of adaptation methods."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = MethodConfig
    protocol: ClassVar[str] = "target-only"  # or "source-guided" (uses source-pool data while adapting), "meta-trained"
    attn_implementation: ClassVar[str] = "sdpa"  # "eager" when the method needs double backward
    search_space: ClassVar[Optional[SearchSpace]] = None  # what ``tune`` may choose; None: runs its defaults
    opt_in: ClassVar[bool] = False  # True: run only when named, not by `--methods all` (optional extra, backbone kind)
    figures: ClassVar[Tuple[Figure, ...]] = ()  # what the method may report in ctx.figures (name, range, help, ...)

    def __init__(self, config=None):
        self.config = config if config is not None else self.config_class()

    def meta_train(self, ctx: "MetaContext") -> None:
        """Learn from source-pool episodes before evaluation (optional)."""

    def state_dict(self) -> Optional[Dict[str, torch.Tensor]]:
        """What ``meta_train`` learned, as named tensors: the runner caches it on disk (keyed by the run hash)
        and gives it to ``load_state_dict`` in later runs and other ranks instead of meta-training again.
        None (the default): nothing to cache; the method is meta-trained in every process that evaluates it."""
        return None

    def state_shapes(self, backbone: Backbone) -> Optional[Dict[str, tuple]]:
        """{name: shape} of the tensors ``state_dict`` holds after meta-training on ``backbone``: a cached state
        is loaded only if it matches. None (the default): names and shapes are not checked."""
        return None

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned after ``meta_train``."""
        raise NotImplementedError(f"{type(self).__name__} returns a state_dict but cannot load one")

    def adapt(self, ctx: "EpisodeContext") -> Predictor:
        raise NotImplementedError

    def config_dict(self) -> dict:
        return dataclasses.asdict(self.config)

    def config_hash(self) -> str:
        """Hash of the method name and its config (what distinguishes two configurations of a method)."""
        return config_hash({"method": self.name, "config": self.config_dict()})


class _Shared:
    def __init__(self, backbone: Backbone, seed: int, autocast_dtype: Optional[torch.dtype] = None):
        self.backbone = backbone
        self.device = backbone.device
        self.seed = seed
        self.autocast_dtype = autocast_dtype
        self.models: List[nn.Module] = []  # what fresh_model handed out

    def fresh_model(self) -> nn.Module:
        """A trainable copy of the pretrained backbone (:meth:`Backbone.fresh_model`); an episode's are handed
        back for reuse by the harness when the episode is over."""
        model = self.backbone.fresh_model()
        self.models.append(model)
        return model

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

    ``episode`` is an :class:`~fewshot_bench.episodes.sealed.EpisodeView` (an :class:`Episode` passed in is reduced
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
        self.figures: Dict[str, float] = {}  # per-episode figures the method reports (declared in Method.figures)
        self._source_episodes = source_episodes

    def source_episode(self, index: int) -> Episode:
        """Episode ``index`` of the source pool (same shape); raises when the setting has no source task."""
        if self._source_episodes is None:
            raise UserError("this setting has no source pool to draw from")
        return self._source_episodes(index)

    @property
    def has_source(self) -> bool:
        return self._source_episodes is not None


class MetaContext(_Shared):
    """What ``meta_train`` gets: the backbone, functions index -> source-pool episode and index -> validation-pool
    episode (for early stopping; None when the setting has no validation pool)."""

    def __init__(self, backbone: Backbone, seed: int, source_episodes: Callable[[int], Episode], *, autocast_dtype=None,
                 validation_episodes: Optional[Callable[[int], Episode]] = None):
        super().__init__(backbone, seed, autocast_dtype)
        self.source_episode = source_episodes
        self.validation_episode = validation_episodes
