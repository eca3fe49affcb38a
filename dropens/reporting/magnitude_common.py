"""Per-layer activation statistics of a study's runs (``magnitudes.json``) as one long table."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dropens.reporting.common import ci_yerr, seed_stats

RUN_COLUMNS = {
    "cfg.method.name": "method",
    "cfg.seed": "seed",
    "cfg.dropout.p": "p",
    "cfg.dropout.scale": "scale",
    "cfg.model.batchnorm": "batchnorm",
    "cfg.model.dropout_sites": "sites",
    "cfg.model.name": "model",
}


def magnitude_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, recorded layer row) with the run's method/seed/p/scale/... columns."""
    frames = []
    for _, run in df.iterrows():
        m = run["record"].magnitudes()
        if m is None:
            continue
        for col, name in RUN_COLUMNS.items():
            m[name] = run.get(col, np.nan)
        frames.append(m)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot_signal_ratios(ax: plt.Axes, mags: pd.DataFrame) -> None:
    """Per dropout layer (output): eval/train ratio of the mean and of the variance, mean and 95% CI
    over seeds, with the closed-form variance shift (Li et al. 2019) as open markers."""
    rows = mags[(mags["kind"] == "dropout") & (mags["where"] == "output")]
    layers = list(dict.fromkeys(rows["layer"]))
    width = 0.27
    for j, (col, label, color) in enumerate(
        [
            ("mean_ratio", "mean: eval / train", "#0173b2"),
            ("var_ratio", "variance: eval / train", "#de8f05"),
            ("var_ratio_predicted", "variance, predicted (closed form)", "#cccccc"),
        ]
    ):
        for i, layer in enumerate(layers):
            s = seed_stats(rows.loc[rows["layer"] == layer, col])
            err = ci_yerr(s)
            ax.bar(
                i + (j - 1) * width,
                s["mean"],
                width,
                yerr=err,
                color=color,
                capsize=3,
                edgecolor="k",
                lw=0.4,
                label=label if i == 0 else None,
            )
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(layers)), layers, fontsize=8)
    ax.set_xlabel("dropout layer")
    ax.set_ylabel("deterministic / training pass")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
