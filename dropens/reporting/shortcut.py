"""Figures of the ``shortcut`` study: does structured dropout push a classifier off the "teeth" cue?

- ``samples``: faces of the training split (each label with and without teeth) and of the
  cue-conflicting set, drawn by the generator (:mod:`dropens.data.faces`) with the study's seed;
- ``reliance``: at the study's main rho, per method: accuracy in distribution (``iid``), on
  decorrelated (``clean``) and cue-conflicting faces, worst-group accuracy, and the flip rate when
  the teeth are painted in or out of the same faces (mean and 95% CI over seeds, dots: seeds);
- ``rho_sweep``: flip rate and conflict accuracy against the training cue rate rho;
- ``occlusion``: occlusion-sensitivity maps (mean drop of the true-class probability when an 8x8
  patch is blanked) per method, averaged over test faces and seeds, on one colour scale.

Every comparison with ``plain`` is paired by seed (same faces, same initial weights for the same
seed): mean difference with its 95% t-interval and the paired t-test p-value (``paired`` table).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from dropens import keys
from dropens.data.faces import render, sample_faces
from dropens.reporting.common import (
    HANDLELENGTH,
    PALETTE,
    Section,
    ci_cell,
    ci_line_table,
    dodge,
    dot_ci,
    fmt_paired,
    paired_by_seed,
    require_columns,
    save_figure,
    summarize_groups,
    write_paired_table,
    write_table,
)

MAIN_RHO = 0.95
METHODS = [  # (variant, colour): order of every figure and table
    ("plain", PALETTE["plain"]),
    ("dropout element", "#56b4e9"),
    ("dropout channel", "#0173b2"),
    ("dropout location", "#d55e00"),
    ("dropout block", "#cc78bc"),
    ("ensemble K=4", PALETTE["ensemble"]),
]
COLOURS = dict(METHODS)
# (column in the long table, (eval set, metric) of its key test/<set>/<label>/<metric>, axis label)
MEASURES = [
    ("acc_iid", ("iid", "acc"), "accuracy, iid (cue as in training)"),
    ("acc_clean", ("clean", "acc"), "accuracy, cue independent of label"),
    ("acc_conflict", ("conflict", "acc"), "accuracy, cue always wrong"),
    ("worst_group", ("teeth", "worst_group_acc"), "worst-group accuracy"),
    ("flip_rate", ("teeth", "flip_rate"), "flip rate (teeth in vs out)"),
]


def variant(run: pd.Series) -> str:
    """``plain``, ``dropout <structure>`` or ``ensemble K=<k>``."""
    name = run["cfg.method.name"]
    if name == "dropout":
        return f"dropout {run['cfg.dropout.structure']}"
    if name == "ensemble":
        return f"ensemble K={int(run['cfg.method.k'])}"
    return str(name)


def headline(run: pd.Series) -> str:
    """The prediction a method is scored by: an ensemble's average, else the deterministic pass."""
    return "members" if run["cfg.method.name"] == "ensemble" else "deterministic"


def _long(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, run in df.iterrows():
        label = headline(run)
        row = {
            "method": variant(run),
            "rho": float(run["cfg.data.rho"]),
            "cfg.seed": int(run["cfg.seed"]),
            "record": run["record"],
        }
        for col, (set_name, metric), _ in MEASURES:
            row[col] = run.get(keys.test(set_name, label, metric), np.nan)
        mc = keys.mc_label(int(run["cfg.eval.mc_samples"]))
        row["flip_rate_mc"] = run.get(keys.test("teeth", mc, "flip_rate"), np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def build(df: pd.DataFrame, out_dir: Path) -> Section:
    section = Section()
    require_columns(df, [keys.test("teeth", "deterministic", "flip_rate")], "shortcut")
    long = _long(df)
    cols = [c for c, _, _ in MEASURES]
    summary = summarize_groups(long, ["method", "rho"], [*cols, "flip_rate_mc"])
    order = {m: i for i, (m, _) in enumerate(METHODS)}
    summary = summary.sort_values(
        ["rho", "method"], key=lambda s: s.map(order) if s.name == "method" else s
    )
    table = pd.DataFrame(
        {
            "method": summary["method"],
            "rho": summary["rho"],
            "seeds": summary["n"],
            **{label: [ci_cell(r, c) for _, r in summary.iterrows()] for c, _, label in MEASURES},
            "flip rate, MC": [ci_cell(r, "flip_rate_mc") for _, r in summary.iterrows()],
        }
    )
    section.tables.append(write_table(table, out_dir, "summary"))
    paired = _paired(long)
    if not paired.empty:
        write_paired_table(section, paired, out_dir)
    main = summary[np.isclose(summary["rho"], MAIN_RHO)]
    for _, r in main.iterrows():
        section.results.append(
            f"rho={MAIN_RHO}, {r['method']}: accuracy iid {ci_cell(r, 'acc_iid')}, "
            f"cue-conflicting {ci_cell(r, 'acc_conflict')}, worst group {ci_cell(r, 'worst_group')}, "
            f"flip rate {ci_cell(r, 'flip_rate')} ({int(r['n'])} seeds)"
        )
    for _, r in paired.iterrows():
        if np.isclose(r["rho"], MAIN_RHO) and r["measure"] in ("flip_rate", "acc_conflict"):
            section.results.append(
                f"{r['method']} - plain, {r['measure']} (rho={MAIN_RHO}): "
                f"{r['difference vs plain [95% CI], paired t']}"
            )
    section.figures.append(_samples(out_dir))
    section.figures.append(_reliance(long, out_dir))
    section.figures.append(_rho_sweep(summary, out_dir))
    fig = _occlusion(long, out_dir)
    if fig:
        section.figures.append(fig)
    return section


def _paired(long: pd.DataFrame) -> pd.DataFrame:
    """Each method minus ``plain`` at the same rho, paired by seed, for the reliance measures."""
    rows = []
    order = {m: i for i, (m, _) in enumerate(METHODS)}
    groups = sorted(
        long.groupby(["method", "rho"]).groups, key=lambda k: (k[1], order.get(k[0], 99))
    )
    for method, rho in groups:
        group = long[(long["method"] == method) & np.isclose(long["rho"], rho)]
        base = long[(long["method"] == "plain") & np.isclose(long["rho"], rho)]
        if method == "plain" or base.empty:
            continue
        for col in ("acc_conflict", "worst_group", "flip_rate", "acc_iid"):
            d = paired_by_seed(group, base, col)
            rows.append(
                {
                    "method": method,
                    "rho": rho,
                    "measure": col,
                    "seeds": int(d["n"]),
                    "difference vs plain [95% CI], paired t": fmt_paired(d),
                    "pvalue": d["pvalue"],
                }
            )
    return pd.DataFrame(rows)


def _samples(out_dir: Path) -> str:
    """Training faces per (label, teeth) and cue-conflicting faces, from the generator."""
    params = sample_faces(2000, MAIN_RHO, seed=0, stream=0)
    images = render(params)
    label, teeth = params["label"], params["teeth"]
    panels = [
        ("smiling, teeth\n(cue agrees)", (label == 1) & teeth),
        ("angry, no teeth\n(cue agrees)", (label == 0) & ~teeth),
        ("smiling, no teeth\n(cue conflicts)", (label == 1) & ~teeth),
        ("angry, teeth\n(cue conflicts)", (label == 0) & teeth),
    ]
    per_row = 6
    fig, axes = plt.subplots(
        len(panels), per_row, figsize=(1.3 * per_row + 1.6, 1.45 * len(panels))
    )
    for row, (title, rows) in enumerate(panels):
        idx = torch.nonzero(rows).flatten()[:per_row]
        for col in range(per_row):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(idx):
                ax.imshow(images[idx[col], 0], cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
    share = float((label == 1).eq(teeth).float().mean())
    fig.suptitle(
        f"Training faces (rho={MAIN_RHO}: teeth agree with the label on {share:.0%} of them)",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, out_dir, "samples")


def _dots(ax: plt.Axes, data: pd.DataFrame, col: str, methods: list[str]) -> None:
    """Per method: mean and 95% CI over seeds, seeds as dots (a dot plot: accuracies lie far from
    0, where bars would need an axis cut above 0)."""
    for i, m in enumerate(methods):
        dot_ci(ax, i, data.loc[data["method"] == m, col].to_numpy(float), COLOURS[m])
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.grid(axis="y", alpha=0.3)


def _reliance(long: pd.DataFrame, out_dir: Path) -> str:
    main = long[np.isclose(long["rho"], MAIN_RHO)]
    methods = [m for m, _ in METHODS if m in set(main["method"])]
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(3.3 * len(MEASURES), 4.2))
    for ax, (col, _, label) in zip(axes, MEASURES):
        _dots(ax, main, col, methods)
        ax.set_title(label, fontsize=9)
        if col.startswith("acc"):  # two classes: a coin flip is right half of the time
            ax.axhline(0.5, color="k", lw=0.8, ls=":", label="chance (1/2)")
        lo, hi = ax.get_ylim()
        hi = min(hi, 1.0)  # rates: a t-interval of few seeds may overshoot
        # accuracies: not below 0; rates: from 0, with a margin that keeps a dot at 0 whole
        ax.set_ylim(max(lo, 0.0) if col.startswith("acc") else -0.03 * hi, hi)
    n = main["cfg.seed"].nunique()
    handles = [
        plt.Line2D([], [], ls="", marker="o", ms=7, color="#555555", label="mean, 95% CI"),
        plt.Line2D([], [], ls="", marker=".", color="k", label="one seed"),
        plt.Line2D([], [], ls=":", color="k", lw=0.8, label="chance (1/2, accuracies)"),
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False,
        handlelength=HANDLELENGTH,
    )  # fmt: skip
    fig.suptitle(
        f"Reliance on the teeth cue at rho={MAIN_RHO} (mean and 95% CI over {n} seeds, dots: "
        "seeds; dropout scored by its deterministic pass)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, out_dir, "reliance")


def _rho_sweep(summary: pd.DataFrame, out_dir: Path) -> str:
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
    lanes = [m for m, _ in METHODS if (summary["method"] == m).sum() >= 2]
    rhos = np.unique(summary["rho"].to_numpy(dtype=float))
    gap = float(np.min(np.diff(rhos))) if len(rhos) > 1 else 0.05
    for ax, col, label in (
        (axes[0], "flip_rate", "flip rate (teeth in vs out)"),
        (axes[1], "acc_conflict", "accuracy, cue always wrong"),
        (axes[2], "acc_iid", "accuracy, iid"),
    ):
        for m, colour in METHODS:
            if m not in lanes:
                continue
            rows = summary[summary["method"] == m].sort_values("rho")
            ci_line_table(
                ax,
                dodge(rows["rho"].to_numpy(), lanes.index(m), len(lanes), 0.5 * gap / len(lanes)),
                rows,
                f"{col}",
                color=colour,
                marker="o",
                label=m,
            )
        ax.set_xlabel("training cue-label agreement rho (x shifted per method)")
        ax.set_ylabel(label)
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, 0.0), min(hi, 1.0))  # rates: a t-interval of few seeds may overshoot
        ax.set_xticks(rhos)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False,
        handlelength=HANDLELENGTH,
    )  # fmt: skip
    fig.suptitle("Shortcut reliance against the cue rate (mean and 95% CI over seeds)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, out_dir, "rho_sweep")


def _occlusion(long: pd.DataFrame, out_dir: Path) -> str | None:
    main = long[np.isclose(long["rho"], MAIN_RHO)]
    maps: dict[str, list[np.ndarray]] = {}
    meta = None
    for _, run in main.iterrows():
        record = run["record"].occlusion()
        if record is not None:
            maps.setdefault(run["method"], []).append(np.asarray(record["map"], dtype=float))
            meta = record
    methods = [m for m, _ in METHODS if m in maps]
    if not methods or meta is None:
        return None
    means = {m: np.mean(maps[m], axis=0) for m in methods}
    vmax = max(float(np.abs(v).max()) for v in means.values()) or 1.0
    fig, axes = plt.subplots(1, len(methods), figsize=(2.4 * len(methods) + 1.2, 2.9))
    axes = np.atleast_1d(axes)
    face = render(sample_faces(1, 0.5, seed=0, stream=1, labels=torch.ones(1)))[0, 0]
    patch, stride = meta["patch"], meta["stride"]
    # cell (i, j) is the patch centred at i * stride + patch / 2 - 0.5 (pixel-centre coordinates)
    first = patch / 2 - 0.5 - stride / 2
    last = (len(means[methods[0]]) - 1) * stride + patch / 2 - 0.5 + stride / 2
    for ax, m in zip(axes, methods):
        ax.imshow(face, cmap="gray", vmin=0, vmax=1)
        im = ax.imshow(
            means[m],
            cmap="magma",
            vmin=0,
            vmax=vmax,
            alpha=0.75,
            extent=(first, last, last, first),
        )
        ax.set_title(f"{m}\n({len(maps[m])} seeds)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), fraction=0.02, label="drop of p(true class)")
    fig.suptitle(
        f"Occlusion sensitivity at rho={MAIN_RHO}: {patch}x{patch} patch, stride {stride}, mean over "
        f"{meta['n_examples']} decorrelated test faces and seeds (a face drawn underneath for scale)",
        fontsize=9,
    )
    return save_figure(fig, out_dir, "occlusion")
