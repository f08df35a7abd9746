"""Episodes: a pure function of (task, version, fold, pool, n, k, q, seed, index), fingerprinted."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.loading import TaskData, get_task_data
from ..core.errors import UserError
from ..core.hashing import hash_seed
from ..data.cards import TaskConfig

Shot = Union[int, Sequence[int]]


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot episode. Label ids index ``classes`` and are shuffled per episode."""
    task: str
    version: int
    fold: int
    pool: str
    n_way: int
    k_shot: Union[int, tuple]
    q_query: int
    seed: int
    index: int
    classes: tuple
    support_ids: tuple
    support_texts: tuple
    support_labels: tuple
    query_ids: tuple
    query_texts: tuple
    query_labels: tuple
    fingerprint: str

    def to_dict(self) -> dict:
        return asdict(self)


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(hash_seed(json.dumps(key, sort_keys=True), 16))


def fingerprint(classes, support_ids, support_labels, query_ids, query_labels) -> str:
    payload = json.dumps([list(classes), list(support_ids), list(support_labels), list(query_ids), list(query_labels)])
    return hashlib.sha256(payload.encode()).hexdigest()


def content_sha256(episode: Episode) -> str:
    """sha256 of what a method reads from ``episode``: its fingerprint (classes, ids, labels) and every support and
    query text, in order. Two episodes with one fingerprint but different texts (the data changed under the same
    ids) differ here; stores keep it per (task, fingerprint) (:mod:`fewshot_bench.store.content`)."""
    payload = json.dumps([episode.fingerprint, list(episode.support_texts), list(episode.query_texts)])
    return hashlib.sha256(payload.encode()).hexdigest()


def parse_shot(k_shot) -> Union[int, tuple]:
    """``5`` or ``"5"`` -> 5; ``[1, 5]`` or ``"1-5"`` -> (1, 5): K drawn per class in that range (FLEX-style)."""
    try:
        if isinstance(k_shot, str):
            parts = k_shot.split("-")
            k_shot = [int(p) for p in parts] if len(parts) == 2 else int(k_shot)
        if isinstance(k_shot, (list, tuple)):
            low, high = (int(v) for v in k_shot)
        elif isinstance(k_shot, bool) or not isinstance(k_shot, int):
            raise ValueError
    except ValueError:
        raise UserError(f"k_shot '{k_shot}' is not a number of shots; use an integer >= 1 (e.g. 5) "
                        f"or MIN-MAX (e.g. 1-5)") from None
    if isinstance(k_shot, (list, tuple)):
        if not 1 <= low <= high:
            raise UserError(f"variable shot range {k_shot} must satisfy 1 <= min <= max")
        return (low, high)
    if k_shot < 1:
        raise UserError(f"k_shot must be >= 1, got {k_shot}")
    return k_shot


def parse_n_way(n_way) -> Union[int, str]:
    """``5`` or ``"5"`` -> 5; ``"all"`` stays; anything else (or fewer than 2 classes) is a UserError."""
    if n_way == "all":
        return n_way
    try:
        value = int(n_way) if isinstance(n_way, str) or (isinstance(n_way, int) and not isinstance(n_way, bool)) \
            else None
    except ValueError:
        value = None
    if value is None or value < 2:
        raise UserError(f"n_way '{n_way}' is not a number of classes; use an integer >= 2 or 'all'")
    return value


def episode_shape(config: TaskConfig, n_way=None, k_shot=None, q_query=None) -> tuple:
    """(n_way, k_shot, q_query) as given (``--n-way``/``--k-shot``/``--query``), each defaulting to the card's
    ``episodes``; an n_way other than 'all' must be an integer."""
    defaults = config.episodes
    n_way = n_way if n_way is not None else defaults.n_way
    if n_way != "all":
        try:
            n_way = int(n_way)
        except (TypeError, ValueError):
            raise UserError(f"--n-way expects an integer (or 'all'), got '{n_way}'") from None
    return n_way, k_shot if k_shot is not None else defaults.k_shot, q_query if q_query is not None else defaults.q_query


def sample_episode(data: TaskData, *, pool: str = "target", n_way: Union[int, str] = 5, k_shot: Shot = 5,
                   q_query: int = 15, seed: int = 0, index: int = 0) -> Episode:
    """Draw episode ``index`` of the seeded sequence; uses its own RNG, never global state."""
    k_shot = parse_shot(k_shot)
    k_max = k_shot[1] if isinstance(k_shot, tuple) else k_shot
    if q_query < 1:
        raise UserError(f"q_query must be >= 1, got {q_query}")
    chosen_pool = data.pool(pool)
    labels = np.asarray(data.labels)[chosen_pool.rows]
    rows_of = {c: chosen_pool.rows[labels == c] for c in chosen_pool.classes}
    eligible = [c for c in chosen_pool.classes if len(rows_of[c]) >= k_max + q_query]
    where = f"task '{data.name}' (fold {data.fold}, {pool} pool)"
    sizes = sorted((len(r) for r in rows_of.values()), reverse=True)
    if n_way == "all":
        if len(eligible) < len(chosen_pool.classes):
            raise UserError(f"{where}: n_way='all' needs every one of its {len(chosen_pool.classes)} classes to have "
                            f">= K+Q = {k_max + q_query} examples, but only {len(eligible)} do; the largest K+Q "
                            f"this pool allows with n_way='all' is {sizes[-1]}: lower --k-shot/--query")
        n_way = len(eligible)
    n_way = int(n_way)
    if n_way < 2:
        raise UserError(f"n_way must be >= 2, got {n_way}")
    if n_way > len(sizes):
        raise UserError(f"{where}: n_way={n_way} but the pool has only {len(sizes)} class(es); "
                        f"lower --n-way to <= {len(sizes)}")
    if n_way > len(eligible):
        fewer = f", or lower --n-way to <= {len(eligible)}" if len(eligible) >= 2 else ""
        raise UserError(f"{where}: n_way={n_way} needs {n_way} classes with >= K+Q = {k_max + q_query} examples, "
                        f"but only {len(eligible)} class(es) have that many; the largest K+Q this pool allows "
                        f"with n_way={n_way} is {sizes[n_way - 1]}: lower --k-shot/--query{fewer}")
    rng = _rng(data.name, data.config.version, data.fold, pool, n_way, k_shot, q_query, seed, index)
    classes = [eligible[i] for i in rng.choice(len(eligible), size=n_way, replace=False)]
    support, query = [], []
    for label_id, cls in enumerate(classes):
        shots = int(rng.integers(k_shot[0], k_shot[1] + 1)) if isinstance(k_shot, tuple) else k_shot
        picked = rng.permutation(rows_of[cls])[: shots + q_query]
        support += [(int(r), label_id) for r in picked[:shots]]
        query += [(int(r), label_id) for r in picked[shots:]]
    support = [support[i] for i in rng.permutation(len(support))]
    ids, texts = data.ids, data.texts
    s_ids = tuple(ids[r] for r, _ in support)
    q_ids = tuple(ids[r] for r, _ in query)
    s_labels = tuple(l for _, l in support)
    q_labels = tuple(l for _, l in query)
    return Episode(
        task=data.name, version=data.config.version, fold=data.fold, pool=pool, n_way=n_way, k_shot=k_shot,
        q_query=q_query, seed=seed, index=index, classes=tuple(classes),
        support_ids=s_ids, support_texts=tuple(texts[r] for r, _ in support), support_labels=s_labels,
        query_ids=q_ids, query_texts=tuple(texts[r] for r, _ in query), query_labels=q_labels,
        fingerprint=fingerprint(classes, s_ids, s_labels, q_ids, q_labels),
    )


@dataclass(frozen=True)
class Setting:
    """A task × episode-shape combination; ``source_task`` differs from ``task`` in cross-dataset settings."""
    task: str
    n_way: Union[int, str] = 5
    k_shot: Union[int, tuple] = 5
    q_query: int = 15
    fold: int = 1
    source_task: Optional[str] = None
    pool: str = "target"  # "validation" to choose hyperparameters without touching target classes

    @property
    def label(self) -> str:
        shot = f"{self.k_shot[0]}-{self.k_shot[1]}" if isinstance(self.k_shot, tuple) else self.k_shot
        cross = f"{self.source_task}->" if self.source_task and self.source_task != self.task else ""
        pool = "" if self.pool == "target" else f"/{self.pool}"
        return f"{cross}{self.task}/fold{self.fold}{pool}/{self.n_way}way{shot}shot{self.q_query}q"

    def target_episode(self, seed: int, index: int) -> Episode:
        """Evaluated episode ``index`` (from the target pool, or the validation pool when ``pool`` says so)."""
        return sample_episode(get_task_data(self.task, self.fold), pool=self.pool, n_way=self.n_way,
                              k_shot=self.k_shot, q_query=self.q_query, seed=seed, index=index)

    def source_episode(self, seed: int, index: int) -> Episode:
        """Episodes for meta-training: the source pool of ``source_task`` (default: the same task)."""
        return SourcePool(self, seed)(index)

    @property
    def has_source_pool(self) -> bool:
        """Whether the source pool (of ``source_task``, default the task itself) holds any example."""
        source = self.source_task or self.task
        data = get_task_data(source, self.fold if source == self.task else 1)
        return len(data.pools["source"].rows) > 0

    @property
    def shared_source_classes(self) -> Tuple[str, ...]:
        """Classes the source pool (of ``source_task``, default the task itself) shares with the evaluated pool.

        Non-empty on cards whose pools hold disjoint *examples* of the same classes (sst2, trec, ag_news): a
        method that trains on that source pool has seen labelled examples of the evaluated classes, so its rows
        are not few-shot; the runner marks them ``same_class_source`` and the leaderboard ranks them apart.
        """
        source = self.source_task or self.task
        source_pool = get_task_data(source, self.fold if source == self.task else 1).pools["source"]
        evaluated = get_task_data(self.task, self.fold).pools[self.pool]
        return tuple(sorted(set(source_pool.classes) & set(evaluated.classes)))

    def source_episodes(self, seed: int) -> Optional[Callable[[int], Episode]]:
        """index -> source-pool episode (a :class:`SourcePool`), or None when the
        setting has no source pool."""
        return SourcePool(self, seed) if self.has_source_pool else None

    def validation_episodes(self, seed: int) -> Callable[[int], Episode]:
        """index -> episode of the source task's validation pool (early stopping while meta-training)."""
        return SourcePool(self, seed, pool="validation")


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
        n_way, k_shot, q_query = self._shape
        return sample_episode(get_task_data(self._task, self._fold), pool=self._pool, n_way=n_way, k_shot=k_shot,
                              q_query=q_query, seed=self._seed, index=index)


def episode_set_sha256(fingerprints: List[str]) -> str:
    """Identity of a set of episodes (order-independent)."""
    return hashlib.sha256("\n".join(sorted(fingerprints)).encode()).hexdigest()
