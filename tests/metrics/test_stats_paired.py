"""The paired difference of two methods over seeds (mean, t-interval, paired t-test) against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from dropens.errors import ConfigError
from dropens.metrics import stats

A = np.array([0.912, 0.905, 0.921, 0.899, 0.915])
B = np.array([0.901, 0.903, 0.910, 0.897, 0.904])


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_paired_difference_equals_scipy_ttest_rel(n, confidence):
    a, b = A[:n], B[:n]
    out = stats.paired_difference(a, b, confidence)
    ref = st.ttest_rel(a, b)
    ci = ref.confidence_interval(confidence)
    assert out["n"] == n
    assert out["mean_diff"] == pytest.approx(np.mean(a - b))
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert out["t"] == pytest.approx(ref.statistic)
    assert out["pvalue"] == pytest.approx(ref.pvalue)


def test_paired_difference_hand_computed():
    # d = (1, 2, 3): mean 2, sd 1, se 1/sqrt(3), t = 2 sqrt(3) on 2 dof
    out = stats.paired_difference([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    half = st.t.ppf(0.975, 2) / math.sqrt(3)
    assert out["mean_diff"] == pytest.approx(2.0)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((2 - half, 2 + half))
    assert out["t"] == pytest.approx(2 * math.sqrt(3))
    assert out["pvalue"] == pytest.approx(2 * st.t.sf(2 * math.sqrt(3), 2))


def test_paired_difference_antisymmetric():
    ab, ba = stats.paired_difference(A, B), stats.paired_difference(B, A)
    assert ab["mean_diff"] == pytest.approx(-ba["mean_diff"])
    assert (ab["ci_low"], ab["ci_high"]) == pytest.approx((-ba["ci_high"], -ba["ci_low"]))
    assert ab["pvalue"] == pytest.approx(ba["pvalue"])


def test_paired_difference_edge_cases():
    one = stats.paired_difference([0.9], [0.8])
    assert one["n"] == 1 and one["mean_diff"] == pytest.approx(0.1)
    assert all(math.isnan(one[k]) for k in ("ci_low", "ci_high", "t", "pvalue"))
    same = stats.paired_difference(A, A)
    assert same == {
        "n": 5.0,
        "mean_diff": 0.0,
        "ci_low": 0.0,
        "ci_high": 0.0,
        "t": 0.0,
        "pvalue": 1.0,
    }
    shift = stats.paired_difference([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])  # no spread, d = 0.5
    assert shift == {
        "n": 3.0,
        "mean_diff": 0.5,
        "ci_low": 0.5,
        "ci_high": 0.5,
        "t": math.inf,
        "pvalue": 0.0,
    }
    with pytest.raises(ConfigError, match="paired by seed"):
        stats.paired_difference(A, B[:3])
    with pytest.raises(ConfigError, match="confidence"):
        stats.paired_difference(A, B, confidence=1.0)


def test_paired_interval_coverage():
    """The interval of the mean difference covers the true difference ~95% of the time."""
    rng = np.random.default_rng(0)
    reps, n, delta = 2000, 3, 0.01
    seed_effect = rng.normal(0.9, 0.02, size=(reps, n))  # shared by both methods: the pairing
    a = seed_effect + delta + rng.normal(0, 0.005, size=(reps, n))
    b = seed_effect + rng.normal(0, 0.005, size=(reps, n))
    hits = 0
    for x, y in zip(a, b):
        out = stats.paired_difference(x, y)
        hits += out["ci_low"] <= delta <= out["ci_high"]
    band = 4 * math.sqrt(0.95 * 0.05 / reps)
    assert abs(hits / reps - 0.95) < band


@pytest.mark.parametrize("shift", [0.0, 0.004, 0.02, -0.03])
def test_margin_tests_equal_two_direct_scipy_one_sided_tests(shift):
    """TOST = two one-sided scipy.stats.ttest_1samp calls against -delta and +delta; equivalent
    iff the 90% t-interval lies inside the margins."""
    rng = np.random.default_rng(7)
    a = rng.normal(0.9, 0.01, 10)
    b = a - shift - rng.normal(0, 0.004, 10)
    delta = 0.01
    got = stats.margin_tests(a, b, delta)
    d = a - b
    above_low = st.ttest_1samp(d, -delta, alternative="greater").pvalue
    below_high = st.ttest_1samp(d, delta, alternative="less").pvalue
    assert got["p_above_low"] == pytest.approx(above_low, rel=1e-10)
    assert got["p_below_high"] == pytest.approx(below_high, rel=1e-10)
    assert got["p_tost"] == pytest.approx(max(above_low, below_high), rel=1e-10)
    assert got["p_below_low"] == pytest.approx(
        st.ttest_1samp(d, -delta, alternative="less").pvalue, rel=1e-10
    )
    assert got["p_above_high"] == pytest.approx(
        st.ttest_1samp(d, delta, alternative="greater").pvalue, rel=1e-10
    )
    low, high = st.ttest_1samp(d, 0.0).confidence_interval(0.90)
    assert (got["ci90_low"], got["ci90_high"]) == pytest.approx((low, high), rel=1e-10)
    assert got["equivalent"] == float(-delta < low and high < delta)


def test_margin_tests_refuse_a_bad_margin_and_report_nan_without_spread():
    with pytest.raises(ConfigError, match="delta=0 is not valid"):
        stats.margin_tests([1.0, 2.0], [1.0, 2.0], 0)
    out = stats.margin_tests([1.0, 2.0], [1.0, 2.0], 0.1)
    assert out["mean_diff"] == 0.0 and np.isnan(out["p_tost"])
