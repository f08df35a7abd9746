"""Full fine-tuning: every backbone parameter plus a linear head, AdamW, fixed steps, batch = support set.

The loop is :func:`fewshot_bench.methods.training.train_on_support` (shared with ``lora`` and the base of SGG).
"""
from __future__ import annotations

from fewshot_bench.methods import EpisodeContext, Method, Predictor
from fewshot_bench.methods.training import SUPPORT_TRAINING_SPACE, FullFTConfig, train_on_support


class FullFineTuning(Method):
    name = "full_ft"
    config_class = FullFTConfig
    search_space = SUPPORT_TRAINING_SPACE

    def adapt(self, ctx: EpisodeContext) -> Predictor:
        model, head = ctx.fresh_model(), ctx.new_head(ctx.n_way)
        return train_on_support(ctx, model, head, model.parameters(), self.config.lr, self.config)
