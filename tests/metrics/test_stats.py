"""Statistics across seeds: equal to direct scipy calls, and CI coverage by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from dropens.errors import ConfigError
from dropens.metrics import stats

A = np.array([0.912, 0.905, 0.921, 0.899, 0.915])
B = np.array([0.901, 0.903, 0.910, 0.897, 0.904])

REPS = 2000
# a two-sided 4-SE band of a binomial proportion over REPS repetitions
BAND = 4 * math.sqrt(0.95 * 0.05 / REPS)


def test_mean_std_and_t_interval_equal_scipy():
    mean, std = stats.mean_std(A)
    assert mean == pytest.approx(np.mean(A)) and std == pytest.approx(np.std(A, ddof=1))
    low, high = stats.t_interval(A, 0.9)
    ref = st.t.interval(0.9, len(A) - 1, loc=np.mean(A), scale=st.sem(A))
    assert (low, high) == pytest.approx(ref)
    ref_ci = st.ttest_1samp(A, 0.0).confidence_interval(0.9)
    assert (low, high) == pytest.approx((ref_ci.low, ref_ci.high))


@pytest.mark.parametrize("method", ["BCa", "percentile", "basic"])
def test_bootstrap_interval_equals_scipy(method):
    low, high = stats.bootstrap_interval(A, 0.95, method=method, n_resamples=2000, seed=3)
    ref = st.bootstrap(
        (A,), np.mean, n_resamples=2000, method=method, rng=np.random.default_rng(3)
    ).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high))


def test_summarize():
    s = stats.summarize(A)
    assert s["n"] == 5 and s["mean"] == pytest.approx(np.mean(A))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(stats.t_interval(A))
    b = stats.summarize(A, method="bootstrap", seed=1)
    assert (b["ci_low"], b["ci_high"]) == pytest.approx(stats.bootstrap_interval(A, seed=1))
    one = stats.summarize([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["std"]) and math.isnan(one["ci_low"])
    with pytest.raises(ConfigError, match=r"method='z'.*t, bootstrap"):
        stats.summarize(A, method="z")
    with pytest.raises(ConfigError, match=r"confidence=95"):
        stats.t_interval(A, 95)


def test_paired_tests_equal_scipy():
    for alternative in ("two-sided", "greater", "less"):
        t = stats.paired_t(A, B, alternative)
        ref_t = st.ttest_rel(A, B, alternative=alternative)
        assert (t["statistic"], t["pvalue"]) == pytest.approx((ref_t.statistic, ref_t.pvalue))
        w = stats.wilcoxon(A, B, alternative)
        ref_w = st.wilcoxon(A, B, alternative=alternative)
        assert (w["statistic"], w["pvalue"]) == pytest.approx((ref_w.statistic, ref_w.pvalue))
    # with 5 seeds the exact two-sided Wilcoxon p-value cannot go below 2 / 2^5
    assert stats.wilcoxon(A, B)["pvalue"] == pytest.approx(2 / 32)
    assert stats.wilcoxon(A, A) == {"statistic": 0.0, "pvalue": 1.0}
    with pytest.raises(ConfigError, match=r"shapes \(5,\) and \(4,\)"):
        stats.paired_t(A, B[:4])


def test_cohens_dz_and_compare_paired():
    d = A - B
    dz = stats.cohens_dz(A, B)
    assert dz == pytest.approx(np.mean(d) / np.std(d, ddof=1))
    assert dz == pytest.approx(st.ttest_rel(A, B).statistic / math.sqrt(len(A)))
    assert stats.cohens_dz([2.0, 3.0, 5.0], [1.0, 2.0, 4.0]) == math.inf
    assert math.isnan(stats.cohens_dz(A, A))
    res = stats.compare_paired(A, B)
    assert res["mean_diff"] == pytest.approx(np.mean(d)) and res["dz"] == pytest.approx(dz)
    assert res["t_pvalue"] == pytest.approx(st.ttest_rel(A, B).pvalue)
    assert res["wilcoxon_pvalue"] == pytest.approx(st.wilcoxon(A, B).pvalue)


def test_holm_by_hand_and_against_its_definition():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 -> 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.uniform(0, 0.2, size=rng.integers(1, 9))
        m = len(q)
        order = np.argsort(q)
        ref = np.empty(m)
        for i in range(m):  # p̃_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)) (1-based j)
            ref[order[i]] = max(min(1.0, (m - j) * q[order[j]]) for j in range(i + 1))
        assert stats.holm(q) == pytest.approx(ref)
    assert stats.holm([0.7, 0.9]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ConfigError, match="pvalues"):
        stats.holm([0.1, 1.5])


def test_t_interval_covers_the_true_mean_95_percent():
    rng = np.random.default_rng(2024)
    x = rng.normal(3.0, 2.0, size=(REPS, 5))
    low, high = stats.t_interval(x)
    coverage = np.mean((low <= 3.0) & (high >= 3.0))
    assert abs(coverage - 0.95) < BAND  # exact for normal data


@pytest.mark.parametrize("n", [5, 20])
def test_percentile_bootstrap_coverage_is_as_expected(n):
    """The percentile interval of a normal mean is about x̄ ± z s sqrt((n-1)/n) / sqrt(n), so its
    coverage is P(|T_{n-1}| <= z sqrt((n-1)/n)): ~0.85 at n = 5, ~0.93 at n = 20 (it undercovers)."""
    rng = np.random.default_rng(n)
    x = rng.normal(-1.0, 0.5, size=(REPS, n))
    low, high = stats.bootstrap_interval(x, method="percentile", n_resamples=999, batch=100)
    coverage = np.mean((low <= -1.0) & (high >= -1.0))
    z = st.norm.ppf(0.975)
    expected = 1 - 2 * st.t.sf(z * math.sqrt((n - 1) / n), n - 1)
    band = 4 * math.sqrt(expected * (1 - expected) / REPS)
    assert abs(coverage - expected) < band
