"""Prototypical classifier: frozen backbone, nearest class centroid of L2-normalised embeddings.

Logits are cosine similarities to the (re-normalised) class centroids divided by ``temperature``.

Embedding cache: every vector comes from ``Backbone.frozen_embeddings``, which caches per text across
episodes, so each text is embedded once per run. The predictor receives token ids (a ``Batch``), not
texts; :func:`frozen_features` recognises the episode's own query (or support) batch — the rows are
token-for-token what tokenizing ``ctx.episode.query_texts`` gives, a token-cache hit — and then reads the
per-text cache. Any other batch is embedded directly with the pristine model (correct, just uncached).
Nothing is added to the core API.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from fewshot_bench.backbone import Batch
from fewshot_bench.config import option
from fewshot_bench.methods import EpisodeContext, Method, MethodConfig, Predictor


def _texts_of(ctx: EpisodeContext, batch: Batch) -> Optional[Sequence[str]]:
    """The episode texts that ``batch`` tokenizes (query first, then support), or None."""
    for texts in (ctx.episode.query_texts, ctx.episode.support_texts):
        if len(texts) != len(batch):
            continue
        ref = ctx.backbone.tokenize(texts)  # token cache hit: no tokenizer call
        if (ref.input_ids.shape == batch.input_ids.shape and torch.equal(ref.input_ids, batch.input_ids)
                and torch.equal(ref.attention_mask, batch.attention_mask)):
            return texts
    return None


@torch.no_grad()
def frozen_features(ctx: EpisodeContext, batch: Batch) -> torch.Tensor:
    """Frozen (pretrained) embeddings [B, H] of ``batch``, through the per-text cache when possible."""
    texts = _texts_of(ctx, batch)
    if texts is not None:
        return ctx.backbone.frozen_embeddings(texts)
    return ctx.backbone.embed(ctx.backbone.pristine, batch).float()


@dataclass
class ProtoConfig(MethodConfig):
    temperature: float = option(0.1, help="logits = cosine similarity to the class centroid / temperature")


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
