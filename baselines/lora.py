"""LoRA (PEFT): low-rank adapters on the attention projections plus a fully trained linear head.

Adapter placement is :func:`fewshot_bench.methods.adapters.apply_lora` (per architecture; for anything else set
``target_modules`` in the method config: ``--method-config lora.target_modules=a,b``). The classifier head
is a separate ``nn.Linear`` trained in full (PEFT's "module to save" role); it gets no adapter. With
``dropout > 0`` runs stay reproducible: the harness seeds torch before ``adapt``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from fewshot_bench.methods.adapters import apply_lora
from fewshot_bench.core.config import option
from fewshot_bench.methods import EpisodeContext, Method, Predictor
from fewshot_bench.methods.search_space import Choice, Range, SearchSpace
from fewshot_bench.methods.training import SUPPORT_TRAINING_SPACE, SupportTrainingConfig, train_on_support


@dataclass
class LoRAConfig(SupportTrainingConfig):
    rank: int = option(8, help="LoRA rank r", low=1)
    alpha: int = option(16, help="LoRA scaling alpha (the update is scaled by alpha / rank)", low=1)
    dropout: float = option(0.0, help="dropout on the LoRA input path (reproducible: torch is seeded per episode)", low=0, high=1)
    target_modules: Optional[List[str]] = option(None, help="module names to adapt, e.g. query,value "
                                                           "(default: chosen per architecture)")
    lr: float = option(5e-4, help="AdamW learning rate of the adapters", low=0)


class LoRA(Method):
    name = "lora"
    config_class = LoRAConfig
    # adapters need larger rates than full fine-tuning; target_modules None = query,value (per architecture)
    search_space = SearchSpace({**SUPPORT_TRAINING_SPACE.fields, "lr": Range(1e-4, 1e-2, log=True),
                                "rank": Choice((4, 8, 16)), "target_modules": Choice((None, "query,key,value,dense"))},
                               cost=("steps",))

    def adapt(self, ctx: EpisodeContext) -> Predictor:
        cfg = self.config
        model = apply_lora(ctx.fresh_model(), cfg.rank, cfg.alpha, cfg.dropout, cfg.target_modules)
        head = ctx.new_head(ctx.n_way)
        adapters = [p for p in model.parameters() if p.requires_grad]
        return train_on_support(ctx, model, head, adapters, cfg.lr, cfg)
