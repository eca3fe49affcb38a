"""Statistics across seeds: summaries with 95% confidence intervals, paired tests between methods,
Holm correction and a paired effect size. Built on ``scipy.stats``; inputs are numpy arrays or
sequences of floats (one value per seed); paired inputs are aligned by seed.

A caveat for the usual 3-5 seeds: the exact two-sided Wilcoxon signed-rank test cannot go below
``p = 2 / 2^n`` (0.0625 for ``n = 5``), so it can never reject at 0.05 with five seeds; the paired
t-test can, at the price of assuming roughly normal differences.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as st

from dropens.errors import ConfigError, check_choice

ALTERNATIVES = ("two-sided", "less", "greater")
BOOTSTRAP_METHODS = ("BCa", "percentile", "basic")
CI_METHODS = ("t", "bootstrap")


def _values(values: ArrayLike, name: str = "values") -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ConfigError(f"{name} has shape {x.shape}; expected at least one value per row")
    return x


def _confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence={confidence!r} is not valid; expected a level in (0, 1)")


def _pair(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = _values(a, "a"), _values(b, "b")
    if a.shape != b.shape:
        raise ConfigError(
            f"a and b have shapes {a.shape} and {b.shape}; expected equal (paired by seed)"
        )
    return a, b


def mean_std(values: ArrayLike, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean ``x̄ = (1/n) Σ x_i`` and standard deviation ``s = sqrt(Σ (x_i - x̄)² / (n - 1))``.

    Args:
        values: ``[..., n]`` values (one per seed) along ``axis``.

    Returns:
        ``(mean, std)``, floats or arrays of the remaining shape; ``std`` is NaN for ``n = 1``.
    """
    x = _values(values)
    std = (
        np.std(x, axis=axis, ddof=1)
        if x.shape[axis] > 1
        else np.full(np.mean(x, axis=axis).shape, np.nan)
    )
    return np.mean(x, axis=axis)[()], std[()]


def t_interval(
    values: ArrayLike, confidence: float = 0.95, axis: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """Student-t confidence interval of the mean: ``x̄ ± t_{(1+γ)/2, n-1} · s / sqrt(n)``.

    Same as ``scipy.stats.t.interval(γ, n - 1, loc=x̄, scale=scipy.stats.sem(x))``; exact
    coverage ``γ`` for normal data.

    Args:
        values: ``[..., n]`` along ``axis``; confidence: ``γ`` in (0, 1).

    Returns:
        ``(low, high)``; NaN for ``n = 1``.
    """
    _confidence(confidence)
    x = _values(values)
    n = x.shape[axis]
    if n < 2:
        nan = np.full(np.mean(x, axis=axis).shape, np.nan)[()]
        return nan, nan
    low, high = st.t.interval(
        confidence, n - 1, loc=np.mean(x, axis=axis), scale=st.sem(x, axis=axis)
    )
    return np.asarray(low)[()], np.asarray(high)[()]


def bootstrap_interval(
    values: ArrayLike,
    confidence: float = 0.95,
    method: str = "BCa",
    n_resamples: int = 9999,
    seed: int = 0,
    axis: int = -1,
    batch: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap confidence interval of the mean (Efron & Tibshirani 1993), via scipy.

    Resample the ``n`` values with replacement ``n_resamples`` times, compute the mean of each
    resample, and take the interval of ``method`` (``BCa``: bias-corrected and accelerated;
    ``percentile``; ``basic``). Small ``n`` undercovers: the percentile interval of a normal
    sample behaves like ``x̄ ± z · s·sqrt((n-1)/n) / sqrt(n)``, about 85% coverage at ``n = 5``;
    prefer :func:`t_interval` for a handful of seeds.

    Args:
        values: ``[..., n]`` along ``axis`` (rows are bootstrapped independently).
        confidence: level in (0, 1); method: ``BCa`` | ``percentile`` | ``basic``;
        n_resamples: bootstrap resamples; seed: seed of the resampling RNG.
        batch: resamples per vectorized batch (bounds memory for many rows; scipy's ``batch``).

    Returns:
        ``(low, high)``; NaN for ``n = 1``.
    """
    _confidence(confidence)
    check_choice("method", method, BOOTSTRAP_METHODS)
    x = _values(values)
    if x.shape[axis] < 2:
        nan = np.full(np.mean(x, axis=axis).shape, np.nan)[()]
        return nan, nan
    res = st.bootstrap(
        (x,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method=method,
        axis=axis,
        batch=batch,
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return np.asarray(ci.low)[()], np.asarray(ci.high)[()]


def summarize(
    values: ArrayLike, confidence: float = 0.95, method: str = "t", seed: int = 0
) -> dict[str, float]:
    """Mean, std and confidence interval of one metric across seeds.

    Args:
        values: ``[n]`` one value per seed.
        confidence: level in (0, 1).
        method: ``t`` (:func:`t_interval`) | ``bootstrap`` (:func:`bootstrap_interval`, BCa).
        seed: bootstrap seed.

    Returns:
        ``{"n", "mean", "std", "ci_low", "ci_high"}`` as floats.
    """
    check_choice("method", method, CI_METHODS)
    x = _values(values)
    if x.ndim != 1:
        raise ConfigError(f"values has shape {x.shape}; expected one value per seed [n]")
    mean, std = mean_std(x)
    low, high = (
        t_interval(x, confidence) if method == "t" else bootstrap_interval(x, confidence, seed=seed)
    )
    return {
        "n": float(x.size),
        "mean": float(mean),
        "std": float(std),
        "ci_low": float(low),
        "ci_high": float(high),
    }


def cohens_dz(a: ArrayLike, b: ArrayLike) -> float:
    """Paired effect size ``d_z = mean(d) / std(d)`` with ``d = a - b`` and ``std`` with ``ddof=1``
    (Cohen 1988; Lakens 2013). ``d_z = t / sqrt(n)`` of the paired t-test.

    Args:
        a, b: ``[n]`` values of two methods, aligned by seed.

    Returns:
        float (``±inf`` if all differences are equal and nonzero, NaN if all zero or ``n = 1``).
    """
    a, b = _pair(a, b)
    d = a - b
    if d.size < 2:
        return float("nan")
    mean, sd = float(np.mean(d)), float(np.std(d, ddof=1))
    if sd == 0:
        return float("nan") if mean == 0 else float(np.copysign(np.inf, mean))
    return mean / sd


def paired_t(a: ArrayLike, b: ArrayLike, alternative: str = "two-sided") -> dict[str, float]:
    """Paired t-test ``t = mean(d) / (std(d) / sqrt(n))``, ``d = a - b``, ``n - 1`` degrees of
    freedom: ``scipy.stats.ttest_rel(a, b)``.

    Args:
        a, b: ``[n]`` aligned by seed; alternative: ``two-sided`` | ``less`` | ``greater``
            (``greater``: mean of ``a`` larger).

    Returns:
        ``{"statistic", "pvalue"}``.
    """
    check_choice("alternative", alternative, ALTERNATIVES)
    a, b = _pair(a, b)
    res = st.ttest_rel(a, b, alternative=alternative)
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue)}


def wilcoxon(a: ArrayLike, b: ArrayLike, alternative: str = "two-sided") -> dict[str, float]:
    """Wilcoxon signed-rank test of ``d = a - b`` (Wilcoxon 1945): ``scipy.stats.wilcoxon(a, b)``
    (exact null distribution for small ``n``, zero differences dropped, ``zero_method="wilcox"``).
    If every difference is zero there is nothing to test: statistic 0, p-value 1.

    Args:
        a, b: ``[n]`` aligned by seed; alternative: ``two-sided`` | ``less`` | ``greater``.

    Returns:
        ``{"statistic", "pvalue"}``.
    """
    check_choice("alternative", alternative, ALTERNATIVES)
    a, b = _pair(a, b)
    if np.all(a == b):
        return {"statistic": 0.0, "pvalue": 1.0}
    res = st.wilcoxon(a, b, alternative=alternative)
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue)}


def compare_paired(a: ArrayLike, b: ArrayLike, alternative: str = "two-sided") -> dict[str, float]:
    """Both paired tests and the effect size of method ``a`` vs method ``b`` over seeds.

    Returns:
        ``{"n", "mean_diff", "dz", "t", "t_pvalue", "wilcoxon", "wilcoxon_pvalue"}`` with
        ``mean_diff = mean(a - b)``, ``dz`` = :func:`cohens_dz`, and the statistics of
        :func:`paired_t` and :func:`wilcoxon`.
    """
    a, b = _pair(a, b)
    t, w = paired_t(a, b, alternative), wilcoxon(a, b, alternative)
    return {
        "n": float(a.size),
        "mean_diff": float(np.mean(a - b)),
        "dz": cohens_dz(a, b),
        "t": t["statistic"],
        "t_pvalue": t["pvalue"],
        "wilcoxon": w["statistic"],
        "wilcoxon_pvalue": w["pvalue"],
    }


def paired_difference(a: ArrayLike, b: ArrayLike, confidence: float = 0.95) -> dict[str, float]:
    """Method ``a`` vs method ``b`` over the same seeds: the mean paired difference ``d = a - b``,
    its t-interval and the two-sided paired t-test, i.e. ``scipy.stats.ttest_rel(a, b)`` with its
    ``confidence_interval(confidence)`` (a report's "difference vs X: mean [95% CI], p" cell).

    Args:
        a, b: ``[n]`` values aligned by seed; confidence: level in (0, 1).

    Returns:
        ``{"n", "mean_diff", "ci_low", "ci_high", "t", "pvalue"}``: interval, ``t`` and p-value are
        NaN for ``n = 1``; equal differences (no spread, where scipy warns) give the interval
        ``[d, d]`` and ``t = 0``, p-value 1 when ``d = 0``, else ``t = ±inf``, p-value 0.
    """
    _confidence(confidence)
    a, b = _pair(a, b)
    if a.ndim != 1:
        raise ConfigError(f"a has shape {a.shape}; expected one value per seed [n]")
    d = a - b
    out = {"n": float(d.size), "mean_diff": float(np.mean(d))}
    nan = float("nan")
    if d.size < 2:
        return {**out, "ci_low": nan, "ci_high": nan, "t": nan, "pvalue": nan}
    if np.all(d == d[0]):  # no spread: scipy warns and returns NaN (all zero) or ±inf
        zero = bool(d[0] == 0)
        t = 0.0 if zero else float(np.copysign(np.inf, d[0]))
        return {**out, "ci_low": float(d[0]), "ci_high": float(d[0]), "t": t, "pvalue": float(zero)}
    low, high = t_interval(d, confidence)
    t = paired_t(a, b)
    return {
        **out,
        "ci_low": float(low),
        "ci_high": float(high),
        "t": t["statistic"],
        "pvalue": t["pvalue"],
    }


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values (family-wise error control).

    With ``p_(1) <= ... <= p_(m)`` sorted: ``p̃_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``,
    returned in the input order. Reject hypothesis ``i`` at level ``α`` iff ``p̃_i <= α``.
    (NaN p-values are not allowed.)

    Args:
        pvalues: ``[m]`` raw p-values.

    Returns:
        ``[m]`` adjusted p-values.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise ConfigError(
            f"pvalues={p.tolist()!r} is not valid; expected a 1-D list of values in [0, 1]"
        )
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def margin_tests(a: ArrayLike, b: ArrayLike, delta: float, alpha: float = 0.05) -> dict[str, float]:
    """Paired tests of ``d = a - b`` against an equivalence margin ``delta > 0`` chosen before the
    data: equivalence by TOST (Schuirmann 1987) and the one-sided tests beyond the margin.

    With ``n`` pairs, mean ``d̄``, standard error ``se = std(d) / sqrt(n)`` and ``n - 1`` degrees
    of freedom, the four one-sided p-values are those of ``scipy.stats.ttest_1samp(d, m,
    alternative=...)``:

    - ``p_above_low``  = P(t >= (d̄ + delta) / se): evidence that ``d > -delta`` (non-inferiority of ``a``);
    - ``p_below_high`` = P(t <= (d̄ - delta) / se): evidence that ``d < +delta``;
    - ``p_tost`` = max of the two: equivalence, ``-delta < d < delta``; ``p_tost < alpha`` iff the
      ``1 - 2 alpha`` (90%) t-interval lies inside ``(-delta, delta)``;
    - ``p_below_low``  = P(t <= (d̄ + delta) / se): ``d < -delta`` (``a`` lower by more than the margin);
    - ``p_above_high`` = P(t >= (d̄ - delta) / se): ``d > +delta`` (``a`` higher by more than the margin).

    Returns:
        ``{"n", "mean_diff", "se", "ci90_low", "ci90_high", "p_tost", "p_above_low",
        "p_below_high", "p_below_low", "p_above_high", "equivalent"}`` (``equivalent`` is 1.0 or
        0.0 at level ``alpha``); NaN p-values and interval for fewer than 2 pairs or no spread.
    """
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not delta > 0:
        raise ConfigError(f"delta={delta!r} is not valid; the margin must be a number > 0")
    a, b = _pair(a, b)
    d = a - b
    n = d.size
    nan = float("nan")
    out = {"n": float(n), "mean_diff": float(np.mean(d)) if n else nan}
    keys = ("se", "ci90_low", "ci90_high", "p_tost", "p_above_low", "p_below_high")
    keys += ("p_below_low", "p_above_high", "equivalent")
    if n < 2 or np.all(d == d[0]):
        return {**out, **{k: nan for k in keys}}
    se = float(np.std(d, ddof=1) / np.sqrt(n))
    df = n - 1
    t_low = (out["mean_diff"] + delta) / se
    t_high = (out["mean_diff"] - delta) / se
    p_above_low, p_below_low = float(st.t.sf(t_low, df)), float(st.t.cdf(t_low, df))
    p_below_high, p_above_high = float(st.t.cdf(t_high, df)), float(st.t.sf(t_high, df))
    half = float(st.t.ppf(1 - alpha, df)) * se
    p_tost = max(p_above_low, p_below_high)
    return {
        **out,
        "se": se,
        "ci90_low": out["mean_diff"] - half,
        "ci90_high": out["mean_diff"] + half,
        "p_tost": p_tost,
        "p_above_low": p_above_low,
        "p_below_high": p_below_high,
        "p_below_low": p_below_low,
        "p_above_high": p_above_high,
        "equivalent": float(p_tost < alpha),
    }
