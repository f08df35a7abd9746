"""Full fine-tuning: every backbone parameter plus a linear head, AdamW, fixed steps, batch = support set."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fewshot_bench.config import option
from fewshot_bench.methods import EpisodeContext, Method, MethodConfig, Predictor


@dataclass
class FullFTConfig(MethodConfig):
    steps: int = option(10, help="optimisation steps on the support set")
    lr: float = option(5e-5, help="AdamW learning rate of the backbone")
    head_lr: float = option(1e-2, help="AdamW learning rate of the linear head")
    weight_decay: float = option(0.01, help="AdamW weight decay")


class FullFineTuning(Method):
    name = "full_ft"
    config_class = FullFTConfig

    def adapt(self, ctx: EpisodeContext) -> Predictor:
        cfg = self.config
        model, head = ctx.fresh_model(), ctx.new_head(ctx.n_way)
        params = [p for p in model.parameters()] + [p for p in head.parameters()]
        optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "lr": cfg.lr},
                                       {"params": list(head.parameters()), "lr": cfg.head_lr}],
                                      weight_decay=cfg.weight_decay)
        for _ in range(cfg.steps):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(head(ctx.embed(model, ctx.support)).float(), ctx.support.labels)
            loss.backward()
            ctx.recorder.record(loss, params)
            optimizer.step()
        model.eval()
        return Predictor(lambda batch: head(ctx.embed(model, batch)), sum(p.numel() for p in params))
