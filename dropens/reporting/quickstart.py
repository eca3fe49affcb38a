"""Figures of the ``quickstart`` study: plain / dropout / subnets / ensemble on one backbone.

- ``mc_curve``: accuracy, NLL and ECE of MC dropout against the number of samples T (mean and 95%
  band over seeds), next to the deterministic pass and the K=4 explicit ensembles;
- ``reliability``: reliability diagrams pooled over seeds (from per-bin summaries of the stored predictions);
- ``diversity``: mutual information, disagreement and ensemble gain of MC dropout (T = K and
  the headline T, ``eval.mc_samples``) vs K fixed subnetworks vs K independent networks;
- ``magnitude``: per dropout layer, eval/train ratio of the mean and the variance of the
  activations (from ``magnitudes.json``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dropens import keys
from dropens.records import reliability
from dropens.reporting.common import (
    PALETTE,
    Section,
    band_stats,
    ci_cell,
    ci_yerr,
    fmt_ci,
    headline_t,
    hline_ci,
    mc_sizes,
    require_columns,
    save_figure,
    seed_stats,
    summarize_groups,
    write_table,
)
from dropens.reporting.magnitude_common import magnitude_rows, plot_signal_ratios

METRICS = ("acc", "nll", "ece")
LABELS = {"acc": "test accuracy", "nll": "test NLL", "ece": "test ECE (15 bins)"}
K = 4  # members of the explicit ensembles; MC dropout with T = K masks is their matched-size peer


def headline(method: str, t: int) -> str:
    """The strategy that represents a method in the summary: its ensemble (MC dropout with the
    headline ``t`` masks), or its one network."""
    return {
        "plain": "deterministic",
        "dropout": keys.mc_label(t),
        "subnets": "members",
        "ensemble": "members",
    }[method]


def _rows(df: pd.DataFrame, t: int) -> pd.DataFrame:
    """Long table: one row per (run, strategy) with acc/nll/ece and diversity columns."""
    out = []
    dropout = ["deterministic", keys.mc_label(K), keys.mc_label(t)]
    for _, run in df.iterrows():
        method = run["cfg.method.name"]
        strategies = {"plain": ["deterministic"], "dropout": dropout}.get(
            method, ["members", "members_geometric"]
        )
        for strategy in strategies:
            row = {"method": method, "strategy": strategy, "seed": run["cfg.seed"]}
            for m in (*METRICS, "mi", "disagreement", "ensemble_gain", "member_acc"):
                row[m] = run.get(keys.test("clean", strategy, m), np.nan)
            out.append(row)
    return pd.DataFrame(out)


def build(df: pd.DataFrame, out_dir: Path) -> Section:
    section = Section()
    t = headline_t(df)
    mc = keys.mc_label(t)
    require_columns(
        df[df["cfg.method.name"] == "dropout"], [keys.test("clean", mc, "acc")], "quickstart"
    )
    long = _rows(df, t)
    summary = summarize_groups(
        long, ["method", "strategy"], [*METRICS, "mi", "disagreement", "ensemble_gain"]
    )
    table = pd.DataFrame(
        {
            "method": summary["method"],
            "evaluation": summary["strategy"],
            "seeds": summary["n"],
            **{
                m: [ci_cell(r, m, 4 if m != "acc" else 3) for _, r in summary.iterrows()]
                for m in METRICS
            },
            "MI": [ci_cell(r, "mi", 4) for _, r in summary.iterrows()],
            "disagreement": [ci_cell(r, "disagreement", 3) for _, r in summary.iterrows()],
        }
    )
    section.tables.append(write_table(table, out_dir, "summary"))
    for _, r in summary.iterrows():
        if r["strategy"] in ("deterministic", mc, "members") and not (
            r["method"] == "dropout" and r["strategy"] == "members"
        ):
            section.results.append(
                f"{r['method']} ({r['strategy']}): accuracy {ci_cell(r, 'acc')}, NLL {ci_cell(r, 'nll')}, "
                f"ECE {ci_cell(r, 'ece')} ({int(r['n'])} seeds)"
            )
    for fig in (_mc_curve(df, out_dir), _reliability(df, t, out_dir)):
        if fig:
            section.figures.append(fig)
    section.figures.append(_diversity(long, t, out_dir))
    mags = magnitude_rows(df)
    if not mags.empty:
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        plot_signal_ratios(ax, mags[mags["method"] == "dropout"])
        ax.set_title("Activation statistics after dropout: deterministic / training pass")
        section.figures.append(save_figure(fig, out_dir, "magnitude"))
    return section


def _mc_curve(df: pd.DataFrame, out_dir: Path) -> str | None:
    drop = df[df["cfg.method.name"] == "dropout"]
    if drop.empty:  # a partial study: no dropout run complete yet
        return None
    sizes = mc_sizes(df, "acc", nonempty=False)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, m in zip(axes, METRICS):
        s = [seed_stats(drop[keys.test("clean", keys.mc_label(t), m)]) for t in sizes]
        band_stats(
            ax,
            np.array(sizes),
            s,
            color=PALETTE["dropout"],
            label="dropout, MC average of T masks",
        )
        refs = [
            ("dropout", "deterministic", "dropout, deterministic (weight scaling)", "--"),
            ("plain", "deterministic", "plain network", ":"),
            ("subnets", "members", f"subnets K={K}, average", "-."),
            ("ensemble", "members", f"ensemble K={K}, average", "-."),
        ]
        for method, strategy, label, ls in refs:
            key = keys.test("clean", strategy, m)
            vals = df.loc[df["cfg.method.name"] == method, key] if key in df else []
            s0 = seed_stats(vals)
            if s0["n"]:
                hline_ci(ax, s0["mean"], s0["ci_low"], s0["ci_high"], label, PALETTE[method], ls)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(t) for t in sizes])
        ax.set_xlabel("MC samples T")
        ax.set_ylabel(LABELS[m])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    n = len(drop)
    fig.suptitle(f"MC dropout vs number of samples (mean and 95% CI over {n} seeds)")
    fig.tight_layout()
    return save_figure(fig, out_dir, "mc_curve")


def _pooled_reliability(df: pd.DataFrame, method: str, label: str) -> dict | None:
    """Reliability bars of ``method``'s prediction ``label`` on the clean test set, pooled over its
    runs (seeds) from each run's per-bin summary (:func:`dropens.records.reliability`: the same
    numbers from a run directory and from the committed compact records); ``None`` if a run lacks
    it."""
    count = conf = hits = None
    for _, run in df[df["cfg.method.name"] == method].iterrows():
        r = reliability(run["record"], f"clean/{label}")
        if r is None:
            return None
        c = r["count"].astype(float)
        count = c if count is None else count + c
        conf = np.nan_to_num(r["confidence"] * c) + (0 if conf is None else conf)
        hits = np.nan_to_num(r["accuracy"] * c) + (0 if hits is None else hits)
    if count is None:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"count": count, "confidence": conf / count, "accuracy": hits / count}


def _reliability(df: pd.DataFrame, t: int, out_dir: Path) -> str | None:
    panels = [
        ("plain", "deterministic", "plain"),
        ("dropout", "deterministic", "dropout, deterministic"),
        ("dropout", keys.mc_label(t), f"dropout, MC T={t}"),
        ("subnets", "members", f"subnets K={K}"),
        ("ensemble", "members", f"ensemble K={K}"),
    ]
    data = [(p, _pooled_reliability(df, p[0], p[1])) for p in panels]
    data = [(p, d) for p, d in data if d is not None]
    if not data:
        return None
    fig, axes = plt.subplots(1, len(data), figsize=(3.1 * len(data), 3.3), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, ((method, label, title), d) in zip(axes, data):
        ok = d["count"] > 0
        edges = np.linspace(0, 1, len(d["count"]) + 1)
        centers = (edges[:-1] + edges[1:]) / 2
        ax.bar(
            centers[ok],
            d["accuracy"][ok],
            width=1 / len(centers),
            color=PALETTE[method],
            alpha=0.75,
            edgecolor="k",
            lw=0.4,
            label="accuracy in bin",
        )
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        e = seed_stats(df.loc[df["cfg.method.name"] == method, keys.test("clean", label, "ece")])
        ax.set_title(f"{title}\nECE {fmt_ci(e['mean'], e['ci_low'], e['ci_high'], 3)}", fontsize=9)
        ax.set_xlabel("confidence (top-1)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(
        "Reliability, test predictions pooled over seeds (ECE: mean [95% CI] over seeds)",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, out_dir, "reliability")


def _diversity(long: pd.DataFrame, t: int, out_dir: Path) -> str:
    mc = keys.mc_label(t)
    groups = [
        ("dropout", keys.mc_label(K), f"dropout MC, T={K}"),
        ("dropout", mc, f"dropout MC, T={t}"),
        ("subnets", "members", f"subnets K={K}"),
        ("ensemble", "members", f"ensemble K={K}"),
    ]
    metrics = [
        ("mi", "mutual information (nats)"),
        ("disagreement", "disagreement with the average"),
        ("ensemble_gain", "ensemble gain (nats)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (m, label) in zip(axes, metrics):
        for i, (method, strategy, _) in enumerate(groups):
            vals = long.loc[(long["method"] == method) & (long["strategy"] == strategy), m]
            s = seed_stats(vals)
            err = ci_yerr(s)
            ax.bar(
                i,
                s["mean"],
                yerr=err,
                color=PALETTE[method],
                alpha=0.85 if strategy != mc else 0.55,
                capsize=4,
                edgecolor="k",
                lw=0.4,
            )
            ax.scatter(np.full(len(vals), i), vals, color="k", s=8, zorder=3)
        ax.set_xticks(
            range(len(groups)), [g[2] for g in groups], rotation=20, ha="right", fontsize=8
        )
        ax.set_ylabel(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Diversity of the members (bars: mean, error bars: 95% CI, dots: seeds)")
    fig.tight_layout()
    return save_figure(fig, out_dir, "diversity")
