"""Class-level bootstrap: a cell's episodes share classes, so their accuracies are not independent.

An episode's accuracy is the mean over its N classes of the per-class query accuracy (Q queries per class),
so a row's mean accuracy is the mean of its (episode, class) accuracies. Contracts:
  * :func:`episode_labels`: {fingerprint: (classes, query labels)} of the stored episodes: from the record's
    ``extra`` (``classes`` and ``query_labels``, written by ``run`` from this version on), else regenerated
    from the task's local rows (data dir or package: ``data.local_copy``; never downloaded, so aggregating a store
    needs no network) with ``Setting.target_episode`` and kept only when the regenerated fingerprint matches;
    left out when neither works (no local data, another task version): a row holding such an episode gets no
    class-level CI.
  * :func:`class_ci`: 95% percentile CI of a row's mean accuracy (or of its paired difference to the reference)
    from the (episode, class) values of its first ok restart's predictions, resampling **classes** with
    replacement and keeping every (episode, class) value of each drawn class (Ren et al. 2010: resample the top
    level only; resampling episodes again within the drawn classes would count the within-class variance
    twice, Davison and Hinkley 1997 §3.8). Seeded, contains the mean; (None, None) without labels or
    predictions for every episode. :func:`grouped_class_ci`: the same for a mean over folds, one class draw
    shared by the folds (folds sharing target classes resampled as dependent).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.loading import local_copy
from ..episodes.sampling import Setting, parse_shot
from ..core.errors import UserError

RESAMPLES = 4000


def _setting(record: dict) -> Setting:
    """The Setting a stored episode was drawn from (its stored columns and setting label)."""
    head = record["setting"].split("/", 1)[0]
    source = head.split("->", 1)[0] if "->" in head else None
    return Setting(record["task"], int(record["n_way"]), parse_shot(record["k_shot"]), int(record["q_query"]),
                   int(record["fold"]), source, "validation" if "/validation/" in record["setting"] else "target")


def episode_labels(records: Sequence[dict]) -> Dict[str, Tuple[tuple, tuple]]:
    """{fingerprint: (classes, query labels)} of the records whose labels are stored or regenerated from local
    rows with a matching fingerprint; the others are left out (their rows get no class-level CI)."""
    labels: Dict[str, Tuple[tuple, tuple]] = {}
    regenerate = None  # decided at the first record without stored labels; False after a failed regeneration
    for record in records:
        if record["fingerprint"] in labels:
            continue
        extra = record.get("extra") or {}
        if extra.get("classes") and extra.get("query_labels"):
            labels[record["fingerprint"]] = (tuple(extra["classes"]), tuple(extra["query_labels"]))
            continue
        if regenerate is None:
            regenerate = local_copy(record["task"])
        if not regenerate:
            continue
        try:
            episode = _setting(record).target_episode(int(record["seed"]), int(record["episode_index"]))
        except (UserError, OSError, ValueError, KeyError, TypeError):
            regenerate = False
            continue
        if episode.fingerprint == record["fingerprint"]:
            labels[record["fingerprint"]] = (episode.classes, episode.query_labels)
    return labels


def class_accuracy(predictions: Sequence[int], labels: Tuple[tuple, tuple]) -> Dict[str, float]:
    """{class: query accuracy on that class} of one episode."""
    classes, query = labels
    predicted, truth = np.asarray(predictions), np.asarray(query)
    return {name: float(np.mean(predicted[truth == i] == i)) for i, name in enumerate(classes)}


def _values(entry, fingerprints: Sequence[str], labels: Dict[str, tuple], other=None) -> Optional[tuple]:
    """(values, class of each value) over the (episode, class) pairs: entry's class accuracy, minus ``other``'s."""
    values: List[float] = []
    owners: List[str] = []
    for f in fingerprints:
        mine = entry.predictions.get(f)
        theirs = other.predictions.get(f) if other is not None else None
        if f not in labels or mine is None or len(mine) != len(labels[f][1]) or \
                (other is not None and (theirs is None or len(theirs) != len(mine))):
            return None
        a = class_accuracy(mine, labels[f])
        b = class_accuracy(theirs, labels[f]) if other is not None else dict.fromkeys(a, 0.0)
        values += [a[c] - b[c] for c in a]
        owners += list(a)
    return np.array(values), owners


def class_ci(entry, fingerprints: Sequence[str], labels: Dict[str, tuple], other=None,
             seed: int = 0) -> Tuple[Optional[float], Optional[float]]:
    """Class-level 95% CI (4 decimals) of ``entry``'s mean accuracy over ``fingerprints`` (minus ``other``'s:
    the paired difference), resampling classes; (None, None) when labels or predictions are missing."""
    return grouped_class_ci([(entry, fingerprints, labels, other)], seed)


def grouped_class_ci(groups: Sequence[tuple], seed: int = 0) -> Tuple[Optional[float], Optional[float]]:
    """Class-level 95% CI of the mean over ``groups`` ((entry, fingerprints, labels, other) each: a fold) of
    each group's mean, with one class draw shared by every group: folds whose target classes overlap are
    resampled as dependent. (None, None) when a group lacks labels or predictions."""
    found = [_values(entry, fps, labels, other) if fps else None for entry, fps, labels, other in groups]
    if not found or any(f is None for f in found):
        return None, None
    names = sorted({c for _, owners in found for c in owners})
    drawn = np.random.default_rng(seed).multinomial(len(names), np.full(len(names), 1 / len(names)), RESAMPLES)
    means = []
    for values, owners in found:
        weights = drawn[:, [names.index(c) for c in owners]].astype(float)
        total = weights.sum(axis=1)
        means.append(np.where(total > 0, weights @ values / np.where(total > 0, total, 1), np.nan))
    resampled = np.nanmean(np.vstack(means), axis=0)
    low, high = np.percentile(resampled[~np.isnan(resampled)], [2.5, 97.5])
    mean = float(np.mean([values.mean() for values, _ in found]))
    return round(float(min(low, mean)), 4), round(float(max(high, mean)), 4)
