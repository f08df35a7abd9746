"""Paired statistics for methods evaluated on identical episodes.

Contracts:
  * ``bootstrap_ci``: percentile bootstrap 95% CI of a mean, seeded (numpy Generator), always containing the mean.
  * ``sign_flip_p``: two-sided p-value of the paired sign-flip (permutation) test on per-episode differences,
    statistic = sum of the differences. Zero differences carry no sign and are dropped; none left gives p = 1.
    Exact for any number of differences on a lattice (accuracy differences are multiples of 1/(N*Q)): the
    null distribution of the sum is built by convolution over the lattice (no Monte-Carlo, no floor: 100
    equal wins give 2/2^100). Off-lattice data: every sign pattern enumerated (in two halves) up to
    ``EXACT_MAX`` differences; beyond, the differences rounded onto a grid of ``GRID`` steps of their
    absolute sum, then convolved.
  * ``effect_size``: paired Cohen's d_z = mean / SD (ddof 1) of the differences; None (undefined) with fewer
    than two differences or an SD at or below ``SD_TOLERANCE`` * max(1, |mean|) (equal differences give an SD of
    float rounding error, not a scale). ``format_dz``: every printer's text for a d_z ("undefined" for None).
  * ``holm``: Holm step-down adjusted p-values (monotone, capped at 1), same order as the input.
  * ``episodes_needed`` / ``detectable_difference``: normal approximation of a two-sided paired test
    at level ``alpha`` with power ``power``: n = ((z_{1-alpha/2} + z_power) * sd / delta)^2, never below
    ``min_episodes`` (the fewest differences with which the sign-flip test can reach ``alpha``: 6 at 0.05).
"""
from __future__ import annotations

import math
import warnings
from fractions import Fraction
from typing import List, Optional, Sequence

import numpy as np
from scipy import stats

EXACT_MAX = 30
MAX_DENOMINATOR = 100_000  # lattice unit at least 1e-5 (an accuracy over at most 100,000 queries)
MAX_LATTICE = 4_000_000  # largest sum of |multiples| convolved (its distribution: 32 MB of float64)
GRID = 2 ** 20
SD_TOLERANCE = 1e-12  # relative: an SD this small next to the mean is float rounding of equal differences
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


def _enumerated_p(d: np.ndarray) -> float:
    """Sign-flip p by enumerating every sign pattern (in two halves, sorted and searched): off-lattice data."""
    observed = abs(d.sum()) - 1e-9 * np.abs(d).sum()  # tolerance: float sums of the same multiset
    left = _half_sums(np.abs(d[: d.size // 2]))
    right = np.sort(_half_sums(np.abs(d[d.size // 2:])))
    # |l + r| >= observed  <=>  r >= observed - l  or  r <= -observed - l
    extreme = (right.size - np.searchsorted(right, observed - left, side="left")) + \
        np.searchsorted(right, -observed - left, side="right")
    return float(min(1.0, extreme.sum() / 2 ** d.size))


def lattice(differences: Sequence[float]) -> Optional[np.ndarray]:
    """The differences as integer multiples of one unit (their signs kept, the multiples' gcd divided out), or
    None when they are not on a lattice with denominator <= ``MAX_DENOMINATOR`` or the multiples' absolute sum
    exceeds ``MAX_LATTICE``. Per-episode accuracy differences live on 1/(N*Q) (N*Q queries per episode)."""
    fractions = [Fraction(float(x)).limit_denominator(MAX_DENOMINATOR) for x in differences]
    if any(abs(float(f) - x) > 1e-9 * max(1.0, abs(x)) for f, x in zip(fractions, differences)):
        return None
    denominator = math.lcm(*(f.denominator for f in fractions))
    multiples = [f.numerator * (denominator // f.denominator) for f in fractions]
    common = math.gcd(*multiples)
    if common == 0 or sum(abs(m) for m in multiples) // common > MAX_LATTICE:
        return None
    return np.array([m // common for m in multiples], dtype=np.int64)


def _lattice_p(k: np.ndarray) -> float:
    """Exact sign-flip p for non-zero integers ``k``: the null distribution of T = the sum of the |k| that
    keep a + sign, built by convolution (each |k| joins T with probability 1/2); sum = 2T - S, S = sum |k|."""
    magnitudes = np.abs(k)
    total = int(magnitudes.sum())
    probability = np.zeros(total + 1)
    probability[0], top = 1.0, 0
    for v in magnitudes.tolist():
        shifted = probability[: top + 1].copy()
        probability[: top + 1] *= 0.5
        probability[v: v + top + 1] += 0.5 * shifted
        top += v
    t = np.arange(total + 1)
    return float(min(1.0, probability[np.abs(2 * t - total) >= abs(int(k.sum()))].sum()))


def sign_flip_p(differences: Sequence[float]) -> float:
    """Two-sided paired sign-flip p-value of H0: the differences are symmetric around 0 (see the module
    docstring for the exact paths)."""
    d = np.asarray(differences, dtype=float)
    d = d[np.abs(d) > 1e-12]
    if d.size == 0:
        return 1.0
    k = lattice(d)
    if k is None and d.size <= EXACT_MAX:
        return _enumerated_p(d)
    if k is None:  # off-lattice and too many to enumerate: rounded onto a fine grid
        k = np.rint(d / (np.abs(d).sum() / GRID)).astype(np.int64)
        k = k[k != 0]
        if k.size == 0:
            return 1.0
    return _lattice_p(k)


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p (scipy) of paired differences; 1 when none is non-zero."""
    d = np.asarray(differences, dtype=float)
    if not np.any(np.abs(d) > 1e-12):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns on a single non-zero difference
        return float(stats.wilcoxon(d).pvalue)


def effect_size(differences: Sequence[float]) -> Optional[float]:
    """Paired Cohen's d_z = mean / SD (ddof 1) of the paired differences; None when it is undefined: fewer than
    two differences, or an SD <= ``SD_TOLERANCE`` * max(1, |mean|) (all differences equal up to rounding)."""
    d = np.asarray(differences, dtype=float)
    if d.size < 2 or np.ptp(d) == 0:
        return None
    mean, sd = float(d.mean()), float(np.std(d, ddof=1))
    if not math.isfinite(sd) or sd <= SD_TOLERANCE * max(1.0, abs(mean)):
        return None
    return mean / sd


def format_dz(dz: Optional[float], spec: str = "+.2f", undefined: str = "undefined") -> str:
    """A d_z as printed (``spec``), or ``undefined`` (a table whose empty cells read "-" passes "-") for None."""
    return undefined if dz is None else format(dz, spec)


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm-adjusted p-values: sorted ascending, p_(i) * (m - i), running maximum, capped at 1."""
    order = np.argsort(p_values, kind="stable")
    adjusted = np.maximum.accumulate(np.asarray(p_values, dtype=float)[order] * (len(order) - np.arange(len(order))))
    result = np.empty(len(order))
    result[order] = np.minimum(adjusted, 1.0)
    return result.tolist()


def _z(alpha: float, power: float) -> float:
    return float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))


def min_episodes(alpha: float = 0.05) -> int:
    """Fewest non-zero differences with which the two-sided sign-flip test can reach p < ``alpha`` (its
    smallest p is 2 / 2^n): 6 at alpha 0.05."""
    return math.floor(math.log2(2 / alpha)) + 1


def episodes_needed(sd: float, delta: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """Episodes a paired test needs to detect a true mean difference ``delta`` (normal approximation), never
    fewer than :func:`min_episodes`."""
    return max(min_episodes(alpha), math.ceil((_z(alpha, power) * sd / delta) ** 2))


def detectable_difference(sd: float, episodes: int, power: float = 0.8, alpha: float = 0.05) -> Optional[float]:
    """Smallest true mean difference a paired test on ``episodes`` episodes detects with ``power``; None below
    :func:`min_episodes` (the sign-flip test cannot reach ``alpha`` there)."""
    if episodes < min_episodes(alpha):
        return None
    return _z(alpha, power) * sd / math.sqrt(episodes)
