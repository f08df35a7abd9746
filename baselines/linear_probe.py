"""Linear probe: scikit-learn logistic regression on frozen, cached embeddings (each text embedded once per run)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from sklearn.linear_model import LogisticRegression

from fewshot_bench.config import option
from fewshot_bench.methods import EpisodeContext, Method, MethodConfig, Predictor


@dataclass
class LinearProbeConfig(MethodConfig):
    C: float = option(1.0, help="inverse L2 regularisation strength")
    max_iter: int = option(1000, help="solver iterations")


class LinearProbe(Method):
    name = "linear_probe"
    config_class = LinearProbeConfig

    def adapt(self, ctx: EpisodeContext) -> Predictor:
        features = ctx.backbone.frozen_embeddings(ctx.support_texts).cpu().numpy()
        classifier = LogisticRegression(C=self.config.C, max_iter=self.config.max_iter, random_state=ctx.seed % 2**31)
        classifier.fit(features, ctx.support.labels.cpu().numpy())
        query_texts = ctx.episode.query_texts

        def predict(batch):
            query = ctx.backbone.frozen_embeddings(query_texts).cpu().numpy()
            return torch.from_numpy(classifier.predict_log_proba(query)).float()

        return Predictor(predict, classifier.coef_.size + classifier.intercept_.size)
