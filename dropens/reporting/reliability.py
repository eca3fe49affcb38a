"""Reliability diagrams pooled over seeds, from each run's per-bin summary of its stored test
predictions (:func:`dropens.records.reliability`: the same numbers from a run directory and from
the committed compact records)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dropens import keys
from dropens.records import reliability
from dropens.reporting.common import fmt_ci, save_figure, seed_stats


def pooled_reliability(runs: pd.DataFrame, label: str, set_name: str = "clean") -> dict | None:
    """Per-bin ``count``, ``confidence`` and ``accuracy`` of the prediction ``label`` pooled over
    ``runs`` (bins summed over seeds); ``None`` if a run lacks the summary."""
    count = conf = hits = None
    for _, run in runs.iterrows():
        r = reliability(run["record"], f"{set_name}/{label}")
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


def reliability_figure(
    rows: Sequence[tuple[str, Sequence[tuple[pd.DataFrame, str, str, str]]]],
    out_dir: Path,
    stem: str = "reliability",
) -> str | None:
    """One row of reliability diagrams per ``(row title, panels)``; a panel is ``(runs, label,
    title, colour)``. Each panel: accuracy per confidence bin (bars), the diagonal, and the share
    of test examples in each bin (steps), with the runs' ECE, mean [95% CI] over seeds.
    Panels whose runs lack the summary are left out; ``None`` if nothing is left."""
    data = [
        (title, [(p, pooled_reliability(p[0], p[1])) for p in panels]) for title, panels in rows
    ]
    data = [(t, [(p, d) for p, d in panels if d is not None]) for t, panels in data]
    data = [(t, panels) for t, panels in data if panels]
    if not data:
        return None
    n_cols = max(len(panels) for _, panels in data)
    fig, axes = plt.subplots(
        len(data), n_cols, figsize=(3.0 * n_cols, 3.1 * len(data)), squeeze=False
    )
    for i, (row_title, panels) in enumerate(data):
        for j in range(n_cols):
            ax = axes[i, j]
            if j >= len(panels):
                ax.axis("off")
                continue
            (runs, label, title, color), d = panels[j]
            ok = d["count"] > 0
            edges = np.linspace(0, 1, len(d["count"]) + 1)
            centers = (edges[:-1] + edges[1:]) / 2
            ax.bar(
                centers[ok],
                d["accuracy"][ok],
                width=1 / len(centers),
                color=color,
                alpha=0.75,
                edgecolor="k",
                lw=0.4,
                label="accuracy in bin",
            )
            ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
            share = d["count"] / d["count"].sum()
            ax.stairs(
                share, edges, color="#333333", lw=1.2, zorder=5, label="share of examples in bin"
            )
            e = seed_stats(runs[keys.test("clean", label, "ece")].astype(float))
            ax.set_title(
                f"{title}\nECE {fmt_ci(e['mean'], e['ci_low'], e['ci_high'], 3)} "
                f"({int(d['count'].sum())} ex.)",
                fontsize=8,
            )
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("confidence (top-1)", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{row_title}\naccuracy", fontsize=8)
        axes[i, 0].legend(fontsize=6, loc="upper left", handlelength=3)
    fig.suptitle(
        "Reliability of the test predictions before temperature scaling, pooled over seeds "
        "(bars: accuracy per confidence "
        "bin; dark steps: share of the examples in each bin; ECE: mean [95% CI] over seeds)",
        fontsize=9,
    )
    fig.tight_layout()
    return save_figure(fig, out_dir, stem)
