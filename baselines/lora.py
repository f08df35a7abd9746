"""LoRA (PEFT): low-rank adapters on the attention projections plus a fully trained linear head.

The head is a separate module trained in full (PEFT's "module to save" role); no LoRA on the classifier.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fewshot_bench.config import option
from fewshot_bench.errors import UserError
from fewshot_bench.methods import EpisodeContext, Method, MethodConfig, Predictor

TARGETS_BY_MODULE_NAMES = ((("query", "value"), ["query", "value"]),          # BERT-like encoders
                           (("q_proj", "v_proj"), ["q_proj", "v_proj"]),      # Llama / Mistral / Qwen / OPT
                           (("c_attn",), ["c_attn"]))                        # GPT-2


def lora_target_modules(model: nn.Module, override: Optional[List[str]] = None) -> List[str]:
    """The attention projections to adapt for this architecture (or ``override``)."""
    if override:
        return list(override)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for required, targets in TARGETS_BY_MODULE_NAMES:
        if set(required) <= names:
            return targets
    raise UserError(f"no known attention projections in {type(model).__name__} for LoRA; "
                    f"set target_modules in the method config (e.g. lora.target_modules)")


def apply_lora(model: nn.Module, rank: int, alpha: int, dropout: float = 0.0,
               target_modules: Optional[List[str]] = None) -> nn.Module:
    """Wrap ``model`` with PEFT LoRA adapters; only the adapters stay trainable."""
    from peft import LoraConfig, get_peft_model

    targets = lora_target_modules(model, target_modules)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        fan_in_fan_out=targets == ["c_attn"])
    return get_peft_model(model, config)


@dataclass
class LoRAConfig(MethodConfig):
    rank: int = option(8, help="LoRA rank r")
    alpha: int = option(16, help="LoRA scaling alpha")
    dropout: float = option(0.0, help="dropout on the LoRA path")
    target_modules: Optional[List[str]] = option(None, help="module names to adapt (default: per architecture)")
    steps: int = option(10, help="optimisation steps on the support set")
    lr: float = option(5e-4, help="AdamW learning rate of the adapters")
    head_lr: float = option(1e-2, help="AdamW learning rate of the linear head")
    weight_decay: float = option(0.01, help="AdamW weight decay")


class LoRA(Method):
    name = "lora"
    config_class = LoRAConfig

    def adapt(self, ctx: EpisodeContext) -> Predictor:
        cfg = self.config
        model = apply_lora(ctx.fresh_model(), cfg.rank, cfg.alpha, cfg.dropout, cfg.target_modules)
        head = ctx.new_head(ctx.n_way)
        adapters = [p for p in model.parameters() if p.requires_grad]
        params = adapters + list(head.parameters())
        optimizer = torch.optim.AdamW([{"params": adapters, "lr": cfg.lr},
                                       {"params": list(head.parameters()), "lr": cfg.head_lr}],
                                      weight_decay=cfg.weight_decay)
        for _ in range(cfg.steps):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(head(ctx.embed(model, ctx.support)), ctx.support.labels)
            loss.backward()
            ctx.recorder.record(loss, params)
            optimizer.step()
        model.eval()
        return Predictor(lambda batch: head(ctx.embed(model, batch)), sum(p.numel() for p in params))
