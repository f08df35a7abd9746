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
  Its passes over the flat vectors (:mod:`.flat_vectors`) visit the input-embedding matrix on the rows some
  gradient of the episode has reached only, as the row-sparse AdamW and the recorder do.

Source gradient: ``fewshot_bench.methods.training.source_gradient`` (shared with full_ft/lora, which only measure it): the support set
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
from .config import SGG_SPACE, SGGConfig, SGGNoAlignConfig, SGGNoDirConfig, SGGNoMagConfig
from .guidance import (exact_guided_gradient, first_order_coefficients, first_order_guided_gradient, flatten,
    gradient_dots, regularisers, term_activity, unflatten)
from .method import SGG, SGGNoAlign, SGGNoDir, SGGNoMag
from .state import GuidanceState

__all__ = ["SGG", "SGGNoDir", "SGGNoMag", "SGGNoAlign", "SGGConfig", "SGGNoDirConfig", "SGGNoMagConfig",
           "SGGNoAlignConfig", "GuidanceState", "regularisers", "gradient_dots", "exact_guided_gradient",
           "first_order_guided_gradient", "first_order_coefficients", "term_activity", "flatten", "unflatten",
           "SGG_SPACE"]
