"""Figures of the ``ensemble_view`` study: does dropout train an ensemble of subnetworks?

One panel per (data, model):

- ``k_spectrum``: K fixed-mask subnetworks (``subnets``, K = 1..32), their average and their mean
  single member, against dropout (K -> infinity: MC at the headline T and one random mask), plain,
  independent networks and the dropout ensemble objective (references: horizontal mean lines, their
  95% CIs as error bars right of the largest K);
- ``decomposition``: dropout's improvement over plain = (the dropout network's deterministic,
  weight-scaled pass - plain) + (MC average at the headline T - that deterministic pass), with one
  random subnetwork - plain as a reference outside the sum (a noisy evaluation of the same
  weights, not a separate effect); per-seed paired differences, mean and 95% CI (table
  ``decomposition``);
- ``members_curve``: accuracy / NLL vs number of members averaged: MC samples of one dropout
  network, K trained fixed subnetworks, the first m of K independent networks;
- ``diversity_plane``: disagreement of a member with the average normalized by the member error,
  ``disagreement / (1 - member_acc)``, against member accuracy (Fort et al. 2019) at matched
  member counts C: MC dropout with T = C masks against C trained members (``subnets`` K = C, the
  first C of the independent networks);
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
from dropens.metrics import stats
from dropens.reporting.common import (
    HANDLELENGTH,
    NO_PAIRS,
    PALETTE,
    Section,
    ci_cell,
    ci_line_stats,
    ci_line_table,
    ci_yerr,
    dodge,
    dot_ci,
    fmt_ci,
    fmt_paired,
    headline_t,
    mc_sizes,
    paired_by_seed,
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
    widths = main.get("cfg.model.widths", pd.Series(None, index=main.index, dtype=object))
    main = main[~(widths.astype(str) == "[12]")]
    panels = _panels(main)
    t = headline_t(df)
    section.figures.append(_k_spectrum(main, panels, t, out_dir, section))
    section.figures.append(_decomposition(main, panels, t, out_dir, section))
    section.figures.append(_members_curve(main, panels, out_dir))
    section.figures.append(_diversity_plane(main, panels, out_dir, section))
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


# where the references of the K-spectrum (dropout, plain, independent nets) show their 95% CI:
# one error bar each, right of the largest K (their means are horizontal lines across the panel)
REF_X = 64.0


def _k_spectrum(df: pd.DataFrame, panels: list, t: int, out_dir: Path, section: Section) -> str:
    mc = keys.mc_label(t)
    fig, axes = plt.subplots(2, len(panels), figsize=(4.8 * len(panels), 7.4), squeeze=False)
    references = (
        ("dropout", mc, f"dropout, MC T={t}", "-", "o", PALETTE["dropout"]),
        ("dropout", ONE_MASK, "dropout, one random mask", "--", "v", PALETTE["dropout"]),
        ("plain", "deterministic", "plain", ":", "s", PALETTE["plain"]),
        ("ensemble", "members", "4 independent nets", "-.", "D", PALETTE["ensemble"]),
        (
            "dropout_objective",
            mc,
            f"dropout, ensemble objective, T={t}",
            (0, (5, 1.5, 1, 1.5, 1, 1.5)),
            "P",
            PALETTE["dropout (ensemble objective)"],
        ),
    )
    for j, (data, model) in enumerate(panels):
        sub = _sel(df, data, model, "subnets")
        ks = np.array(sorted(sub["cfg.method.k"].dropna().unique()), dtype=int)
        for i, m in enumerate(("acc", "nll")):
            ax = axes[i, j]
            if len(ks):
                g = summarize_groups(
                    sub,
                    ["cfg.method.k"],
                    [_clean("members", m), _clean("members", f"member_{m}")],
                ).sort_values("cfg.method.k")
                for lane, (key, ls, marker, label) in enumerate(
                    (
                        (_clean("members", m), "-", "o", "K subnetworks, average"),
                        (
                            _clean("members", f"member_{m}"),
                            "--",
                            "^",
                            "K subnetworks, one member (mean)",
                        ),
                    )
                ):
                    ci_line_table(
                        ax,
                        dodge(ks, lane, 2, 0.2, log=True),
                        g,
                        key,
                        color=PALETTE["subnets"],
                        ls=ls,
                        marker=marker,
                        label=label,
                    )
            for lane, (kind, strategy, label, ls, marker, color) in enumerate(references):
                vals = _sel(df, data, model, kind)
                if not (len(vals) and _clean(strategy, m) in vals):
                    continue
                s = seed_stats(vals[_clean(strategy, m)])
                ax.axhline(s["mean"], color=color, ls=ls, lw=1.2, label=label)
                ax.errorbar(
                    dodge(REF_X, lane, len(references), 0.16, log=True),
                    s["mean"],
                    yerr=ci_yerr(s),
                    fmt=marker,
                    ms=4,
                    color=color,
                    capsize=3,
                )
            ax.set_xscale("log", base=2)
            ticks = [*ks, REF_X] if len(ks) else [REF_X]
            ax.set_xticks(ticks, [*map(str, ks), "ref."] if len(ks) else ["ref."])
            ax.set_xlim(0.7, REF_X * 1.6)
            if not len(ks):
                ax.text(
                    0.5,
                    0.1,
                    "subnets: no complete runs yet",
                    ha="center",
                    transform=ax.transAxes,
                    fontsize=8,
                )
            ax.set_xlabel("K (number of fixed subnetworks trained)")
            ax.set_ylabel("test accuracy" if m == "acc" else "test NLL (nats)")
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
    handles, labels = _unique_legend(axes)
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=4,
        fontsize=8,
        frameon=False,
        handlelength=HANDLELENGTH,
    )
    fig.suptitle(
        "The K-spectrum: K fixed subnetworks vs dropout (K -> infinity); mean and 95% CI over seeds\n"
        "(horizontal lines: reference means; their 95% CIs as error bars at 'ref.')",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save_figure(fig, out_dir, "k_spectrum")


def _unique_legend(axes: np.ndarray) -> tuple[list, list[str]]:
    """The legend entries of every panel, each label once (panels may lack some methods)."""
    found: dict[str, object] = {}
    for ax in np.ravel(axes):
        for h, n in zip(*ax.get_legend_handles_labels()):
            found.setdefault(n, h)
    return list(found.values()), list(found)


def _cell(sub: pd.DataFrame, key: str) -> str:
    if key not in sub or not len(sub):
        return "-"
    s = seed_stats(sub[key])
    return fmt_ci(s["mean"], s["ci_low"], s["ci_high"])


def _paired(a: pd.DataFrame, b: pd.DataFrame, key_a: str, key_b: str) -> np.ndarray:
    """Per-seed ``a[key_a] - b[key_b]`` over the seeds both have."""
    if key_a not in a or key_b not in b:
        return np.array([], dtype=float)
    x = a.set_index("cfg.seed")[key_a]
    y = b.set_index("cfg.seed")[key_b]
    common = x.index.intersection(y.index)
    return (x.loc[common] - y.loc[common]).to_numpy(dtype=float)


ONE_SUBNETWORK = "one random subnetwork (a noisy evaluation of the same weights)"


def decomposition_parts(
    drop: pd.DataFrame, plain: pd.DataFrame, t: int, m: str
) -> dict[str, np.ndarray]:
    """Per-seed paired differences of metric ``m`` (``acc`` or ``nll``) of one (data, model):
    dropout's gain over plain = (the dropout network's deterministic, weight-scaled pass - plain)
    + (MC at T - that deterministic pass), their sum (MC at T - plain), and, as a reference outside
    the sum, one random subnetwork (the mean metric of single masks, ``mc<T>/member_<m>``) - plain.
    """
    mc, det = keys.mc_label(t), "deterministic"
    return {
        "deterministic (weight-scaled) pass of the dropout net - plain": _paired(
            drop, plain, _clean(det, m), _clean(det, m)
        ),
        f"+ MC averaging: MC T={t} - deterministic pass": _paired(
            drop, drop, _clean(mc, m), _clean(det, m)
        ),
        f"total: MC T={t} - plain": _paired(drop, plain, _clean(mc, m), _clean(det, m)),
        f"reference: {ONE_SUBNETWORK} - plain": _paired(
            drop, plain, _clean(mc, f"member_{m}"), _clean(det, m)
        ),
    }


# bar offsets within one architecture: the three terms of the sum, a gap, the reference
DECOMPOSITION_X = (-0.33, -0.13, 0.07, 0.33)
DECOMPOSITION_STYLE = (  # (colour, hatch)
    ("#0173b2", None),
    ("#029e73", None),
    ("#555555", None),
    ("#dddddd", "//"),
)


def _decomposition(df: pd.DataFrame, panels: list, t: int, out_dir: Path, section: Section) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    width = 0.18
    rows = []
    for ax, m, label in zip(
        axes,
        ("acc", "nll"),
        ("change in test accuracy vs plain", "change in test NLL vs plain (nats)"),
    ):
        what = "accuracy" if m == "acc" else "NLL"
        for j, (data, model) in enumerate(panels):
            drop, plain = _sel(df, data, model, "dropout"), _sel(df, data, model, "plain")
            if not (len(drop) and len(plain)):
                continue
            for i, (name, diffs) in enumerate(decomposition_parts(drop, plain, t, m).items()):
                d = (
                    stats.paired_difference(diffs, np.zeros_like(diffs))
                    if len(diffs)
                    else dict(NO_PAIRS)
                )
                s = {"mean": d["mean_diff"], "ci_low": d["ci_low"], "ci_high": d["ci_high"]}
                color, hatch = DECOMPOSITION_STYLE[i]
                ax.bar(
                    j + DECOMPOSITION_X[i],
                    s["mean"] if len(diffs) else 0.0,
                    width,
                    yerr=ci_yerr(s) if len(diffs) else None,
                    capsize=3,
                    edgecolor="k",
                    lw=0.4,
                    color=color,
                    hatch=hatch,
                    label=name if j == 0 else None,
                )
                ax.scatter(
                    np.full(len(diffs), j + DECOMPOSITION_X[i]), diffs, color="k", s=6, zorder=3
                )
                cell = fmt_paired(d, 4)
                section.results.append(
                    f"{_title(df, data, model)}: {name} ({what}): {cell} "
                    f"({int(d['n'])} paired seeds)"
                )
                rows.append(
                    {
                        "architecture": _title(df, data, model),
                        "metric": what,
                        "term": name,
                        "pairs": int(d["n"]),
                        "difference [95% CI], paired t": cell,
                    }
                )
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(panels)), [_title(df, *p) for p in panels], fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(
        "Dropout's gain over plain = deterministic (weight-scaled) pass + MC averaging, with one "
        "random subnetwork\nas a reference outside the sum (paired by seed: bars mean, 95% CI; "
        "dots seeds)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.11, 1, 1))
    columns = ["architecture", "metric", "term", "pairs", "difference [95% CI], paired t"]
    section.tables.append(
        write_table(pd.DataFrame(rows, columns=columns), out_dir, "decomposition")
    )
    return save_figure(fig, out_dir, "decomposition")


def _members_curve(df: pd.DataFrame, panels: list, out_dir: Path) -> str:
    fig, axes = plt.subplots(2, len(panels), figsize=(4.8 * len(panels), 7.4), squeeze=False)
    sizes: set[int] = set()
    for j, (data, model) in enumerate(panels):
        for i, m in enumerate(("acc", "nll")):
            ax = axes[i, j]
            drop = _sel(df, data, model, "dropout")
            ts = mc_sizes(drop, m)
            if ts:
                s = [seed_stats(drop[_clean(keys.mc_label(t), m)]) for t in ts]
                ci_line_stats(
                    ax,
                    dodge(ts, 0, 3, 0.15, log=True),
                    s,
                    color=PALETTE["dropout"],
                    marker="o",
                    label="MC dropout, T masks",
                )
            sub = _sel(df, data, model, "subnets")
            ks = sorted(int(k) for k in sub["cfg.method.k"].dropna().unique())
            if ks:
                s = [
                    seed_stats(sub.loc[sub["cfg.method.k"] == k, _clean("members", m)]) for k in ks
                ]
                ci_line_stats(
                    ax,
                    dodge(ks, 1, 3, 0.15, log=True),
                    s,
                    color=PALETTE["subnets"],
                    marker="^",
                    ls="--",
                    label="K fixed subnetworks (trained with K)",
                )
            ens = _sel(df, data, model, "ensemble")
            ms = _prefix_sizes(ens, m)
            if ms:  # the first m members, then all K (the `members` row)
                cols = [_clean(keys.prefix_label(k), m) for k in ms] + [_clean("members", m)]
                ms = [*ms, int(ens["cfg.method.k"].iloc[0])]
                s = [seed_stats(ens[c]) for c in cols]
                ci_line_stats(
                    ax,
                    dodge(ms, 2, 3, 0.15, log=True),
                    s,
                    color=PALETTE["ensemble"],
                    marker="s",
                    ls="-.",
                    label="first m of 4 independent nets",
                )
            sizes.update([*ts, *ks, *ms])
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
            ax.set_xlabel("members averaged (T, K or m)")
            ax.set_ylabel("test accuracy" if m == "acc" else "test NLL (nats)")
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(_title(df, data, model))
    ticks = sorted(sizes) or [1, 2, 4, 8, 16, 32, 64]
    for ax in axes.ravel():
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
    handles, labels = _unique_legend(axes)
    fig.legend(
        handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False,
        handlelength=HANDLELENGTH,
    )  # fmt: skip
    fig.suptitle(
        "Accuracy and NLL vs number of members averaged (mean and 95% CI over seeds; "
        "x shifted per method)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return save_figure(fig, out_dir, "members_curve")


MATCHED_T = 4  # the count of the diversity results line: MC T = 4 vs the K = 4 explicit ensemble


def normalized_disagreement(rows: pd.DataFrame, label: str) -> pd.Series:
    """Per run: disagreement of a member with the average / the member error
    (``disagreement / (1 - member_acc)``, Fort et al. 2019): diversity per unit of error, so that
    weaker members do not look diverse only because they err more."""
    if _clean(label, "disagreement") not in rows or _clean(label, "member_acc") not in rows:
        return pd.Series(np.nan, index=rows.index)
    error = 1.0 - rows[_clean(label, "member_acc")].astype(float)
    return rows[_clean(label, "disagreement")].astype(float) / error.where(error > 0)


def matched_points(df: pd.DataFrame, data: str, model: str) -> list[tuple]:
    """The (method, members, runs, label) of one (data, model) at matched member counts: every
    count C >= 2 that MC dropout (``mc<C>``) and a trained set of members share (K subnetworks, the
    explicit ensemble's first m or all K members); at each such C the MC samples of dropout (and of
    the ensemble objective) and the members of every explicit method."""
    drop = _sel(df, data, model, "dropout")
    explicit: list[tuple] = []
    sub = _sel(df, data, model, "subnets")
    for k in sorted(int(k) for k in sub["cfg.method.k"].dropna().unique()):
        if k > 1:
            explicit.append(("subnets", k, sub[sub["cfg.method.k"] == k], "members"))
    ens = _sel(df, data, model, "ensemble")
    if len(ens):
        k = int(ens["cfg.method.k"].iloc[0])
        for m in _prefix_sizes(ens, "disagreement"):
            if 1 < m < k:
                explicit.append(("ensemble", m, ens, keys.prefix_label(m)))
        explicit.append(("ensemble", k, ens, "members"))
    mc = set(mc_sizes(drop, "disagreement"))
    counts = sorted({c for _, c, _, _ in explicit} & mc)
    points = [("dropout", c, drop, keys.mc_label(c)) for c in counts]
    obj = _sel(df, data, model, "dropout_objective")
    points += [
        ("dropout_objective", c, obj, keys.mc_label(c))
        for c in counts
        if len(obj) and _clean(keys.mc_label(c), "disagreement") in obj
    ]
    return points + [p for p in explicit if p[1] in counts]


DIVERSITY_STYLE = {  # method: (legend name, colour, marker, line style)
    "dropout": ("MC dropout, T = C masks", PALETTE["dropout"], "o", "-"),
    "dropout_objective": (
        "dropout, ensemble objective, T = C",
        PALETTE["dropout (ensemble objective)"],
        "D",
        ":",
    ),
    "subnets": ("K = C fixed subnetworks", PALETTE["subnets"], "^", "--"),
    "ensemble": ("C independent nets (first C of 4)", PALETTE["ensemble"], "s", "-."),
}


def _diversity_plane(df: pd.DataFrame, panels: list, out_dir: Path, section: Section) -> str:
    fig, axes = plt.subplots(1, len(panels), figsize=(4.9 * len(panels), 4.6), squeeze=False)
    for ax, (data, model) in zip(axes[0], panels):
        points = matched_points(df, data, model)
        for method, (name, color, marker, ls) in DIVERSITY_STYLE.items():
            mine = [p for p in points if p[0] == method]
            xs, ys = [], []
            for _, count, rows, label in mine:
                x = seed_stats(rows[_clean(label, "member_acc")])
                y = seed_stats(normalized_disagreement(rows, label))
                ax.errorbar(
                    x["mean"], y["mean"], xerr=ci_yerr(x), yerr=ci_yerr(y), fmt=marker,
                    color=color, capsize=2, ms=5, elinewidth=0.8, alpha=0.8,
                )  # fmt: skip
                ax.annotate(
                    str(count), (x["mean"], y["mean"]), fontsize=7, color=color,
                    xytext=(4, 3), textcoords="offset points",
                )  # fmt: skip
                xs.append(x["mean"])
                ys.append(y["mean"])
            if mine:  # one line per method through its counts (the legend entry)
                ax.plot(xs, ys, color=color, ls=ls, marker=marker, ms=5, lw=1, label=name)
        if not points:
            ax.text(
                0.5,
                0.5,
                "no matched member counts\nin the records yet",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        ax.set_xlabel("member accuracy")
        ax.set_ylabel("disagreement / (1 - member accuracy)")
        ax.set_title(_title(df, data, model))
        ax.grid(alpha=0.3)
        section.results.append(_matched_line(df, data, model))
    handles, labels = _unique_legend(axes)
    fig.legend(
        handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False,
        handlelength=HANDLELENGTH,
    )  # fmt: skip
    fig.suptitle(
        "Diversity per unit of error at matched member counts C (numbers at the points; "
        "Fort et al. 2019):\ndisagreement of a member with the average / member error, "
        "mean and 95% CI over seeds",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save_figure(fig, out_dir, "diversity_plane")


def _matched_line(df: pd.DataFrame, data: str, model: str) -> str:
    """The results line of the normalized disagreement at T = K = :data:`MATCHED_T`."""
    c = MATCHED_T
    label = keys.mc_label(c)
    cells, runs = [], {}
    for method, name, rows, strategy in (
        ("dropout", f"dropout MC T={c}", _sel(df, data, model, "dropout"), label),
        (
            "dropout_objective",
            f"dropout ensemble objective T={c}",
            _sel(df, data, model, "dropout_objective"),
            label,
        ),
        ("ensemble", f"ensemble K={c}", _ensemble_of(df, data, model, c), "members"),
        ("subnets", f"subnets K={c}", _subnets_of(df, data, model, c), "members"),
    ):
        values = normalized_disagreement(rows, strategy)
        if not values.notna().any():
            continue
        s = seed_stats(values)
        runs[method] = rows.assign(_nd=values)
        cells.append(f"{name} {fmt_ci(s['mean'], s['ci_low'], s['ci_high'])}")
    head = (
        f"{_title(df, data, model)}: disagreement / (1 - member accuracy) at T = K = {c} "
        f"(matched member counts)"
    )
    if "dropout" not in runs or "ensemble" not in runs:
        missing = "dropout MC T=4" if "dropout" not in runs else "an ensemble of K=4"
        return f"{head}: not in the records ({missing} missing)" + (
            f"; {'; '.join(cells)}" if cells else ""
        )
    d = paired_by_seed(runs["ensemble"], runs["dropout"], "_nd")
    return f"{head}: {'; '.join(cells)} (ensemble - dropout, paired by seed: {fmt_paired(d)})"


def _ensemble_of(df: pd.DataFrame, data: str, model: str, k: int) -> pd.DataFrame:
    ens = _sel(df, data, model, "ensemble")
    return ens[ens["cfg.method.k"] == k]


def _subnets_of(df: pd.DataFrame, data: str, model: str, k: int) -> pd.DataFrame:
    sub = _sel(df, data, model, "subnets")
    return sub[sub["cfg.method.k"] == k]


def _exhaustive(exh: pd.DataFrame, t: int, out_dir: Path, section: Section) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.0))
    points = [
        ("deterministic", "weight scaling"),
        ("exhaustive_geometric", "all masks, geometric mean"),
        ("exhaustive_mean", "all masks, arithmetic mean"),
        (keys.mc_label(t), f"MC T={t}"),
        (ONE_MASK, "one random mask"),
    ]
    colors = ["#0173b2", "#029e73", "#de8f05", "#cc78bc", "#999999"]
    for ax, m, label in zip(axes, ("acc", "nll"), ("test accuracy", "test NLL (nats)")):
        for i, (strategy, name) in enumerate(points):
            key = _clean(strategy, m)
            dot_ci(ax, i, exh.get(key, []), colors[i])
            if m == "nll":
                section.results.append(
                    f"tiny MLP (12 hidden units, p=0.5), {name}: accuracy "
                    f"{_cell(exh, _clean(strategy, 'acc'))}, NLL {_cell(exh, _clean(strategy, 'nll'))}"
                )
        ax.set_xticks(
            range(len(points)), [b[1] for b in points], rotation=20, ha="right", fontsize=8
        )
        ax.set_xlim(-0.6, len(points) - 0.4)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        "Exhaustive average over all 4096 subnetworks vs weight scaling and MC "
        "(mean and 95% CI over seeds; black dots: seeds)",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, out_dir, "exhaustive")
