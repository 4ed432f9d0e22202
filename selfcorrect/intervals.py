"""Confidence intervals of the paper's metrics: Wilson intervals for proportions and a cluster
bootstrap over problems (samples of one problem resampled together).  :mod:`selfcorrect.metrics`
re-exports them."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from .errors import SelfCorrectError


def _group_codes(group_ids: Sequence[Hashable], n: int) -> np.ndarray:
    """Map arbitrary hashable problem ids to dense integer codes (first-seen order)."""
    if len(group_ids) != n:
        raise SelfCorrectError(f"group_ids has {len(group_ids)} entries but there are {n} episodes")
    mapping: dict[Hashable, int] = {}
    codes = np.empty(n, dtype=np.int64)
    for idx, g in enumerate(group_ids):
        if isinstance(g, np.generic):
            g = g.item()
        codes[idx] = mapping.setdefault(g, len(mapping))
    return codes


def _z_for_alpha(alpha: float) -> float:
    """Two-sided normal quantile for level ``1 − alpha`` (1.96 for alpha = 0.05)."""
    if not 0.0 < alpha < 1.0:
        raise SelfCorrectError(f"alpha must be in (0, 1); got {alpha}")
    if abs(alpha - 0.05) < 1e-12:
        return 1.96
    from statistics import NormalDist

    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``.

    ``low, high = (p + z²/2n ∓ z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)`` with
    ``p = successes / n``.  Unlike the normal ("Wald") interval it stays inside
    ``[0, 1]`` and behaves well for ``p`` near 0 or 1 and for small ``n``.
    ``z = 1.96`` gives a 95% interval.  With ``n == 0`` nothing is known and the
    interval is ``(0.0, 1.0)``.

    Example: ``wilson_interval(5, 10) ≈ (0.2366, 0.7634)``.
    """
    successes = int(successes)
    n = int(n)
    if n < 0 or successes < 0 or successes > n:
        raise SelfCorrectError(
            f"wilson_interval needs 0 <= successes <= n; got successes={successes}, n={n}"
        )
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return (low, high)


def bootstrap_interval(
    values: Any,
    stat: Callable[[np.ndarray], Any] = np.mean,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    *,
    groups: Sequence[Hashable] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(values)``; deterministic given ``seed``.

    Draws ``n_boot`` resamples with replacement, applies ``stat`` to each and
    returns the ``alpha/2`` and ``1 − alpha/2`` quantiles of the results (a
    ``1 − alpha`` interval; 95% by default).

    ``values`` has shape ``(N,)``.  If ``groups`` (``N`` hashable ids) is
    given, this is a *cluster* bootstrap: each resample draws the *groups*
    (e.g. problems) with replacement and keeps all values of every drawn group,
    which accounts for correlation between several samples of the same problem.
    Without ``groups`` every value is its own group (the ordinary bootstrap).

    ``stat`` receives a 1-D array and must return a scalar.  ``np.mean`` (the
    default) takes a vectorised fast path; any other callable is applied to
    each resample in turn.  The same ``seed`` always yields the same interval.
    """
    vals = np.asarray(values, dtype=np.float64).reshape(-1)  # (N,)
    n = vals.shape[0]
    if n == 0:
        raise SelfCorrectError("bootstrap_interval needs at least one value")
    if n_boot < 1:
        raise SelfCorrectError(f"n_boot must be positive; got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise SelfCorrectError(f"alpha must be in (0, 1); got {alpha}")
    codes = np.arange(n, dtype=np.int64) if groups is None else _group_codes(groups, n)  # (N,)
    n_groups = int(codes.max()) + 1

    rng = np.random.default_rng(seed)
    fast = stat is np.mean
    if fast:
        group_sum = np.bincount(codes, weights=vals, minlength=n_groups)  # (G,)
        group_cnt = np.bincount(codes, minlength=n_groups).astype(np.float64)  # (G,)
    # Draw resamples in chunks so memory stays bounded for large N.
    chunk = max(1, min(n_boot, 4_000_000 // max(n_groups, 1)))
    boots = np.empty(n_boot, dtype=np.float64)
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = rng.integers(0, n_groups, size=(b, n_groups))  # (b, G) drawn group ids
        if fast:
            boots[done : done + b] = group_sum[idx].sum(axis=1) / group_cnt[idx].sum(axis=1)
        else:
            for r in range(b):
                mult = np.bincount(idx[r], minlength=n_groups)  # (G,) times each group drawn
                sample = np.repeat(vals, mult[codes])  # all values of the drawn groups
                boots[done + r] = float(stat(sample))
        done += b
    low, high = np.quantile(boots, [alpha / 2.0, 1.0 - alpha / 2.0])
    return (float(low), float(high))


def ratio_interval(numerator: Any, denominator: Any, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05, *,
                   groups: Sequence[Hashable] | None = None) -> tuple[float, float] | None:
    """Percentile (cluster) bootstrap interval of ``Σ numerator / Σ denominator``: a rate conditional on
    the episodes that ``denominator`` marks (e.g. "answer changed" among episodes whose attempt 1 was
    wrong), resampling problems (``groups``) or episodes.  Resamples with an empty denominator are left
    out; ``None`` when the denominator is empty to begin with."""
    num = np.asarray(numerator, dtype=np.float64).reshape(-1)      # (N,)
    den = np.asarray(denominator, dtype=np.float64).reshape(-1)    # (N,)
    if num.shape != den.shape or num.shape[0] == 0:
        raise SelfCorrectError("ratio_interval needs numerator and denominator of the same non-zero length")
    if den.sum() == 0:
        return None
    n = num.shape[0]
    codes = np.arange(n, dtype=np.int64) if groups is None else _group_codes(groups, n)
    n_groups = int(codes.max()) + 1
    group_num = np.bincount(codes, weights=num, minlength=n_groups)    # (G,)
    group_den = np.bincount(codes, weights=den, minlength=n_groups)    # (G,)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 4_000_000 // max(n_groups, 1)))
    boots = []
    for done in range(0, n_boot, chunk):
        idx = rng.integers(0, n_groups, size=(min(chunk, n_boot - done), n_groups))    # (b, G)
        d = group_den[idx].sum(axis=1)
        boots.append(np.divide(group_num[idx].sum(axis=1), d, out=np.full_like(d, np.nan), where=d > 0))
    boots = np.concatenate(boots)
    if np.isnan(boots).all():                 # no resample had a denominator (a handful of episodes)
        return None
    low, high = np.nanquantile(boots, [alpha / 2.0, 1.0 - alpha / 2.0])
    return (float(low), float(high))
