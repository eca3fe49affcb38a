"""Figures of the ``ensemble_view`` study: does dropout train an ensemble of subnetworks?

One panel per (data, model):

- ``k_spectrum``: K fixed-mask subnetworks (``subnets``, K = 1..32), their average and their mean
  single member, against dropout (K -> infinity: MC at the headline T and one random mask), plain,
  independent networks and the dropout ensemble objective;
- ``decomposition``: dropout's improvement over plain = (one random subnetwork - plain), the part a
  regularizer explains, + (MC average - one random subnetwork), the averaging (ensemble) gain;
  per-seed paired differences, mean and 95% CI;
- ``members_curve``: accuracy / NLL vs number of members averaged: MC samples of one dropout
  network, K trained fixed subnetworks, the first m of K independent networks;
- ``diversity_plane``: disagreement between members vs member accuracy (Fort et al. 2019);
- ``exhaustive``: a tiny MLP averaged over all 2^12 masks, geometric vs arithmetic mean vs weight
  scaling vs MC (Warde-Farley et al. 2014).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dropens import keys
from dropens.reporting.common import (
    PALETTE,
    Section,
    band_stats,
    band_table,
    ci_cell,
    ci_yerr,
    fmt_ci,
    headline_t,
    hline_ci,
    mc_sizes,
    save_figure,
    seed_stats,
    summarize_groups,
    write_table,
)

PRETTY = {
    ("mnist1d", "mlp"): "MNIST-1D MLP",
    ("mnist1d", "cnn1d"): "MNIST-1D CNN",
    ("fashion_mnist", "cnn2d"): "Fashion-MNIST CNN",
}


def _kind(row: pd.Series) -> str:
    name = row["cfg.method.name"]
    if name == "dropout" and row.get("cfg.method.objective") == "ensemble":
        return "dropout_objective"
    if name == "dropout" and row.get("cfg.eval.exhaustive") is True:
        return "exhaustive"
    return str(name)


def _title(df: pd.DataFrame, data: str, model: str) -> str:
    """A panel's name, with the 2-D CNN's channel widths when all its runs share them.

    Why: the Fashion-MNIST arm runs a narrowed CNN on CPU (experiments/ensemble_view.yaml); the
    figures should say which network they show.
    """
    name = PRETTY.get((data, model), f"{data} {model}")
    if "cfg.model.channels" in df:
        rows = df[(df["cfg.data.name"] == data) & (df["cfg.model.name"] == model)]
        # lists are stored as JSON text (dropens.results); the 1-D CNN's width is a number
        widths = {c for c in rows["cfg.model.channels"] if isinstance(c, str) and c.startswith("[")}
        if len(widths) == 1:
            name += f" ({'/'.join(map(str, json.loads(widths.pop())))} ch.)"
    return name


def _clean(label: str, metric: str) -> str:
    """The clean test set's metric key of evaluation ``label``."""
    return keys.test("clean", label, metric)


ONE_MASK = keys.mc_label(1)  # MC with T = 1: one random subnetwork


def _prefix_size(label: str) -> int | None:
    """``m`` of a ``members@<m>`` label (:func:`dropens.keys.prefix_label`); ``None`` otherwise."""
    size = label.partition("@")[2]
    return int(size) if size.isdigit() and keys.prefix_label(int(size)) == label else None


def _prefix_sizes(df: pd.DataFrame, metric: str) -> list[int]:
    """The sorted ``m`` of the ``test/clean/members@<m>/<metric>`` columns with a value."""
    found = set()
    for c in df.columns:
        k = keys.parse(c)
        if k is None or (k.stage, k.set, k.metric) != ("test", "clean", metric):
            continue
        size = _prefix_size(k.label)
        if size is not None and df[c].notna().any():
            found.add(size)
    return sorted(found)


def _panels(df: pd.DataFrame) -> list[tuple[str, str]]:
    found = list(dict.fromkeys(zip(df["cfg.data.name"], df["cfg.model.name"])))
    return [k for k in PRETTY if k in found] + [k for k in found if k not in PRETTY]


def build(df: pd.DataFrame, out_dir: Path) -> Section:
    section = Section()
    df = df.copy()
    df["kind"] = [_kind(r) for _, r in df.iterrows()]
    main = df[df["kind"] != "exhaustive"]
    main = main[~(main.get("cfg.model.widths", pd.Series(dtype=object)).astype(str) == "[12]")]
    panels = _panels(main)
    t = headline_t(df)
    section.figures.append(_k_spectrum(main, panels, t, out_dir, section))
    section.figures.append(_decomposition(main, panels, t, out_dir, section))
    section.figures.append(_members_curve(main, panels, out_dir))
    section.figures.append(_diversity_plane(main, panels, t, out_dir))
    section.tables.append(_summary_table(main, t, out_dir))
    exh = df[df["kind"] == "exhaustive"]
    if len(exh) and _clean("exhaustive_geometric", "acc") in exh:
        section.figures.append(_exhaustive(exh, t, out_dir, section))
    return section


def _sel(df: pd.DataFrame, data: str, model: str, kind: str) -> pd.DataFrame:
    return df[
        (df["cfg.data.name"] == data) & (df["cfg.model.name"] == model) & (df["kind"] == kind)
    ]


def _summary_table(df: pd.DataFrame, t: int, out_dir: Path) -> str:
    rows = []
    for data, model in _panels(df):
        for kind, strategy in (
            ("plain", "deterministic"),
            ("dropout", "deterministic"),
            ("dropout", keys.mc_label(t)),
            ("dropout_objective", keys.mc_label(t)),
            ("ensemble", "members"),
        ):
            sub = _sel(df, data, model, kind)
            if len(sub):
                rows.append((data, model, kind, strategy, None, sub))
        sub = _sel(df, data, model, "subnets")
        for k in sorted(sub["cfg.method.k"].dropna().unique()):
            rows.append((data, model, "subnets", "members", int(k), sub[sub["cfg.method.k"] == k]))
    out = []
    for data, model, kind, strategy, k, sub in rows:
        cell = {
            "data": data,
            "model": model,
            "method": kind + (f" K={k}" if k else ""),
            "evaluation": strategy,
            "seeds": len(sub),
        }
        for m in ("acc", "nll", "ece"):
            s = seed_stats(sub[_clean(strategy, m)])
            cell[m] = fmt_ci(s["mean"], s["ci_low"], s["ci_high"], 3 if m == "acc" else 4)
        out.append(cell)
    return write_table(pd.DataFrame(out), out_dir, "summary")


def _k_spectrum(df: pd.DataFrame, panels: list, t: int, out_dir: Path, section: Section) -> str:
    mc = keys.mc_label(t)
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 7), squeeze=False)
    for j, (data, model) in enumerate(panels):
        sub = _sel(df, data, model, "subnets")
        ks = np.array(sorted(sub["cfg.method.k"].dropna().unique()), dtype=int)
        for i, m in enumerate(("acc", "nll")):
            ax = axes[i, j]
            if len(ks):
                g = summarize_groups(
                    sub,
                    ["cfg.method.k"],
                    [
                        _clean("members", m),
                        _clean(keys.member_label(0), m),
                        _clean("members", f"member_{m}"),
                    ],
                )
                g = g.sort_values("cfg.method.k")
                key = _clean("members", f"member_{m}")
                band_table(
                    ax,
                    ks,
                    g,
                    _clean("members", m),
                    color=PALETTE["subnets"],
                    label="K subnetworks, average",
                )
                band_table(
                    ax,
                    ks,
                    g,
                    key,
                    color=PALETTE["subnets"],
                    ls="--",
                    label="K subnetworks, one member (mean)",
                )
            for kind, strategy, label, ls, color in (
                ("dropout", mc, f"dropout, MC T={t}", "-", PALETTE["dropout"]),
                ("dropout", ONE_MASK, "dropout, one random mask", "--", PALETTE["dropout"]),
                ("plain", "deterministic", "plain", ":", PALETTE["plain"]),
                ("ensemble", "members", "4 independent nets", "-.", PALETTE["ensemble"]),
                (
                    "dropout_objective",
                    mc,
                    f"dropout, ensemble objective, T={t}",
                    "-",
                    PALETTE["dropout (ensemble objective)"],
                ),
            ):
                vals = _sel(df, data, model, kind)
                if len(vals) and _clean(strategy, m) in vals:
                    s = seed_stats(vals[_clean(strategy, m)])
                    hline_ci(ax, s["mean"], s["ci_low"], s["ci_high"], label, color, ls)
            ax.set_xscale("log", base=2)
            if len(ks):
                ax.set_xticks(ks, [str(k) for k in ks])
            else:
                ax.text(
                    0.5,
                    0.1,
                    "subnets: no complete runs yet",
                    ha="center",
                    transform=ax.transAxes,
                    fontsize=8,
                )
            ax.set_xlabel("K (number of fixed subnetworks trained)")
            ax.set_ylabel("test accuracy" if m == "acc" else "test NLL")
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(_title(df, data, model))
        if len(ks):
            g = summarize_groups(sub, ["cfg.method.k"], [_clean("members", "acc")]).sort_values(
                "cfg.method.k"
            )
            section.results.append(
                f"{_title(df, data, model)}: subnets accuracy by K: "
                + "; ".join(
                    f"K={int(r['cfg.method.k'])}: {ci_cell(r, _clean('members', 'acc'))}"
                    for _, r in g.iterrows()
                )
                + f"; dropout MC T={t}: "
                + _cell(_sel(df, data, model, "dropout"), _clean(mc, "acc"))
                + "; plain: "
                + _cell(_sel(df, data, model, "plain"), _clean("deterministic", "acc"))
            )
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        "The K-spectrum: K fixed subnetworks vs dropout (K -> infinity); mean and 95% CI over seeds"
    )
    fig.tight_layout()
    return save_figure(fig, out_dir, "k_spectrum")


def _cell(sub: pd.DataFrame, key: str) -> str:
    if key not in sub or not len(sub):
        return "-"
    s = seed_stats(sub[key])
    return fmt_ci(s["mean"], s["ci_low"], s["ci_high"])


def _paired(a: pd.DataFrame, b: pd.DataFrame, key_a: str, key_b: str) -> np.ndarray:
    """Per-seed ``a[key_a] - b[key_b]`` over the seeds both have."""
    x = a.set_index("cfg.seed")[key_a]
    y = b.set_index("cfg.seed")[key_b]
    common = x.index.intersection(y.index)
    return (x.loc[common] - y.loc[common]).to_numpy(dtype=float)


def _decomposition(df: pd.DataFrame, panels: list, t: int, out_dir: Path, section: Section) -> str:
    mc = keys.mc_label(t)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9))
    width = 0.25
    for ax, m, label in zip(
        axes, ("acc", "nll"), ("change in test accuracy vs plain", "change in test NLL vs plain")
    ):
        for j, (data, model) in enumerate(panels):
            drop, plain = _sel(df, data, model, "dropout"), _sel(df, data, model, "plain")
            if not (len(drop) and len(plain)):
                continue
            member = _clean(mc, f"member_{m}")  # mean metric of single random masks
            parts = {
                "one random subnetwork - plain": _paired(
                    drop, plain, member, _clean("deterministic", m)
                ),
                f"MC average (T={t}) - one subnetwork": _paired(drop, drop, _clean(mc, m), member),
                f"total: MC T={t} - plain": _paired(
                    drop, plain, _clean(mc, m), _clean("deterministic", m)
                ),
            }
            for i, (name, diffs) in enumerate(parts.items()):
                s = seed_stats(diffs)
                err = ci_yerr(s)
                ax.bar(
                    j + (i - 1) * width,
                    s["mean"],
                    width,
                    yerr=err,
                    capsize=3,
                    edgecolor="k",
                    lw=0.4,
                    color=["#de8f05", "#0173b2", "#555555"][i],
                    label=name if j == 0 else None,
                )
                section.results.append(
                    f"{_title(df, data, model)}: {name} ({'accuracy' if m == 'acc' else 'NLL'}): "
                    f"{fmt_ci(s['mean'], s['ci_low'], s['ci_high'], 4)} ({int(s['n'])} paired seeds)"
                )
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(panels)), [_title(df, *p) for p in panels], fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        "Dropout's gain over plain = regularization (one subnetwork) + averaging (paired by seed, 95% CI)"
    )
    fig.tight_layout()
    return save_figure(fig, out_dir, "decomposition")


def _members_curve(df: pd.DataFrame, panels: list, out_dir: Path) -> str:
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 7), squeeze=False)
    for j, (data, model) in enumerate(panels):
        for i, m in enumerate(("acc", "nll")):
            ax = axes[i, j]
            drop = _sel(df, data, model, "dropout")
            ts = mc_sizes(drop, m)
            if ts:
                s = [seed_stats(drop[_clean(keys.mc_label(t), m)]) for t in ts]
                band_stats(
                    ax,
                    np.array(ts),
                    s,
                    color=PALETTE["dropout"],
                    label="MC dropout, T masks",
                )
            sub = _sel(df, data, model, "subnets")
            ks = sorted(sub["cfg.method.k"].dropna().unique())
            if ks:
                s = [
                    seed_stats(sub.loc[sub["cfg.method.k"] == k, _clean("members", m)]) for k in ks
                ]
                band_stats(
                    ax,
                    np.array(ks),
                    s,
                    color=PALETTE["subnets"],
                    label="K fixed subnetworks (trained with K)",
                )
            ens = _sel(df, data, model, "ensemble")
            ms = _prefix_sizes(ens, m)
            if ms:  # the first m members, then all K (the `members` row)
                cols = [_clean(keys.prefix_label(k), m) for k in ms] + [_clean("members", m)]
                ms = [*ms, int(ens["cfg.method.k"].iloc[0])]
                s = [seed_stats(ens[c]) for c in cols]
                band_stats(
                    ax,
                    np.array(ms),
                    s,
                    color=PALETTE["ensemble"],
                    label="first m of 4 independent nets",
                )
            if not (ts or ks or ms):
                ax.text(
                    0.5,
                    0.5,
                    "no complete runs yet",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
            ax.set_xscale("log", base=2)
            ax.set_xticks([1, 2, 4, 8, 16, 32, 64], ["1", "2", "4", "8", "16", "32", "64"])
            ax.set_xlabel("members averaged (T, K or m)")
            ax.set_ylabel("test accuracy" if m == "acc" else "test NLL")
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(_title(df, data, model))
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Accuracy and NLL vs number of members averaged (mean and 95% CI over seeds)")
    fig.tight_layout()
    return save_figure(fig, out_dir, "members_curve")


def _diversity_plane(df: pd.DataFrame, panels: list, t: int, out_dir: Path) -> str:
    mc = keys.mc_label(t)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for ax, (data, model) in zip(axes[0], panels):
        points = [
            ("dropout", mc, None, f"MC dropout (T={t})", PALETTE["dropout"], "o"),
            (
                "dropout_objective",
                mc,
                None,
                "dropout, ensemble objective",
                PALETTE["dropout (ensemble objective)"],
                "D",
            ),
            ("ensemble", "members", None, "4 independent nets", PALETTE["ensemble"], "s"),
        ]
        sub = _sel(df, data, model, "subnets")
        for k in sorted(sub["cfg.method.k"].dropna().unique()):
            if k > 1:
                points.append(
                    ("subnets", "members", int(k), f"subnets K={int(k)}", PALETTE["subnets"], "^")
                )
        for kind, strategy, k, label, color, marker in points:
            rows = _sel(df, data, model, kind)
            if k is not None:
                rows = rows[rows["cfg.method.k"] == k]
            if not len(rows):
                continue
            x = seed_stats(rows[_clean(strategy, "disagreement")])
            y = seed_stats(rows[_clean(strategy, "member_acc")])
            xerr = ci_yerr(x)
            yerr = ci_yerr(y)
            ax.errorbar(
                x["mean"],
                y["mean"],
                xerr=xerr,
                yerr=yerr,
                fmt=marker,
                color=color,
                capsize=3,
                label=("subnets (K marked)" if kind == "subnets" else label)
                if kind != "subnets" or k == 2
                else None,
                ms=6,
            )
            if k is not None:
                ax.annotate(
                    f"K={k}",
                    (x["mean"], y["mean"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        if not ax.has_data():
            ax.text(
                0.5, 0.5, "no complete runs yet", ha="center", va="center", transform=ax.transAxes
            )
        ax.set_xlabel("disagreement of a member with the ensemble")
        ax.set_ylabel("member accuracy")
        ax.set_title(_title(df, data, model))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Diversity-accuracy plane (Fort et al. 2019): mean and 95% CI over seeds")
    fig.tight_layout()
    return save_figure(fig, out_dir, "diversity_plane")


def _exhaustive(exh: pd.DataFrame, t: int, out_dir: Path, section: Section) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    bars = [
        ("deterministic", "weight scaling"),
        ("exhaustive_geometric", "all masks, geometric mean"),
        ("exhaustive_mean", "all masks, arithmetic mean"),
        (keys.mc_label(t), f"MC T={t}"),
        (ONE_MASK, "one random mask"),
    ]
    for ax, m, label in zip(axes, ("acc", "nll"), ("test accuracy", "test NLL")):
        for i, (strategy, name) in enumerate(bars):
            s = (
                seed_stats(exh[_clean(strategy, m)])
                if _clean(strategy, m) in exh
                else seed_stats([])
            )
            err = ci_yerr(s)
            ax.bar(
                i,
                s["mean"],
                yerr=err,
                capsize=4,
                color=["#0173b2", "#029e73", "#de8f05", "#cc78bc", "#999999"][i],
                edgecolor="k",
                lw=0.4,
            )
            ax.scatter(
                np.full(len(exh), i),
                exh.get(_clean(strategy, m), pd.Series(dtype=float)),
                color="k",
                s=8,
                zorder=3,
            )
            if m == "nll":
                section.results.append(
                    f"tiny MLP (12 hidden units, p=0.5), {name}: accuracy "
                    f"{_cell(exh, _clean(strategy, 'acc'))}, NLL {_cell(exh, _clean(strategy, 'nll'))}"
                )
        ax.set_xticks(range(len(bars)), [b[1] for b in bars], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        ss = [seed_stats(exh[_clean(s, m)]) for s, _ in bars if _clean(s, m) in exh]
        # with one seed there is no interval (NaN): the limits then come from the means
        lo = np.nanmin([v for x in ss for v in (x["ci_low"], x["mean"])])
        hi = np.nanmax([v for x in ss for v in (x["ci_high"], x["mean"])])
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
    fig.suptitle(
        "Exhaustive average over all 4096 subnetworks vs weight scaling and MC (bars: mean, 95% CI; dots: seeds)",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, out_dir, "exhaustive")
