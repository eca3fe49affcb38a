"""Figures of the ``mc_samples`` study: test error of MC dropout against the number of samples T,
next to weight scaling (the deterministic pass), as in Srivastava et al. (2014), Fig. 11.

- ``error_vs_T``: one column per p; rows: test error and NLL of the MC average of T masks (mean
  and 95% CI error bars over seeds) with weight scaling as a line and its 95% band (in the NLL row
  also temperature-scaled weight scaling, ``deterministic_ts``, and the temperature-scaled MC
  average at the headline T, when the records have them); last row the paired difference MC -
  weight scaling of the test error (same run, same seed), with its 95% band.

Tables: ``error_vs_T`` (every (p, T): MC error and NLL, MC - weight scaling paired by seed with its
95% CI and paired t-test p-value; with temperature scaling in the records also a row for
temperature-scaled weight scaling and a column MC NLL - its NLL) and ``crossing`` (per p, each the
smallest T of the curve from which on, at that and every larger T, a criterion holds: the MC mean
error <= the upper end of weight scaling's 95% CI; MC is not significantly worse than weight
scaling (the paired 95% CI of MC - weight scaling reaches 0 or below); the MC mean error <= weight
scaling's; :func:`crossings`).

Older records without temperature scaling (``eval.temperature_scaling`` off) give the same tables
without the temperature-scaled rows and column, and one results line that says so.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dropens import keys
from dropens.errors import ConfigError
from dropens.reporting import common
from dropens.reporting.common import (
    HANDLELENGTH,
    PALETTE,
    Section,
    band_stats,
    ci_line_stats,
    ci_yerr,
    fmt_ci,
    fmt_paired,
    hline_ci,
    paired_by_seed,
    save_figure,
    seed_stats,
    write_table,
)

WS_COLOR = "#d55e00"


def mc_sizes(df: pd.DataFrame) -> list[int]:
    """The T of the ``test/clean/mc<T>/acc`` columns the runs have (a value in some run), sorted."""
    return common.mc_sizes(df, "acc")


def _err(label: str) -> str:
    """The test error column of evaluation ``label`` (:func:`_with_errors`)."""
    return f"err/{label}"


def _nll(label: str) -> str:
    return keys.test("clean", label, "nll")


WS = "deterministic"  # weight scaling: the deterministic pass
WS_TS = keys.ts_label(WS)  # weight scaling after temperature scaling (fitted on eval set `val`)
WS_TS_COLOR = "#009e73"

# the crossing table's columns (:func:`crossings`), each saying what it computes
CROSS_WITHIN_CI = (
    "smallest T from which MC mean error <= upper end of weight scaling's 95% CI "
    "(at every larger T)"
)
CROSS_PAIRED = (
    "smallest T from which MC error is not significantly worse than weight scaling "
    "(paired 95% CI of MC - WS reaches 0 or below, at every larger T)"
)
CROSS_MEAN = "smallest T from which MC mean error <= weight-scaling mean error (at every larger T)"


def _with_errors(df: pd.DataFrame, sizes: list[int]) -> pd.DataFrame:
    """Test error = 1 - accuracy, as ``err/<label>`` columns (``deterministic``, ``mc<T>``)."""
    cols = {}
    for label in (WS, *map(keys.mc_label, sizes)):
        cols[_err(label)] = 1.0 - df[keys.test("clean", label, "acc")].astype(float)
    return pd.concat([df, pd.DataFrame(cols, index=df.index)], axis=1)


def crossings(runs: pd.DataFrame, sizes: list[int]) -> dict[str, int | str | None]:
    """The T (of ``sizes``) from which on MC dropout matches weight scaling on the test error:
    the smallest T such that the criterion holds at T and at every larger T of the curve (a curve
    that touches weight scaling at T = 4 and leaves it again does not match from 4).

    ``within_ci``: MC mean error <= the upper end of weight scaling's 95% CI over seeds;
    ``paired_ci``: the 95% CI of the paired difference MC - weight scaling reaches 0 (no longer
    significantly worse); ``mean``: MC mean error <= weight-scaling mean error. ``None`` where it
    does not hold at the largest T; ``"n/a"`` for the CI-based ones without an interval (one seed).
    """
    ws = seed_stats(runs[_err(WS)])
    holds: dict[str, list[bool]] = {"within_ci": [], "paired_ci": [], "mean": []}
    for t in sizes:
        s = seed_stats(runs[_err(keys.mc_label(t))])
        d = paired_by_seed(runs, runs, _err(keys.mc_label(t)), _err(WS))
        holds["within_ci"].append(bool(s["mean"] <= ws["ci_high"]))
        holds["paired_ci"].append(bool(d["ci_low"] <= 0))
        holds["mean"].append(bool(s["mean"] <= ws["mean"]))
    out: dict[str, int | str | None] = {}
    for name, ok in holds.items():
        first = None
        for t, good in zip(reversed(sizes), reversed(ok)):
            if not good:
                break
            first = t
        out[name] = first
    if not np.isfinite(ws["ci_high"]):
        out["within_ci"] = out["paired_ci"] = "n/a"
    return out


def has_ts(drop: pd.DataFrame) -> bool:
    """Whether the runs were evaluated with temperature scaling (``deterministic_ts`` NLL)."""
    key = _nll(WS_TS)
    return key in drop and bool(drop[key].notna().any())


def build(df: pd.DataFrame, out_dir: Path) -> Section:
    section = Section()
    drop = df[df["cfg.method.name"] == "dropout"]
    sizes = mc_sizes(drop)
    if not sizes or keys.test("clean", WS, "acc") not in drop:
        raise ConfigError(
            f"the mc_samples report needs {keys.test('clean', WS, 'acc')} and "
            f"{keys.test('clean', 'mc<T>', 'acc')} columns in the dropout runs; they were trained "
            "without eval.mc_curve"
        )
    drop = _with_errors(drop, sizes)
    ts = has_ts(drop)
    headline = keys.mc_label(common.headline_t(drop))
    mc_ts = keys.ts_label(headline)
    ps = sorted(drop["cfg.dropout.p"].unique())
    curve, cross, ts_lines = [], [], []
    ts_column = "NLL: MC - weight scaling, temperature-scaled"
    for p in ps:
        runs = drop[drop["cfg.dropout.p"] == p]
        ws = seed_stats(runs[_err(WS)])
        ws_nll = seed_stats(runs[_nll(WS)])
        curve.append(
            {
                "p": p,
                "evaluation": "weight scaling",
                "T": "-",
                "seeds": int(ws["n"]),
                "test error": fmt_ci(ws["mean"], ws["ci_low"], ws["ci_high"], 4),
                "NLL": fmt_ci(ws_nll["mean"], ws_nll["ci_low"], ws_nll["ci_high"], 4),
                "error: MC - weight scaling": "-",
                "NLL: MC - weight scaling": "-",
            }
            | ({ts_column: "-"} if ts else {})
        )
        if ts:  # temperature scaling keeps the top class: the error is weight scaling's
            ws_ts = seed_stats(runs[_nll(WS_TS)])
            curve.append(
                {
                    "p": p,
                    "evaluation": "weight scaling, temperature-scaled",
                    "T": "-",
                    "seeds": int(ws_ts["n"]),
                    "test error": _ci_of(runs, keys.test("clean", WS_TS, "acc"), error=True),
                    "NLL": fmt_ci(ws_ts["mean"], ws_ts["ci_low"], ws_ts["ci_high"], 4),
                    "error: MC - weight scaling": "-",
                    "NLL: MC - weight scaling": "-",
                    ts_column: "-",
                }
            )
        for t in sizes:
            mc = keys.mc_label(t)
            s = seed_stats(runs[_err(mc)])
            nll = seed_stats(runs[_nll(mc)])
            curve.append(
                {
                    "p": p,
                    "evaluation": "MC dropout",
                    "T": t,
                    "seeds": int(s["n"]),
                    "test error": fmt_ci(s["mean"], s["ci_low"], s["ci_high"], 4),
                    "NLL": fmt_ci(nll["mean"], nll["ci_low"], nll["ci_high"], 4),
                    "error: MC - weight scaling": fmt_paired(
                        paired_by_seed(runs, runs, _err(mc), _err(WS)), 4
                    ),
                    "NLL: MC - weight scaling": fmt_paired(
                        paired_by_seed(runs, runs, _nll(mc), _nll(WS)), 4
                    ),
                }
                | (
                    {ts_column: fmt_paired(paired_by_seed(runs, runs, _nll(mc), _nll(WS_TS)), 4)}
                    if ts
                    else {}
                )
            )
        if ts and _nll(mc_ts) in runs:  # both temperature-scaled, at the headline T
            curve.append(
                {
                    "p": p,
                    "evaluation": "MC dropout, temperature-scaled",
                    "T": keys.mc_samples(headline),
                    "seeds": int(runs[_nll(mc_ts)].notna().sum()),
                    "test error": _ci_of(runs, keys.test("clean", mc_ts, "acc"), error=True),
                    "NLL": _ci_of(runs, _nll(mc_ts)),
                    "error: MC - weight scaling": "-",
                    "NLL: MC - weight scaling": "-",
                    ts_column: fmt_paired(paired_by_seed(runs, runs, _nll(mc_ts), _nll(WS_TS)), 4),
                }
            )
        c = crossings(runs, sizes)
        first, last = sizes[0], sizes[-1]
        s1 = seed_stats(runs[_err(keys.mc_label(first))])
        sl = seed_stats(runs[_err(keys.mc_label(last))])
        d_last = paired_by_seed(runs, runs, _err(keys.mc_label(last)), _err(WS))
        cross.append(
            {
                "p": p,
                "seeds": int(ws["n"]),
                "weight scaling error": fmt_ci(ws["mean"], ws["ci_low"], ws["ci_high"], 4),
                f"MC T={first} error": fmt_ci(s1["mean"], s1["ci_low"], s1["ci_high"], 4),
                f"MC T={last} error": fmt_ci(sl["mean"], sl["ci_low"], sl["ci_high"], 4),
                f"MC T={last} - WS": fmt_paired(d_last, 4),
                CROSS_WITHIN_CI: _t(c["within_ci"]),
                CROSS_PAIRED: _t(c["paired_ci"]),
                CROSS_MEAN: _t(c["mean"]),
            }
        )
        section.results.append(
            f"p={p}: test error of weight scaling {fmt_ci(ws['mean'], ws['ci_low'], ws['ci_high'], 4)}; "
            f"MC T={first} {fmt_ci(s1['mean'], s1['ci_low'], s1['ci_high'], 4)}, "
            f"T={last} {fmt_ci(sl['mean'], sl['ci_low'], sl['ci_high'], 4)} "
            f"(MC - weight scaling at T={last}: {fmt_paired(d_last, 4)}, paired over "
            f"{int(d_last['n'])} seeds); the smallest T from which on (at every larger T up to "
            f"{last}) the MC mean error is <= the upper end of weight scaling's 95% CI: "
            f"{_t(c['within_ci'])}; MC is not significantly worse than weight scaling (the paired "
            f"95% CI of MC - weight scaling reaches 0 or below): {_t(c['paired_ci'])}; the MC mean "
            f"error is <= weight scaling's: {_t(c['mean'])}"
        )
        if ts:
            ts_lines.append(_ts_line(runs, p, last, headline))
    if ts:
        section.results += ts_lines
    else:
        section.results.append(
            f"Temperature-scaled weight scaling: not in these records (no {_nll(WS_TS)}; they were "
            "evaluated without +eval.temperature_scaling=true), so the comparison of MC NLL with "
            "temperature-scaled weight scaling is omitted."
        )
    section.tables.append(write_table(pd.DataFrame(cross), out_dir, "crossing"))
    section.tables.append(write_table(pd.DataFrame(curve), out_dir, "error_vs_T"))
    section.figures.append(_figure(drop, ps, sizes, out_dir, ts, mc_ts))
    return section


def _ci_of(runs: pd.DataFrame, key: str, error: bool = False) -> str:
    """Mean [95% CI] of a column (of ``1 - column`` with ``error``), 4 digits; ``-`` without it."""
    if key not in runs:
        return "-"
    values = runs[key].astype(float)
    s = seed_stats(1.0 - values if error else values)
    return fmt_ci(s["mean"], s["ci_low"], s["ci_high"], 4)


def _ts_line(runs: pd.DataFrame, p: float, last: int, headline: str) -> str:
    """The results line of one p: MC NLL at the largest T minus temperature-scaled weight scaling
    (and, when recorded, both temperature-scaled at the headline T), paired by seed."""
    d = paired_by_seed(runs, runs, _nll(keys.mc_label(last)), _nll(WS_TS))
    ws_ts = seed_stats(runs[_nll(WS_TS)])
    line = (
        f"p={p}: NLL of MC T={last} minus temperature-scaled weight scaling (NLL "
        f"{fmt_ci(ws_ts['mean'], ws_ts['ci_low'], ws_ts['ci_high'], 4)}): {fmt_paired(d, 4)}, "
        f"paired over {int(d['n'])} seeds"
    )
    mc_ts = keys.ts_label(headline)
    if _nll(mc_ts) in runs and runs[_nll(mc_ts)].notna().any():
        both = paired_by_seed(runs, runs, _nll(mc_ts), _nll(WS_TS))
        line += (
            f"; both temperature-scaled, MC T={keys.mc_samples(headline)} - weight scaling: "
            f"{fmt_paired(both, 4)}"
        )
    return line


def _t(value: int | str | None) -> str:
    return "never" if value is None else str(value)


def _figure(
    drop: pd.DataFrame, ps: list[float], sizes: list[int], out_dir: Path, ts: bool, mc_ts: str
) -> str:
    fig, axes = plt.subplots(3, len(ps), figsize=(4.8 * len(ps), 10), squeeze=False)
    x = np.array(sizes)
    for j, p in enumerate(ps):
        runs = drop[drop["cfg.dropout.p"] == p]
        for i, (column, label) in enumerate(((_err, "test error"), (_nll, "test NLL (nats)"))):
            ax = axes[i, j]
            s = [seed_stats(runs[column(keys.mc_label(t))]) for t in sizes]
            ci_line_stats(
                ax,
                x,
                s,
                color=PALETTE["dropout"],
                marker="o",
                label="MC dropout, average of T masks",
            )
            w = seed_stats(runs[column(WS)])
            hline_ci(
                ax, w["mean"], w["ci_low"], w["ci_high"], "weight scaling (deterministic)", WS_COLOR
            )
            if i == 1 and ts:
                w = seed_stats(runs[_nll(WS_TS)])
                hline_ci(
                    ax,
                    w["mean"],
                    w["ci_low"],
                    w["ci_high"],
                    "weight scaling, temperature-scaled",
                    WS_TS_COLOR,
                    ls="-.",
                )
                if _nll(mc_ts) in runs and runs[_nll(mc_ts)].notna().any():
                    m = seed_stats(runs[_nll(mc_ts)])
                    t = keys.mc_samples(mc_ts)
                    ax.errorbar(
                        t * 2**0.2, m["mean"], yerr=ci_yerr(m), fmt="D", mfc="white",
                        color=PALETTE["dropout"], capsize=3, ms=5,
                        label=f"MC dropout T={t}, temperature-scaled",
                    )  # fmt: skip
            ax.set_ylabel(label)
            if i == 0:
                ax.set_title(f"p = {p} (seeds: {len(runs)})")
            if i == 0 and sizes[-1] >= 50:
                ax.axvline(50, color="k", lw=0.8, ls=":", label="T = 50 (Srivastava et al. 2014)")
        ax = axes[2, j]
        d = [paired_by_seed(runs, runs, _err(keys.mc_label(t)), _err(WS)) for t in sizes]
        band_stats(
            ax,
            x,
            d,
            centre="mean_diff",
            color="#555555",
            label="MC - weight scaling (paired by seed)",
        )
        ax.axhline(0.0, color=WS_COLOR, lw=1.2, ls="--")
        ax.set_ylabel("test error: MC - weight scaling")
        for ax in axes[:, j]:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [str(t) for t in sizes])
            ax.minorticks_off()
            ax.set_xlabel("MC samples T")
            ax.grid(alpha=0.3)
    found: dict[str, object] = {}
    for ax in axes[:, 0]:
        for h, n in zip(*ax.get_legend_handles_labels()):
            found.setdefault(n, h)
    fig.legend(
        list(found.values()),
        list(found),
        loc="lower center",
        ncol=3,
        fontsize=8,
        frameon=False,
        handlelength=HANDLELENGTH,
    )
    fig.suptitle(
        "MC dropout vs weight scaling against the number of samples (mean and 95% CI over seeds)"
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(fig, out_dir, "error_vs_T")
