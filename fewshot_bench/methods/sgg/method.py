"""The SGG method: full_ft's loop (same optimizer, parameter groups and head initialisation) with the
guided step of :mod:`fewshot_bench.methods.sgg.guidance`, and the three ablations (see the package docstring)."""
from __future__ import annotations

import logging
import math
from typing import List, Optional

import torch
import torch.nn.functional as F

from ..adapters import apply_lora
from ...core.errors import UserError
from ..api import EpisodeContext, Method, Predictor
from ...core.hashing import derived_seed
from ...store.schema import Figure
from ..training import adamw, embedding_rows, positions_per_class, source_gradient

from .config import SGG_SPACE, SGGConfig, SGGNoAlignConfig, SGGNoDirConfig, SGGNoMagConfig
from .flat_vectors import FlatVectors
from .guidance import (_safe_cos, dot_cosines, exact_guided_gradient, first_order_coefficients, gradient_dots,
    regulariser_values, term_activity, unflatten)
from .state import GuidanceState

log = logging.getLogger(__name__)


def _half_support(ctx: EpisodeContext):
    """A class-stratified half of the support set (every other example of each class, first one included)."""
    keep = positions_per_class(ctx.episode.support_labels, lambda rank: rank % 2 == 0)
    return ctx.support.subset(torch.tensor(keep, device=ctx.support.input_ids.device))


class SGG(Method):
    """Structured Gradient Guidance: full_ft's loop with direction / magnitude / source-alignment guidance."""

    name = "sgg"
    config_class = SGGConfig
    search_space = SGG_SPACE
    figures = (  # term_activity(): which guidance terms changed the update
        Figure("sgg_mag_active", 0, 1, "share of steps the SGG magnitude bound acted"),
        Figure("sgg_align_active", 0, 1, "share of steps the SGG alignment projection fired"),
        Figure("sgg_dir_angle", 0, 180, "mean degrees the SGG direction term rotated g", decimals=2),
        Figure("sgg_step_angle", 0, 180, "mean degrees between the task gradient and the applied step", decimals=2),
    )

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
        """What the config's own limits cannot say (it checks choices and λ >= 0 at construction)."""
        cfg = self.config
        if not 0.0 <= cfg.ema < 1.0:
            raise UserError(f"{self.name}: ema must be in [0, 1), got {cfg.ema}")
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
        row_params = embedding_rows(model, shared)
        optimizer = adamw([{"params": shared, "lr": backbone_lr}, {"params": head_params, "lr": cfg.head_lr}], cfg,
                          rows=row_params)
        # the flat task gradient, step, r_t and g_src: the input-embedding matrix on its non-zero rows only (exact
        # mode's Hessian-vector product takes whole vectors)
        flat = FlatVectors(params, row_params if cfg.mode == "first_order" else ())
        state = GuidanceState(cfg, flat)
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
            half = [g.detach() if g is not None else torch.zeros_like(p) for g, p in zip(raw, params)]
            state.ref = flat.flatten_into(flat.zeros(), half)

        # the flat task gradient, step gradient and g_src live in buffers reused every step (no model-sized
        # allocation per step)
        task_buf, step_buf = flat.zeros(), None
        src_buf = flat.zeros(k) if ctx.has_source else None
        src = None
        for t in range(cfg.steps):
            optimizer.zero_grad(set_to_none=True)
            if ctx.has_source and t % cfg.source_every == 0:
                src = flat.flatten_into(src_buf, source_gradient(ctx, model, shared, t, shots=cfg.source_shots))
            lam_align = state.lambda_align if src is not None and cfg.lambda_align > 0 else 0.0
            tau = state.tau
            loss = task_loss(ctx.support)
            if guided and cfg.mode == "exact":
                step_buf = flat.zeros() if step_buf is None else step_buf
                step, task, used, dots, terms = exact_guided_gradient(
                    loss, params, n_shared, weights={**weights, "align": lam_align}, ref=state.set_ref_if_missing,
                    tau=tau, src=src, task_out=task_buf, step_out=step_buf)
                for p, g, u in zip(params, unflatten(step, params), used):
                    p.grad = g if u else None
                sd = gradient_dots(step, k, state.ref, src)
                info = dict(zip(("cos_ref_step", "cos_src_step"), dot_cosines(sd)), step_norm=math.sqrt(sd["gg"]),
                            mag_active=cfg.lambda_mag > 0 and math.sqrt(dots["gg"]) > tau,
                            align_active=lam_align > 0 and src is not None, dir_cos=None,
                            task_cos=_safe_cos(float(torch.dot(task, step)), dots["gg"], sd["gg"]))
            else:
                loss.backward()
                used = [p.grad is not None for p in params]
                task_list = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                task = step = flat.flatten_into(task_buf, task_list)
                ref = state.set_ref_if_missing(task) if guided else state.ref
                dots = gradient_dots(task, k, ref, src, flat)
                a, b, c, info = first_order_coefficients(dots, lambda_dir=cfg.lambda_dir if guided else 0.0,
                                                         lambda_mag=cfg.lambda_mag if guided else 0.0,
                                                         align_weight=lam_align if guided else 0.0, tau=tau)
                if (a, b, c) != (1.0, 0.0, 0.0):
                    step_buf = flat.zeros() if step_buf is None else step_buf
                    step = flat.combine(task, k, a, b, c, ref, src, out=step_buf)
                    for p, g, u in zip(params, unflatten(step, params), used):
                        p.grad = g if u else None
                terms = regulariser_values(dots, tau)
            recorded = task if cfg.record_grad == "task" else step
            ctx.recorder.record(loss, params, grads=unflatten(recorded, params),
                                source_grads=None if src is None else unflatten(src, shared),  # leading params
                                rows=optimizer.touched_rows(params))
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
