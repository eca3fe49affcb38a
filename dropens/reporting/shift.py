"""Figures and tables of the ``shift`` study: calibration under dataset shift and OOD detection
(Ovadia et al. 2019) for one backbone trained plainly, with dropout, as K fixed subnetworks and as
K independent networks.

The series compared (each with and without temperature scaling fitted on clean validation data):
``plain`` (its deterministic pass), ``dropout`` weight scaling (``deterministic``) and MC dropout
(``mc<T>``, T = ``eval.mc_samples``), ``subnets`` and ``ensemble`` (the average of their K members).

- ``shift_curves``: accuracy, NLL and ECE against severity (0 = clean), averaged over the
  corruptions (those with no cell below chance, :func:`curve_frame`), without (top) and with
  (bottom) temperature scaling, plus the fitted temperatures;
  mean and 95% t-interval over seeds as error bars (per seed, the mean over corruptions first);
- ``by_corruption`` / ``by_corruption_ts``: the same per corruption, without / with scaling;
- ``ood_auroc``: AUROC of clean Fashion-MNIST test images vs the OOD set (MNIST digits) by
  max-probability, predictive entropy and mutual information (mean, 95% CI; dots: seeds).

Below chance: a (series, corruption, severity) cell whose mean accuracy over seeds is at or below
chance (:data:`CHANCE` = 1 / 10 classes) is left out of every mean over shifted sets (the
``shift``/``sev5`` columns; the paired differences drop the cells either series lost; the curves
of ``shift_curves`` average only the corruptions without such a cell) and drawn with hollow
markers; a results line names them.

Tables: ``summary`` (clean, mean over every shifted set, severity 5; temperature), ``ood``, and
``paired`` (paired differences over seeds, 95% t-interval and paired t-test, for the comparisons
the finding quotes, among them MC vs weight scaling after temperature scaling on the clean set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dropens import keys
from dropens.data.shift import CORRUPTIONS, SEVERITIES, parse_set_name
from dropens.reporting.common import (
    HANDLELENGTH,
    PALETTE,
    Section,
    ci_cell,
    ci_line_stats,
    ci_yerr,
    dodge,
    dot_ci,
    fmt_paired,
    headline_t,
    paired_by_seed,
    save_figure,
    seed_stats,
    summarize_groups,
    write_paired_table,
    write_table,
)

N_CLASSES = 10  # Fashion-MNIST
CHANCE = 1.0 / N_CLASSES  # the accuracy of a uniform guess
METRICS = ("acc", "nll", "ece")
LABELS = {"acc": "accuracy", "nll": "NLL (nats)", "ece": "ECE (15 bins)"}
SCORES = {"maxprob": "max probability", "entropy": "predictive entropy", "mi": "mutual information"}


@dataclass(frozen=True)
class Series:
    """One curve: the runs of ``method`` evaluated with metric label ``label``."""

    key: str  # short id used in tables
    method: str
    label: str  # e.g. deterministic, mc16, members
    name: str  # legend text
    ls: str = "-"

    @property
    def color(self) -> str:
        return PALETTE.get(self.method, "k")


def series_of(df: pd.DataFrame) -> list[Series]:
    """The series present in ``df`` (MC with the runs' ``eval.mc_samples``, K from the configs)."""
    methods = set(df["cfg.method.name"])
    out = []
    if "plain" in methods:
        out.append(Series("plain", "plain", "deterministic", "plain"))
    if "dropout" in methods:
        t = headline_t(df[df["cfg.method.name"] == "dropout"])
        out.append(
            Series("dropout_ws", "dropout", "deterministic", "dropout, weight scaling", "--")
        )
        out.append(Series("dropout_mc", "dropout", keys.mc_label(t), f"dropout, MC T={t}"))
    for method in ("subnets", "ensemble"):
        if method in methods:
            k = int(df.loc[df["cfg.method.name"] == method, "cfg.method.k"].iloc[0])
            out.append(Series(method, method, "members", f"{method} K={k}, average"))
    return out


def corruptions_of(df: pd.DataFrame) -> list[str]:
    """Corruptions with at least one metric column, in :data:`CORRUPTIONS` order."""
    found = {
        p[0]
        for c in df.columns
        if (k := keys.parse(c)) is not None and k.stage == "test" and (p := parse_set_name(k.set))
    }
    return [c for c in CORRUPTIONS if c in found]


def _col(df: pd.DataFrame, key: str) -> pd.Series:
    return df[key].astype(float) if key in df else pd.Series(np.nan, index=df.index)


def long_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, series, scaled, corruption, severity): ``acc, nll, ece``.

    Severity 0 is the clean test set (corruption ``clean``); ``scaled`` picks ``<label>_ts``.
    """
    rows = []
    corruptions = corruptions_of(df)
    for s in series_of(df):
        runs = df[df["cfg.method.name"] == s.method]
        for scaled in (False, True):
            label = keys.ts_label(s.label) if scaled else s.label
            sets = [("clean", 0, "clean")] + [
                (c, sev, f"{c}_{sev}") for c in corruptions for sev in SEVERITIES
            ]
            for corruption, severity, set_name in sets:
                part = pd.DataFrame(
                    {
                        "series": s.key,
                        "scaled": scaled,
                        "seed": runs["cfg.seed"].astype(int).to_numpy(),
                        "corruption": corruption,
                        "severity": severity,
                        **{
                            m: _col(runs, keys.test(set_name, label, m)).to_numpy() for m in METRICS
                        },
                    }
                )
                rows.append(part)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


Cell = tuple[str, str, int]  # (series key, corruption, severity)


def cell_accuracy(long: pd.DataFrame) -> pd.Series:
    """Mean accuracy over seeds of every (series, corruption, severity) cell, unscaled (a
    temperature does not change the top class), clean (severity 0) included."""
    raw = long[~long["scaled"].astype(bool)]
    return raw.groupby(["series", "corruption", "severity"])["acc"].mean()


def below_chance(long: pd.DataFrame, chance: float = CHANCE) -> set[Cell]:
    """The shifted-set cells (severity > 0) whose mean accuracy over seeds is at or below chance:
    left out of every mean over shifted sets (:func:`per_run`, :func:`by_severity`)."""
    acc = cell_accuracy(long)
    return {
        (str(series), str(corruption), int(severity))
        for (series, corruption, severity), value in acc.items()
        if severity > 0 and np.isfinite(value) and value <= chance
    }


def _without(long: pd.DataFrame, excluded: set[Cell] | frozenset = frozenset()) -> pd.DataFrame:
    """``long`` without the rows of the ``excluded`` cells."""
    if not excluded or long.empty:
        return long
    cells = list(zip(long["series"], long["corruption"], long["severity"].astype(int)))
    return long[[c not in excluded for c in cells]]


def by_severity(long: pd.DataFrame, excluded: set[Cell] | frozenset = frozenset()) -> pd.DataFrame:
    """Per (series, scaled, seed, severity): the mean over corruptions (clean stays itself),
    without the ``excluded`` cells (:func:`below_chance`)."""
    return (
        _without(long, excluded)
        .groupby(["series", "scaled", "seed", "severity"], as_index=False)[list(METRICS)]
        .mean()
    )


def per_run(
    df: pd.DataFrame, long: pd.DataFrame, excluded: set[Cell] | frozenset = frozenset()
) -> pd.DataFrame:
    """Per (series, scaled, seed): clean, mean over every shifted set, mean at severity 5 (both
    without the ``excluded`` cells, :func:`below_chance`), the fitted temperature and the OOD
    AUROCs (one row per run and series)."""
    shifted = _without(long[long["severity"] > 0], excluded)
    by = ["series", "scaled", "seed"]
    out = long[long["severity"] == 0].set_index(by)[list(METRICS)].add_prefix("clean_")
    out = out.join(shifted.groupby(by)[list(METRICS)].mean().add_prefix("shift_"))
    top = shifted[shifted["severity"] == max(SEVERITIES)]
    out = out.join(top.groupby(by)[list(METRICS)].mean().add_prefix("sev5_")).reset_index()
    extra = []
    for s in series_of(df):
        runs = df[df["cfg.method.name"] == s.method]
        for scaled in (False, True):
            label = keys.ts_label(s.label) if scaled else s.label
            part = {
                "series": s.key,
                "scaled": scaled,
                "seed": runs["cfg.seed"].astype(int).to_numpy(),
                "temperature": _col(
                    runs, keys.test("val", keys.ts_label(s.label), "temperature")
                ).to_numpy()
                if scaled
                else np.nan,
            }
            for score in SCORES:
                part[f"auroc_{score}"] = _col(
                    runs, keys.test("ood", label, f"auroc_{score}")
                ).to_numpy()
            extra.append(pd.DataFrame(part))
    return out.merge(pd.concat(extra, ignore_index=True), on=by, how="left")


def build(df: pd.DataFrame, out_dir: Path) -> Section:
    section = Section()
    series = series_of(df)
    long = long_table(df)
    excluded = below_chance(long)
    runs = per_run(df, long, excluded)
    names = {s.key: s.name for s in series}
    cols = [f"{p}_{m}" for p in ("clean", "shift", "sev5") for m in METRICS]
    cols += ["temperature", *(f"auroc_{s}" for s in SCORES)]
    summary = summarize_groups(runs, ["series", "scaled"], cols)
    order = {s.key: i for i, s in enumerate(series)}
    summary = summary.sort_values(
        ["series", "scaled"], key=lambda c: c.map(order) if c.name == "series" else c
    )

    def evaluation(r: pd.Series) -> str:
        return names[r["series"]] + (", temperature-scaled" if r["scaled"] else "")

    table = pd.DataFrame(
        {
            "evaluation": [evaluation(r) for _, r in summary.iterrows()],
            "seeds": summary["n"].astype(int),
            **{
                f"{p} {m}": [ci_cell(r, f"{p}_{m}", 3) for _, r in summary.iterrows()]
                for p in ("clean", "shift", "sev5")
                for m in METRICS
            },
            "T": [ci_cell(r, "temperature", 2) for _, r in summary.iterrows()],
        }
    )
    section.tables.append(write_table(table, out_dir, "summary"))
    ood = pd.DataFrame(
        {
            "evaluation": [evaluation(r) for _, r in summary.iterrows()],
            **{
                f"AUROC {SCORES[s]}": [ci_cell(r, f"auroc_{s}", 3) for _, r in summary.iterrows()]
                for s in SCORES
            },
        }
    )
    section.tables.append(write_table(ood, out_dir, "ood"))
    paired = _paired(runs, names, long, excluded)
    if not paired.empty:
        write_paired_table(section, paired.drop(columns="headline"), out_dir)
    section.results.append(_chance_line(long, excluded, names))
    for key, name in names.items():
        section.results.append(_result_line(summary, key, name))
    for _, r in paired[paired["headline"]].iterrows():
        section.results.append(f"{r['comparison']}, {r['metric']}: {r['difference [95% CI], p']}")
    if "dropout_mc" in names and "dropout_ws" in names:
        section.results.append(_ts_line(paired, names))
    section.figures.append(_curves(long, runs, series, excluded, out_dir))
    for scaled in (False, True):
        fig = _by_corruption(long, series, scaled, out_dir)
        if fig:
            section.figures.append(fig)
    section.figures.append(_ood(runs, series, out_dir))
    return section


def _chance_line(long: pd.DataFrame, excluded: set[Cell], names: dict[str, str]) -> str:
    """Which (series, corruption, severity) cells fell to or below chance and were excluded."""
    n_sets = int(
        long.loc[long["severity"] > 0, ["corruption", "severity"]].drop_duplicates().shape[0]
    )
    head = (
        f"Below chance: chance = 1/{N_CLASSES} = {CHANCE:.2f} accuracy; a (method, corruption, "
        "severity) cell whose mean accuracy over seeds is at or below it is excluded from every "
        "mean over shifted sets (summary `shift`/`sev5` columns; a paired difference leaves out "
        "the cells either side lost; `shift_curves` averages only the corruptions without such "
        "a cell, the same at every severity) and drawn hollow in the per-corruption figures"
    )
    if not excluded:
        return f"{head}: no cell is, every mean uses all {n_sets} shifted sets."
    acc = cell_accuracy(long)
    parts = []
    for key, name in names.items():
        cells = sorted((c, s) for k, c, s in excluded if k == key)
        if cells:
            listed = ", ".join(
                f"{c.replace('_', ' ')} {s} ({acc[(key, c, s)]:.3f})" for c, s in cells
            )
            parts.append(f"{name}: {listed} ({n_sets - len(cells)} of {n_sets} sets kept)")
    return f"{head}: excluded {len(excluded)} cells (mean accuracy): " + "; ".join(parts) + "."


def _ts_line(paired: pd.DataFrame, names: dict[str, str]) -> str:
    """MC vs weight scaling after temperature scaling (NLL; clean and over the shifted sets)."""
    comparison = f"{names['dropout_mc']} - {names['dropout_ws']} (both temperature-scaled)"
    rows = paired[paired["comparison"] == comparison].set_index("metric")
    cell = lambda metric: (  # noqa: E731
        rows.loc[metric, "difference [95% CI], p"] if metric in rows.index else "-"
    )
    return (
        f"MC vs weight scaling after temperature scaling (dropout runs, NLL of "
        f"{keys.ts_label('mc<T>')} - {keys.ts_label('deterministic')}, paired by seed): clean "
        f"{cell(CLEAN_NLL)}; mean over the shifted sets {cell(SHIFT_NLL)}"
    )


def _result_line(summary: pd.DataFrame, key: str, name: str) -> str:
    """One series: clean and shifted metrics with 95% CIs, scaled values in parentheses."""
    raw = summary[(summary["series"] == key) & ~summary["scaled"].astype(bool)].iloc[0]
    ts = summary[(summary["series"] == key) & summary["scaled"].astype(bool)].iloc[0]
    n = int(raw["n"])
    mi = (
        f", by mutual information {ci_cell(raw, 'auroc_mi')}"
        if np.isfinite(raw["auroc_mi_mean"])
        else ""
    )
    return (
        f"{name}: clean accuracy {ci_cell(raw, 'clean_acc')}, NLL {ci_cell(raw, 'clean_nll')}, "
        f"ECE {ci_cell(raw, 'clean_ece')}; mean over the shifted sets accuracy "
        f"{ci_cell(raw, 'shift_acc')}, NLL {ci_cell(raw, 'shift_nll')} "
        f"({ci_cell(ts, 'shift_nll')} temperature-scaled, T = {ci_cell(ts, 'temperature', 2)}), "
        f"ECE {ci_cell(raw, 'shift_ece')} ({ci_cell(ts, 'shift_ece')} scaled); OOD AUROC by max "
        f"probability {ci_cell(raw, 'auroc_maxprob')}{mi} ({n} seed{'s' if n != 1 else ''})"
    )


CLEAN_NLL = "NLL, clean test set"
SHIFT_NLL = "NLL, mean over shifted sets"


def _paired(
    runs: pd.DataFrame,
    names: dict[str, str],
    long: pd.DataFrame | None = None,
    excluded: set[Cell] | frozenset = frozenset(),
) -> pd.DataFrame:
    """Paired differences over seeds (a - b) of the means over the shifted sets and of the OOD
    AUROCs (and, both temperature-scaled, MC - weight scaling on the clean set); ``headline``
    marks the unscaled NLL/ECE/MI comparisons quoted in REPORT.md. The means over shifted sets of
    a pair leave out the ``excluded`` cells of either series (both sides average the same sets)."""
    metrics = [
        ("shift_nll", SHIFT_NLL),
        ("shift_ece", "ECE, mean over shifted sets"),
    ]
    rows: list[dict] = []

    def rows_of(key: str, scaled: bool, partner: str) -> pd.DataFrame:
        part = runs[(runs["series"] == key) & (runs["scaled"] == scaled)]
        part = part.rename(columns={"seed": "cfg.seed"})
        cells = {(k, c, s) for k, c, s in excluded if k in (key, partner)}
        if long is None or not cells:
            return part
        drop = {(c, s) for _, c, s in cells}
        mine = {(key, c, s) for c, s in drop}
        shifted = long[
            (long["series"] == key) & (long["scaled"] == scaled) & (long["severity"] > 0)
        ]
        means = _without(shifted, mine).groupby("seed")[list(METRICS)].mean()
        means = means.add_prefix("shift_").rename_axis("cfg.seed").reset_index()
        part = part.drop(columns=[f"shift_{m}" for m in METRICS])
        return part.merge(means, on="cfg.seed", how="left")

    def add(a: str, b: str, scaled: tuple[bool, bool], key: str, text: str, what: str) -> None:
        d = paired_by_seed(rows_of(a, scaled[0], b), rows_of(b, scaled[1], a), key)
        rows.append(
            {
                "comparison": what,
                "metric": text,
                "difference [95% CI], p": fmt_paired(d, 4),
                "pvalue": d["pvalue"],
                "headline": scaled == (False, False) and key != "auroc_entropy",
            }
        )

    pairs = [("ensemble", "dropout_mc"), ("subnets", "dropout_mc"), ("dropout_mc", "dropout_ws")]
    for a, b in pairs:
        if a in names and b in names:
            for scaled in (False, True):
                ts = " (both temperature-scaled)" if scaled else ""
                pair_metrics = metrics
                if scaled and (a, b) == ("dropout_mc", "dropout_ws"):  # MC vs WS after scaling
                    pair_metrics = [("clean_nll", CLEAN_NLL), *metrics]
                for key, text in pair_metrics:
                    add(a, b, (scaled, scaled), key, text, f"{names[a]} - {names[b]}{ts}")
    for key, name in names.items():  # what temperature scaling itself does, within each series
        for metric, text in metrics:
            add(key, key, (True, False), metric, text, f"{name}: scaled - unscaled")
    for a, b in pairs:
        if a in names and b in names:
            for score in SCORES:
                if score == "mi" and b == "dropout_ws":
                    continue  # one network: no mutual information
                text = f"OOD AUROC, {SCORES[score]}"
                add(a, b, (False, False), f"auroc_{score}", text, f"{names[a]} - {names[b]}")
    return pd.DataFrame(
        rows, columns=["comparison", "metric", "difference [95% CI], p", "pvalue", "headline"]
    )


def _plot_series(
    ax: plt.Axes,
    frame: pd.DataFrame,
    s: Series,
    metric: str,
    lane: tuple[int, int],
    hollow: set | frozenset = frozenset(),
    x_key: str = "severity",
) -> bool:
    """One series against ``x_key``: mean and 95% CI error bars over seeds, shifted by its
    ``lane`` (index, count); points at an x in ``hollow`` (mean accuracy at or below chance) drawn
    as hollow markers (returns whether there was one)."""
    part = frame[frame["series"] == s.key]
    xs = sorted(part[x_key].unique())
    if not xs:
        return False
    per_x = [seed_stats(part.loc[part[x_key] == x, metric]) for x in xs]
    x = dodge(xs, lane[0], lane[1], 0.09)
    ci_line_stats(ax, x, per_x, color=s.color, ls=s.ls, marker="o", label=s.name)
    low = [i for i, v in enumerate(xs) if v in hollow]
    if low:
        ax.plot(
            x[low],
            [per_x[i]["mean"] for i in low],
            ls="",
            marker="o",
            ms=6,
            mfc="white",
            mec=s.color,
            mew=1.3,
            zorder=5,
        )
    return bool(low)


def curve_frame(long: pd.DataFrame, excluded: set[Cell]) -> tuple[pd.DataFrame, str]:
    """The curves averaged over corruptions (:func:`by_severity`) and their caption: the mean over
    the corruptions with no cell at or below chance (for any series), the same corruptions at
    every severity (leaving out only the cells below chance would average fewer, easier
    corruptions at the high severities and bend the curves back); the per-cell exclusion when
    every corruption has such a cell."""
    corruptions = [c for c in dict.fromkeys(long["corruption"]) if c != "clean"]
    lost = {c for _, c, _ in excluded}
    kept = [c for c in corruptions if c not in lost]
    if not lost:
        return by_severity(long), "mean over corruptions"
    if not kept:
        return (
            by_severity(long, excluded),
            "mean over corruptions without the cells at or below chance",
        )
    names = ", ".join(c.replace("_", " ") for c in kept)
    gone = ", ".join(c.replace("_", " ") for c in corruptions if c in lost)
    frame = long[long["corruption"].isin(["clean", *kept])]
    return by_severity(frame), f"mean over {names} (left out, at or below chance somewhere: {gone})"


def _chance(ax: plt.Axes) -> None:
    ax.axhline(CHANCE, color="k", lw=0.9, ls=":", label=f"chance (1/{N_CLASSES})")


def _severity_axis(ax: plt.Axes) -> None:
    ax.set_xticks([0, *SEVERITIES], ["clean", *map(str, SEVERITIES)])
    ax.set_xlabel("severity")
    ax.grid(alpha=0.3)


def _legend(fig: plt.Figure, ax: plt.Axes, n: int, hollow: bool) -> None:
    """The figure's legend below the panels: ``ax``'s series, the chance line and, with
    ``hollow``, what a hollow marker means."""
    handles, labels = ax.get_legend_handles_labels()
    if hollow:
        handles.append(plt.Line2D([], [], ls="", marker="o", ms=6, mfc="white", mec="k", mew=1.3))
        labels.append("hollow: mean accuracy at or below chance")
    fig.legend(
        handles, labels, loc="lower center", ncol=min(n, 4), fontsize=8,
        handlelength=HANDLELENGTH,
    )  # fmt: skip


def _curves(
    long: pd.DataFrame,
    runs: pd.DataFrame,
    series: list[Series],
    excluded: set[Cell],
    out_dir: Path,
) -> str:
    sev, note = curve_frame(long, excluded)
    n = sev["seed"].nunique()
    raw = sev[~sev["scaled"].astype(bool)]
    acc = raw.groupby(["series", "severity"])["acc"].mean()
    fig, axes = plt.subplots(2, 3, figsize=(13.5, 8.0))
    any_hollow = False
    for row, scaled in enumerate((False, True)):
        frame = sev[sev["scaled"] == scaled]
        for col, metric in enumerate(METRICS):
            if scaled and metric == "acc":
                continue  # a temperature does not change the top-1 class: same as above
            ax = axes[row, col]
            for i, s in enumerate(series):
                hollow = {x for (k, x), v in acc.items() if k == s.key and v <= CHANCE}
                any_hollow |= _plot_series(ax, frame, s, metric, (i, len(series)), hollow)
            if metric == "acc":
                _chance(ax)
            _severity_axis(ax)
            ts = ", temperature-scaled" if scaled else ""
            ax.set_title(f"{LABELS[metric]}{ts}", fontsize=10)
    for col in (1, 2):  # same scale with and without scaling
        # accuracy, NLL and ECE are >= 0; a t-interval of 3 seeds may reach below
        lo = max(0.0, min(axes[0, col].get_ylim()[0], axes[1, col].get_ylim()[0]))
        hi = max(axes[0, col].get_ylim()[1], axes[1, col].get_ylim()[1])
        axes[0, col].set_ylim(lo, hi)
        axes[1, col].set_ylim(lo, hi)
    axes[0, 0].set_ylim(0.0, min(1.0, axes[0, 0].get_ylim()[1]))
    _temperatures(axes[1, 0], runs, series)
    _legend(fig, axes[0, 0], len(series) + 2, any_hollow)
    fig.suptitle(
        f"Fashion-MNIST under shift, {note}\n(mean and 95% CI over {n} "
        f"seed{'s' if n != 1 else ''}, x shifted per series)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save_figure(fig, out_dir, "shift_curves")


def _temperatures(ax: plt.Axes, runs: pd.DataFrame, series: list[Series]) -> None:
    """Bars of the fitted temperature per series (:func:`per_run` rows), 95% CI, seeds as dots."""
    ax.set_title("fitted temperature (clean validation NLL)", fontsize=10)
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    for i, s in enumerate(series):
        vals = runs.loc[(runs["series"] == s.key) & runs["scaled"], "temperature"].dropna()
        st = seed_stats(vals)
        ax.bar(
            i,
            st["mean"],
            yerr=ci_yerr(st),
            color=s.color,
            alpha=0.8,
            capsize=4,
            edgecolor="k",
            lw=0.4,
            hatch="//" if s.ls == "--" else None,
        )
        ax.scatter(np.full(len(vals), i), vals, color="k", s=8, zorder=3)
    ax.set_xticks(range(len(series)), [s.name for s in series], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("T (> 1 softens)")
    ax.grid(axis="y", alpha=0.3)


def _by_corruption(
    long: pd.DataFrame, series: list[Series], scaled: bool, out_dir: Path
) -> str | None:
    corruptions = [c for c in long["corruption"].unique() if c != "clean"]
    if not corruptions:
        return None
    acc = cell_accuracy(long)
    metrics = ("nll", "ece") if scaled else METRICS
    clean = long[(long["severity"] == 0) & (long["scaled"] == scaled)]
    fig, axes = plt.subplots(
        len(metrics),
        len(corruptions),
        figsize=(3.0 * len(corruptions), 2.8 * len(metrics) + 0.6),
        sharex=True,
        squeeze=False,
    )
    any_hollow = False
    for j, corruption in enumerate(corruptions):
        frame = pd.concat(
            [clean, long[(long["corruption"] == corruption) & (long["scaled"] == scaled)]]
        )
        for i, metric in enumerate(metrics):
            ax = axes[i, j]
            for k, s in enumerate(series):
                hollow = {
                    x
                    for (key, c, x), v in acc.items()
                    if key == s.key and c in (corruption, "clean") and v <= CHANCE
                }
                any_hollow |= _plot_series(ax, frame, s, metric, (k, len(series)), hollow)
            if metric == "acc":
                _chance(ax)
            _severity_axis(ax)
            if i < len(metrics) - 1:
                ax.set_xlabel("")
            if i == 0:
                ax.set_title(corruption.replace("_", " "), fontsize=10)
            if j == 0:
                ax.set_ylabel(LABELS[metric])
    for i in range(len(metrics)):  # one y scale per metric row
        lo = max(0.0, min(ax.get_ylim()[0] for ax in axes[i]))  # every metric is >= 0
        hi = max(ax.get_ylim()[1] for ax in axes[i])
        for ax in axes[i]:
            ax.set_ylim(lo, hi)
    _legend(fig, axes[0, 0], len(series) + 2, any_hollow)
    ts = "temperature-scaled " if scaled else ""
    fig.suptitle(
        f"Per corruption, {ts}predictions (mean and 95% CI over seeds, x shifted per series)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.08 if scaled else 0.06, 1, 1))
    return save_figure(fig, out_dir, "by_corruption_ts" if scaled else "by_corruption")


def _ood(runs: pd.DataFrame, series: list[Series], out_dir: Path) -> str:
    """AUROC per score and series as a dot plot (AUROCs lie far from 0: no bars): unscaled
    (filled) and temperature-scaled (hollow), mean and 95% CI, seeds as dots."""
    fig, axes = plt.subplots(1, len(SCORES), figsize=(13.5, 4.3), sharey=True)
    width = 0.3
    for ax, score in zip(axes, SCORES):
        for i, s in enumerate(series):
            for offset, scaled in ((-width / 2, False), (width / 2, True)):
                vals = runs.loc[
                    (runs["series"] == s.key) & (runs["scaled"] == scaled), f"auroc_{score}"
                ].dropna()
                if vals.empty:
                    if not scaled:  # MI of one network, or a missing series
                        ax.text(i, 0.52, "n/a", ha="center", va="bottom", fontsize=8)
                    continue
                dot_ci(ax, i + offset, vals, s.color, filled=not scaled)
        ax.axhline(0.5, color="k", lw=0.8, ls=":")
        ax.set_xticks(
            range(len(series)), [s.name for s in series], rotation=20, ha="right", fontsize=8
        )
        ax.set_xlim(-0.6, len(series) - 0.4)
        ax.set_title(f"score: {SCORES[score]}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("AUROC, clean test vs OOD (0.5 = chance)")
    values = runs[[f"auroc_{s}" for s in SCORES]].to_numpy(dtype=float)
    lo = np.nanmin(values, initial=0.5)
    axes[0].set_ylim(max(0.0, min(0.5, lo) - 0.05), 1.0)
    handles = [
        plt.Line2D([], [], ls="", marker="o", ms=7, color="#555555", label="unscaled"),
        plt.Line2D(
            [], [], ls="", marker="o", ms=7, mfc="white", mew=1.5, color="#555555",
            label="temperature-scaled",
        ),
        plt.Line2D([], [], ls="", marker=".", color="k", label="one seed"),
    ]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(
        "OOD detection, Fashion-MNIST (in) vs MNIST digits (out): mean and 95% CI over seeds",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(fig, out_dir, "ood_auroc")
