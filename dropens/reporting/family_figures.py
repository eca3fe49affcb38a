"""Figures of the ``family`` study (:mod:`dropens.reporting.family`), drawn from its per-cell
summary (:func:`dropens.reporting.family.summary_stats`: ``<metric>_{mean,lo,hi}`` per arm and
cell): ``plane`` (ND at 4 members against accuracy and calibrated NLL), ``cost`` (accuracy, NLL,
ECE against parameters and training FLOPs per example) and ``scale_path`` (the Masksembles scales
as a path beside dropout MC, subnets, the ensemble and the plain network)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.lines import Line2D

from dropens.reporting.common import save_figure
from dropens.reporting.family_cells import ARMS, Cell, K


def _stat(summary: pd.DataFrame, arm: str, cell: str, metric: str) -> dict[str, float] | None:
    """``{"mean", "lo", "hi"}`` of one cell's metric (``None`` without a value)."""
    found = summary[(summary["arm"] == arm) & (summary["cell"] == cell)]
    if found.empty or not np.isfinite(found.iloc[0][f"{metric}_mean"]):
        return None
    r = found.iloc[0]
    return {"mean": r[f"{metric}_mean"], "lo": r[f"{metric}_lo"], "hi": r[f"{metric}_hi"]}


def _err(s: dict[str, float] | None) -> list[list[float]] | None:
    if s is None or not (np.isfinite(s["lo"]) and np.isfinite(s["hi"])):
        return None
    return [[s["mean"] - s["lo"]], [s["hi"] - s["mean"]]]


def _point(
    ax: plt.Axes,
    x: dict[str, float],
    y: dict[str, float],
    cell: Cell,
    filled: bool = True,
    x_value: float | None = None,
) -> None:
    """One cell at (x, y) with its 95% CIs as error bars in both directions."""
    ax.errorbar(
        x["mean"] if x_value is None else x_value,
        y["mean"],
        xerr=_err(x),
        yerr=_err(y),
        fmt=cell.marker,
        ms=11 if cell.marker == "*" else 7,
        color=cell.color,
        mfc=cell.color if filled else "white",
        mec=cell.color if cell.method != "masksembles" else "k",
        mew=1.2,
        ecolor=cell.color,
        elinewidth=1.1,
        capsize=3,
        zorder=3,
    )


def _handle(cell: Cell, filled: bool = True, label: str | None = None) -> Line2D:
    return Line2D(
        [],
        [],
        ls="none",
        marker=cell.marker,
        ms=11 if cell.marker == "*" else 7,
        color=cell.color,
        mfc=cell.color if filled else "white",
        mec=cell.color if cell.method != "masksembles" else "k",
        mew=1.2,
        label=label or cell.name,
    )


def _drawn_handles(drawn: list[Cell]) -> list[Line2D]:
    return [_handle(c) for c in dict.fromkeys(drawn)]


def _no_data(ax: plt.Axes, text: str = "no complete cell yet") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9)


def plane_figure(summary: pd.DataFrame, arms: list[str], cells: list[Cell], out_dir: Path) -> str:
    panels = (("acc", "test accuracy"), ("nll_ts", "test NLL after temperature scaling (nats)"))
    fig, axes = plt.subplots(2, len(arms), figsize=(5.4 * len(arms), 8.2), squeeze=False)
    drawn: list[Cell] = []
    for j, arm in enumerate(arms):
        for i, (metric, ylabel) in enumerate(panels):
            ax = axes[i, j]
            any_point = False
            for cell in cells:
                x, y = _stat(summary, arm, cell.key, "nd"), _stat(summary, arm, cell.key, metric)
                if x is None or y is None:
                    continue
                _point(ax, x, y, cell)
                drawn.append(cell)
                any_point = True
            if not any_point:
                _no_data(ax)
            ax.axvline(0, color="k", lw=0.6, ls=":")
            ax.set_xlabel(f"normalized disagreement ND at {K} members (0 = one network)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(ARMS.get(arm, arm), fontsize=10)
    fig.suptitle(
        f"The diversity-accuracy plane: each cell at K = {K} (mean and 95% CI over seeds in both "
        "directions); ND = disagreement / (1 - member accuracy), one-network cells at ND = 0",
        fontsize=9,
    )
    fig.legend(
        handles=_drawn_handles(drawn),
        loc="lower center",
        ncol=min(4, max(1, len(set(drawn)))),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 0.96))
    return save_figure(fig, out_dir, "plane")


def _lanes(
    xs: dict[str, float], width: float = 0.02, same: float = 0.005
) -> tuple[dict[str, float], list[float]]:
    """Each cell's x on a log axis, spread so that cells of the same cost (within ``same``, e.g.
    the one-network-cost methods) do not hide each other's error bars (``width`` octaves apart,
    in the order of :data:`CELLS`); and the shared costs of the groups of more than one cell."""
    out: dict[str, float] = {}
    groups: list[list[str]] = []
    for key, x in sorted(xs.items(), key=lambda kv: kv[1]):
        if groups and x <= xs[groups[-1][0]] * (1 + same):
            groups[-1].append(key)
        else:
            groups.append([key])
    order = {key: i for i, key in enumerate(xs)}
    shared = []
    for group in groups:
        group.sort(key=order.__getitem__)
        centre = float(np.exp(np.mean([np.log(xs[k]) for k in group])))
        if len(group) > 1:
            shared.append(centre)
        for lane, key in enumerate(group):
            out[key] = centre * 2.0 ** ((lane - (len(group) - 1) / 2) * width)
    return out, shared


def _si(value: float, _pos: object = None) -> str:
    """``12k``, ``1.5M``, ``3G``: a tick label of a count."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:g}{suffix}"
    return f"{value:g}"


def _log_x(ax: plt.Axes) -> None:
    """A log x axis with ticks at 1, 2, 3 and 5 per decade labelled ``20k``, ``1.5M`` (no minor
    ticks: the cells cover less than a decade or two)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(_si))
    ax.xaxis.set_minor_locator(ticker.NullLocator())


def cost_figure(summary: pd.DataFrame, arms: list[str], cells: list[Cell], out_dir: Path) -> str:
    rows = (("acc", "test accuracy"), ("nll", "test NLL (nats)"), ("ece", "test ECE (15 bins)"))
    axes_x = (("n_params", "parameters"), ("flops", "training FLOPs per example"))
    ncols = len(arms) * len(axes_x)
    fig, axes = plt.subplots(3, ncols, figsize=(4.2 * ncols, 9.6), squeeze=False)
    drawn: list[Cell] = []
    for j, (arm, (xkey, xlabel)) in enumerate((a, x) for a in arms for x in axes_x):
        xs = {}
        for cell in cells:
            s = _stat(summary, arm, cell.key, xkey)
            if s is not None and s["mean"] > 0:
                xs[cell.key] = s["mean"]
        lanes, shared = _lanes(xs)
        for i, (metric, ylabel) in enumerate(rows):
            ax = axes[i, j]
            for x in shared:  # the true cost of cells drawn side by side
                ax.axvline(x, color="0.8", lw=6, alpha=0.5, zorder=0)
            for cell in cells:
                if cell.key not in lanes:
                    continue
                # accuracy: temperature scaling keeps the top class, one marker; else raw
                # (hollow) and temperature-scaled (filled) side by side
                pairs = [(metric, True)] if metric == "acc" else [(metric, False)]
                if metric != "acc":
                    pairs.append((f"{metric}_ts", True))
                for k, (m, filled) in enumerate(pairs):
                    y = _stat(summary, arm, cell.key, m)
                    if y is None:
                        continue
                    x = lanes[cell.key] * (2.0 ** (0.008 * (k - (len(pairs) - 1) / 2)))
                    _point(ax, {"mean": x, "lo": np.nan, "hi": np.nan}, y, cell, filled)
                    drawn.append(cell)
            if not lanes:
                _no_data(ax, f"no {xlabel} recorded")
            if len(set(lanes.values())) == 1:  # one cost: a log axis needs a range around it
                x = next(iter(lanes.values()))
                ax.set_xlim(x / 1.5, x * 1.5)
            _log_x(ax)
            ax.set_xlabel(f"{xlabel} (log scale)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"{ARMS.get(arm, arm)}\nagainst {xlabel}", fontsize=9)
    handles = [
        *_drawn_handles(drawn),
        Line2D([], [], ls="none", marker="o", color="k", mfc="white", label="hollow: raw"),
        Line2D([], [], ls="none", marker="o", color="k", label="filled: temperature-scaled"),
        Line2D(
            [], [], color="0.8", lw=6, alpha=0.5, label="grey band: one cost, cells side by side"
        ),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(
        "Cost map: accuracy, NLL and ECE against parameters and training FLOPs per example (mean "
        "and 95% CI over seeds; cells of the same cost side by side on a grey band; NLL/ECE "
        "hollow = raw, filled = temperature-scaled)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    return save_figure(fig, out_dir, "cost")


def scale_path_figure(
    summary: pd.DataFrame, arms: list[str], cells: list[Cell], out_dir: Path
) -> str:
    fig, axes = plt.subplots(1, len(arms), figsize=(5.6 * len(arms), 5.0), squeeze=False)
    masks = [c for c in cells if c.method == "masksembles"]
    others = [c for c in cells if c.key in ("plain", "dropout_mc4", "subnets", "ensemble")]
    drawn: list[Cell] = []
    for ax, arm in zip(axes[0], arms):
        path = []
        for i, cell in enumerate(masks):
            x, y = _stat(summary, arm, cell.key, "nd"), _stat(summary, arm, cell.key, "nll_ts")
            if x is None or y is None:
                continue
            path.append((x["mean"], y["mean"]))
            _point(ax, x, y, cell)
            left = i % 2 == 0  # neighbouring scales on opposite sides: close points stay readable
            ax.annotate(
                f"S={cell.scale:g}",
                (x["mean"], y["mean"]),
                xytext=(-8, -4) if left else (8, 4),
                textcoords="offset points",
                ha="right" if left else "left",
                va="top" if left else "bottom",
                fontsize=8,
            )
            drawn.append(cell)
        if len(path) > 1:
            ax.plot(*zip(*path), color="#7052b8", lw=1.2, zorder=2)
        for cell in others:
            x, y = _stat(summary, arm, cell.key, "nd"), _stat(summary, arm, cell.key, "nll_ts")
            if x is None or y is None:
                continue
            _point(ax, x, y, cell)
            drawn.append(cell)
        if not drawn:
            _no_data(ax)
        ax.axvline(0, color="k", lw=0.6, ls=":")
        ax.set_xlabel(f"normalized disagreement ND at {K} members")
        ax.set_ylabel("test NLL after temperature scaling (nats)")
        ax.set_title(ARMS.get(arm, arm), fontsize=10)
        ax.grid(alpha=0.3)
    handles = _drawn_handles(drawn)
    handles.append(Line2D([], [], color="#7052b8", lw=1.2, label="masksembles path (S grows)"))
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(
        "The Masksembles path: scale S from overlapping masks (MC-dropout-like) to disjoint ones "
        "(ensemble-like), beside dropout MC, subnets, the ensemble and one plain network "
        "(mean and 95% CI over seeds in both directions)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.14, 1, 0.94))
    return save_figure(fig, out_dir, "scale_path")
