"""Linear probe: scikit-learn logistic regression on frozen, cached embeddings (each text embedded once per run).

The query batch is mapped back to the episode's texts as in ``protonet`` (see ``frozen_features``), so
query vectors come from the same per-text cache. Logits are ``predict_log_proba`` as a float tensor.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from sklearn.linear_model import LogisticRegression

from fewshot_bench.baselines.protonet import frozen_features
from fewshot_bench.core.config import option
from fewshot_bench.methods import EpisodeContext, Method, MethodConfig, Predictor
from fewshot_bench.methods.search_space import Range, SearchSpace


@dataclass
class LinearProbeConfig(MethodConfig):
    C: float = option(1.0, help="inverse L2 regularisation strength of the logistic regression", above=0)
    max_iter: int = option(1000, help="solver (lbfgs) iterations", low=1)


class LinearProbe(Method):
    name = "linear_probe"
    config_class = LinearProbeConfig
    search_space = SearchSpace({"C": Range(1e-2, 1e2, log=True)})

    def adapt(self, ctx: EpisodeContext) -> Predictor:
        features = ctx.backbone.frozen_embeddings(ctx.support_texts).cpu().numpy()
        classifier = LogisticRegression(C=self.config.C, max_iter=self.config.max_iter,
                                        random_state=ctx.seed % 2**32)
        with warnings.catch_warnings():  # 1-shot: one text per class is the task, not the regression sklearn suspects
            warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
            classifier.fit(features, ctx.support.labels.cpu().numpy())
        device = ctx.device

        def predict(batch):
            query = frozen_features(ctx, batch).cpu().numpy()
            return torch.from_numpy(classifier.predict_log_proba(query)).float().to(device)

        # one weight vector and bias per class (sklearn stores a single row when n_way == 2)
        return Predictor(predict, ctx.n_way * (ctx.backbone.hidden_size + 1))
