"""Structured Gradient Guidance (SGG, arXiv 2506.00726) as a fewshot-bench adaptation method.

Fine-tuning on the support set (same loop, optimizer, parameter groups and head initialisation as
``full_ft``) with three gradient regularisers. With ``g_t = ∇θ L_task`` at step t:

    L = L_task + λ_dir · R_dir + λ_mag · R_mag + λ_align,t · R_align
    R_dir   = 1 − cos(g_t, r_t)            r_t: EMA of earlier task gradients (detached)
    R_mag   = relu(‖g_t‖ − τ_t)²           τ_t: tau_mult × EMA of earlier ‖g‖ (or a fixed value)
    R_align = 1 − cos(g_t^bb, g_src^bb)    over the backbone (shared) trainable parameters only

* ``mode: exact`` differentiates through the regularisers: the step gradient is
  ``g_t + ∇θ Σ λ R(g_t(θ)) = g_t + H·v``, v = ∂(Σ λ R)/∂g in closed form (it lies in span{g, r, g_src}) and
  H·v, a Hessian-vector product, by one double backward; needs eager attention, so an SGG instance in
  exact mode reports ``attn_implementation == "eager"`` and the runner loads the backbone that way.
* ``mode: first_order`` applies the same ideas as a transformation of g_t, with no second-order terms:
  (1) rotate g_t toward r_t: ``g ← ‖g‖ · unit((1−α)ĝ + α r̂)``, α = λ_dir / (1 + λ_dir);
  (2) PCGrad on the backbone part: if ``g^bb · g_src < 0`` remove ``w · (g^bb·g_src/‖g_src‖²) g_src``,
      w = min(1, λ_align,t) (w = 1 leaves a non-negative dot product);
  (3) if λ_mag > 0, rescale g so that ``‖g‖ ≤ τ_t`` (the constraint form of R_mag).
  Applied in that order, so the norm bound and the PCGrad sign guarantee hold for the final gradient.

Source gradient: ``ctx.source_gradient`` (shared with full_ft/lora, which only measure it): the support set
of a fresh source episode every ``source_every`` steps, loss = cross-entropy of the squared-Euclidean logits to the batch's own class prototypes
(detached, i.e. a ProtoNet head, parameter-free: a random fresh head would give a random direction),
differentiated w.r.t. the backbone trainable parameters only (the target head has other classes). It
is computed under a forked, seeded RNG so the target trajectory (dropout masks) is unchanged.

Adaptive alignment weight (scheduled, not learned): ``λ_align,t = λ_align · 2σ(κ · c̄_t)``, c̄_t the EMA
(rate ``ema``, started at the first observed value; c̄_0 = 0) of cos(g^bb_t', g_src,t') over earlier steps
t' < t: λ_align when the two directions are orthogonal on average, up to 2λ_align when they agree, toward
0 when they persistently conflict (negative transfer). ``align_schedule: constant`` keeps λ_align.

Recorder: ``ctx.recorder.record(loss, params, grads=g_t, source_grads=g_src)`` every step, params ordered
backbone first, so source_alignment = mean_t cos(g_t^bb, g_src,t) over the backbone parameters; g_t is the
task gradient (``record_grad: task``, default, same meaning as for full_ft) or the applied step gradient.

Per-step trajectories (λ_align,t, cosines, norms, τ_t, regulariser values, which terms changed the update)
are kept in ``method.last_trace`` / ``method.traces`` and on ``ctx.recorder.sgg_trace``; their per-episode
summary (:func:`term_activity`) goes to the results store as the ``sgg_*`` columns, so an inert term shows.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from fewshot_bench.baselines.full_ft import SUPPORT_TRAINING_SPACE, FullFTConfig, adamw
from fewshot_bench.config import option
from fewshot_bench.errors import UserError
from fewshot_bench.baselines.lora import apply_lora
from fewshot_bench.methods import EpisodeContext, Method, Predictor, derived_seed
from fewshot_bench.search_space import Choice, Range, SearchSpace

log = logging.getLogger(__name__)

MODES = ("first_order", "exact")
PARAM_SETS = ("full", "lora")
TAU_RULES = ("ema", "fixed")
ALIGN_SCHEDULES = ("sigmoid", "constant")
REF_INITS = ("support", "half")
RECORD_GRADS = ("task", "step")
_EPS = 1e-12
# wide enough that each term changes the update: τ multiplier below 1 (the bound binds), λ_dir up to 10
# (rotation α up to 0.91), alignment weight in exact mode (first_order projects only on a conflict)
SGG_SPACE = SearchSpace({**SUPPORT_TRAINING_SPACE.fields, "mode": Choice(("first_order", "exact")),
                         "lambda_dir": Range(0.01, 10.0, log=True), "lambda_mag": Range(0.1, 10.0, log=True),
                         "tau_mult": Range(0.3, 2.0), "lambda_align": Range(0.1, 10.0, log=True),
                         "align_schedule": Choice(("sigmoid", "constant"))}, cost=("steps",))

Grads = List[torch.Tensor]


@dataclass
class SGGConfig(FullFTConfig):
    """SGG settings; steps / lr / head_lr / weight_decay are full_ft's (same defaults, same optimizer).

    Defaults were checked on clinc150 *validation-pool* episodes with MiniLM (docs/sgg.md), never on target
    classes: there every setting tried tied with full_ft (accuracy at the ceiling), so the λs are the
    design values and the source-gradient settings are the cheapest that did not change the result.
    """
    mode: str = option("first_order", help="first_order: gradient transformation (≈ full_ft cost); "
                                           "exact: double backward through the regularisers (eager attention)")
    params: str = option("full", help="full: every backbone parameter + head; lora: LoRA (r, alpha below) on "
                                      "query/value (BERT-like) or c_attn (GPT-2) + head")
    lambda_dir: float = option(0.5, help="weight of R_dir = 1 − cos(g_t, r_t); first_order rotates g toward r "
                                         "by α = λ/(1+λ); 0 switches it off")
    lambda_mag: float = option(1.0, help="weight of R_mag = relu(‖g_t‖ − τ_t)²; first_order clips ‖g‖ to τ_t "
                                         "when > 0; 0 switches it off")
    lambda_align: float = option(1.0, help="base weight of R_align = 1 − cos(g_bb, g_src) (backbone params); "
                                           "first_order PCGrad weight min(1, λ_align,t); 0 switches it off")
    ema: float = option(0.9, help="EMA rate β of r_t, of the gradient-norm statistic and of cos(g, g_src)")
    tau_rule: str = option("ema", help="ema: τ_t = tau_mult × EMA of earlier ‖g‖ (no bound at t = 0); "
                                       "fixed: τ_t = tau_value")
    tau_mult: float = option(1.5, help="τ_t multiple of the running gradient-norm EMA (tau_rule=ema)")
    tau_value: float = option(1.0, help="τ for tau_rule=fixed")
    align_schedule: str = option("sigmoid", help="sigmoid: λ_align,t = λ_align·2σ(κ·EMA cos(g_bb, g_src)); "
                                                 "constant: λ_align")
    align_kappa: float = option(5.0, help="κ, sharpness of the sigmoid alignment schedule")
    ref_init: str = option("support", help="r_0: support = gradient of the full support set at θ_0 (so R_dir(0) = 0); "
                                           "half = gradient of a class-stratified half of the support")
    record_grad: str = option("task", help="gradient given to the stability recorder: task = g_t = ∇L_task (the "
                                           "quantity the regularisers act on; same meaning as full_ft's), step = "
                                           "the gradient actually applied (guided)")
    lora_r: int = option(8, help="LoRA rank (params=lora)")
    lora_alpha: int = option(16, help="LoRA alpha (params=lora)")
    lora_lr: float = option(5e-4, help="AdamW learning rate of the LoRA parameters (params=lora; lr is for full)")


@dataclass
class SGGNoDirConfig(SGGConfig):
    lambda_dir: float = option(0.0, help="ablation: direction-consistency term off")


@dataclass
class SGGNoMagConfig(SGGConfig):
    lambda_mag: float = option(0.0, help="ablation: magnitude-control term off")


@dataclass
class SGGNoAlignConfig(SGGConfig):
    lambda_align: float = option(0.0, help="ablation: source/target alignment term off (g_src still measured)")


# ----------------------------------------------------------------------------------------------- vector helpers
# Gradients are handled as one flat vector over the trainable parameters, ordered backbone (shared) first,
# head last, so the shared part is a prefix: per-step cost is a handful of BLAS passes over that vector.
def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One 1-D vector (differentiable; a list or an already flat vector)."""
    if torch.is_tensor(tensors):
        return tensors.reshape(-1)
    return torch.cat([t.reshape(-1) for t in tensors])


def flatten_into(out: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`flatten` into the preallocated vector ``out`` (a fused copy, no model-sized allocation)."""
    torch._foreach_copy_(unflatten(out, tensors), list(tensors))
    return out


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> Grads:
    """Views of ``vector`` shaped like ``like``."""
    return [v.view_as(p) for v, p in zip(torch.split(vector, [p.numel() for p in like]), like)]


def _vnorm(v: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.dot(v, v).clamp_min(_EPS))


def _vcos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(a, b) / (_vnorm(a) * _vnorm(b))


def _dot(a, b) -> torch.Tensor:
    return torch.dot(flatten(a), flatten(b))


def _norm(a) -> torch.Tensor:
    return _vnorm(flatten(a))


def _cos(a, b) -> torch.Tensor:
    return _vcos(flatten(a), flatten(b))


def _shared_numel(grads, n_shared: int) -> int:
    return sum(g.numel() for g in list(grads)[:n_shared])


def regularisers(grads: Sequence[torch.Tensor], n_shared: int, *, ref=None, tau: float = math.inf,
                 src=None) -> Dict[str, torch.Tensor]:
    """R_dir, R_mag, R_align of the gradient list ``grads``, differentiable in it: the definition (the method
    evaluates them, and their gradient, in closed form from :func:`gradient_dots`). A term whose reference is
    missing (no r_t, τ = ∞, no g_src) is left out. ``grads[:n_shared]`` are the backbone (shared) entries;
    ``ref`` / ``src`` are lists or flat vectors (src over the shared entries only)."""
    g, k = flatten(grads), _shared_numel(grads, n_shared)
    terms = {}
    if ref is not None:
        terms["dir"] = 1.0 - _vcos(g, flatten(ref))
    if math.isfinite(tau):
        terms["mag"] = torch.relu(_vnorm(g) - tau) ** 2
    if src is not None:
        terms["align"] = 1.0 - _vcos(g[:k], flatten(src))
    return terms


def gradient_dots(g: torch.Tensor, k: int, ref: Optional[torch.Tensor], src: Optional[torch.Tensor],
                  ss: Optional[float] = None) -> Dict[str, float]:
    """The few inner products everything per step is computed from (one pass over the gradient each):
    gg, gr, rr, gs, rs, ss, and the head-part (index >= k) ones, so backbone-only norms are gg − head part."""
    d = {"gg": float(torch.dot(g, g)), "hgg": float(torch.dot(g[k:], g[k:]))}
    if ref is not None:
        d.update(gr=float(torch.dot(g, ref)), rr=float(torch.dot(ref, ref)), hgr=float(torch.dot(g[k:], ref[k:])),
                 hrr=float(torch.dot(ref[k:], ref[k:])))
    if src is not None:
        d.update(gs=float(torch.dot(g[:k], src)), ss=float(torch.dot(src, src)) if ss is None else ss)
        if ref is not None:
            d["rs"] = float(torch.dot(ref[:k], src))
    return d


def _safe_cos(num: float, sq_a: float, sq_b: float) -> float:
    return num / math.sqrt(max(sq_a, _EPS) * max(sq_b, _EPS))


def dot_cosines(d: Dict[str, float]) -> Tuple[Optional[float], Optional[float]]:
    """cos(g, r_t) and cos(g_bb, g_src) from the inner products of :func:`gradient_dots` (None: no reference)."""
    return (_safe_cos(d["gr"], d["gg"], d["rr"]) if "gr" in d else None,
            _safe_cos(d["gs"], d["gg"] - d["hgg"], d["ss"]) if "gs" in d else None)


def regulariser_values(d: Dict[str, float], tau: float) -> Dict[str, float]:
    """R_dir, R_mag, R_align (as :func:`regularisers`) from the inner products of :func:`gradient_dots`."""
    cos_ref, cos_src = dot_cosines(d)
    terms = {}
    if cos_ref is not None:
        terms["dir"] = 1.0 - cos_ref
    if math.isfinite(tau):
        terms["mag"] = max(0.0, math.sqrt(max(d["gg"], _EPS)) - tau) ** 2
    if cos_src is not None:
        terms["align"] = 1.0 - cos_src
    return terms


def regulariser_gradient_coefficients(d: Dict[str, float], tau: float,
                                      weights: Dict[str, float]) -> Tuple[float, float, float, float]:
    """∂/∂g of Σ weights[k] · R_k(g), which lies in span{g, r_t, g_bb, g_src}: the coefficients
    (c_g, c_r, c_bb, c_src) of ``c_g·g + c_r·r + [c_bb·g_bb + c_src·g_src; 0]``, from the inner products alone.

    With n(x) = sqrt(max(x·x, ε)) as in :func:`regularisers` (constant below ε):
    ∂R_dir/∂g = −r/(n_g n_r) + (g·r) g/(n_g³ n_r); ∂R_mag/∂g = 2 relu(n_g − τ) g/n_g;
    ∂R_align/∂g_bb = −g_src/(n_bb n_src) + (g_bb·g_src) g_bb/(n_bb³ n_src) (zero on the head)."""
    c_g = c_r = c_bb = c_src = 0.0
    gg = d["gg"]
    n_g = math.sqrt(max(gg, _EPS))
    w = weights.get("dir", 0.0)
    if w and "gr" in d:
        n_r = math.sqrt(max(d["rr"], _EPS))
        c_r -= w / (n_g * n_r)
        if gg > _EPS:
            c_g += w * d["gr"] / (n_g ** 3 * n_r)
    w = weights.get("mag", 0.0)
    if w and gg > _EPS and n_g > tau:
        c_g += w * 2.0 * (n_g - tau) / n_g
    w = weights.get("align", 0.0)
    if w and "gs" in d:
        bb = gg - d["hgg"]
        n_bb, n_src = math.sqrt(max(bb, _EPS)), math.sqrt(max(d["ss"], _EPS))
        c_src -= w / (n_bb * n_src)
        if bb > _EPS:
            c_bb += w * d["gs"] / (n_bb ** 3 * n_src)
    return c_g, c_r, c_bb, c_src


class ExactStep(NamedTuple):
    step: torch.Tensor          # flat ∇L_task + H·v (the gradient to apply)
    task: torch.Tensor          # flat ∇L_task (detached)
    used: List[bool]            # which params the loss reaches
    dots: Dict[str, float]      # gradient_dots of the task gradient
    values: Dict[str, float]    # regulariser values


def _new_vector(like: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.empty(sum(p.numel() for p in like), dtype=like[0].dtype, device=like[0].device)


def exact_guided_gradient(loss: torch.Tensor, params: Sequence[torch.Tensor], n_shared: int, *,
                          weights: Dict[str, float], ref=None, tau: float = math.inf, src=None,
                          src_sq: Optional[float] = None, task_out: Optional[torch.Tensor] = None,
                          step_out: Optional[torch.Tensor] = None) -> ExactStep:
    """Gradient of ``loss + Σ weights[k] · R_k(∇loss)`` w.r.t. ``params`` (r_t, τ, g_src constants).

    That is ∇loss + H·v with v = ∂(Σ w R)/∂g at g = ∇loss (closed form,
    :func:`regulariser_gradient_coefficients`) and H the Hessian of the loss: one ``create_graph`` backward,
    then one backward of that gradient against v (a Hessian-vector product by double backward; exact, no
    approximation). Differentiating the regularisers by autograd instead gives the same vector but costs
    several model-sized passes more. ``ref`` may be a callable of the flat task gradient (r_0 = g_0);
    ``src_sq`` is g_src·g_src when known; ``task_out`` / ``step_out`` are reusable flat buffers. Weights and
    their terms' inputs may be left out (zero weight: the term is only evaluated)."""
    params = list(params)
    raw = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    used = [g is not None for g in raw]
    task = flatten_into(_new_vector(params) if task_out is None else task_out,
                        [g.detach() if g is not None else torch.zeros_like(p) for g, p in zip(raw, params)])
    k = _shared_numel(params, n_shared)
    ref = ref(task) if callable(ref) else (None if ref is None else flatten(ref))
    src = None if src is None else flatten(src)
    dots = gradient_dots(task, k, ref, src, src_sq)
    c_g, c_r, c_bb, c_src = regulariser_gradient_coefficients(dots, tau, weights)
    step = _new_vector(params) if step_out is None else step_out
    if (c_g, c_r, c_bb, c_src) == (0.0, 0.0, 0.0, 0.0):
        step.copy_(task)
    else:
        v = torch.mul(task, c_g, out=step)  # v lives in the step buffer until H·v is out
        if c_r:
            v.add_(ref, alpha=c_r)
        if c_bb:
            v[:k].add_(task[:k], alpha=c_bb)
        if c_src:
            v[:k].add_(src, alpha=c_src)
        pairs = [(g, vg) for g, vg in zip(raw, unflatten(v, params)) if g is not None and g.requires_grad]
        hv = torch.autograd.grad([g for g, _ in pairs], params, grad_outputs=[vg for _, vg in pairs],
                                 allow_unused=True)
        del pairs, raw
        step.copy_(task)
        reached = [(s, h) for s, h in zip(unflatten(step, params), hv) if h is not None]
        torch._foreach_add_([s for s, _ in reached], [h for _, h in reached])
    return ExactStep(step, task, used, dots, regulariser_values(dots, tau))


def first_order_coefficients(d: Dict[str, float], *, lambda_dir: float, lambda_mag: float, align_weight: float,
                             tau: float) -> Tuple[float, float, float, Dict[str, float]]:
    """The first-order step as ``γ·(a·g + b·r) − γ·c·[g_src; 0]``, from the inner products alone.

    Returns (a·γ, b·γ, c·γ, figures of the step: its norm and its cosines with r_t and (backbone) g_src)."""
    a, b, c = 1.0, 0.0, 0.0
    has_ref, has_src = "gr" in d, "gs" in d
    dir_cos = None
    if lambda_dir > 0 and has_ref:
        alpha = lambda_dir / (1.0 + lambda_dir)
        g_norm, r_norm = math.sqrt(max(d["gg"], _EPS)), math.sqrt(max(d["rr"], _EPS))
        cos = d["gr"] / (g_norm * r_norm)
        u_norm = math.sqrt(max((1 - alpha) ** 2 + alpha ** 2 + 2 * alpha * (1 - alpha) * cos, 0.0))
        dir_cos = 1.0
        if u_norm > 1e-6:  # g exactly opposite to r with α = ½: leave g alone
            a, b = (1 - alpha) / u_norm, alpha * g_norm / (r_norm * u_norm)
            dir_cos = _safe_cos(a * d["gg"] + b * d["gr"], d["gg"], a * a * d["gg"] + b * b * d["rr"] + 2 * a * b * d["gr"])
    w = min(1.0, align_weight)
    if w > 0 and has_src:
        dot = a * d["gs"] + b * d.get("rs", 0.0)
        if dot < 0:
            c = w * dot / max(d["ss"], _EPS)

    def sq(a_, b_, c_, head):  # ‖a g + b r − c s‖² (whole vector) or of its backbone part
        gg = d["gg"] - (d["hgg"] if head else 0.0)
        rr = d.get("rr", 0.0) - (d.get("hrr", 0.0) if head else 0.0)
        gr = d.get("gr", 0.0) - (d.get("hgr", 0.0) if head else 0.0)
        return (a_ * a_ * gg + b_ * b_ * rr + c_ * c_ * d.get("ss", 0.0) + 2 * a_ * b_ * gr
                - 2 * a_ * c_ * d.get("gs", 0.0) - 2 * b_ * c_ * d.get("rs", 0.0))

    norm = math.sqrt(max(sq(a, b, c, False), 0.0))
    gamma = tau / norm if (lambda_mag > 0 and math.isfinite(tau) and norm > tau) else 1.0
    a, b, c = a * gamma, b * gamma, c * gamma
    info = {"step_norm": norm * gamma, "mag_active": gamma < 1.0, "align_active": c != 0.0,
            "dir_cos": dir_cos, "task_cos": _safe_cos(a * d["gg"] + b * d.get("gr", 0.0) - c * d.get("gs", 0.0),
                                                      d["gg"], sq(a, b, c, False))}
    if has_ref:
        info["cos_ref_step"] = _safe_cos(a * d["gr"] + b * d["rr"] - c * d.get("rs", 0.0), sq(a, b, c, False), d["rr"])
    if has_src:
        info["cos_src_step"] = _safe_cos(a * d["gs"] + b * d.get("rs", 0.0) - c * d["ss"], sq(a, b, c, True), d["ss"])
    return a, b, c, info


def _degrees(cos: Optional[float]) -> Optional[float]:
    return None if cos is None else math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def term_activity(trace: dict) -> Dict[str, Optional[float]]:
    """Per-episode summary of which terms changed the update (results-store columns):

    ``sgg_mag_active`` share of steps the magnitude term acted (first_order: ‖g‖ clipped to τ_t; exact:
    ‖g‖ > τ_t with λ_mag > 0); ``sgg_align_active`` share of steps the alignment term acted (first_order:
    the PCGrad projection fired; exact: a source gradient and λ_align,t > 0); ``sgg_dir_angle`` mean angle
    (degrees) the direction term rotated g (first_order only: exact mode mixes the terms in one H·v);
    ``sgg_step_angle`` mean angle between the task gradient and the applied step (all terms)."""
    steps = len(trace["mag_active"])

    def share(key):
        return sum(map(bool, trace[key])) / steps if steps else None

    def mean_angle(key):
        angles = [_degrees(c) for c in trace[key] if c is not None]
        return sum(angles) / len(angles) if angles else None

    return {"sgg_mag_active": share("mag_active"), "sgg_align_active": share("align_active"),
            "sgg_dir_angle": mean_angle("dir_cos"), "sgg_step_angle": mean_angle("task_cos")}


def apply_coefficients(g: torch.Tensor, k: int, a: float, b: float, c: float, ref, src,
                       out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``a·g + b·ref − c·[src; 0]`` (into ``out`` when given)."""
    step = torch.mul(g.detach(), a, out=out)
    if b != 0.0:
        step.add_(ref, alpha=b)
    if c != 0.0:
        step[:k].add_(src, alpha=-c)
    return step


def first_order_guided_gradient(grads: Sequence[torch.Tensor], n_shared: int, *, lambda_dir: float = 0.0,
                                lambda_mag: float = 0.0, align_weight: float = 0.0, ref=None,
                                tau: float = math.inf, src=None) -> Grads:
    """The first-order transformation of the task gradient (no second-order terms; see the module docstring).

    Direction: rotate toward ``ref`` (norm kept); alignment: PCGrad projection of the shared part away from
    a conflicting ``src`` with weight min(1, align_weight); magnitude: rescale to ‖g‖ ≤ τ when lambda_mag > 0.
    """
    grads = list(grads)
    if not (lambda_dir > 0 or lambda_mag > 0 or align_weight > 0):
        return grads
    g, k = flatten(grads), _shared_numel(grads, n_shared)
    ref = None if ref is None else flatten(ref)
    src = None if src is None else flatten(src)
    a, b, c, _ = first_order_coefficients(gradient_dots(g, k, ref, src), lambda_dir=lambda_dir, lambda_mag=lambda_mag,
                                          align_weight=align_weight, tau=tau)
    return unflatten(apply_coefficients(g, k, a, b, c, ref, src), grads)


# ----------------------------------------------------------------------------------------------- running state
class GuidanceState:
    """Per-episode running statistics (flat vectors): r_t, the norm EMA behind τ_t, the EMA of cos(g_bb, g_src)."""

    def __init__(self, config: SGGConfig, k_shared: int):
        self.config = config
        self.k = k_shared
        self.ref: Optional[torch.Tensor] = None
        self.norm_ema: Optional[float] = None
        self.cos_ema: Optional[float] = None

    @property
    def tau(self) -> float:
        cfg = self.config
        if cfg.tau_rule == "fixed":
            return float(cfg.tau_value)
        return math.inf if self.norm_ema is None else cfg.tau_mult * self.norm_ema

    @property
    def lambda_align(self) -> float:
        cfg = self.config
        if cfg.align_schedule == "constant":
            return float(cfg.lambda_align)
        c = 0.0 if self.cos_ema is None else self.cos_ema
        return float(cfg.lambda_align) * 2.0 / (1.0 + math.exp(-cfg.align_kappa * c))

    def set_ref_if_missing(self, task: torch.Tensor) -> torch.Tensor:
        if self.ref is None:
            self.ref = task.detach().clone()
        return self.ref

    def update(self, task: torch.Tensor, task_norm: float, cos_src: Optional[float]) -> None:
        beta = self.config.ema
        self.set_ref_if_missing(task)
        self.ref.mul_(beta).add_(task.detach(), alpha=1 - beta)
        self.norm_ema = task_norm if self.norm_ema is None else beta * self.norm_ema + (1 - beta) * task_norm
        if cos_src is not None:
            self.cos_ema = cos_src if self.cos_ema is None else beta * self.cos_ema + (1 - beta) * cos_src


# ----------------------------------------------------------------------------------------------- helpers
def _half_support(ctx: EpisodeContext):
    """A class-stratified half of the support set (every other example of each class, first one included)."""
    keep, seen = [], {}
    for i, label in enumerate(ctx.episode.support_labels):
        if seen.get(label, 0) % 2 == 0:
            keep.append(i)
        seen[label] = seen.get(label, 0) + 1
    return ctx.support.subset(torch.tensor(keep, device=ctx.support.input_ids.device))


# ----------------------------------------------------------------------------------------------- the method
class SGG(Method):
    """Structured Gradient Guidance: full_ft's loop with direction / magnitude / source-alignment guidance."""

    name = "sgg"
    config_class = SGGConfig
    search_space = SGG_SPACE

    def __init__(self, config=None):
        super().__init__(config)
        self._validate()
        self.traces: List[dict] = []
        self.last_trace: Optional[dict] = None
        self._warned_no_source = False

    @property
    def protocol(self) -> str:  # the alignment term trains on source-pool gradients
        return "source-guided" if self.config.lambda_align > 0 else "target-only"

    @property
    def attn_implementation(self) -> str:  # instance property: the runner loads the backbone with it
        return "eager" if self.config.mode == "exact" else "sdpa"

    def _validate(self) -> None:
        cfg = self.config
        for field, value, allowed in (("mode", cfg.mode, MODES), ("params", cfg.params, PARAM_SETS),
                                      ("tau_rule", cfg.tau_rule, TAU_RULES),
                                      ("align_schedule", cfg.align_schedule, ALIGN_SCHEDULES),
                                      ("ref_init", cfg.ref_init, REF_INITS),
                                      ("record_grad", cfg.record_grad, RECORD_GRADS)):
            if value not in allowed:
                raise UserError(f"{self.name}: {field} is '{value}'; use one of {', '.join(allowed)}")
        if not 0.0 <= cfg.ema < 1.0:
            raise UserError(f"{self.name}: ema must be in [0, 1), got {cfg.ema}")
        if min(cfg.lambda_dir, cfg.lambda_mag, cfg.lambda_align) < 0:
            raise UserError(f"{self.name}: the λ weights must be >= 0")
        if cfg.source_every < 1:
            raise UserError(f"{self.name}: source_every must be >= 1, got {cfg.source_every}")

    def adapt(self, ctx: EpisodeContext) -> Predictor:
        cfg = self.config
        self._validate()
        model, head = ctx.fresh_model(), ctx.new_head(ctx.n_way)  # same RNG order as full_ft
        if cfg.params == "lora":
            model = apply_lora(model, cfg.lora_r, cfg.lora_alpha)
            shared, backbone_lr = [p for p in model.parameters() if p.requires_grad], cfg.lora_lr
        else:
            shared, backbone_lr = list(model.parameters()), cfg.lr
        head_params = list(head.parameters())
        params = shared + head_params  # shared first: its gradient is a prefix of the flat gradient
        n_shared, k = len(shared), sum(p.numel() for p in shared)
        optimizer = adamw([{"params": shared, "lr": backbone_lr}, {"params": head_params, "lr": cfg.head_lr}], cfg)
        state = GuidanceState(cfg, k)
        weights = {"dir": cfg.lambda_dir, "mag": cfg.lambda_mag, "align": cfg.lambda_align}
        guided = any(w > 0 for w in weights.values())
        if not ctx.has_source and cfg.lambda_align > 0 and not self._warned_no_source:
            log.info("%s: no source task in this setting; the alignment term is skipped", self.name)
            self._warned_no_source = True
        trace = {key: [] for key in ("loss", "task_grad_norm", "step_grad_norm", "tau", "lambda_align",
                                     "cos_ref", "cos_ref_step", "cos_src", "cos_src_step",
                                     "R_dir", "R_mag", "R_align", "mag_active", "align_active", "dir_cos",
                                     "task_cos")}
        trace.update(mode=cfg.mode, params=cfg.params, has_source=ctx.has_source,
                     align_status="on" if ctx.has_source and cfg.lambda_align > 0 else
                     ("skipped: no source task" if cfg.lambda_align > 0 else "off (lambda_align = 0)"))

        def task_loss(batch):
            return F.cross_entropy(head(ctx.embed(model, batch)).float(), batch.labels)

        if guided and cfg.ref_init == "half" and cfg.lambda_dir > 0:
            with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
                torch.manual_seed(derived_seed(ctx.seed, "sgg-ref"))
                raw = torch.autograd.grad(task_loss(_half_support(ctx)), params, allow_unused=True)
            state.ref = flatten([g.detach() if g is not None else torch.zeros_like(p) for g, p in zip(raw, params)])

        # the flat task gradient, step gradient and g_src live in buffers reused every step
        # (allocating a model-sized vector costs ~4x an in-place pass over it on CPU)
        task_buf, step_buf = _new_vector(params), None
        src_buf = _new_vector(shared) if ctx.has_source else None
        src, src_sq = None, None
        for t in range(cfg.steps):
            optimizer.zero_grad(set_to_none=True)
            if ctx.has_source and t % cfg.source_every == 0:
                src = flatten_into(src_buf, ctx.source_gradient(model, shared, t, shots=cfg.source_shots))
                src_sq = None
            lam_align = state.lambda_align if src is not None and cfg.lambda_align > 0 else 0.0
            tau = state.tau
            loss = task_loss(ctx.support)
            if guided and cfg.mode == "exact":
                step_buf = _new_vector(params) if step_buf is None else step_buf
                step, task, used, dots, terms = exact_guided_gradient(
                    loss, params, n_shared, weights={**weights, "align": lam_align}, ref=state.set_ref_if_missing,
                    tau=tau, src=src, src_sq=src_sq, task_out=task_buf, step_out=step_buf)
                for p, g, u in zip(params, unflatten(step, params), used):
                    p.grad = g if u else None
                sd = gradient_dots(step, k, state.ref, src, dots.get("ss"))
                info = dict(zip(("cos_ref_step", "cos_src_step"), dot_cosines(sd)), step_norm=math.sqrt(sd["gg"]),
                            mag_active=cfg.lambda_mag > 0 and math.sqrt(dots["gg"]) > tau,
                            align_active=lam_align > 0 and src is not None, dir_cos=None,
                            task_cos=_safe_cos(float(torch.dot(task, step)), dots["gg"], sd["gg"]))
            else:
                loss.backward()
                used = [p.grad is not None for p in params]
                task_list = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                task = step = flatten_into(task_buf, task_list)
                ref = state.set_ref_if_missing(task) if guided else state.ref
                dots = gradient_dots(task, k, ref, src, src_sq)
                a, b, c, info = first_order_coefficients(dots, lambda_dir=cfg.lambda_dir if guided else 0.0,
                                                         lambda_mag=cfg.lambda_mag if guided else 0.0,
                                                         align_weight=lam_align if guided else 0.0, tau=tau)
                if (a, b, c) != (1.0, 0.0, 0.0):
                    step_buf = _new_vector(params) if step_buf is None else step_buf
                    step = apply_coefficients(task, k, a, b, c, ref, src, out=step_buf)
                    for p, g, u in zip(params, unflatten(step, params), used):
                        p.grad = g if u else None
                terms = regulariser_values(dots, tau)
            if src is not None:
                src_sq = dots["ss"]
            recorded = task if cfg.record_grad == "task" else step
            ctx.recorder.record(loss, params, grads=unflatten(recorded, params),
                                source_grads=None if src is None else unflatten(src, shared))  # leading params
            task_norm = math.sqrt(dots["gg"])
            cos_ref, cos_src = dot_cosines(dots)
            trace["loss"].append(float(loss.detach()))
            trace["task_grad_norm"].append(task_norm)
            trace["step_grad_norm"].append(info["step_norm"])
            trace["tau"].append(tau)
            trace["lambda_align"].append(lam_align)
            trace["cos_ref"].append(cos_ref)
            trace["cos_ref_step"].append(info.get("cos_ref_step"))
            trace["cos_src"].append(cos_src)
            trace["cos_src_step"].append(info.get("cos_src_step"))
            for key in ("dir", "mag", "align"):
                trace[f"R_{key}"].append(terms.get(key))
            for key in ("mag_active", "align_active", "dir_cos", "task_cos"):
                trace[key].append(info.get(key))
            log.debug("%s step %d: loss %.4f |g| %.4g -> %.4g tau %.4g lambda_align %.3g cos_src %s", self.name, t,
                      trace["loss"][-1], task_norm, info["step_norm"], tau, lam_align, cos_src)
            state.update(task, task_norm, cos_src)
            optimizer.step()
            del step, task, loss, recorded
        model.eval()
        self.last_trace = trace
        self.traces.append(trace)
        ctx.recorder.sgg_trace = trace
        ctx.figures.update(term_activity(trace))
        return Predictor(lambda batch: head(ctx.embed(model, batch)), sum(p.numel() for p in params))


class SGGNoDir(SGG):
    """Ablation: SGG without the direction-consistency term (λ_dir = 0)."""
    name = "sgg-no-dir"
    config_class = SGGNoDirConfig
    search_space = SGG_SPACE.without("lambda_dir")


class SGGNoMag(SGG):
    """Ablation: SGG without the magnitude-control term (λ_mag = 0)."""
    name = "sgg-no-mag"
    config_class = SGGNoMagConfig
    search_space = SGG_SPACE.without("lambda_mag", "tau_mult")


class SGGNoAlign(SGG):
    """Ablation: SGG without the source/target alignment term (λ_align = 0; g_src still measured)."""
    name = "sgg-no-align"
    config_class = SGGNoAlignConfig
    search_space = SGG_SPACE.without("lambda_align", "align_schedule")
