"""Prototypical classifier: frozen backbone, nearest class centroid of L2-normalised embeddings.

Logits are cosine similarities to the (re-normalised) class centroids divided by ``temperature``.

Embedding cache: every vector comes from ``Backbone.frozen_embeddings``, which caches per text across
episodes, so each text is embedded once per run. The predictor's batch carries its texts
(``Batch.texts``), which :func:`frozen_features` looks up in that cache; a batch without texts is embedded
directly with the pristine model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fewshot_bench.methods.backbone import Batch
from fewshot_bench.core.config import option
from fewshot_bench.methods import EpisodeContext, Method, MethodConfig, Predictor


@torch.no_grad()
def frozen_features(ctx: EpisodeContext, batch: Batch) -> torch.Tensor:
    """Frozen (pretrained) embeddings [B, H] of ``batch``, through the per-text cache when it carries texts."""
    if batch.texts is not None:
        return ctx.backbone.frozen_embeddings(batch.texts)
    return ctx.backbone.embed(ctx.backbone.pristine, batch).float()


@dataclass
class ProtoConfig(MethodConfig):
    temperature: float = option(0.1, help="logits = cosine similarity to the class centroid / temperature", low=1e-6)


class PrototypicalNetwork(Method):
    name = "protonet"
    config_class = ProtoConfig

    def adapt(self, ctx: EpisodeContext) -> Predictor:
        support = F.normalize(ctx.backbone.frozen_embeddings(ctx.support_texts), dim=-1)
        labels = ctx.support.labels.to(support.device)
        centroids = F.normalize(torch.stack([support[labels == c].mean(0) for c in range(ctx.n_way)]), dim=-1)
        temperature = float(self.config.temperature)

        def predict(batch: Batch) -> torch.Tensor:
            return F.normalize(frozen_features(ctx, batch), dim=-1) @ centroids.T / temperature

        return Predictor(predict, 0)
