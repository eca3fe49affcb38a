"""Figures of the ``magnitude`` study: does dividing by keep preserve the signal?

- ``signal_ratio``: per p, eval/train ratio of the mean and the variance after dropout, for
  ``scale=inverted`` and ``scale=none`` (its deterministic pass multiplies by keep);
- ``weight_scaling``: test accuracy/NLL of the deterministic pass with eval multiplier 1
  (``ws_off``) and keep (``ws_on``) for both scales, vs p;
- ``variance_shift``: measured eval/train variance ratio vs the closed form (every dropout layer);
- ``batchnorm``: MLP with BatchNorm, dropout before BN (``hidden``) vs after the last BN (``head``):
  accuracy of the deterministic pass, with BN statistics recomputed with dropout off, and MC.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import ScalarFormatter

from dropens import keys
from dropens.reporting.common import (
    HANDLELENGTH,
    Section,
    ci_cell,
    ci_line_stats,
    ci_line_table,
    dodge,
    headline_t,
    save_figure,
    seed_stats,
    summarize_groups,
    write_table,
)
from dropens.reporting.magnitude_common import magnitude_rows

SCALE_COLORS = {"inverted": "#0173b2", "none": "#d55e00"}


def _sites(value: object) -> str:
    return str(value).strip("[]\"' ").replace('"', "")


def build(df: pd.DataFrame, out_dir: Path) -> Section:
    section = Section()
    df = df.copy()
    df["sites"] = df.get("cfg.model.dropout_sites", pd.Series(["hidden"] * len(df))).map(_sites)
    df["bn"] = (
        df.get("cfg.model.batchnorm", pd.Series([False] * len(df))).fillna(False).astype(bool)
    )
    drop = df[df["cfg.method.name"] == "dropout"]
    plain = df[df["cfg.method.name"] == "plain"]
    nobn = drop[~drop["bn"]]
    mags = magnitude_rows(drop)
    t = headline_t(df)
    mc = keys.mc_label(t)

    # ---------------------------------------------------------------- weight scaling (accuracy)
    metrics = [
        keys.test("clean", s, m)
        for s in ("ws_off", "ws_on", "deterministic", mc)
        for m in ("acc", "nll")
    ]
    summary = summarize_groups(nobn, ["cfg.dropout.scale", "cfg.dropout.p"], metrics)
    table = pd.DataFrame(
        {
            "scale": summary["cfg.dropout.scale"],
            "p": summary["cfg.dropout.p"],
            "seeds": summary["n"],
            **{
                f"{s} acc": [
                    ci_cell(r, keys.test("clean", s, "acc")) for _, r in summary.iterrows()
                ]
                for s in ("ws_off", "ws_on", mc)
            },
            **{
                f"{s} NLL": [
                    ci_cell(r, keys.test("clean", s, "nll")) for _, r in summary.iterrows()
                ]
                for s in ("ws_off", "ws_on")
            },
        }
    )
    section.tables.append(write_table(table, out_dir, "weight_scaling"))
    for _, r in summary.iterrows():
        right, wrong = (
            ("ws_off", "ws_on") if r["cfg.dropout.scale"] == "inverted" else ("ws_on", "ws_off")
        )
        section.results.append(
            f"scale={r['cfg.dropout.scale']}, p={r['cfg.dropout.p']}: accuracy with the matching eval multiplier "
            f"({right}) {ci_cell(r, keys.test('clean', right, 'acc'))}, with the mismatched one ({wrong}) "
            f"{ci_cell(r, keys.test('clean', wrong, 'acc'))}; NLL {ci_cell(r, keys.test('clean', right, 'nll'))} vs "
            f"{ci_cell(r, keys.test('clean', wrong, 'nll'))}"
        )
    s_plain = (
        seed_stats(plain.loc[~plain.get("bn", False), keys.test("clean", "deterministic", "acc")])
        if len(plain)
        else None
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, m, label in zip(axes, ("acc", "nll"), ("test accuracy", "test NLL (nats, log scale)")):
        lane = 0
        for scale, color in SCALE_COLORS.items():
            sub = summary[summary["cfg.dropout.scale"] == scale].sort_values("cfg.dropout.p")
            for ws, ls, marker in (("ws_off", "-", "o"), ("ws_on", "--", "s")):
                key = keys.test("clean", ws, m)
                ci_line_table(
                    ax,
                    dodge(sub["cfg.dropout.p"].to_numpy(), lane, 4, 0.012),
                    sub,
                    key,
                    color=color,
                    ls=ls,
                    marker=marker,
                    label=f"scale={scale}, eval x{'1' if ws == 'ws_off' else ' keep'}",
                )
                lane += 1
        if m == "acc" and s_plain and s_plain["n"]:
            ax.axhline(s_plain["mean"], color="#7f7f7f", ls=":", label="plain (no dropout)")
        ax.set_xlabel("drop probability p (lines shifted apart)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if m == "nll":
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(ScalarFormatter())
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False,
        handlelength=HANDLELENGTH,
    )  # fmt: skip
    fig.suptitle(
        "Deterministic pass with eval multiplier 1 vs keep (MNIST-1D MLP; mean, 95% CI over seeds)"
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    section.figures.append(save_figure(fig, out_dir, "weight_scaling"))

    if not mags.empty:
        section.figures.append(
            _signal_ratio(mags[~mags["batchnorm"].fillna(False).astype(bool)], out_dir, section)
        )
        section.figures.append(_variance_shift(mags, out_dir, section))
    bn = df[df["bn"]]
    if len(bn):
        section.figures.append(_batchnorm(bn, t, out_dir, section))
    return section


def _signal_ratio(mags: pd.DataFrame, out_dir: Path, section: Section) -> str:
    rows = mags[(mags["kind"] == "dropout") & (mags["where"] == "output")]
    layers = list(dict.fromkeys(rows["layer"]))
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    lanes = len(SCALE_COLORS) * max(len(layers), 1)
    for ax, col, label in zip(axes, ("mean_ratio", "var_ratio"), ("mean", "variance")):
        lane = 0
        for scale, color in SCALE_COLORS.items():
            for li, layer in enumerate(layers):
                per_run = rows[(rows["scale"] == scale) & (rows["layer"] == layer)]
                ps = sorted(per_run["p"].unique())
                s = [seed_stats(per_run.loc[per_run["p"] == p, col]) for p in ps]
                ci_line_stats(
                    ax,
                    dodge(ps, lane, lanes, 0.012),
                    s,
                    color=color,
                    ls=styles[li % 4],
                    marker="os^D"[li % 4],
                    label=f"scale={scale}, dropout layer {li + 1} ({layer})",
                )
                lane += 1
                if col == "mean_ratio":
                    section.results.append(
                        f"mean activation after dropout layer {li + 1}, eval/train, scale={scale}: "
                        + "; ".join(
                            f"p={p}: {x['mean']:.3f} [{x['ci_low']:.3f}, {x['ci_high']:.3f}]"
                            for p, x in zip(ps, s)
                        )
                    )
        if col == "var_ratio":
            for li, layer in enumerate(layers):
                pred = rows[rows["layer"] == layer].groupby("p")["var_ratio_predicted"].mean()
                ax.plot(
                    pred.index,
                    pred.to_numpy(),
                    "k",
                    ls=styles[li % 4],
                    marker="x",
                    lw=0.8,
                    label=f"closed form, layer {li + 1} (Li et al. 2019)",
                )
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xlabel("drop probability p (lines shifted apart)")
        ax.set_ylabel(f"{label} after dropout: eval / train")
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False,
        handlelength=HANDLELENGTH,
    )  # fmt: skip
    fig.suptitle(
        "Signal after each dropout layer, deterministic vs training pass (MLP without BN; 95% CI over seeds)"
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return save_figure(fig, out_dir, "signal_ratio")


def _variance_shift(mags: pd.DataFrame, out_dir: Path, section: Section) -> str:
    rows = mags[(mags["kind"] == "dropout") & (mags["where"] == "output")].dropna(
        subset=["var_ratio", "var_ratio_predicted"]
    )
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    rows = rows.assign(
        first=rows.groupby(["seed", "p", "scale", "batchnorm", "sites"], dropna=False)[
            "layer"
        ].transform(lambda c: c == c.iloc[0])
    )
    for first, marker, where in (
        (True, "o", "first dropout layer"),
        (False, "^", "later dropout layers"),
    ):
        for scale, color in SCALE_COLORS.items():
            sub = rows[(rows["scale"] == scale) & (rows["first"] == first)]
            ax.scatter(
                sub["var_ratio_predicted"],
                sub["var_ratio"],
                s=16,
                color=color,
                alpha=0.7,
                marker=marker,
                label=f"scale={scale}, {where}",
            )
    for first, where in ((True, "first"), (False, "later")):
        sub = rows[rows["first"] == first]
        if len(sub):
            rel = (
                (sub["var_ratio"] - sub["var_ratio_predicted"]) / sub["var_ratio_predicted"]
            ).abs()
            section.results.append(
                f"variance shift at the {where} dropout layer(s): measured vs closed form over {len(sub)} (layer, run) "
                f"pairs, median relative difference {rel.median():.3f}, max {rel.max():.3f}"
            )
    lim = [
        min(rows["var_ratio"].min(), rows["var_ratio_predicted"].min()) * 0.95,
        max(rows["var_ratio"].max(), rows["var_ratio_predicted"].max()) * 1.05,
    ]
    ax.plot(lim, lim, "k--", lw=1, label="measured = predicted")
    ax.set_xlabel("predicted Var_eval / Var_train")
    ax.set_ylabel("measured Var_eval / Var_train")
    ax.set_title(
        "Variance shift at every dropout layer\n(one point per layer and run, with and without BN)",
        fontsize=10,
    )
    ax.legend(fontsize=7, handlelength=HANDLELENGTH)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_dir, "variance_shift")


def _batchnorm(bn: pd.DataFrame, t: int, out_dir: Path, section: Section) -> str:
    drop = bn[bn["cfg.method.name"] == "dropout"]
    mc = keys.mc_label(t)
    evaluations = ("deterministic", "bn_recomputed", mc)
    metrics = [keys.test("clean", s, "acc") for s in evaluations]
    summary = summarize_groups(drop, ["sites", "cfg.dropout.p"], metrics)
    plain = seed_stats(
        bn.loc[bn["cfg.method.name"] == "plain", keys.test("clean", "deterministic", "acc")]
    )
    table = pd.DataFrame(
        {
            "dropout": summary["sites"].map(
                {"hidden": "before BN (hidden)", "head": "after last BN (head)"}
            ),
            "p": summary["cfg.dropout.p"],
            "seeds": summary["n"],
            **{
                s: [ci_cell(r, keys.test("clean", s, "acc")) for _, r in summary.iterrows()]
                for s in evaluations
            },
        }
    )
    section.tables.append(write_table(table, out_dir, "batchnorm"))
    for _, r in summary.iterrows():
        section.results.append(
            f"BatchNorm MLP, dropout {'before BN' if r['sites'] == 'hidden' else 'after the last BN'}, p={r['cfg.dropout.p']}: "
            f"accuracy deterministic {ci_cell(r, keys.test('clean', 'deterministic', 'acc'))}, BN statistics "
            f"recomputed with dropout off {ci_cell(r, keys.test('clean', 'bn_recomputed', 'acc'))}, "
            f"MC T={t} {ci_cell(r, keys.test('clean', mc, 'acc'))}"
        )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    for sites, ax in zip(("hidden", "head"), axes):
        sub = summary[summary["sites"] == sites].sort_values("cfg.dropout.p")
        for lane, (s, color, marker, label) in enumerate(
            (
                ("deterministic", "#0173b2", "o", "deterministic"),
                ("bn_recomputed", "#029e73", "s", "BN stats recomputed, dropout off"),
                (mc, "#de8f05", "^", f"MC T={t}"),
            )
        ):
            key = keys.test("clean", s, "acc")
            ci_line_table(
                ax,
                dodge(sub["cfg.dropout.p"].to_numpy(), lane, 3, 0.012),
                sub,
                key,
                color=color,
                marker=marker,
                label=label,
            )
        if plain["n"]:
            ax.axhline(plain["mean"], color="#7f7f7f", ls=":", label="plain BN MLP")
        ax.set_title(
            "dropout before BatchNorm (sites=hidden)"
            if sites == "hidden"
            else "dropout after the last BatchNorm (sites=head)",
            fontsize=10,
        )
        ax.set_xlabel("drop probability p (lines shifted apart)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False,
        handlelength=HANDLELENGTH,
    )  # fmt: skip
    fig.suptitle("Dropout and BatchNorm (MNIST-1D MLP with BN; mean, 95% CI over seeds)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, out_dir, "batchnorm")
