"""Prototypical classifier: frozen backbone, nearest class centroid of L2-normalised embeddings.

Embeddings come from ``Backbone.frozen_embeddings``, cached per text across episodes, so every text is
embedded once per run; the predictor looks the query texts up in that cache too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fewshot_bench.config import option
from fewshot_bench.methods import EpisodeContext, Method, MethodConfig, Predictor


@dataclass
class ProtoConfig(MethodConfig):
    temperature: float = option(0.1, help="softmax temperature of the cosine-similarity logits")


class PrototypicalNetwork(Method):
    name = "protonet"
    config_class = ProtoConfig

    def adapt(self, ctx: EpisodeContext) -> Predictor:
        support = F.normalize(ctx.backbone.frozen_embeddings(ctx.support_texts), dim=-1)
        labels = ctx.support.labels.to(support.device)
        centroids = torch.stack([support[labels == c].mean(0) for c in range(ctx.n_way)])
        centroids = F.normalize(centroids, dim=-1)
        query_texts = ctx.episode.query_texts

        def predict(batch):
            query = F.normalize(ctx.backbone.frozen_embeddings(query_texts), dim=-1)
            return query @ centroids.T / self.config.temperature

        return Predictor(predict, 0)
