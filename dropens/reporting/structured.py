"""Figures of the ``structured`` study: which units share one mask draw (element, channel,
location, block of several sizes), on the MNIST-1D CNN and the Fashion-MNIST 2-D CNN.

- ``metrics``: accuracy, NLL and ECE per structure (deterministic pass and MC dropout at the
  headline T; bars: mean, error bars: 95% CI over seeds, dots: seeds), one column per architecture;
- ``diversity``: mutual information and disagreement of the MC samples per structure;
- ``magnitude``: per dropout layer, deterministic/training ratio of the mean and of the variance of
  the activations after dropout (``magnitudes.json``), per structure.

Tables: ``summary`` (mean [95% CI] over seeds per structure), ``paired`` (each structure minus
``element`` on the same architecture, paired by seed: mean difference [95% CI], paired t-test
p-value) and ``magnitude`` (the ratios averaged over the dropout layers of a run).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dropens import keys
from dropens.reporting.common import (
    PALETTE,
    PairedGroup,
    Section,
    ci_cell,
    ci_yerr,
    headline_t,
    paired_vs_reference,
    require_columns,
    save_figure,
    seed_stats,
    summarize_groups,
    write_table,
)
from dropens.reporting.magnitude_common import magnitude_rows

ARCHS = {
    ("mnist1d", "cnn1d"): "MNIST-1D CNN",
    ("fashion_mnist", "cnn2d"): "Fashion-MNIST CNN",
}
STRUCTURES = ("element", "channel", "location", "block")
STRUCTURE_COLORS = {
    "element": "#0173b2",
    "channel": "#de8f05",
    "location": "#029e73",
    "block": "#cc78bc",
    "plain": PALETTE["plain"],
}
METRICS = {"acc": "test accuracy", "nll": "test NLL (nats)", "ece": "test ECE (15 bins)"}
DIVERSITY = {"mi": "mutual information (nats)", "disagreement": "disagreement with the average"}
REFERENCE = "element"


def structure_label(row: pd.Series | dict) -> str:
    """``element`` | ``channel`` | ``location`` | ``block 3`` (DropBlock width) | ``plain``."""
    if row["cfg.method.name"] == "plain":
        return "plain"
    structure = str(row["cfg.dropout.structure"])
    if structure == "block":
        return f"block {int(row['cfg.dropout.block_size'])}"
    return structure


def _order(labels: list[str]) -> list[str]:
    def key(label: str) -> tuple[int, int]:
        head, _, size = label.partition(" ")
        rank = STRUCTURES.index(head) if head in STRUCTURES else len(STRUCTURES)
        return rank, int(size) if size else 0

    return sorted(set(labels), key=key)


def _archs(df: pd.DataFrame) -> list[tuple[str, str]]:
    found = list(dict.fromkeys(zip(df["cfg.data.name"], df["cfg.model.name"])))
    return [k for k in ARCHS if k in found] + [k for k in found if k not in ARCHS]


def _color(label: str) -> str:
    return STRUCTURE_COLORS.get(label.partition(" ")[0], "#555555")


def build(df: pd.DataFrame, out_dir: Path) -> Section:
    section = Section()
    df = df.copy()
    df["structure"] = [structure_label(r) for _, r in df.iterrows()]
    df["arch"] = [
        ARCHS.get((d, m), f"{d} {m}") for d, m in zip(df["cfg.data.name"], df["cfg.model.name"])
    ]
    mc = keys.mc_label(headline_t(df))
    require_columns(
        df[df["cfg.method.name"] == "dropout"], [keys.test("clean", mc, "acc")], "structured"
    )
    archs = [ARCHS.get(k, f"{k[0]} {k[1]}") for k in _archs(df)]
    columns = [keys.test("clean", s, m) for s in ("deterministic", mc) for m in METRICS] + [
        keys.test("clean", mc, m) for m in DIVERSITY
    ]
    summary = summarize_groups(df, ["arch", "structure"], columns)
    section.tables.append(_summary_table(summary, archs, mc, out_dir))
    section.tables.append(_paired_table(df, archs, mc, out_dir, section))
    section.figures.append(_metrics(df, summary, archs, mc, out_dir))
    section.figures.append(_diversity(df, summary, archs, mc, out_dir))
    mags = _magnitudes(df)
    if not mags.empty:
        section.tables.append(_magnitude_table(mags, archs, out_dir, section))
        section.figures.append(_magnitude_figure(mags, archs, out_dir))
    return section


def _summary_table(summary: pd.DataFrame, archs: list[str], mc: str, out_dir: Path) -> str:
    rows = []
    for arch in archs:
        sub = summary[summary["arch"] == arch]
        for label in _order(list(sub["structure"])):
            r = sub[sub["structure"] == label].iloc[0]
            row = {"architecture": arch, "structure": label, "seeds": int(r["n"])}
            for m in METRICS:
                row[f"{m} (det.)"] = ci_cell(r, keys.test("clean", "deterministic", m), 4)
                row[f"{m} ({mc})"] = ci_cell(r, keys.test("clean", mc, m), 4)
            for m in DIVERSITY:
                row[f"{m} ({mc})"] = ci_cell(r, keys.test("clean", mc, m), 4)
            rows.append(row)
    return write_table(pd.DataFrame(rows), out_dir, "summary")


def _paired_table(
    df: pd.DataFrame, archs: list[str], mc: str, out_dir: Path, section: Section
) -> str:
    """Each structure minus ``element`` on the same architecture (:func:`paired_vs_reference`)."""
    t = keys.mc_samples(mc)
    groups = [
        PairedGroup(
            df[df["arch"] == arch],
            {"architecture": arch},
            lambda what, arch=arch: f"{arch}, {what}, MC T={t}: ",
        )
        for arch in archs
    ]
    return paired_vs_reference(
        groups,
        "structure",
        "structure",
        REFERENCE,
        lambda runs: _order(list(runs["structure"])),
        mc,
        list(METRICS),
        list(DIVERSITY),
        out_dir,
        section,
        plain="plain",
    )


def _points(
    ax: plt.Axes,
    runs: pd.DataFrame,
    labels: list[str],
    points: list[tuple[str, str, str]],
) -> None:
    """Per structure, one marker per ``(key, name, marker style)``: mean with its 95% CI error bar
    and the seeds as small grey dots (a dot plot: the y axis is zoomed to the data, where bars
    from a cut baseline would mislead)."""
    width = 0.5 / len(points)
    for i, label in enumerate(labels):
        sub = runs[runs["structure"] == label]
        for j, (key, name, style) in enumerate(points):
            if key not in sub or sub[key].isna().all():
                continue
            s = seed_stats(sub[key])
            x = i + (j - (len(points) - 1) / 2) * width
            ax.scatter(np.full(len(sub), x), sub[key], color="#888888", s=7, zorder=2)
            ax.errorbar(
                x,
                s["mean"],
                yerr=ci_yerr(s),
                fmt="o",
                ms=6,
                color=_color(label),
                mfc=_color(label) if style == "filled" else "white",
                mew=1.5,
                capsize=3,
                zorder=3,
                label=name if i == 0 else None,
            )
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.grid(alpha=0.3)


def _zoom(ax: plt.Axes, runs: pd.DataFrame, columns: list[str]) -> None:
    """Y range from the seeds and the 95% intervals of every structure (bars from 0 would hide
    differences of a few tenths of a percent)."""
    vals = []
    for key in (k for k in columns if k in runs):
        for _, sub in runs.groupby("structure"):
            s = seed_stats(sub[key])
            vals += [*sub[key].dropna(), s["ci_low"], s["ci_high"]]
    vals = [v for v in vals if np.isfinite(v)]
    if vals:
        lo, hi = min(vals), max(vals)
        pad = 0.08 * (hi - lo) if hi > lo else 0.05 * abs(hi) + 1e-3
        ax.set_ylim(lo - pad, hi + pad)


def _metrics(
    df: pd.DataFrame, summary: pd.DataFrame, archs: list[str], mc: str, out_dir: Path
) -> str:
    fig, axes = plt.subplots(3, len(archs), figsize=(5.4 * len(archs), 10), squeeze=False)
    for j, arch in enumerate(archs):
        runs = df[df["arch"] == arch]
        labels = _order(list(runs["structure"]))
        for i, m in enumerate(METRICS):
            ax = axes[i, j]
            points = [
                (
                    keys.test("clean", "deterministic", m),
                    "deterministic pass (weight scaling)",
                    "open",
                ),
                (keys.test("clean", mc, m), f"MC dropout, T={keys.mc_samples(mc)}", "filled"),
            ]
            _points(ax, runs, labels, points)
            _zoom(ax, runs, [k for k, _, _ in points])
            ax.set_ylabel(METRICS[m])
            if i == 0:
                ax.set_title(arch)
    handles, names = axes[0, 0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], ls="", marker="o", color="#888888", ms=3))
    names.append("one seed")
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Mask structure at the same p: mean and 95% CI over seeds")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return save_figure(fig, out_dir, "metrics")


def _diversity(
    df: pd.DataFrame, summary: pd.DataFrame, archs: list[str], mc: str, out_dir: Path
) -> str:
    fig, axes = plt.subplots(2, len(archs), figsize=(5.4 * len(archs), 6.6), squeeze=False)
    for j, arch in enumerate(archs):
        runs = df[(df["arch"] == arch) & (df["structure"] != "plain")]
        labels = _order(list(runs["structure"]))
        for i, m in enumerate(DIVERSITY):
            ax = axes[i, j]
            point = (keys.test("clean", mc, m), f"MC T={keys.mc_samples(mc)}", "filled")
            _points(ax, runs, labels, [point])
            ax.set_ylabel(DIVERSITY[m])
            if i == 0:
                ax.set_title(arch)
    fig.suptitle(
        f"Diversity of the MC-dropout samples (T={keys.mc_samples(mc)}) per mask structure; "
        "mean and 95% CI, grey dots = seeds"
    )
    fig.tight_layout()
    return save_figure(fig, out_dir, "diversity")


def _magnitudes(df: pd.DataFrame) -> pd.DataFrame:
    """Dropout-layer outputs of every dropout run: one row per (run, layer), layers numbered."""
    drop = df[df["cfg.method.name"] == "dropout"]
    frames = []
    for arch in dict.fromkeys(drop["arch"]):
        for label in dict.fromkeys(drop.loc[drop["arch"] == arch, "structure"]):
            runs = drop[(drop["arch"] == arch) & (drop["structure"] == label)]
            rows = magnitude_rows(runs)
            if rows.empty:
                continue
            rows = rows[(rows["kind"] == "dropout") & (rows["where"] == "output")]
            rows = rows.groupby(["seed", "layer"], sort=False, as_index=False)[
                ["mean_ratio", "var_ratio", "var_ratio_predicted"]
            ].mean()
            order = {name: i + 1 for i, name in enumerate(dict.fromkeys(rows["layer"]))}
            rows["index"] = rows["layer"].map(order)
            frames.append(rows.assign(arch=arch, structure=label))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _magnitude_table(mags: pd.DataFrame, archs: list[str], out_dir: Path, section: Section) -> str:
    per_run = mags.groupby(["arch", "structure", "seed"], as_index=False)[
        ["mean_ratio", "var_ratio", "var_ratio_predicted"]
    ].mean()
    summary = summarize_groups(
        per_run, ["arch", "structure"], ["mean_ratio", "var_ratio", "var_ratio_predicted"]
    )
    rows = []
    for arch in archs:
        sub = summary[summary["arch"] == arch]
        cells = []
        for label in _order(list(sub["structure"])):
            r = sub[sub["structure"] == label].iloc[0]
            rows.append(
                {
                    "architecture": arch,
                    "structure": label,
                    "seeds": int(r["n"]),
                    "mean eval/train": ci_cell(r, "mean_ratio", 3),
                    "variance eval/train": ci_cell(r, "var_ratio", 3),
                    "variance, closed form": ci_cell(r, "var_ratio_predicted", 3),
                }
            )
            cells.append(
                f"{label} mean {ci_cell(r, 'mean_ratio', 3)}, variance {ci_cell(r, 'var_ratio', 3)}"
            )
        if cells:
            section.results.append(
                f"{arch}, activations after dropout, deterministic / training pass (mean over the "
                f"dropout layers): " + "; ".join(cells)
            )
    return write_table(pd.DataFrame(rows), out_dir, "magnitude")


def _magnitude_figure(mags: pd.DataFrame, archs: list[str], out_dir: Path) -> str:
    fig, axes = plt.subplots(2, len(archs), figsize=(5.4 * len(archs), 6.8), squeeze=False)
    markers = ["o", "s", "^", "D", "v", "P"]
    for j, arch in enumerate(archs):
        sub = mags[mags["arch"] == arch]
        labels = _order(list(sub["structure"]))
        layers = sorted(sub["index"].unique())
        width = 0.6 / max(len(layers), 1)
        for i, (col, name) in enumerate(
            (("mean_ratio", "mean after dropout"), ("var_ratio", "variance after dropout"))
        ):
            ax = axes[i, j]
            for k, layer in enumerate(layers):
                for x, label in enumerate(labels):
                    s = seed_stats(
                        sub.loc[(sub["structure"] == label) & (sub["index"] == layer), col]
                    )
                    ax.errorbar(
                        x + (k - (len(layers) - 1) / 2) * width,
                        s["mean"],
                        yerr=ci_yerr(s),
                        fmt=markers[k % len(markers)],
                        ms=5,
                        color=_color(label),
                        capsize=2,
                        label=f"dropout layer {int(layer)}" if x == 0 else None,
                    )
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
            ax.set_xlim(-0.6, len(labels) - 0.4)
            ax.set_ylabel(f"{name}:\ndeterministic / training")
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(arch)
    deepest = max(range(len(archs)), key=lambda j: len(axes[0, j].get_legend_handles_labels()[0]))
    handles, names = axes[0, deepest].get_legend_handles_labels()
    handles = [
        plt.Line2D([], [], ls="", marker=h.lines[0].get_marker(), color="#555555") for h in handles
    ]
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    fig.suptitle(
        "Activations after each dropout layer, deterministic / training pass "
        "(mean and 95% CI over seeds)"
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return save_figure(fig, out_dir, "magnitude")
