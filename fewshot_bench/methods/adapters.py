"""LoRA wrapping (PEFT) of a backbone model, shared by the ``lora`` baseline and SGG's ``params: lora``.

Adapters go on the attention query/value projections, chosen per architecture from the module names
(BERT-like ``query``/``value``, GPT-2 ``c_attn``, Llama/Mistral/Qwen/OPT-like ``q_proj``/``v_proj``), or
on the modules named by the caller.
"""
from __future__ import annotations

import warnings
from typing import List, Sequence, Union

from torch import nn

from ..core.errors import UserError

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
