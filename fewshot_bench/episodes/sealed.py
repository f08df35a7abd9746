"""What a method may see of an evaluated episode: the support set and a label-free view of the rest.

The harness keeps the query labels (and everything that would let a method rebuild them: the episode key,
the query example ids and the fingerprint, which hashes the labels) and scores the predictions itself.
``adapt`` gets an :class:`EpisodeView`; the predictor gets the query texts tokenized, with ``labels=None``.
Source-pool episodes (meta-training, SGG's alignment batches) are labelled in full: they never share
classes (or, for tasks without class splits, examples) with the evaluated pool, and
:class:`fewshot_bench.episodes.sampling.SourcePool` draws only from the source pool.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .sampling import Episode


@dataclass(frozen=True)
class EpisodeView:
    """An episode without its query labels, query ids, key (seed, index) or fingerprint."""
    n_way: int
    k_shot: Union[int, tuple]
    q_query: int
    classes: tuple
    support_ids: tuple
    support_texts: tuple
    support_labels: tuple
    query_texts: tuple
    task: str = ""  # the task's name (its card: e.g. the prompt template of in-context learning)

    @classmethod
    def of(cls, episode: Episode) -> "EpisodeView":
        return cls(n_way=episode.n_way, k_shot=episode.k_shot, q_query=episode.q_query, classes=episode.classes,
                   support_ids=episode.support_ids, support_texts=episode.support_texts,
                   support_labels=episode.support_labels, query_texts=episode.query_texts,
                   task=episode.task)
