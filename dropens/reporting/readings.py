"""``readings`` study: regularizer or ensemble, decided by the rule pre-registered in
``experiments/readings.yaml`` (its ``predictions:`` block: quantities, margins, decision rule).

Per arm (data x model), paired by seed:

- ``paired.{csv,md}``: every pre-registered quantity (Q1-Q5): mean paired difference with its 95%
  and 90% t-intervals, the margin, the one-sided p-values against the margin
  (:func:`dropens.metrics.stats.margin_tests`) and, for the six tests that decide, Holm-adjusted
  p-values (one family per arm);
- ``verdict.{csv,md}``: per arm, which deciding tests reject, the verdict by the rule, and what the
  data cannot decide;
- ``summary.{csv,md}``: accuracy, NLL and ECE of every evaluation, with and without temperature
  scaling (fitted on the validation split), mean [95% CI] over seeds;
- figures: ``predictions`` (each quantity's interval beside the margins and the two readings'
  predicted regions), ``decomposition`` (gain over the tuned plain network: mask-free penalty,
  the dropout network's deterministic pass, + averaging, one random subnetwork, an explicit
  ensemble; with and without temperature scaling), ``mc_curve`` (MC dropout vs T, calibrated
  and not, against the deterministic pass), ``diversity`` (normalized disagreement, mutual
  information and Jensen gap at T = K = 4 against an ensemble of 4 independent networks),
  ``reliability`` (pooled over seeds, with the share of examples per bin).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dropens import keys
from dropens.metrics import stats
from dropens.reporting.common import (
    PALETTE,
    Section,
    fmt_ci,
    fmt_p,
    headline_t,
    mc_sizes,
    prereg_commit,
    save_figure,
    seed_stats,
    write_table,
)
from dropens.reporting.readings_tune import arm_of
from dropens.reporting.reliability import reliability_figure
from dropens.study import load_study_file

ARMS = {
    "mnist1d_mlp": "MNIST-1D MLP (residual)",
    "mnist1d_cnn1d": "MNIST-1D CNN",
    "fashion_mnist_mlp": "Fashion-MNIST MLP (10k train)",
    "fashion_mnist_cnn2d": "Fashion-MNIST CNN [32, 64]",
}
K = 4  # the explicit ensemble's size: diversity is compared at T = K
ALPHA = 0.05


@dataclass(frozen=True)
class Quantity:
    """One pre-registered paired comparison ``a - b`` over seeds."""

    qid: str
    label: str
    a: tuple[str, str, str]  # (method, evaluation label, metric)
    b: tuple[str, str, str]
    margin: str  # key of predictions.margins
    regularizer: str  # the predicted region, in words (figure and table)
    ensemble: str


def quantities(t: int) -> list[Quantity]:
    """The pre-registered comparisons, with the headline MC size ``t`` (``eval.mc_samples``)."""
    mc, mc_ts = keys.mc_label(t), keys.ts_label(keys.mc_label(t))
    det_ts = keys.ts_label("deterministic")
    single_ts = keys.ts_label("single")
    return [
        Quantity(
            "Q1",
            "dropout - plain, acc",
            ("dropout", "deterministic", "acc"),
            ("plain", "deterministic", "acc"),
            "acc_between_methods",
            "> 0",
            "> 0",
        ),
        Quantity(
            "Q1",
            "dropout - plain, NLL (TS)",
            ("dropout", det_ts, "nll"),
            ("plain", det_ts, "nll"),
            "nll",
            "< 0",
            "< 0",
        ),
        Quantity(
            "Q2",
            f"MC{t} - deterministic, NLL (both TS)",
            ("dropout", mc_ts, "nll"),
            ("dropout", det_ts, "nll"),
            "nll",
            "within +-margin",
            "< -margin",
        ),
        Quantity(
            "Q2",
            f"MC{t} - deterministic, acc",
            ("dropout", mc, "acc"),
            ("dropout", "deterministic", "acc"),
            "acc_same_weights",
            "within +-margin",
            "> -margin",
        ),
        Quantity(
            "Q3",
            "explicit - dropout, acc",
            ("explicit", "deterministic", "acc"),
            ("dropout", "deterministic", "acc"),
            "acc_between_methods",
            "> -margin",
            "< -margin",
        ),
        Quantity(
            "Q3",
            "explicit - dropout, NLL (TS)",
            ("explicit", det_ts, "nll"),
            ("dropout", det_ts, "nll"),
            "nll",
            "< +margin",
            "> 0 (no prediction on margin)",
        ),
        Quantity(
            "Q5",
            "single - deterministic, acc",
            ("dropout", "single", "acc"),
            ("dropout", "deterministic", "acc"),
            "acc_same_weights",
            "< 0",
            "< 0",
        ),
        Quantity(
            "Q5",
            "single - deterministic, NLL (TS)",
            ("dropout", single_ts, "nll"),
            ("dropout", det_ts, "nll"),
            "nll",
            "> 0",
            "> 0",
        ),
    ]


# the six deciding tests of the decision rule: (letter, quantity label prefix, p-value column)
DECIDING = (
    ("a", "Q2", "NLL", "p_tost"),
    ("b", "Q2", "acc", "p_tost"),
    ("c", "Q3", "acc", "p_above_low"),
    ("d", "Q3", "NLL", "p_below_high"),
    ("e", "Q2", "NLL", "p_below_low"),
    ("f", "Q3", "acc", "p_below_low"),
)
DECIDING_WORDS = {
    "a": "Q2 NLL equivalent",
    "b": "Q2 acc equivalent",
    "c": "Q3 acc not worse than margin",
    "d": "Q3 NLL not worse than margin",
    "e": "Q2 NLL better beyond margin",
    "f": "Q3 acc worse beyond margin",
}


def _values(df: pd.DataFrame, method: str, label: str, metric: str) -> pd.Series:
    """Per-seed values of ``test/clean/<label>/<metric>`` of ``method``'s runs (index: seed)."""
    column = keys.test("clean", label, metric)
    runs = df[df["cfg.method.name"] == method]
    if column not in runs:
        return pd.Series(dtype=float)
    return runs.set_index("cfg.seed")[column].astype(float).dropna()


def _paired(df: pd.DataFrame, q: Quantity, margin: float) -> dict:
    a, b = _values(df, *q.a), _values(df, *q.b)
    seeds = a.index.intersection(b.index)
    x, y = a.loc[seeds].to_numpy(), b.loc[seeds].to_numpy()
    if len(seeds) < 2:
        return {"n": float(len(seeds)), "mean_diff": np.nan}
    ci95 = stats.paired_difference(x, y)
    return {
        **stats.margin_tests(x, y, margin, ALPHA),
        "ci95_low": ci95["ci_low"],
        "ci95_high": ci95["ci_high"],
        "pvalue": ci95["pvalue"],
    }


def analyse(df: pd.DataFrame, margins: dict[str, float]) -> pd.DataFrame:
    """One row per (arm, quantity): the paired statistics, Holm-adjusted deciding p-values."""
    t = headline_t(df)
    rows = []
    df = df.assign(arm=df.apply(arm_of, axis=1))
    for arm in [a for a in ARMS if a in set(df["arm"])] + sorted(set(df["arm"]) - set(ARMS)):
        runs = df[df["arm"] == arm]
        arm_rows = []
        for q in quantities(t):
            margin = float(margins[q.margin])
            row = {
                "arm": arm,
                "qid": q.qid,
                "quantity": q.label,
                "margin": margin,
                "regularizer": q.regularizer,
                "ensemble": q.ensemble,
                **_paired(runs, q, margin),
            }
            arm_rows.append(row)
        # the deciding family: Holm over the six one-sided p-values (NaN without data: not rejected)
        family = []
        for letter, qid, metric, column in DECIDING:
            row = next(r for r in arm_rows if r["qid"] == qid and metric in r["quantity"])
            family.append((letter, row, column))
        raw = np.array([float(r.get(c, np.nan)) for _, r, c in family])
        ok = np.isfinite(raw)
        adjusted = np.full(raw.shape, np.nan)
        if ok.any():
            adjusted[ok] = stats.holm(raw[ok])
        for (letter, row, column), p_raw, p_holm in zip(family, raw, adjusted):
            row[f"test_{letter}"] = column
            row[f"p_{letter}"] = p_raw
            row[f"holm_{letter}"] = p_holm
        rows += arm_rows
    return pd.DataFrame(rows)


def verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """Per arm, the pre-registered decision rule on the Holm-adjusted deciding tests."""
    out = []
    for arm, rows in table.groupby("arm", sort=False):
        rejected, untested = {}, []
        for letter, *_ in DECIDING:
            col = f"holm_{letter}"
            vals = rows[col].dropna() if col in rows else pd.Series(dtype=float)
            rejected[letter] = bool(len(vals) and float(vals.iloc[0]) < ALPHA)
            if not len(vals):
                untested.append(letter)
        if untested:  # a deciding comparison has no seed pairs yet: no verdict either way
            verdict = f"incomplete (no paired runs for test(s) {''.join(untested)})"
        elif all(rejected[x] for x in "abcd"):
            verdict = "regularizer"
        elif rejected["e"] and rejected["f"]:
            verdict = "ensemble"
        else:
            verdict = "not decided"
        held = [DECIDING_WORDS[x] for x in "abcdef" if rejected[x]]
        failed = [DECIDING_WORDS[x] for x in "abcdef" if not rejected[x]]
        out.append(
            {
                "arm": arm,
                "verdict": verdict,
                "regularizer tests (a-d) rejected": "".join(x for x in "abcd" if rejected[x])
                or "none",
                "ensemble tests (e-f) rejected": "".join(x for x in "ef" if rejected[x]) or "none",
                "held": "; ".join(held) or "none",
                "not shown": "; ".join(failed) or "none",
            }
        )
    return pd.DataFrame(out)


def build(df: pd.DataFrame, out_dir: Path) -> Section:
    section = Section()
    plan = load_study_file("readings").predictions
    margins = {k: float(v) for k, v in plan["margins"].items()}
    table = analyse(df, margins)
    verdict = verdicts(table)
    t = headline_t(df)
    section.results.append(
        f"Pre-registration: predictions, margins (accuracy {margins['acc_same_weights']} same "
        f"weights / {margins['acc_between_methods']} between methods, NLL {margins['nll']} nats) "
        f"and the decision rule were committed in {prereg_commit('readings')} (experiments/readings.yaml), "
        "before the first record of this study or its tuning stage (the Records line names "
        "theirs)."
    )
    for _, v in verdict.iterrows():
        section.results.append(
            f"**{ARMS.get(v['arm'], v['arm'])}: verdict {v['verdict']}** (Holm-adjusted one-sided "
            f"tests at {ALPHA}; held: {v['held']}; not shown: {v['not shown']})."
        )
    for _, r in table.iterrows():
        if not np.isfinite(r.get("mean_diff", np.nan)):
            continue
        section.results.append(
            f"{ARMS.get(r['arm'], r['arm'])}, {r['qid']} {r['quantity']}: "
            f"{r['mean_diff']:+.4f} [95% CI {r['ci95_low']:+.4f}, {r['ci95_high']:+.4f}; 90% CI "
            f"{r['ci90_low']:+.4f}, {r['ci90_high']:+.4f}] (margin {r['margin']:g}; TOST "
            f"{fmt_p(r['p_tost'])}; n={int(r['n'])})"
        )
    section.tables.append(write_table(_paired_table(table), out_dir, "paired"))
    section.tables.append(write_table(verdict, out_dir, "verdict"))
    section.tables.append(write_table(_summary(df, t), out_dir, "summary"))
    section.figures.append(_predictions_figure(table, out_dir))
    section.figures.append(_decomposition(df, t, out_dir))
    section.figures.append(_mc_curve(df, out_dir))
    section.figures.append(_diversity(df, out_dir))
    fig = _reliability(df, t, out_dir)
    if fig:
        section.figures.append(fig)
    return section


def _reliability(df: pd.DataFrame, t: int, out_dir: Path) -> str | None:
    df = df.assign(arm=df.apply(arm_of, axis=1))
    colors = {
        "plain": PALETTE["plain"],
        "explicit": "#cc78bc",
        "dropout": PALETTE["dropout"],
        "ensemble": PALETTE["ensemble"],
    }
    rows = []
    for arm in [a for a in ARMS if a in set(df["arm"])]:
        runs = df[df["arm"] == arm]
        panels = []
        for method, label, shown in EVALUATIONS:
            chosen = runs[runs["cfg.method.name"] == method]
            lab = _label(label, t)
            if chosen.empty or label == "single" or keys.test("clean", lab, "ece") not in chosen:
                continue
            panels.append((chosen, lab, shown.replace("MC average", f"MC T={t}"), colors[method]))
        rows.append((ARMS.get(arm, arm), panels))
    return reliability_figure(rows, out_dir)


def _paired_table(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in table.iterrows():
        deciding = [
            f"({x}) {fmt_p(r[f'p_{x}'])} -> Holm {fmt_p(r[f'holm_{x}'])}"
            for x, *_ in DECIDING
            if np.isfinite(r.get(f"holm_{x}", np.nan))
        ]
        rows.append(
            {
                "arm": r["arm"],
                "quantity": f"{r['qid']} {r['quantity']}",
                "n": int(r["n"]) if np.isfinite(r.get("n", np.nan)) else 0,
                "mean diff [95% CI]": fmt_ci(
                    r["mean_diff"], r.get("ci95_low", np.nan), r.get("ci95_high", np.nan), 4
                ),
                "90% CI": fmt_ci(
                    r["mean_diff"], r.get("ci90_low", np.nan), r.get("ci90_high", np.nan), 4
                ).split(" ", 1)[-1],
                "margin": f"{r['margin']:g}",
                "TOST p": fmt_p(r.get("p_tost", np.nan)),
                "regularizer predicts": r["regularizer"],
                "ensemble predicts": r["ensemble"],
                "deciding tests": "; ".join(deciding) or "-",
            }
        )
    return pd.DataFrame(rows)


EVALUATIONS = (  # (method, label, shown as)
    ("plain", "deterministic", "plain (tuned weight decay)"),
    ("explicit", "deterministic", "explicit (no masks)"),
    ("dropout", "deterministic", "dropout, deterministic"),
    ("dropout", "single", "dropout, one random subnetwork"),
    ("dropout", "MC", "dropout, MC average"),
    ("ensemble", "members", f"ensemble of {K} plain nets"),
)


def _label(label: str, t: int) -> str:
    return keys.mc_label(t) if label == "MC" else label


def _summary(df: pd.DataFrame, t: int) -> pd.DataFrame:
    df = df.assign(arm=df.apply(arm_of, axis=1))
    rows = []
    for arm in [a for a in ARMS if a in set(df["arm"])]:
        runs = df[df["arm"] == arm]
        for method, label, shown in EVALUATIONS:
            lab = _label(label, t)
            row = {"arm": arm, "evaluation": shown.replace("MC average", f"MC average T={t}")}
            for metric, lab_used, digits in (
                ("acc", lab, 3),
                ("nll", lab, 4),
                ("nll", keys.ts_label(lab), 4),
                ("ece", lab, 4),
                ("ece", keys.ts_label(lab), 4),
            ):
                s = seed_stats(_values(runs, method, lab_used, metric))
                name = metric + (" (TS)" if lab_used.endswith("_ts") else "")
                row[name] = fmt_ci(s["mean"], s["ci_low"], s["ci_high"], digits)
                row["seeds"] = int(s["n"])
            rows.append(row)
    return pd.DataFrame(rows)


def _predictions_figure(table: pd.DataFrame, out_dir: Path) -> str:
    arms = list(dict.fromkeys(table["arm"]))
    fig, axes = plt.subplots(1, len(arms), figsize=(5.2 * len(arms), 5.4), squeeze=False)
    for ax, arm in zip(axes[0], arms):
        rows = table[table["arm"] == arm].reset_index(drop=True)
        for i, r in rows.iterrows():
            y = len(rows) - 1 - i
            m = r["margin"]
            ax.fill_betweenx([y - 0.4, y + 0.4], -m, m, color="#dddddd", lw=0, zorder=0)
            if np.isfinite(r.get("mean_diff", np.nan)):
                ax.plot([r["ci95_low"], r["ci95_high"]], [y, y], color="k", lw=1, zorder=2)
                ax.plot([r["ci90_low"], r["ci90_high"]], [y, y], color="k", lw=3, zorder=2)
                ax.plot(r["mean_diff"], y, "o", color="#0173b2", zorder=3)
        ax.axvline(0, color="k", lw=0.6, ls=":")
        labels = [
            f"{r['qid']} {r['quantity']}\nR: {r['regularizer']} | E: {r['ensemble']}"
            for _, r in rows.iterrows()
        ]
        ax.set_yticks(range(len(rows) - 1, -1, -1), labels, fontsize=7)
        ax.set_xlabel("paired difference (accuracy, or NLL in nats)", fontsize=8)
        ax.set_title(ARMS.get(arm, arm), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        "Pre-registered predictions (R: regularizer reading, E: ensemble reading) beside the "
        "measurements: mean paired difference over seeds, thick = 90% CI (TOST), thin = 95% CI, "
        "grey = +-margin",
        fontsize=9,
    )
    fig.tight_layout()
    return save_figure(fig, out_dir, "predictions")


def _gain_stats(runs: pd.DataFrame, a: tuple[str, str, str], b: tuple[str, str, str]) -> dict:
    x, y = _values(runs, *a), _values(runs, *b)
    seeds = x.index.intersection(y.index)
    if len(seeds) < 2:
        return {"mean_diff": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    return stats.paired_difference(x.loc[seeds].to_numpy(), y.loc[seeds].to_numpy())


def _decomposition(df: pd.DataFrame, t: int, out_dir: Path) -> str:
    df = df.assign(arm=df.apply(arm_of, axis=1))
    arms = [a for a in ARMS if a in set(df["arm"])]
    shown = [e for e in EVALUATIONS if e[0] != "plain"]
    colors = ["#cc78bc", PALETTE["dropout"], "#56b4e9", "#034f84", PALETTE["ensemble"]]
    fig, axes = plt.subplots(2, len(arms), figsize=(4.6 * len(arms), 7.0), squeeze=False)
    for j, arm in enumerate(arms):
        runs = df[df["arm"] == arm]
        for i, metric in enumerate(("acc", "nll")):
            ax = axes[i, j]
            x = np.arange(len(shown))
            for k, (method, label, _) in enumerate(shown):
                lab = _label(label, t)
                base = ("plain", "deterministic", metric)
                if metric == "nll":  # calibrated (solid) and raw (hatched), both against plain's
                    for off, use_ts in ((-0.2, False), (0.2, True)):
                        lab_used = keys.ts_label(lab) if use_ts else lab
                        base_used = (
                            "plain",
                            keys.ts_label("deterministic") if use_ts else "deterministic",
                            "nll",
                        )
                        s = _gain_stats(runs, (method, lab_used, "nll"), base_used)
                        _bar(ax, k + off, s, colors[k], hatch=None if use_ts else "//", width=0.38)
                else:
                    s = _gain_stats(runs, (method, lab, metric), base)
                    _bar(ax, k, s, colors[k], hatch=None, width=0.7)
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xticks(
                x,
                [n.replace("dropout, ", "dropout:\n") for _, _, n in shown],
                rotation=30,
                ha="right",
                fontsize=7,
            )
            ax.set_ylabel(
                "accuracy - plain's"
                if metric == "acc"
                else "NLL - plain's (nats); hatched: raw, solid: TS",
                fontsize=8,
            )
            ax.grid(axis="y", alpha=0.3)
            if i == 0:
                ax.set_title(ARMS.get(arm, arm), fontsize=10)
    fig.suptitle(
        f"Gain over the tuned plain network (paired by seed; mean and 95% CI): the mask-free "
        f"penalty, the dropout network's deterministic pass, one random subnetwork, the MC average "
        f"of T={t} masks, and an ensemble of {K} plain networks",
        fontsize=9,
    )
    fig.tight_layout()
    return save_figure(fig, out_dir, "decomposition")


def _bar(ax: plt.Axes, x: float, s: dict, color: str, hatch: str | None, width: float) -> None:
    mean = s["mean_diff"]
    if not np.isfinite(mean):
        return
    err = None
    if np.isfinite(s["ci_low"]):
        err = [[mean - s["ci_low"]], [s["ci_high"] - mean]]
    ax.bar(
        x,
        mean,
        width,
        yerr=err,
        color=color if hatch is None else "white",
        edgecolor=color,
        hatch=hatch,
        capsize=3,
        lw=1.0,
    )


def _mc_curve(df: pd.DataFrame, out_dir: Path) -> str:
    df = df.assign(arm=df.apply(arm_of, axis=1))
    with_dropout = set(df.loc[df["cfg.method.name"] == "dropout", "arm"])
    arms = [
        a for a in ARMS if a in with_dropout
    ]  # an arm whose dropout runs are not done: left out
    sizes = mc_sizes(df)
    fig, axes = plt.subplots(2, len(arms), figsize=(4.6 * len(arms), 6.6), squeeze=False)
    for j, arm in enumerate(arms):
        runs = df[df["arm"] == arm]
        for i, metric in enumerate(("acc", "nll")):
            ax = axes[i, j]
            s = [seed_stats(_values(runs, "dropout", keys.mc_label(t), metric)) for t in sizes]
            mean = np.array([v["mean"] for v in s])
            err = np.array([[v["mean"] - v["ci_low"], v["ci_high"] - v["mean"]] for v in s]).T
            ax.errorbar(
                sizes,
                mean,
                yerr=np.nan_to_num(err),
                fmt="o-",
                capsize=3,
                color=PALETTE["dropout"],
                label="dropout, MC average of T masks",
            )
            det = seed_stats(_values(runs, "dropout", "deterministic", metric))
            ax.axhline(det["mean"], color="k", ls="--", lw=1.2, label="dropout, deterministic")
            if metric == "nll":  # both temperature-scaled: the comparison Q2 makes
                head = sizes[-1]
                v = seed_stats(_values(runs, "dropout", keys.ts_label("deterministic"), metric))
                ax.axhline(
                    v["mean"], color="#555555", ls=":", lw=1.4, label="dropout, deterministic, TS"
                )
                v = seed_stats(_values(runs, "dropout", keys.ts_label(keys.mc_label(head)), metric))
                err = (
                    [[v["mean"] - v["ci_low"]], [v["ci_high"] - v["mean"]]]
                    if np.isfinite(v["ci_low"])
                    else None
                )
                ax.errorbar(
                    [head * 1.3],
                    [v["mean"]],
                    yerr=err,
                    fmt="s",
                    color="#de8f05",
                    capsize=3,
                    label=f"MC T={head}, TS",
                )
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [str(x) for x in sizes])
            ax.set_xlabel("MC samples T")
            ax.set_ylabel("test accuracy" if metric == "acc" else "test NLL (nats)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, handlelength=3)
            if i == 0:
                ax.set_title(ARMS.get(arm, arm), fontsize=10)
    fig.suptitle(
        "MC dropout vs the deterministic pass of the same network (mean and 95% CI "
        "over seeds; TS: temperature fitted on validation)",
        fontsize=9,
    )
    fig.tight_layout()
    return save_figure(fig, out_dir, "mc_curve")


def _diversity(df: pd.DataFrame, out_dir: Path) -> str:
    df = df.assign(arm=df.apply(arm_of, axis=1))
    arms = [a for a in ARMS if a in set(df["arm"])]
    groups = (
        ("dropout", keys.mc_label(K), f"dropout MC, T={K}"),
        ("ensemble", "members", f"ensemble, K={K}"),
    )
    panels = (
        ("disagreement_norm", "disagreement / (1 - member acc)\n(Fort et al. 2019)"),
        ("mi", "mutual information (nats)"),
        ("ensemble_gain", "Jensen gap: member NLL - NLL\nof the average (nats)"),
    )
    fig, axes = plt.subplots(len(arms), 3, figsize=(11, 2.8 * len(arms)), squeeze=False)
    for i, arm in enumerate(arms):
        runs = df[df["arm"] == arm]
        for j, (metric, ylabel) in enumerate(panels):
            ax = axes[i, j]
            for k, (method, label, _) in enumerate(groups):
                if metric == "disagreement_norm":
                    dis = _values(runs, method, label, "disagreement")
                    acc = _values(runs, method, label, "member_acc")
                    vals = (dis / (1.0 - acc)).dropna()
                else:
                    vals = _values(runs, method, label, metric)
                s = seed_stats(vals)
                color = PALETTE[method]
                if s["n"]:
                    err = (
                        [[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]]
                        if np.isfinite(s["ci_low"])
                        else None
                    )
                    ax.bar(
                        k,
                        s["mean"],
                        0.6,
                        yerr=err,
                        color=color,
                        alpha=0.8,
                        capsize=4,
                        edgecolor="k",
                        lw=0.4,
                    )
                    ax.scatter(np.full(len(vals), k), vals, color="k", s=6, zorder=3)
            ax.set_xticks([0, 1], [g[2] for g in groups], fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.set_ylim(bottom=0)
            ax.grid(axis="y", alpha=0.3)
            if j == 0:
                ax.set_title(ARMS.get(arm, arm), fontsize=9, loc="left")
    fig.suptitle(
        f"Diversity at matched size T = K = {K} (bars: mean and 95% CI over seeds, dots: seeds)",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, out_dir, "diversity")
