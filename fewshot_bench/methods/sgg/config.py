"""SGG's config dataclasses: the method's settings and the three ablations' defaults."""
from __future__ import annotations

from dataclasses import dataclass

from ...core.config import option
from ..search_space import Choice, Range, SearchSpace
from ..training import SUPPORT_TRAINING_SPACE, FullFTConfig

MODES = ("first_order", "exact")
PARAM_SETS = ("full", "lora")
TAU_RULES = ("ema", "fixed")
ALIGN_SCHEDULES = ("sigmoid", "constant")
REF_INITS = ("support", "half")
RECORD_GRADS = ("task", "step")
# wide enough that each term changes the update: τ multiplier below 1 (the bound binds), λ_dir up to 10
# (rotation α up to 0.91), alignment weight in exact mode (first_order projects only on a conflict)
SGG_SPACE = SearchSpace({**SUPPORT_TRAINING_SPACE.fields, "mode": Choice(("first_order", "exact")),
                         "lambda_dir": Range(0.01, 10.0, log=True), "lambda_mag": Range(0.1, 10.0, log=True),
                         "tau_mult": Range(0.3, 2.0), "lambda_align": Range(0.1, 10.0, log=True),
                         "align_schedule": Choice(("sigmoid", "constant"))}, cost=("steps",))


@dataclass
class SGGConfig(FullFTConfig):
    """SGG settings; steps / lr / head_lr / weight_decay are full_ft's (same defaults, same optimizer).

    Defaults were checked on clinc150 *validation-pool* episodes with MiniLM (docs/sgg.md), never on target
    classes: there every setting tried tied with full_ft (accuracy at the ceiling), so the λs are the
    design values and the source-gradient settings are the cheapest that did not change the result.
    """
    source_every: int = option(2, help="with a source task: compute g_src (the alignment term's source-pool "
                                       "gradient) every this many steps (>= 1)", low=0)
    mode: str = option("first_order", help="first_order: gradient transformation (≈ full_ft cost); "
                                           "exact: double backward through the regularisers (eager attention)",
                     choices=MODES)
    params: str = option("full", help="full: every backbone parameter + head; lora: LoRA (r, alpha below) on "
                                      "query/value (BERT-like) or c_attn (GPT-2) + head", choices=PARAM_SETS)
    lambda_dir: float = option(0.5, help="weight of R_dir = 1 − cos(g_t, r_t); first_order rotates g toward r "
                                         "by α = λ/(1+λ); 0 switches it off", low=0)
    lambda_mag: float = option(1.0, help="weight of R_mag = relu(‖g_t‖ − τ_t)²; first_order clips ‖g‖ to τ_t "
                                         "when > 0; 0 switches it off", low=0)
    lambda_align: float = option(1.0, help="base weight of R_align = 1 − cos(g_bb, g_src) (backbone params); "
                                           "first_order PCGrad weight min(1, λ_align,t); 0 switches it off", low=0)
    ema: float = option(0.9, help="EMA rate β of r_t, of the gradient-norm statistic and of cos(g, g_src)")
    tau_rule: str = option("ema", help="ema: τ_t = tau_mult × EMA of earlier ‖g‖ (no bound at t = 0); "
                                       "fixed: τ_t = tau_value", choices=TAU_RULES)
    tau_mult: float = option(1.5, help="τ_t multiple of the running gradient-norm EMA (tau_rule=ema)")
    tau_value: float = option(1.0, help="τ for tau_rule=fixed")
    align_schedule: str = option("sigmoid", help="sigmoid: λ_align,t = λ_align·2σ(κ·EMA cos(g_bb, g_src)); "
                                                 "constant: λ_align", choices=ALIGN_SCHEDULES)
    align_kappa: float = option(5.0, help="κ, sharpness of the sigmoid alignment schedule")
    ref_init: str = option("support", help="r_0: support = gradient of the full support set at θ_0 (so R_dir(0) = 0); "
                                           "half = gradient of a class-stratified half of the support",
                           choices=REF_INITS)
    record_grad: str = option("task", help="gradient given to the stability recorder: task = g_t = ∇L_task (the "
                                           "quantity the regularisers act on; same meaning as full_ft's), step = "
                                           "the gradient actually applied (guided)", choices=RECORD_GRADS)
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
