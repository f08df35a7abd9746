"""MAML and first-order MAML (FOMAML) with meta-training on source-pool episodes, on ``torch.func``.

One implementation, two registered methods: :class:`MAML` (second order: the meta-gradient
differentiates through the inner loop) and :class:`FOMAML` (``first_order = True``: the inner-loop
gradients are treated as constants, i.e. the Hessian terms are dropped). No learn2learn: the backbone
is called with ``torch.func.functional_call`` on a dict of tensors, inner gradients come from
``torch.func.vjp`` (backbone) and ``torch.func.grad_and_value`` (head), and the meta-gradient is
``torch.func.grad_and_value`` of the whole unrolled episode.

Head (label permutations change per episode, so a meta-learned head would be meaningless):
``head_init: proto`` (default, Proto-MAML, Triantafillou et al. 2020): the N-way linear head is
initialised from the class prototypes c_k (means of the support embeddings of class k) as
W_k = 2·c_k, b_k = −‖c_k‖² — the squared-Euclidean ProtoNet classifier — computed *inside* the
differentiable graph, so the outer loss also differentiates through the initialisation (in FOMAML
too: it is a first-order path). In the inner loop (W, b) are ordinary adapted variables: their
gradient, and the backbone's, are the partial derivatives of the support loss with the head held
fixed (plain fine-tuning from that initialisation). ``head_init: zero`` starts from W = 0, b = 0.
``head_scale`` s multiplies the initial (W, b): with s = 1 and one shot the support loss is already ~0
(each support vector *is* its prototype), so the inner loop has no gradient to follow and MAML equals
ProtoNet; s < 1 softens the logits so the inner loop changes predictions (s is in the search space,
chosen on validation episodes like the other fields).

Parameters:
* ``adapt_params`` (adapted in the inner loop, and at evaluation): ``top-k`` (default, k = ``top_k``
  = 1: the last transformer block plus anything after the blocks, e.g. GPT-2's ``ln_f``), ``all``
  (every backbone parameter) or ``head`` (only the prototype-initialised head). The head is always
  adapted. An unused BERT ``pooler`` is never included (pooling reads the last hidden state).
* ``meta_params`` (updated by the outer Adam): ``all`` (default: the whole backbone is meta-learned,
  as in Proto-MAML) or ``adapted`` (only the inner-loop parameters; far cheaper with ``top-k``).
* ``learn_inner_lr`` (Meta-SGD style, one rate per adapted tensor and for W and b): the rates are
  meta-learned as log-rates (so they stay positive) by the same Adam with learning rate ``inner_lr_lr``.

Inner loop: ``inner_steps`` plain SGD steps with ``inner_lr`` on the whole support set (evaluation:
``adapt_steps``, default the same). Outer loop: Adam (``outer_lr``) on the mean query loss of
``meta_batch`` source episodes per step, for ``meta_steps`` steps. The backbone runs in eval mode
(no dropout) in both loops, so meta-gradients are deterministic.

Meta-training runs once per (method config, backbone, source pool, seed): the meta-learned weights
(and inner rates) are cached as safetensors in ``<cache>/maml/<key>.safetensors``, cache =
``MetaContext.cache_dir``, else ``$FEWSHOT_BENCH_CACHE``, else ``~/.cache/fewshot_bench``; the key
hashes the config, first-order flag, backbone name, seed, autocast dtype and the fingerprints of the
first ``meta_batch`` source episodes. Early stopping (``val_every`` > 0 and a validation pool): every
``val_every`` meta-steps the current meta-state adapts to ``val_episodes`` validation-pool episodes
(indices from ``VALIDATION_OFFSET``, disjoint from those ``tune`` scores trials on) and its mean query
accuracy is measured; the best meta-state is kept, and meta-training stops after ``patience`` checks
without improvement. ``adapt`` starts from ``ctx.fresh_model()``, loads the
meta-learned weights (if any: without meta-training it is plain fine-tuning of the adapted
parameters from the pretrained weights), runs the inner loop on the support set — recording every
step — and predicts with the adapted backbone and head.

Second order needs double backward through attention, which SDPA lacks on CPU: ``MAML`` asks the
runner for eager attention; ``FOMAML`` keeps SDPA.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vjp

from fewshot_bench.backbone import Backbone, Batch
from fewshot_bench.config import option
from fewshot_bench.errors import UserError
from fewshot_bench.methods import (EpisodeContext, MetaContext, Method, MethodConfig, Predictor, derived_seed,
                                   first_per_class)
from fewshot_bench.progress import Progress
from fewshot_bench.search_space import Choice, Range, SearchSpace

log = logging.getLogger(__name__)

ADAPT_PARAMS = ("top-k", "all", "head")
META_PARAMS = ("all", "adapted")
HEAD_INITS = ("proto", "zero")
HEAD_W, HEAD_B = "head.weight", "head.bias"
CACHE_ENV = "FEWSHOT_BENCH_CACHE"
CACHE_FORMAT = 1
_LR_PREFIX = "inner_log_lr/"
VALIDATION_OFFSET = 100_000  # early-stopping episodes: validation-pool indices from here (tune scores 0, 1, ...)
BUCKET_OVERHEAD = 32  # tokens: what one extra forward group costs on CPU, in padded-token units

Tensors = Dict[str, torch.Tensor]


@dataclass
class MAMLConfig(MethodConfig):
    inner_steps: int = option(3, help="inner-loop SGD steps on the support set during meta-training", low=0)
    adapt_steps: int = option(-1, help="inner-loop steps at evaluation (-1: inner_steps)", low=-1)
    inner_lr: float = option(1e-2, help="inner-loop SGD learning rate (initial value when learn_inner_lr)", low=0)
    learn_inner_lr: bool = option(False, help="meta-learn one inner learning rate per adapted tensor (Meta-SGD style)")
    inner_lr_lr: float = option(1e-2, help="Adam learning rate of the learned log inner learning rates", low=0)
    adapt_params: str = option("top-k", help="parameters adapted in the inner loop: top-k (last top_k blocks + head), "
                                             "all, or head", choices=ADAPT_PARAMS)
    top_k: int = option(1, help="transformer blocks adapted with adapt_params=top-k (the last ones)", low=0)
    meta_params: str = option("all", help="parameters the outer loop meta-learns: all (backbone) or adapted", choices=META_PARAMS)
    head_init: str = option("proto", help="episode head: proto (W=2c_k, b=-|c_k|^2 from support prototypes) or zero", choices=HEAD_INITS)
    head_scale: float = option(1.0, help="multiplies the initial head (W, b): < 1 softens the prototype logits so a "
                                         "1-shot support loss is not ~0 before the inner loop (chosen by tune)", low=1e-12)
    meta_steps: int = option(25, help="outer-loop (Adam) steps of meta-training (25: about a minute per setting "
                                      "for fomaml and 1.5 for maml on a 2-core CPU with MiniLM)", low=0)
    meta_batch: int = option(2, help="source episodes per outer step", low=1)
    outer_lr: float = option(3e-5, help="outer-loop Adam learning rate", low=0)
    meta_query: int = option(5, help="query examples per class of each meta-training episode (0: the setting's "
                                     "q_query); 5 keeps a meta-step affordable on CPU", low=0)
    val_every: int = option(0, help="early stopping: check mean validation-pool accuracy every this many meta-steps, "
                                    "keep the best meta-state (0: off; meta_steps then is the exact length)", low=0)
    val_episodes: int = option(4, help="validation-pool episodes per early-stopping check", low=1)
    patience: int = option(3, help="early stopping: checks without improvement before meta-training stops", low=1)


# the meta-training budget is part of the space: on a GPU widen meta_steps (hundreds to thousands) with val_every
MAML_SPACE = SearchSpace({"head_scale": Range(1e-3, 1.0, log=True), "inner_lr": Range(1e-3, 1e-1, log=True),
                          "inner_steps": Choice((1, 3, 5)), "learn_inner_lr": Choice((False, True)),
                          "meta_steps": Choice((0, 25, 50)), "outer_lr": Range(1e-5, 1e-4, log=True)},
                         cost=("meta_steps", "inner_steps"))


# --------------------------------------------------------------------------------------------- functional core
class _Embedder(nn.Module):
    """Wraps a backbone model so that ``functional_call`` returns pooled vectors [B, H]."""

    def __init__(self, backbone: Backbone, model: nn.Module):
        super().__init__()
        self.model = model
        self._backbone = backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self._backbone.embed(self.model, Batch(input_ids, attention_mask))
        return out if out.dtype in (torch.float32, torch.float64) else out.float()


def _head_loss(e: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(e @ weight.T + bias, labels)


def init_head(e: torch.Tensor, labels: torch.Tensor, n_way: int, kind: str = "proto",
              scale: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Episode head from support embeddings ``e`` (differentiable): proto W_k = 2s·c_k, b_k = -s·|c_k|^2, or zeros."""
    if kind == "zero":
        return e.new_zeros(n_way, e.shape[1]), e.new_zeros(n_way)
    onehot = F.one_hot(labels, n_way).to(e.dtype)  # [B, N]
    protos = (onehot.T @ e) / onehot.sum(0).clamp_min(1.0).unsqueeze(1)
    return 2.0 * scale * protos, -scale * (protos * protos).sum(1)


def block_index(names: Sequence[str]) -> Tuple[Dict[str, int], int]:
    """{param name: transformer block index} for names inside the numbered block list, and the block count.

    The block list is the ``<prefix>.<i>.`` module list with the most distinct indices (``encoder.layer``
    for BERT-likes, ``h`` for GPT-2, ``layers`` for Llama-likes).
    """
    found: Dict[str, set] = {}
    for name in names:
        m = re.match(r"^(.*?)\.(\d+)\.", name)
        if m:
            found.setdefault(m.group(1), set()).add(int(m.group(2)))
    if not found:
        return {}, 0
    prefix = max(found, key=lambda p: len(found[p]))
    where = {}
    for name in names:
        m = re.match(rf"^{re.escape(prefix)}\.(\d+)\.", name)
        if m:
            where[name] = int(m.group(1))
    return where, max(found[prefix]) + 1


def adapted_names(names: Sequence[str], adapt_params: str, top_k: int) -> List[str]:
    """Backbone parameter names adapted in the inner loop (``names`` in registration order)."""
    names = [n for n in names if n.split(".", 1)[0] != "pooler"]  # unused: pooling reads the last hidden state
    if adapt_params == "all":
        return list(names)
    if adapt_params == "head" or top_k <= 0:
        return []
    where, count = block_index(names)
    if count == 0:
        raise UserError("maml: adapt_params=top-k found no numbered transformer blocks in this backbone; "
                        "use adapt_params=all or head")
    last_block = max(i for i, n in enumerate(names) if n in where)
    return [n for i, n in enumerate(names) if where.get(n, -1) >= count - top_k or (n not in where and i > last_block)]


def input_embedding_name(model: nn.Module) -> Optional[str]:
    """Name of the token-embedding weight when it can be cut to used rows (nn.Embedding, padding_idx None or 0)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if not isinstance(emb, nn.Embedding) or emb.padding_idx not in (None, 0) or emb.max_norm is not None:
        return None
    return next((n for n, p in model.named_parameters() if p is emb.weight), None)


def length_buckets(batch: Batch, overhead: int = BUCKET_OVERHEAD) -> List[Tuple[List[int], int]]:
    """Split rows into groups of similar length: [(row indices, group width)], minimising padded tokens.

    Exact dynamic programme over rows sorted by length, cost = Σ rows·width + overhead per group (the
    per-forward cost of a group, in tokens). Pooled vectors do not depend on padding (right-padded,
    masked), so running the groups separately changes results only by float rounding — and saves most
    of the matmul work on short texts padded to a long one (banking77: ~60% of the tokens are padding).
    """
    lengths = batch.attention_mask.sum(1).tolist()
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[order[j - 1]]
        for i in range(j):
            cost = best[i] + (j - i) * width + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups = []
    j = n
    while j > 0:
        i = cut[j]
        groups.append((order[i:j], max(1, int(lengths[order[j - 1]]))))
        j = i
    return groups[::-1]


class InnerLoop:
    """The functional MAML inner loop and episode loss for one backbone model (the template).

    ``params`` dicts map every backbone parameter name to a tensor; the template module's own
    parameters are never read by the forward passes, only its structure.
    """

    def __init__(self, backbone: Backbone, model: nn.Module, adapt: Sequence[str], head_init: str = "proto",
                 autocast: Optional[Callable] = None, bucket: Optional[bool] = None, sparse_rows: bool = True,
                 head_scale: float = 1.0):
        self.backbone = backbone
        self.bucket = bucket  # None: length buckets on CPU only
        self.embedder = _Embedder(backbone, model)
        self.adapt = list(adapt)
        self.head_init = head_init
        self.head_scale = head_scale
        self.autocast = autocast
        self.emb_name = input_embedding_name(model) if sparse_rows else None

    def used_rows(self, params: Tensors, *batches: Batch):
        """(params with the token-embedding matrix cut to the rows the batches use, remapped batches, rows).

        Exact: rows of tokens absent from the episode get no inner gradient and do not enter any forward,
        so adapting / differentiating the [R, H] row block (one gather, one scatter in the outer backward)
        equals doing it on the [V, H] matrix — without a dense V×H gradient at every forward. With
        padding_idx 0 the pad row stays row 0 (the smallest id), so F.embedding still leaves it untrained.
        """
        if self.emb_name is None or self.emb_name not in params:
            return params, batches, None
        ids = [b.input_ids.reshape(-1) for b in batches]
        rows = torch.unique(torch.cat(ids + [ids[0].new_zeros(1)]))  # sorted; includes the pad id 0
        remapped = tuple(Batch(torch.searchsorted(rows, b.input_ids), b.attention_mask, b.labels) for b in batches)
        return {**params, self.emb_name: params[self.emb_name][rows]}, remapped, rows

    def lr_names(self) -> List[str]:
        return self.adapt + [HEAD_W, HEAD_B]

    def embed(self, params: Tensors, batch: Batch) -> torch.Tensor:
        """Pooled vectors [B, H] of ``batch`` under ``params``; on CPU, rows run in length buckets."""
        full = {"model." + n: t for n, t in params.items()}
        with self.autocast() if self.autocast is not None else contextlib.nullcontext():
            bucket = batch.input_ids.device.type == "cpu" if self.bucket is None else self.bucket
            groups = length_buckets(batch) if bucket else None
            if not groups or len(groups) == 1:
                width = int(batch.attention_mask.sum(1).max()) if groups else batch.input_ids.shape[1]
                return functional_call(self.embedder, full, (batch.input_ids[:, :width], batch.attention_mask[:, :width]))
            outs, order = [], []
            for rows, width in groups:
                index = torch.tensor(rows, device=batch.input_ids.device)
                outs.append(functional_call(self.embedder, full, (batch.input_ids[index, :width],
                                                                  batch.attention_mask[index, :width])))
                order += rows
            inverse = torch.empty(len(order), dtype=torch.long, device=batch.input_ids.device)
            inverse[torch.tensor(order, device=inverse.device)] = torch.arange(len(order), device=inverse.device)
            return torch.cat(outs)[inverse]

    def step(self, params: Tensors, head: Optional[Tuple[torch.Tensor, torch.Tensor]], support: Batch, n_way: int,
             cached: Optional[torch.Tensor] = None):
        """One inner-step gradient: (loss, {name: grad}, (gW, gb), head, embeddings).

        The gradients are partial derivatives of the support loss w.r.t. the adapted tensors and the head
        (head held fixed for the backbone part). ``head`` None: initialise it from this step's embeddings.
        ``cached``: the support embeddings when nothing in the backbone adapts (they do not change).
        """
        fast = {n: params[n] for n in self.adapt}
        pull = None
        if cached is not None:
            e = cached
        elif fast:
            e, pull = vjp(lambda f: self.embed({**params, **f}, support), fast)
        else:
            e = self.embed(params, support)
        if head is None:
            head = init_head(e, support.labels, n_way, self.head_init, self.head_scale)
        (g_e, g_w, g_b), loss = grad_and_value(_head_loss, argnums=(0, 1, 2))(e, head[0], head[1], support.labels)
        grads = pull(g_e)[0] if pull is not None else {}
        return loss, grads, (g_w, g_b), head, e

    def episode_loss(self, params: Tensors, lrs: Dict[str, torch.Tensor], support: Batch, query: Batch, n_way: int,
                     steps: int, first_order: bool) -> torch.Tensor:
        """Query loss after ``steps`` inner SGD steps from ``params`` (differentiable w.r.t. params and lrs).

        first_order: inner gradients are constants (detached); forward passes after step 0 run on detached
        copies (they only feed those constants), so the outer graph holds step 0 (the head init) and the query.
        """
        params, (support, query), _ = self.used_rows(dict(params), support, query)
        head = None
        cached = None
        for t in range(steps):
            plain = first_order and t > 0
            if plain:
                use_params = {n: v.detach() for n, v in params.items()}
                use_head = (head[0].detach(), head[1].detach())
                use_cached = None if cached is None else cached.detach()
            else:
                use_params, use_head, use_cached = params, head, cached
            _, grads, (g_w, g_b), new_head, e = self.step(use_params, use_head, support, n_way, use_cached)
            if head is None:
                head = new_head
            if not self.adapt:
                cached = e if cached is None else cached
            if first_order:
                grads = {n: g.detach() for n, g in grads.items()}
                g_w, g_b = g_w.detach(), g_b.detach()
            for n in self.adapt:
                params[n] = params[n] - lrs[n] * grads[n]
            head = (head[0] - lrs[HEAD_W] * g_w, head[1] - lrs[HEAD_B] * g_b)
        if head is None:
            head = init_head(self.embed(params, support), support.labels, n_way, self.head_init, self.head_scale)
        return _head_loss(self.embed(params, query), head[0], head[1], query.labels)


# --------------------------------------------------------------------------------------------- cache helpers
def cache_root(cache_dir: Optional[str] = None) -> Path:
    root = cache_dir or os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "fewshot_bench")
    return Path(root)


def _save(path: Path, tensors: Tensors, metadata: Dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none


def _load_checked(path: Path, payload: dict, expected: Dict[str, tuple]) -> Optional[Tuple[Tensors, Dict[str, str]]]:
    """(tensors, string metadata) cached at ``path`` if the file was written for ``payload`` (its metadata) and
    holds exactly the ``expected`` names and shapes; otherwise None, logged (the caller meta-trains again and
    overwrites it)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # unreadable or not safetensors
        log.warning("cached meta-trained weights %s unreadable (%s); meta-training again", path, exc)
        return None
    if metadata.get("payload") != json.dumps(payload, sort_keys=True, default=str):
        problem = "it was written for another configuration"
    elif set(tensors) != set(expected):
        problem = f"its tensor names differ from this model's ({len(tensors)} vs {len(expected)})"
    else:
        wrong = [n for n, t in tensors.items() if tuple(t.shape) != expected[n]]
        problem = f"tensor {wrong[0]} has shape {tuple(tensors[wrong[0]].shape)}, expected {expected[wrong[0]]}" \
            if wrong else None
    if problem:
        log.warning("cached meta-trained weights %s not used: %s; meta-training again", path, problem)
        return None
    return tensors, metadata


# --------------------------------------------------------------------------------------------- the methods
class MAML(Method):
    """Second-order MAML (Proto-MAML head by default); see the module docstring."""

    name = "maml"
    config_class = MAMLConfig
    search_space = MAML_SPACE
    protocol = "meta-trained"
    attn_implementation = "eager"  # double backward through attention (SDPA has none on CPU)
    first_order: ClassVar[bool] = False

    def __init__(self, config=None):
        super().__init__(config)
        self.meta_state: Optional[Tensors] = None     # meta-learned backbone tensors (name -> tensor, on CPU)
        self.inner_lrs: Optional[Dict[str, float]] = None  # learned inner rates (learn_inner_lr)
        self.cache_path: Optional[Path] = None
        self.meta_losses: List[float] = []

    head_scale: float = option(1.0, help="multiplies the initial head (W, b): < 1 softens the prototype logits so a "
                                         "1-shot support loss is not ~0 before the inner loop (chosen by tune)", low=1e-12)
    def inner_loop(self, backbone: Backbone, model: nn.Module, autocast=None) -> InnerLoop:
        names = [n for n, _ in model.named_parameters()]
        return InnerLoop(backbone, model, adapted_names(names, self.config.adapt_params, self.config.top_k),
                         self.config.head_init, autocast, head_scale=self.config.head_scale)

    def meta_param_names(self, model: nn.Module, loop: InnerLoop) -> List[str]:
        if self.config.meta_params == "adapted":
            return list(loop.adapt)
        return adapted_names([n for n, _ in model.named_parameters()], "all", 0)

    def _lr_of(self, name: str) -> float:
        if self.inner_lrs is not None and name in self.inner_lrs:
            return float(self.inner_lrs[name])
        return float(self.config.inner_lr)

    # ------------------------------------------------------------------ meta-gradient (also used by tests/bench)
    def meta_gradient(self, loop: InnerLoop, params: Tensors, meta_names: Sequence[str], support: Batch, query: Batch,
                      n_way: int, log_lrs: Optional[Tensors] = None, steps: Optional[int] = None):
        """(query loss, {meta name: d loss / d param}, {lr name: d loss / d log lr} or None) for one episode.

        ``params``: all backbone tensors (any requires_grad state); ``log_lrs`` given: differentiate the
        log inner learning rates too (otherwise the configured inner_lr / learned rates are constants).
        """
        steps = self.config.inner_steps if steps is None else steps
        meta = {n: params[n].detach() for n in meta_names}
        rest = {n: t.detach() for n, t in params.items() if n not in meta}

        def loss_fn(meta_part, log_lr_part):
            if log_lr_part is None:
                lrs = {n: self._lr_of(n) for n in loop.lr_names()}
            else:
                lrs = {n: log_lr_part[n].exp() for n in loop.lr_names()}
            return loop.episode_loss({**rest, **meta_part}, lrs, support, query, n_way, steps, self.first_order)

        if log_lrs is None:
            grads, loss = grad_and_value(loss_fn)(meta, None)
            return loss.detach(), grads, None
        (grads, lr_grads), loss = grad_and_value(loss_fn, argnums=(0, 1))(meta, {n: v.detach() for n, v in log_lrs.items()})
        return loss.detach(), grads, lr_grads

    # ------------------------------------------------------------------ meta-training
    def cache_key(self, ctx: MetaContext, first_episodes) -> Tuple[str, dict]:
        payload = {"format": CACHE_FORMAT, "method": "fomaml" if self.first_order else "maml",
                   "config": self.config_dict(), "backbone": ctx.backbone.name, "seed": ctx.seed,
                   "autocast": str(ctx.autocast_dtype), "source": [ep.fingerprint for ep in first_episodes]}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24], payload

    def meta_train(self, ctx: MetaContext) -> None:
        """Meta-train on ctx.source_episode(0, 1, ...), or load the cached result of an identical run."""
        cfg = self.config
        first = [ctx.source_episode(i) for i in range(cfg.meta_batch)]
        key, payload = self.cache_key(ctx, first)
        path = cache_root(ctx.cache_dir) / "maml" / f"{key}.safetensors"
        self.cache_path = path
        started = time.perf_counter()
        model = ctx.fresh_model().eval()
        for p in model.parameters():
            p.requires_grad_(False)
        loop = self.inner_loop(ctx.backbone, model, ctx.autocast if ctx.autocast_dtype is not None else None)
        meta_names = self.meta_param_names(model, loop)
        named = dict(model.named_parameters())
        expected = {n: tuple(named[n].shape) for n in meta_names}
        if cfg.learn_inner_lr:
            expected.update({_LR_PREFIX + n: () for n in loop.lr_names()})
        cached = _load_checked(path, payload, expected) if path.is_file() else None
        if cached is not None:
            state, metadata = cached
            self._set_state(state)
            if "meta_train_seconds" in metadata:  # wall time of the training that wrote the file
                self.meta_train_seconds = float(metadata["meta_train_seconds"])
            log.info("loaded meta-trained weights from %s", path)
            return
        meta = [named[n] for n in meta_names]
        groups = [{"params": meta, "lr": cfg.outer_lr}]
        log_lrs = None
        if cfg.learn_inner_lr:
            log_lrs = {n: torch.tensor(math.log(cfg.inner_lr), device=ctx.device) for n in loop.lr_names()}
            groups.append({"params": list(log_lrs.values()), "lr": cfg.inner_lr_lr})
        optimizer = torch.optim.Adam(groups)
        self.meta_losses, self.validation_curve = [], []

        def snapshot() -> Tensors:
            state = {n: named[n].detach().to("cpu").clone() for n in meta_names}
            if log_lrs is not None:
                state.update({_LR_PREFIX + n: v.detach().to("cpu").clone() for n, v in log_lrs.items()})
            return state

        early_stopping = cfg.val_every > 0 and ctx.validation_episode is not None
        best, best_state, stale = -1.0, None, 0
        bar = Progress(cfg.meta_steps, f"meta-train {'fomaml' if self.first_order else 'maml'}", unit="step")
        for step in range(cfg.meta_steps):
            batches = first if step == 0 else [ctx.source_episode(step * cfg.meta_batch + j) for j in range(cfg.meta_batch)]
            loss = self.meta_step(loop, named, meta_names, optimizer,
                                  [(ctx.batch(ep, "support"), self._meta_query(ctx, ep), ep.n_way) for ep in batches],
                                  log_lrs)
            self.meta_losses.append(loss)
            bar.set_current(f"query_loss={loss:.4f}")
            bar.update(1)
            if early_stopping and ((step + 1) % cfg.val_every == 0 or step + 1 == cfg.meta_steps):
                state = snapshot()
                accuracy = self.validation_accuracy(ctx, state)
                self.validation_curve.append((step + 1, accuracy))
                best, best_state, stale = ((accuracy, state, 0) if accuracy > best else (best, best_state, stale + 1))
                if stale >= cfg.patience:
                    log.info("meta-training stops at step %d: no validation gain in %d checks", step + 1, stale)
                    break
        bar.close()
        state = best_state if best_state is not None else snapshot()
        self._set_state(state)
        try:
            self.meta_train_seconds = time.perf_counter() - started
            _save(path, state, {"payload": json.dumps(payload, sort_keys=True, default=str),
                                "meta_train_seconds": repr(self.meta_train_seconds)})
            log.info("saved meta-trained weights to %s", path)
        except OSError as exc:
            log.warning("could not cache meta-trained weights at %s: %s", path, exc)

    def validation_accuracy(self, ctx: MetaContext, state: Tensors) -> float:
        """Mean query accuracy after adapting from meta-state ``state`` to the early-stopping validation episodes."""
        self._set_state(state)
        correct = total = 0
        for i in range(self.config.val_episodes):
            episode = ctx.validation_episode(VALIDATION_OFFSET + i)
            episode_ctx = EpisodeContext(ctx.backbone, episode, derived_seed(ctx.seed, "maml-validation", i),
                                         autocast_dtype=ctx.autocast_dtype)
            predictor = self.adapt(episode_ctx)
            with torch.no_grad():
                predictions = predictor.predict(episode_ctx.batch(episode, "query")).argmax(-1).cpu()
            correct += int((predictions == torch.tensor(episode.query_labels)).sum())
            total += len(episode.query_labels)
        return correct / total

    def _meta_query(self, ctx: MetaContext, episode) -> Batch:
        query = ctx.batch(episode, "query")
        if self.config.meta_query <= 0:
            return query
        keep = first_per_class(episode.query_labels, self.config.meta_query)
        return query.subset(torch.tensor(keep, device=query.input_ids.device))

    def meta_step(self, loop: InnerLoop, named: Dict[str, nn.Parameter], meta_names: Sequence[str],
                  optimizer: torch.optim.Optimizer, episodes: Sequence[Tuple[Batch, Batch, int]],
                  log_lrs: Optional[Tensors] = None) -> float:
        """One outer Adam step on the mean query loss of ``episodes`` [(support, query, n_way)]; returns that loss."""
        total = 0.0
        acc: Dict[str, torch.Tensor] = {}
        acc_lr: Dict[str, torch.Tensor] = {}
        scale = 1.0 / len(episodes)
        for support, query, n_way in episodes:
            loss, grads, lr_grads = self.meta_gradient(loop, named, meta_names, support, query, n_way, log_lrs)
            total += float(loss) * scale
            for n, g in grads.items():
                acc[n] = acc[n].add_(g, alpha=scale) if n in acc else g.detach() * scale
            for n, g in (lr_grads or {}).items():
                acc_lr[n] = acc_lr[n].add_(g, alpha=scale) if n in acc_lr else g.detach() * scale
        for n in meta_names:
            named[n].grad = acc[n]
        if log_lrs is not None:
            for n, v in log_lrs.items():
                v.grad = acc_lr[n]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    def _set_state(self, state: Tensors) -> None:
        self.meta_state = {n: t for n, t in state.items() if not n.startswith(_LR_PREFIX)}
        lrs = {n[len(_LR_PREFIX):]: float(t.exp()) for n, t in state.items() if n.startswith(_LR_PREFIX)}
        self.inner_lrs = lrs or None

    # ------------------------------------------------------------------ evaluation
    def adapt(self, ctx: EpisodeContext) -> Predictor:
        cfg = self.config
        steps = cfg.inner_steps if cfg.adapt_steps < 0 else cfg.adapt_steps
        model = ctx.fresh_model().eval()
        for p in model.parameters():
            p.requires_grad_(False)
        named = dict(model.named_parameters())
        if self.meta_state:
            with torch.no_grad():
                for n, t in self.meta_state.items():
                    named[n].copy_(t)
        loop = self.inner_loop(ctx.backbone, model, ctx.autocast if ctx.autocast_dtype is not None else None)
        # updated in place (the recorder sees the trajectory); an adapted token-embedding matrix is cut to
        # the support's rows and written back after the loop (other rows get no gradient)
        params, support, rows = dict(named), ctx.support, None
        if loop.emb_name in loop.adapt and steps > 0:
            params, (support,), rows = loop.used_rows(params, ctx.support)
        lrs = {n: self._lr_of(n) for n in loop.lr_names()}
        head, cached = None, None
        for _ in range(steps):
            loss, grads, (g_w, g_b), new_head, e = loop.step(params, head, support, ctx.n_way, cached)
            if head is None:
                head = (new_head[0].detach().clone(), new_head[1].detach().clone())
            if not loop.adapt:
                cached = e
            tensors = [params[n] for n in loop.adapt] + list(head)
            ctx.recorder.record(loss, tensors, grads=[grads[n] for n in loop.adapt] + [g_w, g_b])
            with torch.no_grad():
                for n in loop.adapt:
                    params[n].sub_(grads[n], alpha=lrs[n])
                head[0].sub_(g_w, alpha=lrs[HEAD_W])
                head[1].sub_(g_b, alpha=lrs[HEAD_B])
        if rows is not None:
            with torch.no_grad():
                named[loop.emb_name].index_copy_(0, rows, params[loop.emb_name])
        if head is None:
            with torch.no_grad():
                head = init_head(loop.embed(named, ctx.support), ctx.support.labels, ctx.n_way, cfg.head_init,
                                 cfg.head_scale)
        weight, bias = head

        def predict(batch: Batch) -> torch.Tensor:
            return ctx.embed(model, batch) @ weight.T + bias

        trainable = sum(named[n].numel() for n in loop.adapt) + weight.numel() + bias.numel()
        return Predictor(predict, trainable)


class FOMAML(MAML):
    """First-order MAML: same implementation with the inner-loop gradients treated as constants."""

    name = "fomaml"
    attn_implementation = "sdpa"
    first_order = True
