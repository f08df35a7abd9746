"""LoRA (PEFT): low-rank adapters on the attention projections plus a fully trained linear head.

Adapters go on the attention query/value projections, chosen per architecture from the module names
(BERT-like ``query``/``value``, GPT-2 ``c_attn``, Llama/Mistral/Qwen/OPT-like ``q_proj``/``v_proj``);
for anything else set ``target_modules`` in the method config (``--method-config lora.target_modules=a,b``).
The classifier head is a separate ``nn.Linear`` trained in full (PEFT's "module to save" role); it gets
no adapter. With ``dropout > 0`` runs stay reproducible: ``run_episode`` seeds torch before ``adapt``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

from torch import nn

from fewshot_bench.baselines.full_ft import SUPPORT_TRAINING_SPACE, SupportTrainingConfig, train_on_support
from fewshot_bench.config import option
from fewshot_bench.errors import UserError
from fewshot_bench.methods import EpisodeContext, Method, Predictor
from fewshot_bench.search_space import Choice, Range, SearchSpace

# (module-name suffixes that identify the architecture, targets to adapt), checked in order
TARGETS_BY_MODULE_NAMES = ((("query", "value"), ["query", "value"]),       # BERT / MiniLM / RoBERTa
                           (("q_proj", "v_proj"), ["q_proj", "v_proj"]),   # Llama / Mistral / Qwen / OPT
                           (("c_attn",), ["c_attn"]))                     # GPT-2 (fused qkv Conv1D)


def lora_target_modules(model: nn.Module, override: Union[None, str, Sequence[str]] = None) -> List[str]:
    """The attention projections to adapt for this architecture, or ``override`` (a list or "a,b")."""
    if override:
        targets = override.split(",") if isinstance(override, str) else list(override)
        return [t.strip() for t in targets if t.strip()]
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for required, targets in TARGETS_BY_MODULE_NAMES:
        if set(required) <= names:
            return list(targets)
    raise UserError(f"lora: no known attention projections in {type(model).__name__}; set the method config field "
                    f"target_modules, e.g. --method-config lora.target_modules=q_proj,v_proj")


def apply_lora(model: nn.Module, rank: int, alpha: int, dropout: float = 0.0,
               target_modules: Union[None, str, Sequence[str]] = None) -> nn.Module:
    """Wrap ``model`` with PEFT LoRA adapters; only the adapters stay trainable."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = lora_target_modules(model, target_modules)
    # GPT-2's Conv1D stores weights as (in, out): PEFT needs fan_in_fan_out for it
    fan_in_fan_out = any(isinstance(m, Conv1D) for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in targets)
    config = LoraConfig(r=int(rank), lora_alpha=alpha, lora_dropout=float(dropout), target_modules=targets,
                        fan_in_fan_out=fan_in_fan_out, bias="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers deprecation noise raised inside PEFT
        try:
            return get_peft_model(model, config)
        except ValueError as exc:  # e.g. a target module name that is not in the model
            raise UserError(f"lora: {str(exc).splitlines()[0]}") from None


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
