"""The ``shift`` report builder on synthetic run rows: the severity averages and paired differences
against hand-computed values, and every figure and table written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dropens.reporting import shift as report

CORR = ("rotate", "contrast")


def run_row(method: str, seed: int, base: float) -> dict:
    """Metrics ``base + 0.1 * severity`` (+0.01 for contrast, +0.003 * seed for the j-th label,
    -0.05 - 0.002 * seed temperature-scaled) for every label of ``method``: no two series and no
    scaled/unscaled pair differ by the same amount on every seed (a paired test needs spread)."""
    row = {
        "cfg.method.name": method,
        "cfg.seed": seed,
        "cfg.eval.mc_samples": 4,
        "cfg.method.k": 4 if method == "ensemble" else np.nan,
    }
    labels = {"dropout": ["deterministic", "mc4"], "ensemble": ["members"]}[method]
    for j, label in enumerate(labels):
        for ts, shift in (("", 0.003 * seed * j), ("_ts", 0.003 * seed * j - 0.05 - 0.002 * seed)):
            sets = [("clean", 0, 0.0)] + [
                (f"{c}_{s}", s, 0.01 * i) for i, c in enumerate(CORR) for s in range(1, 6)
            ]
            for name, sev, extra in sets:
                for m in ("acc", "nll", "ece"):
                    row[f"test/{name}/{label}{ts}/{m}"] = base + 0.1 * sev + extra + shift
            if ts:
                row[f"test/val/{label}_ts/temperature"] = 1.5 + seed
            row[f"test/ood/{label}{ts}/auroc_maxprob"] = 0.7 + base
            row[f"test/ood/{label}{ts}/auroc_entropy"] = 0.75 + base
            if label != "deterministic" and not ts:
                row[f"test/ood/{label}/auroc_mi"] = 0.8 + base
    return row


@pytest.fixture
def df() -> pd.DataFrame:
    rows = [run_row("dropout", s, 0.01 * s) for s in range(3)]
    rows += [run_row("ensemble", s, 0.015 * s + 0.02) for s in range(3)]
    return pd.DataFrame(rows)


def test_per_run_means_and_severity_curves(df):
    assert [s.key for s in report.series_of(df)] == ["dropout_ws", "dropout_mc", "ensemble"]
    assert report.corruptions_of(df) == list(CORR)
    long = report.long_table(df)
    runs = report.per_run(df, long).set_index(["series", "scaled", "seed"])
    r = runs.loc[("dropout_mc", False, 1)]
    # mean over 10 shifted sets: 0.01 + 0.1 * mean(1..5) + mean(0, 0.01)
    assert r["shift_nll"] == pytest.approx(0.013 + 0.3 + 0.005)
    assert r["sev5_ece"] == pytest.approx(0.013 + 0.5 + 0.005)
    assert r["clean_acc"] == pytest.approx(0.013)
    assert np.isnan(r["temperature"]) and runs.loc[("dropout_mc", True, 1), "temperature"] == 2.5
    assert runs.loc[("dropout_mc", True, 1), "shift_nll"] == pytest.approx(0.318 - 0.052)
    assert np.isnan(runs.loc[("dropout_ws", False, 0), "auroc_mi"])
    curve = report.by_severity(long)
    at3 = curve[(curve["series"] == "ensemble") & ~curve["scaled"] & (curve["severity"] == 3)]
    assert at3.set_index("seed")["ece"].to_dict() == pytest.approx({0: 0.325, 1: 0.34, 2: 0.355})


def test_build_writes_figures_tables_and_paired_differences(df, tmp_path):
    section = report.build(df, tmp_path)
    assert section.figures == ["shift_curves", "by_corruption", "by_corruption_ts", "ood_auroc"]
    for stem in section.figures:
        assert (tmp_path / f"{stem}.png").stat().st_size > 10_000
    assert section.tables == ["summary", "ood", "paired"]
    paired = pd.read_csv(tmp_path / "paired.csv")
    row = paired[
        (paired["comparison"] == "ensemble K=4, average - dropout, MC T=4")
        & (paired["metric"] == "NLL, mean over shifted sets")
    ]
    # per seed the ensemble is worse by 0.02 + 0.002 * seed: scipy's paired t-test and interval
    d = np.array([0.02, 0.022, 0.024])
    res = stats.ttest_rel(d, np.zeros(3))
    lo, hi = res.confidence_interval(0.95)
    expected = f"{d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}], p={res.pvalue:.3f}"
    assert row["difference [95% CI], p"].item() == expected
    assert any("ensemble K=4, average: clean accuracy 0.035 [" in line for line in section.results)


def test_cells_below_chance_are_excluded_from_the_shifted_means(df, tmp_path):
    """The ensemble falls to 0.05 accuracy on rotate 5 (every seed): that cell leaves the
    ensemble's means over shifted sets; the ensemble - MC pair leaves it out on both sides; the
    curves average only the corruptions without such a cell; a results line names it."""
    bad = df.copy()
    ens = bad["cfg.method.name"] == "ensemble"
    for label in ("members", "members_ts"):
        bad.loc[ens, f"test/rotate_5/{label}/acc"] = 0.05
    long = report.long_table(bad)
    excluded = report.below_chance(long)
    assert excluded == {("ensemble", "rotate", 5)}
    assert report.below_chance(report.long_table(df)) == set()  # clean (0.0-0.04) is not shifted
    runs = report.per_run(bad, long, excluded).set_index(["series", "scaled", "seed"])
    # 9 sets left: rotate 1-4 (0.1 * sev), contrast 1-5 (0.1 * sev + 0.01) on top of the base
    assert runs.loc[("ensemble", False, 1), "shift_nll"] == pytest.approx(0.035 + 2.55 / 9)
    assert runs.loc[("ensemble", False, 1), "sev5_nll"] == pytest.approx(0.035 + 0.51)
    assert runs.loc[("dropout_mc", False, 1), "shift_nll"] == pytest.approx(0.013 + 0.305)  # all 10
    section = report.build(bad, tmp_path)
    paired = pd.read_csv(tmp_path / "paired.csv")
    row = paired[
        (paired["comparison"] == "ensemble K=4, average - dropout, MC T=4")
        & (paired["metric"] == "NLL, mean over shifted sets")
    ]
    # both sides over the same 9 sets: per seed 0.02 + 0.002 * seed (over 10 vs 9 sets it would
    # be 0.02 + 0.002 * seed + 2.55 / 9 - 0.305)
    d = np.array([0.02, 0.022, 0.024])
    res = stats.ttest_rel(d, np.zeros(3))
    lo, hi = res.confidence_interval(0.95)
    expected = f"{d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}], p={res.pvalue:.3f}"
    assert row["difference [95% CI], p"].item() == expected
    line = next(ln for ln in section.results if ln.startswith("Below chance: chance = 1/10"))
    assert "excluded 1 cells" in line and "ensemble K=4, average: rotate 5 (0.050)" in line
    assert "(9 of 10 sets kept)" in line
    curves, note = report.curve_frame(long, excluded)
    assert "mean over contrast" in note and "rotate" in note.split("(")[1]
    at5 = curves[(curves["series"] == "dropout_mc") & ~curves["scaled"] & (curves["severity"] == 5)]
    assert at5.set_index("seed")["acc"][1] == pytest.approx(0.013 + 0.5 + 0.01)  # contrast only


def test_mc_vs_weight_scaling_after_temperature_scaling(df, tmp_path):
    """NLL of mc4_ts - deterministic_ts: per seed 0.003 * seed on the clean set and on every shifted
    set (hand-computed from :func:`run_row`), a paired row and a results line."""
    section = report.build(df, tmp_path)
    paired = pd.read_csv(tmp_path / "paired.csv")
    both = "dropout, MC T=4 - dropout, weight scaling (both temperature-scaled)"
    rows = paired[paired["comparison"] == both].set_index("metric")
    d = np.array([0.0, 0.003, 0.006])
    res = stats.ttest_rel(d, np.zeros(3))
    lo, hi = res.confidence_interval(0.95)
    expected = f"{d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}], p={res.pvalue:.3f}"
    assert rows.loc["NLL, clean test set", "difference [95% CI], p"] == expected
    assert rows.loc["NLL, mean over shifted sets", "difference [95% CI], p"] == expected
    line = next(ln for ln in section.results if ln.startswith("MC vs weight scaling after temp"))
    assert f"clean {expected}; mean over the shifted sets {expected}" in line
