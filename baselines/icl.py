"""In-context learning for decoder backbones: no gradient step, the support set becomes a K-shot prompt.

Contract:
- The task card's ``prompt_template`` (placeholders ``{text}`` then ``{label}``) formats every
  demonstration (text and its label word) and, cut before ``{label}``, each query. Prompts are built at
  token level: template pieces and label words are tokenized without special tokens, example texts are
  the token ids of the run's own batches (special tokens removed), a BOS token leads when the tokenizer
  has one. The whitespace before ``{label}`` is tokenized with the label word.
- Label words are the episode's class names with ``_`` read as spaces. Demonstrations are in a seeded
  order (the episode seed); when the prompt exceeds the token budget, the first ones are dropped.
- Each query costs one forward pass per class (prompt + that class's label word), batched.
- A class's score is the summed log-probability of its label word's tokens after the query prompt,
  from the decoder's hidden states times its (tied) input embedding matrix; logits are the log-softmax
  over classes. ``calibration: contextual`` (Zhao et al., 2021) divides the class probabilities by those
  the same prompt gives a content-free query ("N/A"), so that query scores uniform.
- The backbone must be a decoder (last-token pooling) with tied input/output embeddings; otherwise a
  one-line UserError.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch

from fewshot_bench.methods.backbone import Batch
from fewshot_bench.core.config import option
from fewshot_bench.core.errors import UserError
from fewshot_bench.methods import EpisodeContext, Method, MethodConfig, Predictor
from fewshot_bench.data.cards import get_task_config

CALIBRATIONS = ("contextual", "none")


@dataclass
class ICLConfig(MethodConfig):
    calibration: str = option("contextual", help="contextual: divide class probabilities by those of a content-free "
                                                 "query (Zhao et al., 2021); none: raw label-word likelihoods")
    content_free: str = option("N/A", help="the content-free query text of contextual calibration")
    max_prompt_tokens: int = option(0, help="prompt budget in tokens (0: the backbone's position limit); the first "
                                            "demonstrations are dropped to fit")
    batch_size: int = option(16, help="prompt+label sequences per forward pass")

    def __post_init__(self):
        super().__post_init__()  # types, limits, finite numbers
        self.validate()

    def validate(self) -> None:
        """UserError naming the first invalid field (also run when a method is built with overrides)."""
        if self.calibration not in CALIBRATIONS:
            raise UserError(f"icl config field 'calibration' is '{self.calibration}'; use one of {', '.join(CALIBRATIONS)}")
        if self.max_prompt_tokens < 0 or self.batch_size < 1:
            raise UserError("icl config: max_prompt_tokens must be >= 0 and batch_size >= 1")


class PromptBuilder:
    """Token-level prompts from a ``{text} ... {label}`` template and the episode's class names."""

    def __init__(self, tokenizer, template: str, class_names: Sequence[str]):
        self.tokenizer = tokenizer
        before_text, rest = template.split("{text}", 1)
        between, after_label = rest.split("{label}", 1)
        label_space = between[len(between.rstrip()):]
        self.before_text = self.encode(before_text)
        self.between = self.encode(between.rstrip())
        self.after_label = self.encode(after_label)
        self.label_words = [self.encode(label_space + str(name).replace("_", " ")) for name in class_names]
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.special = set(tokenizer.all_special_ids)

    def encode(self, text: str) -> List[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def text_ids(self, batch: Batch) -> List[List[int]]:
        """Each row's text tokens: padding and special tokens removed."""
        rows = []
        for ids, mask in zip(batch.input_ids.tolist(), batch.attention_mask.tolist()):
            rows.append([t for t, m in zip(ids, mask) if m and t not in self.special])
        return rows

    def query(self, text_ids: List[int]) -> List[int]:
        return self.before_text + text_ids + self.between

    def demonstration(self, text_ids: List[int], label: int) -> List[int]:
        return self.query(text_ids) + self.label_words[label] + self.after_label

    def context(self, demonstrations: Sequence[List[int]], query: List[int], budget: int) -> List[int]:
        """BOS + as many of the last demonstrations as fit in ``budget`` with the query and longest label word."""
        room = budget - len(self.bos) - len(query) - max(len(w) for w in self.label_words)
        if room < 0:
            raise UserError(f"a query prompt needs {budget - room} tokens, more than the budget of {budget}; "
                            "raise icl's max_prompt_tokens or use a backbone with more positions")
        kept: List[List[int]] = []
        for demo in reversed(demonstrations):
            if len(demo) > room:
                break
            kept.insert(0, demo)
            room -= len(demo)
        return self.bos + [t for demo in kept for t in demo] + query


@torch.no_grad()
def label_log_likelihoods(model: torch.nn.Module, contexts: Sequence[List[int]], label_words: Sequence[List[int]],
                          *, pad_id: int, device: torch.device, batch_size: int) -> torch.Tensor:
    """[len(contexts), len(label_words)]: log p(label word | context) summed over the word's tokens."""
    embeddings = model.get_input_embeddings().weight
    pairs = [(i, c) for i in range(len(contexts)) for c in range(len(label_words))]
    scores = torch.empty(len(contexts), len(label_words), dtype=torch.float64)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        rows = [contexts[i] + label_words[c] for i, c in chunk]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
        hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        for r, (i, c) in enumerate(chunk):
            word = label_words[c]
            first = len(contexts[i])
            logits = hidden[r, first - 1:first - 1 + len(word)].float() @ embeddings.float().T
            picked = torch.log_softmax(logits, -1).gather(1, torch.tensor(word, device=device).unsqueeze(1))
            scores[i, c] = picked.sum().double()
    return scores


class InContextLearning(Method):
    name = "icl"
    config_class = ICLConfig
    opt_in = True  # decoder backbones only

    def __init__(self, config=None):
        super().__init__(config)
        self.config.validate()

    def adapt(self, ctx: EpisodeContext) -> Predictor:
        backbone, cfg = ctx.backbone, self.config
        model = backbone.pristine
        config = model.config
        if backbone.pooling != "last":
            raise UserError(f"method 'icl' needs a decoder backbone (e.g. tiny-decoder or a causal LM); "
                            f"'{backbone.name}' is an encoder")
        if not getattr(config, "tie_word_embeddings", True):
            raise UserError(f"method 'icl' scores label words through tied input/output embeddings; backbone "
                            f"'{backbone.name}' has untied ones")
        limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        if not (cfg.max_prompt_tokens or limit):
            raise UserError(f"backbone '{backbone.name}' states no position limit; set icl's max_prompt_tokens")
        budget = cfg.max_prompt_tokens or int(limit)
        builder = PromptBuilder(backbone.tokenizer, get_task_config(ctx.episode.task).prompt_template,
                                ctx.episode.classes)
        order = np.random.default_rng(ctx.seed).permutation(len(ctx.support))
        support_ids, labels = builder.text_ids(ctx.support), ctx.support.labels.tolist()
        demonstrations = [builder.demonstration(support_ids[i], labels[i]) for i in order]
        pad = backbone.tokenizer.pad_token_id or 0

        def scores(text_ids: Sequence[List[int]]) -> torch.Tensor:
            contexts = [builder.context(demonstrations, builder.query(ids), budget) for ids in text_ids]
            with ctx.autocast():
                return label_log_likelihoods(model, contexts, builder.label_words, pad_id=pad,
                                             device=ctx.device, batch_size=cfg.batch_size)

        prior = None
        if cfg.calibration == "contextual":
            prior = torch.log_softmax(scores([builder.encode(cfg.content_free)]), -1)

        def predict(batch: Batch) -> torch.Tensor:
            log_p = torch.log_softmax(scores(builder.text_ids(batch)), -1)
            if prior is not None:
                log_p = torch.log_softmax(log_p - prior, -1)
            return log_p.float().to(ctx.device)

        return Predictor(predict, 0)
