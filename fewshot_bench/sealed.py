"""What a method may see of an evaluated episode: the support set and a label-free view of the rest.

The harness keeps the query labels (and everything that would let a method rebuild them: the episode key,
the query example ids and the fingerprint, which hashes the labels) and scores the predictions itself.
``adapt`` gets an :class:`EpisodeView`; the predictor gets the query texts tokenized, with ``labels=None``.
Source-pool episodes (meta-training, SGG's alignment batches) are labelled in full: they never share
classes (or, for tasks without class splits, examples) with the evaluated pool, and :class:`SourcePool`
draws only from the source pool.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .episodes import Episode, Setting, sample_episode


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


class SourcePool:
    """``index -> source-pool episode`` of a setting (the setting's shape, the run's seed); nothing else.
    ``pool="validation"``: the source task's validation pool instead (early stopping while meta-training).

    It holds the source task's name and the episode shape, not the :class:`Setting`, so a method cannot
    reach ``Setting.target_episode`` through it.
    """

    __slots__ = ("_task", "_fold", "_shape", "_seed", "_pool")

    def __init__(self, setting: Setting, seed: int, pool: str = "source"):
        self._task = setting.source_task or setting.task
        self._fold = setting.fold if self._task == setting.task else 1
        self._shape = (setting.n_way, setting.k_shot, setting.q_query)
        self._seed = seed
        self._pool = pool

    def __call__(self, index: int) -> Episode:
        from .data import get_task_data

        n_way, k_shot, q_query = self._shape
        return sample_episode(get_task_data(self._task, self._fold), pool=self._pool, n_way=n_way, k_shot=k_shot,
                              q_query=q_query, seed=self._seed, index=index)
