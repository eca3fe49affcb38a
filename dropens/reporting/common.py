"""What every study report shares: seed statistics, figure/table writers, the REPORT.md section.

Figures are written as PNG (for the README/REPORT and W&B) and PDF (for papers) with
:func:`save_figure`; tables as CSV (machine-readable) and Markdown (for REPORT.md) with
:func:`write_table`. Statistics over seeds are means with 95% t-intervals
(:func:`dropens.metrics.stats.summarize`); a cell reads ``0.955 ± 0.004 [0.945, 0.965]`` (mean ± std
[CI]) or, compactly, ``0.955 [0.945, 0.965]``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dropens import keys
from dropens.metrics import stats
from dropens.reporting.tables import markdown_table

PALETTE = {  # one colour per method everywhere (colour-blind safe, seaborn "colorblind")
    "plain": "#7f7f7f",
    "dropout": "#0173b2",
    "subnets": "#de8f05",
    "ensemble": "#029e73",
    "dropout (ensemble objective)": "#cc78bc",
}


# legend handles long enough to show a line's dash pattern ("--", ":", "-.") at 8 pt
HANDLELENGTH = 3.5


@dataclass
class Section:
    """One study's part of REPORT.md, filled by its report builder."""

    results: list[str] = field(default_factory=list)  # Markdown lines with numbers and CIs
    figures: list[str] = field(default_factory=list)  # file stems under reports/<study>/
    tables: list[str] = field(default_factory=list)


def seed_stats(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Mean, std, n and 95% t-interval of one metric over seeds (NaN interval for n < 2)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"n": 0.0, "mean": np.nan, "std": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    if x.size == 1:
        return {"n": 1.0, "mean": float(x[0]), "std": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    return stats.summarize(x)


def summarize_groups(df: pd.DataFrame, by: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per group of ``by``: for each metric its ``<m>_mean``, ``_std``, ``_lo``, ``_hi``, ``n``."""
    rows = []
    for key, group in df.groupby(list(by), dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(by, key))
        row["n"] = len(group)
        for m in metrics:
            s = seed_stats(group[m].to_numpy() if m in group else [])
            row.update(
                {
                    f"{m}_mean": s["mean"],
                    f"{m}_std": s["std"],
                    f"{m}_lo": s["ci_low"],
                    f"{m}_hi": s["ci_high"],
                }
            )
        rows.append(row)
    # the columns even without a group (a partial study: e.g. no plain run complete yet)
    columns = [*by, "n", *(f"{m}_{s}" for m in metrics for s in ("mean", "std", "lo", "hi"))]
    return pd.DataFrame(rows, columns=columns)


def ci_yerr(s: dict[str, float]) -> list[list[float]] | None:
    """Matplotlib ``yerr``/``xerr`` of a :func:`seed_stats` result: ``[[mean - lo], [hi - mean]]``
    (``None`` without an interval, e.g. one seed)."""
    if not np.isfinite(s["ci_low"]):
        return None
    return [[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]]


def fmt_ci(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    """``0.955 [0.945, 0.965]`` (or just the mean when there is no interval)."""
    if not np.isfinite(mean):
        return "-"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def ci_cell(row: pd.Series | dict, metric: str, digits: int = 3) -> str:
    return fmt_ci(row[f"{metric}_mean"], row[f"{metric}_lo"], row[f"{metric}_hi"], digits)


def save_figure(fig: plt.Figure, out_dir: Path, stem: str) -> str:
    """Write ``out_dir/stem.png`` (150 dpi) and ``.pdf``; closes the figure; returns ``stem``.

    No creation date in the PDF, so regenerating a report from the same records rewrites
    byte-identical files (git shows only figures whose content changed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / f"{stem}.png", dpi=150, bbox_inches="tight")
    fig.savefig(out_dir / f"{stem}.pdf", bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)
    return stem


def write_table(df: pd.DataFrame, out_dir: Path, stem: str) -> str:
    """Write ``out_dir/stem.csv`` and ``.md``; returns ``stem``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / f"{stem}.csv", index=False)
    (out_dir / f"{stem}.md").write_text(markdown_table(df) + "\n")
    return stem


def band(
    ax: plt.Axes, x: np.ndarray, row_mean: np.ndarray, lo: np.ndarray, hi: np.ndarray, **kw: Any
) -> None:
    """A mean line with its 95% CI as a translucent band."""
    (line,) = ax.plot(x, row_mean, marker="o", ms=3, **kw)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.fill_between(
            np.asarray(x)[ok],
            np.asarray(lo)[ok],
            np.asarray(hi)[ok],
            color=line.get_color(),
            alpha=0.2,
            lw=0,
        )


def band_table(ax: plt.Axes, x: Any, table: pd.DataFrame, key: str, **kw: Any) -> None:
    """:func:`band` of a summary table's ``{key}_mean``, ``{key}_lo`` and ``{key}_hi`` columns
    (one row per x, as :func:`summarize_groups` writes them)."""
    cols = (table[f"{key}_{part}"].to_numpy() for part in ("mean", "lo", "hi"))
    band(ax, np.asarray(x), *cols, **kw)


def band_stats(
    ax: plt.Axes, x: Any, stats: Sequence[dict[str, float]], centre: str = "mean", **kw: Any
) -> None:
    """:func:`band` of one :func:`seed_stats` (or paired-difference) dict per x: the line is
    ``stats[i][centre]``, the band ``ci_low`` to ``ci_high``."""
    cols = (np.array([s[k] for s in stats]) for k in (centre, "ci_low", "ci_high"))
    band(ax, np.asarray(x), *cols, **kw)


def hline_ci(
    ax: plt.Axes, mean: float, lo: float, hi: float, label: str, color: str, ls: str = "--"
) -> None:
    """A horizontal reference (e.g. the deterministic pass) with its CI as a band."""
    ax.axhline(mean, color=color, ls=ls, lw=1.2, label=label)
    if np.isfinite(lo) and np.isfinite(hi):
        ax.axhspan(lo, hi, color=color, alpha=0.12, lw=0)


def method_label(row: pd.Series | dict) -> str:
    """Readable method name of a run row (``subnets K=4``, ``dropout (ensemble objective)``...)."""
    name = row["cfg.method.name"]
    if name == "dropout" and row.get("cfg.method.objective") == "ensemble":
        return "dropout (ensemble objective)"
    if name in ("subnets", "ensemble"):
        return f"{name} K={int(row['cfg.method.k'])}"
    return str(name)


def headline_t(df: pd.DataFrame) -> int:
    """The headline number of MC samples of a study's runs (``eval.mc_samples``, 32 by default)."""
    values = df.get("cfg.eval.mc_samples", pd.Series([32])).dropna()
    return int(values.iloc[0]) if len(values) else 32


def mc_sizes(
    df: pd.DataFrame, metric: str = "acc", set_name: str = "clean", nonempty: bool = True
) -> list[int]:
    """The sorted ``T`` of the ``test/<set_name>/mc<T>/<metric>`` columns of the runs (only those
    with a value in some run when ``nonempty``; :func:`dropens.keys.mc_sizes_of`)."""
    columns = [
        c
        for c in df.columns
        if (k := keys.parse(c)) is not None
        and k.metric == metric
        and (not nonempty or df[c].notna().any())
    ]
    return keys.mc_sizes_of(columns, set_name=set_name)


def require_columns(df: pd.DataFrame, columns: Sequence[str], study: str) -> None:
    """The report's headline columns exist (e.g. MC T=32 needs ``eval.mc_samples=32``), else one line."""
    from dropens.errors import ConfigError

    missing = [k for k in columns if k not in df]
    if missing:
        raise ConfigError(
            f"the {study} report needs {missing[0]} in the run records; they were trained with other "
            f"eval settings (keep eval.mc_samples=32, the study's default)"
        )


# what paired_by_seed returns without a pair (a metric the runs lack, or no seed in common)
NO_PAIRS = {
    "n": 0.0,
    "mean_diff": np.nan,
    "ci_low": np.nan,
    "ci_high": np.nan,
    "t": np.nan,
    "pvalue": np.nan,
}


def paired_by_seed(
    a: pd.DataFrame, b: pd.DataFrame, key: str, key_b: str | None = None
) -> dict[str, float]:
    """Run rows ``a`` vs ``b`` (one run per seed each, e.g. two dropout distributions of one
    architecture) on the seeds both have: :func:`dropens.metrics.stats.paired_difference` of
    ``a[key] - b[key_b or key]`` (mean difference, 95% t-interval, paired t-test p-value)."""
    key_b = key_b or key
    if key not in a or key_b not in b:
        return dict(NO_PAIRS)
    x = a.set_index("cfg.seed")[key].astype(float).dropna()
    y = b.set_index("cfg.seed")[key_b].astype(float).dropna()
    seeds = x.index.intersection(y.index)
    if not len(seeds):
        return dict(NO_PAIRS)
    return stats.paired_difference(x.loc[seeds].to_numpy(), y.loc[seeds].to_numpy())


def holm_adjusted(pvalues: Sequence[float]) -> np.ndarray:
    """:func:`dropens.metrics.stats.holm` over the finite p-values of ``pvalues`` as one family;
    NaN where a comparison has no test (no pairs). ``[m]`` in the input order."""
    p = np.asarray(pvalues, dtype=float)
    ok = np.isfinite(p)
    adjusted = np.full(p.shape, np.nan)
    if ok.any():
        adjusted[ok] = stats.holm(p[ok])
    return adjusted


def multiplicity_line(pvalues: Sequence[float], family: str, alpha: float = 0.05) -> str:
    """One results line on a family of paired tests: how many are nominally significant, how many
    that is by chance alone, and how many survive Holm's family-wise correction
    (:func:`holm_adjusted`). Non-finite p-values (no pairs) are left out; ``""`` when none is
    left."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = holm_adjusted(p)
    ok = np.isfinite(p)
    if not ok.any():
        return ""
    return (
        f"Multiplicity, {family}: {ok.sum()} paired tests, {int((p[ok] < alpha).sum())} with"
        f" p < {alpha} (~{alpha * ok.sum():.1f} expected by chance if nothing differed); "
        f"{int((adjusted[ok] < alpha).sum())} significant after Holm's correction"
        f" (smallest adjusted p = {adjusted[ok].min():.3f})."
    )


def write_paired_table(
    section: Section, table: pd.DataFrame, out_dir: Path, pcol: str = "pvalue"
) -> None:
    """A table of one paired test per row (raw p-values in ``pcol``) as ``paired.{csv,md}``, with
    ``pcol`` replaced by a ``Holm p`` column (the table is one family), and its
    :func:`multiplicity_line` among the section's results."""
    adjusted = holm_adjusted(table[pcol])
    shown = table.drop(columns=pcol).assign(**{"Holm p": [fmt_p(v) for v in adjusted]})
    section.tables.append(write_table(shown, out_dir, "paired"))
    if line := multiplicity_line(table[pcol], "every row of `paired.md`"):
        section.results.append(line)


@dataclass
class PairedGroup:
    """One group of runs of :func:`paired_vs_reference` (e.g. one architecture at one p): its
    variants are compared with its reference variant."""

    runs: pd.DataFrame
    head: dict[str, Any]  # the first columns of its rows of the table (``{"model": "mlp"}``)
    title: Callable[[str], str]  # its results line's start, given a metric's name ("accuracy")


PAIRED_METRICS = {"acc": "accuracy", "nll": "NLL", "ece": "ECE", "mi": "mutual information"}


def paired_vs_reference(
    groups: Sequence[PairedGroup],
    column: str,
    name: str,
    reference: str,
    variants: Callable[[pd.DataFrame], list[str]],
    mc: str,
    metrics: Sequence[str],
    diversity: Sequence[str],
    out_dir: Path,
    section: Section,
    acc_digits: int = 4,
    plain: str | None = None,
) -> str:
    """Each variant (the value of the run column ``column``, e.g. a mask distribution) minus the
    ``reference`` variant of the same group, paired by seed, as ``paired.{csv,md}``; returns its stem.

    The table: per group and non-reference variant, one row per evaluation (``deterministic`` and
    MC label ``mc``) with the ``head`` columns, ``name`` (the variant), ``vs``, ``evaluation``,
    ``pairs`` and ``diff <m>`` (:func:`fmt_paired`) for ``metrics`` and, for MC only, ``diversity``.
    The results: per group and metric of :data:`PAIRED_METRICS` one line with every variant's MC
    value (mean [95% CI]; ``acc_digits`` digits for the accuracy, else 4) and its paired difference
    to the reference; then the :func:`multiplicity_line` of every test of the table. ``plain``: a
    variant without dropout (its deterministic pass only; no mutual information, no MC row).
    """
    rows = []
    pvalues: list[float] = []
    for group in groups:
        ref = group.runs[group.runs[column] == reference]
        lines: dict[str, list[str]] = {m: [] for m in PAIRED_METRICS}
        for label in variants(group.runs):
            sub = group.runs[group.runs[column] == label]
            for m in lines:
                digits = acc_digits if m == "acc" else 4
                if label == plain:  # its one network; no MC, no pairing with MC
                    if m != "mi":
                        st = _stats_of(sub, keys.test("clean", "deterministic", m))
                        cell = fmt_ci(st["mean"], st["ci_low"], st["ci_high"], digits)
                        lines[m].append(f"plain (no dropout) {cell}")
                    continue
                key = keys.test("clean", mc, m)
                st = _stats_of(sub, key)
                cell = f"{label} {fmt_ci(st['mean'], st['ci_low'], st['ci_high'], digits)}"
                if label != reference and len(ref):
                    cell += f" (vs {reference} {fmt_paired(paired_by_seed(sub, ref, key), 4)})"
                lines[m].append(cell)
            if label == reference or not len(ref):
                continue
            for s in ("deterministic", mc):
                if label == plain and s == mc:
                    continue
                row = {
                    **group.head,
                    name: label,
                    "vs": reference,
                    "evaluation": s,
                    "pairs": int(paired_by_seed(sub, ref, keys.test("clean", s, "acc"))["n"]),
                }
                for m in (*metrics, *diversity):  # no diversity in one deterministic pass
                    d = paired_by_seed(sub, ref, keys.test("clean", s, m))
                    diverse = m in metrics or s == mc
                    row[f"diff {m}"] = fmt_paired(d, 4) if diverse else "-"
                    pvalues += [d["pvalue"]] if diverse else []
                rows.append(row)
        for m, cells in lines.items():
            section.results.append(group.title(PAIRED_METRICS[m]) + "; ".join(cells))
    if line := multiplicity_line(pvalues, "every cell of `paired.md`"):
        section.results.append(line)
    return write_table(pd.DataFrame(rows), out_dir, "paired")


def _stats_of(runs: pd.DataFrame, key: str) -> dict[str, float]:
    """:func:`seed_stats` of a column (no value without it)."""
    return seed_stats(runs[key]) if key in runs else seed_stats([])


def fmt_p(p: float) -> str:
    """``p=0.031``, ``p<0.001``, or ``-`` without a test (one seed)."""
    if not np.isfinite(p):
        return "-"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def fmt_paired(d: dict[str, float], digits: int = 3) -> str:
    """``+0.012 [+0.004, +0.020], p=0.031`` (mean paired difference [95% CI], paired t-test);
    ``+0.012 (1 seed)`` without an interval; ``-`` without pairs."""
    if not d["n"] or not np.isfinite(d["mean_diff"]):
        return "-"
    mean = f"{d['mean_diff']:+.{digits}f}"
    if not np.isfinite(d["ci_low"]):
        return f"{mean} ({int(d['n'])} seed)"
    return f"{mean} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}], {fmt_p(d['pvalue'])}"


def ci_line(
    ax: plt.Axes, x: np.ndarray, mean: np.ndarray, lo: np.ndarray, hi: np.ndarray, **kw: Any
) -> None:
    """A mean line with 95% CI error bars (bars left out where there is no interval, e.g. one
    seed): for a few x values where translucent :func:`band` s of several lines would overlap."""
    x, mean, lo, hi = (np.asarray(v, dtype=float) for v in (x, mean, lo, hi))
    ok = np.isfinite(lo) & np.isfinite(hi)
    yerr = np.vstack([np.where(ok, mean - lo, 0.0), np.where(ok, hi - mean, 0.0)])
    ax.errorbar(x, mean, yerr=yerr if ok.any() else None, capsize=3, ms=4, **kw)


def ci_line_stats(
    ax: plt.Axes, x: Any, stats: Sequence[dict[str, float]], centre: str = "mean", **kw: Any
) -> None:
    """:func:`ci_line` of one :func:`seed_stats` (or paired-difference) dict per x (the error-bar
    counterpart of :func:`band_stats`)."""
    cols = (np.array([s[k] for s in stats], dtype=float) for k in (centre, "ci_low", "ci_high"))
    ci_line(ax, np.asarray(x, dtype=float), *cols, **kw)


def ci_line_table(ax: plt.Axes, x: Any, table: pd.DataFrame, key: str, **kw: Any) -> None:
    """:func:`ci_line` of a summary table's ``{key}_mean``, ``_lo`` and ``_hi`` columns (the
    error-bar counterpart of :func:`band_table`)."""
    cols = (table[f"{key}_{part}"].to_numpy(dtype=float) for part in ("mean", "lo", "hi"))
    ci_line(ax, np.asarray(x, dtype=float), *cols, **kw)


def dodge(x: Any, lane: int, lanes: int, width: float, log: bool = False) -> np.ndarray:
    """``x`` shifted for lane ``lane`` of ``lanes`` (lanes centred on ``x``, ``width`` apart) so
    that the error bars of several lines at the same x do not hide each other; on a log axis
    ``width`` is in octaves (a factor ``2 ** width`` per lane)."""
    offset = (lane - (lanes - 1) / 2) * width
    x = np.asarray(x, dtype=float)
    return x * 2.0**offset if log else x + offset


def dot_ci(
    ax: plt.Axes,
    x: float,
    values: Sequence[float] | np.ndarray | pd.Series,
    color: str,
    marker: str = "o",
    filled: bool = True,
    label: str | None = None,
    seeds: bool = True,
) -> dict[str, float]:
    """One cell of a dot plot: the mean of ``values`` (one per seed) with its 95% CI error bar and,
    with ``seeds``, each seed as a small black dot; returns its :func:`seed_stats`. For values far
    from 0 (accuracies, AUROCs), where a bar whose axis does not start at 0 would mislead."""
    vals = np.asarray(values, dtype=float)
    vals = vals[np.isfinite(vals)]
    s = seed_stats(vals)
    if not s["n"]:
        return s
    ax.errorbar(
        x,
        s["mean"],
        yerr=ci_yerr(s),
        fmt=marker,
        ms=7,
        color=color,
        mfc=color if filled else "white",
        mew=1.5,
        capsize=4,
        zorder=3,
        label=label,
    )
    if seeds:
        ax.scatter(np.full(len(vals), x), vals, color="k", s=7, zorder=4)
    return s


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def prereg_commit(study: str) -> str:
    """``"<hash> <date>"`` of the commit that first added ``experiments/<study>.yaml`` (a
    pre-registered study's predictions), or a note that there is no git history here."""
    line = _git(
        "log",
        "--diff-filter=A",
        "--format=%h %ad",
        "--date=short",
        "--",
        f"experiments/{study}.yaml",
    )
    return line.splitlines()[-1] if line else "unknown (no git history here)"
