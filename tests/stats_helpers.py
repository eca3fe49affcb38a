"""Shared helpers of the statistical tests (``tests/test_masks.py``, ``tests/test_layers.py``,
``tests/test_inference.py``): the one convention they all follow.

A statistical check compares an estimate with its target within ``Z = 4.5`` standard errors (SE).
The SE is derived from the sampling distribution, never fitted to an output: the binomial SE
``sqrt(p (1 - p) / n)`` (:func:`binomial_se`) of a fraction of ``n`` independent 0/1 draws, the
sample variance's SE via the (closed-form) fourth central moment, or the spread of per-sample
statistics across independent samples. A correct implementation fails one check with probability
``P_FALSE = 2 * norm.sf(4.5) = 6.8e-6`` (two-sided normal tail), so the few hundred checks of these
suites give a false alarm less than once in 300 runs whatever the seed (Bonferroni: number of
checks x ``P_FALSE``); the seeds are fixed, so each run is reproducible. A check over the maximum
of ``k`` standardized deviations uses the Bonferroni quantile :func:`z_max` (same ``P_FALSE`` per
check), and a test that returns a p-value rejects at level ``P_FALSE``.
"""

from __future__ import annotations

import math

from scipy import stats

Z = 4.5
P_FALSE = 2 * stats.norm.sf(Z)  # 6.8e-6: probability that one correct check fails


def z_max(k: int) -> float:
    """Two-sided normal quantile for the largest of ``k`` standardized deviations (Bonferroni)."""
    return float(stats.norm.isf(P_FALSE / (2 * k)))


def binomial_se(p: float, n: int) -> float:
    """SE of the fraction of successes among ``n`` independent draws of success probability ``p``."""
    return math.sqrt(p * (1 - p) / n)


def assert_within(est: float, target: float, se: float, z: float = Z, what: str = "") -> None:
    """``|est - target| <= z * se``, with a message giving the deviation in SE."""
    assert se >= 0
    # 1e-12: float64 rounding only, for the degenerate se == 0 (e.g. Bernoulli p = 1/2 variance)
    assert abs(est - target) <= z * se + 1e-12, (
        f"{what}: {est:.6f} vs {target:.6f}, |diff| = {abs(est - target):.2e} > {z:.2f} SE = {z * se:.2e}"
    )
