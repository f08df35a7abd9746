"""Full fine-tuning: every backbone parameter plus a linear head, AdamW, fixed steps, batch = support set.

:func:`train_on_support` is the loop itself, shared with ``lora`` (which trains adapters instead of the
backbone). When the setting has a source task it also measures ``source_alignment`` (cos(g_t, g_src)
over the backbone parameters, g_src as in SGG) without letting it change the update.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fewshot_bench.config import option
from fewshot_bench.methods import EpisodeContext, Method, MethodConfig, Predictor
from fewshot_bench.search_space import Choice, Range, SearchSpace


@dataclass
class SupportTrainingConfig(MethodConfig):
    steps: int = option(10, help="optimisation steps on the support set (batch = whole support set)", low=1)
    head_lr: float = option(1e-2, help="AdamW learning rate of the linear head", low=0)
    weight_decay: float = option(0.01, help="AdamW weight decay", low=0)
    source_every: int = option(2, help="with a source task: compute g_src (source-pool gradient) every this many "
                                       "steps (0: never; full_ft/lora only measure it, SGG also uses it)", low=0)
    source_shots: int = option(2, help="source examples per class in the g_src batch (0 = the whole source support)", low=0)
    fused_optimizer: bool = option(True, help="AdamW with PyTorch's fused kernel on CPU/CUDA (one pass per tensor, several "
                                              "times faster on CPU; same update rule, last-bit rounding may differ); "
                                              "false: torch's default implementation")


@dataclass
class FullFTConfig(SupportTrainingConfig):
    lr: float = option(5e-5, help="AdamW learning rate of the backbone", low=0)


# steps x learning rates; shared by lora and SGG (which add their own fields)
SUPPORT_TRAINING_SPACE = SearchSpace({"steps": Choice((10, 20, 40)), "lr": Range(1e-5, 1e-3, log=True),
                                      "head_lr": Range(1e-3, 1e-1, log=True)}, cost=("steps",))


def fused_adamw_devices() -> set:
    """Device types this torch build has a fused AdamW kernel for (CPU only from torch 2.4 on), as torch checks it."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch without the helper: CUDA is the one device every fused-capable release supports
        return {"cuda"}
    return set(_get_fused_kernels_supported_devices())


def adamw(groups: Sequence[dict], cfg: SupportTrainingConfig) -> torch.optim.AdamW:
    """AdamW over parameter ``groups`` (with their lrs), fused where ``cfg`` asks for it and this torch build has
    the kernel for the parameters (else torch's default implementation)."""
    params = [p for group in groups for p in group["params"]]
    devices = fused_adamw_devices() if cfg.fused_optimizer else set()
    fused = all(p.is_floating_point() and p.device.type in devices for p in params)
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=fused or None)


def train_on_support(ctx: EpisodeContext, model: nn.Module, head: nn.Module, trained: Sequence[torch.Tensor],
                     lr: float, cfg: SupportTrainingConfig) -> Predictor:
    """AdamW on ``trained`` (lr) and the head (head_lr) for ``cfg.steps`` full-support steps, recording each."""
    trained, head_params = list(trained), list(head.parameters())
    params = trained + head_params
    optimizer = adamw([{"params": trained, "lr": lr}, {"params": head_params, "lr": cfg.head_lr}], cfg)
    measure_source = ctx.has_source and cfg.source_every > 0
    src = None
    for t in range(cfg.steps):
        optimizer.zero_grad(set_to_none=True)
        if measure_source and t % cfg.source_every == 0:
            src = ctx.source_gradient(model, trained, t, shots=cfg.source_shots)
        loss = F.cross_entropy(head(ctx.embed(model, ctx.support)), ctx.support.labels)
        loss.backward()
        ctx.recorder.record(loss, params, source_grads=src)
        optimizer.step()
    model.eval()
    head.eval()
    return Predictor(lambda batch: head(ctx.embed(model, batch)), sum(p.numel() for p in params))


class FullFineTuning(Method):
    name = "full_ft"
    config_class = FullFTConfig
    search_space = SUPPORT_TRAINING_SPACE

    def adapt(self, ctx: EpisodeContext) -> Predictor:
        model, head = ctx.fresh_model(), ctx.new_head(ctx.n_way)
        return train_on_support(ctx, model, head, model.parameters(), self.config.lr, self.config)
