"""Paired statistics for methods evaluated on identical episodes.

Contracts:
  * ``bootstrap_ci``: percentile bootstrap 95% CI of a mean, seeded (numpy Generator), always containing the mean.
  * ``sign_flip_p``: two-sided p-value of the paired sign-flip (permutation) test on per-episode differences,
    statistic = sum of the differences. Zero differences carry no sign and are dropped. Exact (every sign pattern,
    enumerated in two halves) for up to ``EXACT_MAX`` non-zero differences; above that Monte-Carlo with
    ``scipy.stats.permutation_test`` (seeded). No non-zero difference gives p = 1.
  * ``holm``: Holm step-down adjusted p-values (monotone, capped at 1), same order as the input.
  * ``episodes_needed`` / ``detectable_difference``: normal approximation of a two-sided paired test
    at level ``alpha`` with power ``power``: n = ((z_{1-alpha/2} + z_power) * sd / delta)^2.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import numpy as np
from scipy import stats

EXACT_MAX = 30
MONTE_CARLO_RESAMPLES = 99999
_CHUNK = 1000  # bootstrap resamples drawn at once (bounds memory)


def bootstrap_ci(values: Sequence[float], resamples: int = 10000, seed: int = 0) -> tuple:
    """Percentile bootstrap 95% CI (2.5th, 97.5th) of the mean of ``values``, containing the mean."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.concatenate([values[rng.integers(0, len(values), (min(_CHUNK, resamples - done), len(values)))].mean(1)
                            for done in range(0, resamples, _CHUNK)])
    low, high = np.percentile(means, [2.5, 97.5])
    mean = values.mean()
    return float(min(low, mean)), float(max(high, mean))


def _half_sums(values: np.ndarray) -> np.ndarray:
    """Sums of ``values`` under every one of the 2^len sign patterns."""
    signs = 1 - 2 * ((np.arange(2 ** len(values))[:, None] >> np.arange(len(values))) & 1)
    return signs @ values


def sign_flip_p(differences: Sequence[float], seed: int = 0) -> float:
    """Two-sided paired sign-flip p-value of H0: the differences are symmetric around 0."""
    d = np.asarray(differences, dtype=float)
    d = d[np.abs(d) > 1e-12]
    if d.size == 0:
        return 1.0
    if d.size > EXACT_MAX:
        result = stats.permutation_test((d,), lambda x, axis: np.sum(x, axis=axis), permutation_type="samples",
                                        vectorized=True, n_resamples=MONTE_CARLO_RESAMPLES, batch=10000,
                                        rng=seed)
        return float(result.pvalue)
    observed = abs(d.sum()) - 1e-9 * np.abs(d).sum()  # tolerance: float sums of the same multiset
    left = _half_sums(np.abs(d[: d.size // 2]))
    right = np.sort(_half_sums(np.abs(d[d.size // 2:])))
    # |l + r| >= observed  <=>  r >= observed - l  or  r <= -observed - l
    extreme = (right.size - np.searchsorted(right, observed - left, side="left")) + \
        np.searchsorted(right, -observed - left, side="right")
    return float(min(1.0, extreme.sum() / 2 ** d.size))


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm-adjusted p-values: sorted ascending, p_(i) * (m - i), running maximum, capped at 1."""
    order = np.argsort(p_values, kind="stable")
    adjusted = np.maximum.accumulate(np.asarray(p_values, dtype=float)[order] * (len(order) - np.arange(len(order))))
    result = np.empty(len(order))
    result[order] = np.minimum(adjusted, 1.0)
    return result.tolist()


def _z(alpha: float, power: float) -> float:
    return float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))


def episodes_needed(sd: float, delta: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """Episodes a paired test needs to detect a true mean difference ``delta`` (normal approximation)."""
    return max(2, math.ceil((_z(alpha, power) * sd / delta) ** 2))


def detectable_difference(sd: float, episodes: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """Smallest true mean difference a paired test on ``episodes`` episodes detects with ``power``."""
    return _z(alpha, power) * sd / math.sqrt(episodes)
