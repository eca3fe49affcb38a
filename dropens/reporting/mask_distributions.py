"""Figures of the ``mask_distributions`` study: Bernoulli vs Gaussian vs uniform masks of the same
mean and variance, at several p, on the MNIST-1D MLP and CNN.

- ``metrics_vs_p``: accuracy, NLL and ECE against p per distribution (MC dropout at the headline T,
  solid; deterministic pass, dashed), one column per architecture, the plain network at p = 0;
- ``diversity_vs_p``: mutual information and disagreement of the MC samples against p.

Tables: ``summary`` (every (architecture, distribution, p), mean [95% CI] over seeds) and
``paired`` (each distribution minus Bernoulli at the same architecture and p, paired by seed:
mean difference [95% CI] and the paired t-test p-value).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dropens import keys
from dropens.reporting.common import (
    HANDLELENGTH,
    PALETTE,
    PairedGroup,
    Section,
    ci_cell,
    ci_line,
    ci_yerr,
    headline_t,
    paired_vs_reference,
    require_columns,
    save_figure,
    seed_stats,
    summarize_groups,
    write_table,
)

DISTS = ("bernoulli", "gaussian", "uniform")
DIST_COLORS = {"bernoulli": "#0173b2", "gaussian": "#de8f05", "uniform": "#029e73"}
ARCHS = {"mlp": "MNIST-1D MLP", "cnn1d": "MNIST-1D CNN"}
METRICS = {"acc": "test accuracy", "nll": "test NLL (nats)", "ece": "test ECE (15 bins)"}
DIVERSITY = {"mi": "mutual information (nats)", "disagreement": "disagreement with the average"}


def _archs(df: pd.DataFrame) -> list[str]:
    found = list(dict.fromkeys(df["cfg.model.name"]))
    return [a for a in ARCHS if a in found] + [a for a in found if a not in ARCHS]


def _dists(df: pd.DataFrame) -> list[str]:
    found = list(dict.fromkeys(df["cfg.dropout.dist"]))
    return [d for d in DISTS if d in found] + [d for d in found if d not in DISTS]


def build(df: pd.DataFrame, out_dir: Path) -> Section:
    section = Section()
    mc = keys.mc_label(headline_t(df))
    drop = df[df["cfg.method.name"] == "dropout"]
    plain = df[df["cfg.method.name"] == "plain"]
    require_columns(drop, [keys.test("clean", mc, "acc")], "mask_distributions")
    archs, dists = _archs(df), _dists(drop)
    columns = [keys.test("clean", s, m) for s in ("deterministic", mc) for m in METRICS] + [
        keys.test("clean", mc, m) for m in DIVERSITY
    ]
    summary = summarize_groups(
        drop, ["cfg.model.name", "cfg.dropout.dist", "cfg.dropout.p"], columns
    ).sort_values(["cfg.model.name", "cfg.dropout.p", "cfg.dropout.dist"])
    plain_summary = summarize_groups(
        plain, ["cfg.model.name"], [keys.test("clean", "deterministic", m) for m in METRICS]
    )
    section.tables.append(_summary_table(summary, plain_summary, archs, mc, out_dir))
    for arch in archs:
        for _, r in plain_summary[plain_summary["cfg.model.name"] == arch].iterrows():
            section.results.append(
                f"{ARCHS.get(arch, arch)}, plain (no dropout): accuracy "
                f"{ci_cell(r, keys.test('clean', 'deterministic', 'acc'))}, NLL "
                f"{ci_cell(r, keys.test('clean', 'deterministic', 'nll'), 4)}, ECE "
                f"{ci_cell(r, keys.test('clean', 'deterministic', 'ece'), 4)} (seeds: {int(r['n'])})"
            )
    section.tables.append(_paired_table(drop, archs, dists, mc, out_dir, section))
    section.figures.append(_metrics_vs_p(summary, plain, archs, dists, mc, out_dir))
    section.figures.append(_diversity_vs_p(summary, archs, dists, mc, out_dir))
    return section


def _summary_table(
    summary: pd.DataFrame, plain: pd.DataFrame, archs: list[str], mc: str, out_dir: Path
) -> str:
    rows = []
    for arch in archs:
        for _, r in plain[plain["cfg.model.name"] == arch].iterrows():
            row = {"model": arch, "dist": "plain", "p": 0.0, "seeds": int(r["n"])}
            for m in METRICS:
                row[f"{m} (det.)"] = ci_cell(r, keys.test("clean", "deterministic", m), 4)
                row[f"{m} ({mc})"] = "-"
            rows.append({**row, f"MI ({mc})": "-", f"disagreement ({mc})": "-"})
        for _, r in summary[summary["cfg.model.name"] == arch].iterrows():
            row = {
                "model": arch,
                "dist": r["cfg.dropout.dist"],
                "p": r["cfg.dropout.p"],
                "seeds": int(r["n"]),
            }
            for m in METRICS:
                for s in ("deterministic", mc):
                    label = "det." if s == "deterministic" else mc
                    row[f"{m} ({label})"] = ci_cell(r, keys.test("clean", s, m), 4)
            row[f"MI ({mc})"] = ci_cell(r, keys.test("clean", mc, "mi"), 4)
            row[f"disagreement ({mc})"] = ci_cell(r, keys.test("clean", mc, "disagreement"), 4)
            rows.append(row)
    return write_table(pd.DataFrame(rows), out_dir, "summary")


def _paired_table(
    drop: pd.DataFrame,
    archs: list[str],
    dists: list[str],
    mc: str,
    out_dir: Path,
    section: Section,
) -> str:
    """Each distribution minus Bernoulli at the same architecture and p (:func:`paired_vs_reference`)."""
    t = keys.mc_samples(mc)
    groups = []
    for arch in archs:
        runs = drop[drop["cfg.model.name"] == arch]
        name = ARCHS.get(arch, arch)
        for p in sorted(runs["cfg.dropout.p"].unique()):
            groups.append(
                PairedGroup(
                    runs[runs["cfg.dropout.p"] == p],
                    {"model": arch, "p": p},
                    lambda what, name=name, p=p: f"{name}, p={p}, MC T={t}, {what}: ",
                )
            )
    return paired_vs_reference(
        groups,
        "cfg.dropout.dist",
        "dist",
        "bernoulli",
        lambda runs: dists,
        mc,
        list(METRICS),
        list(DIVERSITY),
        out_dir,
        section,
        acc_digits=3,
    )


def _offsets(lanes: list[str], ps: np.ndarray) -> dict[str, float]:
    """Small x shifts per lane (distribution, or distribution and evaluation) so that error bars
    at the same p do not hide each other."""
    gap = np.min(np.diff(np.unique(ps))) if len(np.unique(ps)) > 1 else 0.1
    width = 0.36 * gap / max(len(lanes), 1)
    return {d: (i - (len(lanes) - 1) / 2) * width for i, d in enumerate(lanes)}


def _metrics_vs_p(
    summary: pd.DataFrame,
    plain: pd.DataFrame,
    archs: list[str],
    dists: list[str],
    mc: str,
    out_dir: Path,
) -> str:
    fig, axes = plt.subplots(3, len(archs), figsize=(5.2 * len(archs), 9.5), squeeze=False)
    ps = summary["cfg.dropout.p"].to_numpy(dtype=float)
    shift = _offsets([f"{d} {s}" for d in dists for s in ("deterministic", mc)], ps)
    for j, arch in enumerate(archs):
        sub = summary[summary["cfg.model.name"] == arch]
        for i, m in enumerate(METRICS):
            ax = axes[i, j]
            for dist in dists:
                g = sub[sub["cfg.dropout.dist"] == dist].sort_values("cfg.dropout.p")
                for s, ls, marker, label in (
                    (mc, "-", "o", f"{dist}, MC T={keys.mc_samples(mc)}"),
                    ("deterministic", "--", "x", f"{dist}, deterministic"),
                ):
                    key = keys.test("clean", s, m)
                    ci_line(
                        ax,
                        g["cfg.dropout.p"].to_numpy(dtype=float) + shift[f"{dist} {s}"],
                        g[f"{key}_mean"],
                        g[f"{key}_lo"],
                        g[f"{key}_hi"],
                        color=DIST_COLORS.get(dist),
                        ls=ls,
                        marker=marker,
                        label=label,
                    )
            base = plain[plain["cfg.model.name"] == arch]
            if len(base):
                s = seed_stats(base[keys.test("clean", "deterministic", m)])
                ax.errorbar(
                    0.0,
                    s["mean"],
                    yerr=ci_yerr(s),
                    fmt="s",
                    color=PALETTE["plain"],
                    capsize=3,
                    label="plain (no dropout)",
                )
            ax.set_xticks([0.0, *sorted(set(ps))])
            ax.set_xlabel("drop probability p (mask variance p / (1 - p))")
            ax.set_ylabel(METRICS[m])
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(ARCHS.get(arch, arch))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False,
        handlelength=HANDLELENGTH,
    )  # fmt: skip
    fig.suptitle(
        "Mask distributions of equal mean and variance (x shifted per distribution): "
        "mean and 95% CI over seeds"
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(fig, out_dir, "metrics_vs_p")


def _diversity_vs_p(
    summary: pd.DataFrame, archs: list[str], dists: list[str], mc: str, out_dir: Path
) -> str:
    fig, axes = plt.subplots(2, len(archs), figsize=(5.2 * len(archs), 6.4), squeeze=False)
    shift = _offsets(dists, summary["cfg.dropout.p"].to_numpy(dtype=float))
    for j, arch in enumerate(archs):
        sub = summary[summary["cfg.model.name"] == arch]
        for i, m in enumerate(DIVERSITY):
            ax = axes[i, j]
            key = keys.test("clean", mc, m)
            for dist in dists:
                g = sub[sub["cfg.dropout.dist"] == dist].sort_values("cfg.dropout.p")
                ci_line(
                    ax,
                    g["cfg.dropout.p"].to_numpy(dtype=float) + shift[dist],
                    g[f"{key}_mean"],
                    g[f"{key}_lo"],
                    g[f"{key}_hi"],
                    color=DIST_COLORS.get(dist),
                    marker="o",
                    label=dist,
                )
            ax.set_xticks(sorted(set(summary["cfg.dropout.p"])))
            ax.set_xlabel("drop probability p")
            ax.set_ylabel(DIVERSITY[m])
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(ARCHS.get(arch, arch))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False,
        handlelength=HANDLELENGTH,
    )  # fmt: skip
    fig.suptitle(
        f"Diversity of the MC-dropout samples (T={keys.mc_samples(mc)}); mean and 95% CI over seeds"
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return save_figure(fig, out_dir, "diversity_vs_p")
