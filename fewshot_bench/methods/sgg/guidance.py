"""SGG's guidance math on flat gradient vectors: the regularisers R_dir, R_mag, R_align, their values and
gradients from a few inner products, the exact (Hessian-vector product) step and the first-order step.

Gradients are one flat vector over the trainable parameters, ordered backbone (shared) first, head last,
so the shared part is a prefix of length k.
"""
from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from ..metrics import gram

EPS = 1e-12

Grads = List[torch.Tensor]


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
    return torch.sqrt(torch.dot(v, v).clamp_min(EPS))


def _vcos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(a, b) / (_vnorm(a) * _vnorm(b))


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
                  flat=None) -> Dict[str, float]:
    """The few inner products everything per step is computed from (:func:`fewshot_bench.methods.metrics.gram`: float32 per
    slice, float64 where float32 products of entries below ~1e-19 may have underflowed, e.g. a near-zero g_src,
    which would give |cos| > 1): gg, gr, rr, gs, rs, ss, and the head-part (index >= k) ones, so backbone-only
    norms are gg − head part. ``flat``: the :class:`~fewshot_bench.methods.sgg.flat_vectors.FlatVectors` that
    built g, ref and src (its row-sparse Gram for the backbone part), else dense."""
    vectors = [g] + ([ref] if ref is not None else [])
    head = gram([v[k:] for v in vectors]).tolist()
    shared_gram = gram if flat is None else flat.gram
    shared = shared_gram([v[:k] for v in vectors] + ([src] if src is not None else [])).tolist()
    d = {"hgg": head[0][0], "gg": shared[0][0] + head[0][0]}
    if ref is not None:
        d.update(gr=shared[0][1] + head[0][1], rr=shared[1][1] + head[1][1], hgr=head[0][1], hrr=head[1][1])
    if src is not None:
        s = len(vectors)  # g_src's row in the backbone-part Gram matrix
        d.update(gs=shared[0][s], ss=shared[s][s])
        if ref is not None:
            d["rs"] = shared[1][s]
    return d


def _safe_cos(num: float, sq_a: float, sq_b: float) -> float:
    return num / math.sqrt(max(sq_a, EPS) * max(sq_b, EPS))


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
        terms["mag"] = max(0.0, math.sqrt(max(d["gg"], EPS)) - tau) ** 2
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
    n_g = math.sqrt(max(gg, EPS))
    w = weights.get("dir", 0.0)
    if w and "gr" in d:
        n_r = math.sqrt(max(d["rr"], EPS))
        c_r -= w / (n_g * n_r)
        if gg > EPS:
            c_g += w * d["gr"] / (n_g ** 3 * n_r)
    w = weights.get("mag", 0.0)
    if w and gg > EPS and n_g > tau:
        c_g += w * 2.0 * (n_g - tau) / n_g
    w = weights.get("align", 0.0)
    if w and "gs" in d:
        bb = gg - d["hgg"]
        n_bb, n_src = math.sqrt(max(bb, EPS)), math.sqrt(max(d["ss"], EPS))
        c_src -= w / (n_bb * n_src)
        if bb > EPS:
            c_bb += w * d["gs"] / (n_bb ** 3 * n_src)
    return c_g, c_r, c_bb, c_src


class ExactStep(NamedTuple):
    step: torch.Tensor          # flat ∇L_task + H·v (the gradient to apply)
    task: torch.Tensor          # flat ∇L_task (detached)
    used: List[bool]            # which params the loss reaches
    dots: Dict[str, float]      # gradient_dots of the task gradient
    values: Dict[str, float]    # regulariser values


def new_vector(like: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.empty(sum(p.numel() for p in like), dtype=like[0].dtype, device=like[0].device)


def exact_guided_gradient(loss: torch.Tensor, params: Sequence[torch.Tensor], n_shared: int, *,
                          weights: Dict[str, float], ref=None, tau: float = math.inf, src=None,
                          task_out: Optional[torch.Tensor] = None,
                          step_out: Optional[torch.Tensor] = None) -> ExactStep:
    """Gradient of ``loss + Σ weights[k] · R_k(∇loss)`` w.r.t. ``params`` (r_t, τ, g_src constants).

    That is ∇loss + H·v with v = ∂(Σ w R)/∂g at g = ∇loss (closed form,
    :func:`regulariser_gradient_coefficients`) and H the Hessian of the loss: one ``create_graph`` backward,
    then one backward of that gradient against v (a Hessian-vector product by double backward; exact, no
    approximation). Differentiating the regularisers by autograd instead gives the same vector but costs
    several model-sized passes more. ``ref`` may be a callable of the flat task gradient (r_0 = g_0);
    ``task_out`` / ``step_out`` are reusable flat buffers. Weights and
    their terms' inputs may be left out (zero weight: the term is only evaluated)."""
    params = list(params)
    raw = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    used = [g is not None for g in raw]
    task = flatten_into(new_vector(params) if task_out is None else task_out,
                        [g.detach() if g is not None else torch.zeros_like(p) for g, p in zip(raw, params)])
    k = _shared_numel(params, n_shared)
    ref = ref(task) if callable(ref) else (None if ref is None else flatten(ref))
    src = None if src is None else flatten(src)
    dots = gradient_dots(task, k, ref, src)
    c_g, c_r, c_bb, c_src = regulariser_gradient_coefficients(dots, tau, weights)
    step = new_vector(params) if step_out is None else step_out
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
        g_norm, r_norm = math.sqrt(max(d["gg"], EPS)), math.sqrt(max(d["rr"], EPS))
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
            c = w * dot / max(d["ss"], EPS)

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
