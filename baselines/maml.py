"""MAML and first-order MAML (FOMAML) with meta-training on source-pool episodes, on ``torch.func``.

One implementation, two registered methods: :class:`MAML` (second order: the meta-gradient
differentiates through the inner loop) and :class:`FOMAML` (``first_order = True``: the inner-loop
gradients are treated as constants, i.e. the Hessian terms are dropped). No learn2learn: the backbone
is called with ``torch.func.functional_call`` on a dict of tensors, inner gradients come from
``torch.func.vjp`` (backbone) and ``torch.func.grad_and_value`` (head), and the meta-gradient is
``torch.func.grad_and_value`` of the whole unrolled episode.

Head (label permutations change per episode, so a meta-learned head would be meaningless):
``head_init: zero`` (default, as in MAML for text classification): the N-way linear head starts at W = 0,
b = 0, so the un-adapted model scores every class alike (support loss ln N) and every prediction comes from the
inner loop. ``head_init: proto`` (Proto-MAML, Triantafillou et al. 2020) initialises the head from the class
prototypes c_k (means of the support embeddings of class k) as W_k = 2·c_k, b_k = −‖c_k‖² — the
squared-Euclidean ProtoNet classifier — computed *inside* the differentiable graph, so the outer loss also
differentiates through the initialisation (in FOMAML too: it is a first-order path); ``head_scale`` s multiplies
that initial (W, b). With s = 1 and one shot the support loss is ~0 (each support vector *is* its prototype and
MiniLM's pooled vectors have norm 5-6), so the inner loop has no gradient to follow and MAML equals a
meta-trained ProtoNet; at s = 0.003 (the 0.4 default) the loss starts near ln 5 but, after meta-training,
adaptation changed only 2-4% of the in-domain query predictions (the prototypes already decided them). In the
inner loop (W, b) are ordinary adapted variables: their gradient, and the backbone's, are the partial
derivatives of the support loss with the head held fixed.
The defaults ``head_init`` zero and ``inner_lr`` 0.3 were chosen on validation-pool episodes only, after the
default meta-training (banking77 and hwu64 fold 1, 5-way 1-shot, 30 episodes each, against the proto head at
s = 0.003 with inner_lr 0.03 and the zero head at inner_lr 0.03; ``leaderboard/tuning/maml_head_init.md``):
the zero head at 0.3 was the most accurate on both (+3.9 and +0.8 points), and its inner loop takes the support
loss from ln 5 to 0.03-0.06. The harness measures what adaptation did on every episode (``Predictor.initial``:
support loss before and after, share of query predictions changed).

Parameters:
* ``adapt_params`` (adapted in the inner loop, and at evaluation): ``top-k`` (default, k = ``top_k``
  = 1: the last transformer block plus anything after the blocks, e.g. GPT-2's ``ln_f``), ``all``
  (every backbone parameter) or ``head`` (only the episode head). The head is always
  adapted. An unused BERT ``pooler`` is never included (pooling reads the last hidden state).
* ``meta_params`` (updated by the outer Adam): ``all`` (default: the whole backbone is meta-learned,
  as in Proto-MAML) or ``adapted`` (only the inner-loop parameters; far cheaper with ``top-k``).
* ``learn_inner_lr`` (Meta-SGD style, one rate per adapted tensor and for W and b): the rates are
  meta-learned as log-rates (so they stay positive) by the same Adam with learning rate ``inner_lr_lr``.

Inner loop: ``inner_steps`` plain SGD steps with ``inner_lr`` on the whole support set (evaluation:
``adapt_steps``, default the same). Outer loop: Adam (``outer_lr``) on the mean query loss of
``meta_batch`` source episodes per step, for ``meta_steps`` steps. The backbone runs in eval mode
(no dropout) in both loops, so meta-gradients are deterministic.

Meta-training produces :meth:`MAML.state_dict` (the meta-learned weights and inner rates), which the
runner caches on disk per run (:mod:`fewshot_bench.execution.meta_cache`) and loads with :meth:`MAML.load_state_dict`.
The functional inner loop is :mod:`baselines.maml_inner`; the architecture helpers (which parameters are
in the top blocks, length buckets, the token-embedding matrix) are in :mod:`fewshot_bench.methods.architecture`.
Early stopping (``val_every`` > 0 and a validation pool): every ``val_every`` meta-steps the current
meta-state adapts to ``val_episodes`` validation-pool episodes (indices from ``VALIDATION_OFFSET``,
disjoint from those ``tune`` scores trials on) and its mean query accuracy is measured; the best
meta-state is kept, and meta-training stops after ``patience`` checks without improvement.
``adapt`` starts from ``ctx.fresh_model()``, loads the
meta-learned weights (if any: without meta-training it is plain fine-tuning of the adapted
parameters from the pretrained weights), runs the inner loop on the support set — recording every
step — and predicts with the adapted backbone and head.

Second order needs double backward through attention, which SDPA lacks on CPU: ``MAML`` asks the
runner for eager attention; ``FOMAML`` keeps SDPA.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.func import grad_and_value

from fewshot_bench.methods.architecture import adapted_names
from fewshot_bench.methods.backbone import Backbone, Batch
from fewshot_bench.baselines.maml_inner import HEAD_B, HEAD_W, InnerLoop, Tensors, init_head
from fewshot_bench.core.config import option
from fewshot_bench.core.hashing import derived_seed
from fewshot_bench.methods import EpisodeContext, MetaContext, Method, MethodConfig, Predictor
from fewshot_bench.core.progress import Progress
from fewshot_bench.methods.search_space import Choice, Range, SearchSpace
from fewshot_bench.methods.training import first_per_class

log = logging.getLogger(__name__)

ADAPT_PARAMS = ("top-k", "all", "head")
META_PARAMS = ("all", "adapted")
HEAD_INITS = ("proto", "zero")
_LR_PREFIX = "inner_log_lr/"
VALIDATION_OFFSET = 100_000  # early-stopping episodes: validation-pool indices from here (tune scores 0, 1, ...)


@dataclass
class MAMLConfig(MethodConfig):
    inner_steps: int = option(3, help="inner-loop SGD steps on the support set during meta-training", low=0)
    adapt_steps: int = option(-1, help="inner-loop steps at evaluation (-1: inner_steps)", low=-1)
    inner_lr: float = option(0.3, help="inner-loop SGD learning rate (initial value when learn_inner_lr)", low=0)
    learn_inner_lr: bool = option(False, help="meta-learn one inner learning rate per adapted tensor (Meta-SGD style)")
    inner_lr_lr: float = option(1e-2, help="Adam learning rate of the learned log inner learning rates", low=0)
    adapt_params: str = option("top-k", help="parameters adapted in the inner loop: top-k (last top_k blocks + head), "
                                             "all, or head", choices=ADAPT_PARAMS)
    top_k: int = option(1, help="transformer blocks adapted with adapt_params=top-k (the last ones)", low=0)
    meta_params: str = option("all", help="parameters the outer loop meta-learns: all (backbone) or adapted",
                              choices=META_PARAMS)
    head_init: str = option("zero", help="episode head: zero (W=0, b=0: the inner loop learns it) or proto "
                                         "(W=2c_k, b=-|c_k|^2 from support prototypes)", choices=HEAD_INITS)
    head_scale: float = option(3e-3, help="head_init=proto: multiplies the initial head (W, b); < 1 softens the "
                                          "prototype logits so a 1-shot support loss is not ~0 before the inner loop",
                               low=1e-12)
    meta_steps: int = option(25, help="outer-loop (Adam) steps of meta-training", low=0)
    meta_batch: int = option(2, help="source episodes per outer step", low=1)
    outer_lr: float = option(3e-5, help="outer-loop Adam learning rate", low=0)
    meta_query: int = option(5, help="query examples per class of each meta-training episode (0: the setting's "
                                     "q_query); 5 keeps a meta-step affordable on CPU", low=0)
    val_every: int = option(0, help="early stopping: check mean validation-pool accuracy every this many meta-steps, "
                                    "keep the best meta-state (0: off; meta_steps then is the exact length)", low=0)
    val_episodes: int = option(4, help="validation-pool episodes per early-stopping check", low=1)
    patience: int = option(3, help="early stopping: checks without improvement before meta-training stops", low=1)


# the meta-training budget is part of the space: on a GPU widen meta_steps (hundreds to thousands) with val_every
MAML_SPACE = SearchSpace({"head_init": Choice(HEAD_INITS), "head_scale": Range(1e-3, 1.0, log=True),
                          "inner_lr": Range(1e-3, 1.0, log=True),
                          "inner_steps": Choice((1, 3, 5)), "learn_inner_lr": Choice((False, True)),
                          "meta_steps": Choice((0, 25, 50)), "outer_lr": Range(1e-5, 1e-4, log=True)},
                         cost=("meta_steps", "inner_steps"))


class MAML(Method):
    """Second-order MAML (zero-initialised episode head by default); see the module docstring."""

    name = "maml"
    config_class = MAMLConfig
    search_space = MAML_SPACE
    protocol = "meta-trained"
    attn_implementation = "eager"  # double backward through attention (SDPA has none on CPU)
    first_order: ClassVar[bool] = False

    def __init__(self, config=None):
        super().__init__(config)
        self._state: Optional[Tensors] = None         # what meta-training produced (state_dict)
        self.meta_state: Optional[Tensors] = None     # meta-learned backbone tensors (name -> tensor, on CPU)
        self.inner_lrs: Optional[Dict[str, float]] = None  # learned inner rates (learn_inner_lr)
        self.meta_losses: List[float] = []
        self.validation_curve: List[Tuple[int, float]] = []  # (meta-step, validation accuracy) of early stopping

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
    def meta_train(self, ctx: MetaContext) -> None:
        """Meta-train on ctx.source_episode(0, 1, ...) (early stopping on ctx.validation_episode when ``val_every``
        > 0); the result is :meth:`state_dict`."""
        cfg = self.config
        first = [ctx.source_episode(i) for i in range(cfg.meta_batch)]
        model = ctx.fresh_model().eval()
        for p in model.parameters():
            p.requires_grad_(False)
        loop = self.inner_loop(ctx.backbone, model, ctx.autocast if ctx.autocast_dtype is not None else None)
        meta_names = self.meta_param_names(model, loop)
        named = dict(model.named_parameters())
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
        self.load_state_dict(best_state if best_state is not None else snapshot())

    def validation_accuracy(self, ctx: MetaContext, state: Tensors) -> float:
        """Mean query accuracy after adapting from meta-state ``state`` to the early-stopping validation episodes."""
        self.load_state_dict(state)
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

    def state_dict(self) -> Optional[Tensors]:
        """The meta-learned backbone tensors and (``learn_inner_lr``) log inner rates, on CPU; None before
        meta-training."""
        return self._state

    def state_shapes(self, backbone: Backbone) -> Dict[str, tuple]:
        """Names and shapes of :meth:`state_dict` for ``backbone``: the meta-learned tensors and the log inner rates."""
        model = backbone.pristine
        loop = self.inner_loop(backbone, model)
        named = dict(model.named_parameters())
        shapes = {n: tuple(named[n].shape) for n in self.meta_param_names(model, loop)}
        if self.config.learn_inner_lr:
            shapes.update({_LR_PREFIX + n: () for n in loop.lr_names()})
        return shapes

    def load_state_dict(self, state: Tensors) -> None:
        self._state = dict(state)
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
        # the un-adapted classifier (meta-learned weights, initial head), for the harness's adaptation figures
        initial = {n: named[n].detach().clone() for n in loop.adapt} if steps > 0 else None
        head, head0, cached = None, None, None
        for _ in range(steps):
            loss, grads, (g_w, g_b), new_head, e = loop.step(params, head, support, ctx.n_way, cached)
            if head is None:
                head0 = (new_head[0].detach().clone(), new_head[1].detach().clone())
                head = (head0[0].clone(), head0[1].clone())
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

        def predict_unadapted(batch: Batch) -> torch.Tensor:
            return loop.embed({**named, **initial}, batch) @ head0[0].T + head0[1]

        trainable = sum(named[n].numel() for n in loop.adapt) + weight.numel() + bias.numel()
        return Predictor(predict, trainable, initial=predict_unadapted if initial is not None else None)


class FOMAML(MAML):
    """First-order MAML: same implementation with the inner-loop gradients treated as constants."""

    name = "fomaml"
    attn_implementation = "sdpa"
    first_order = True
