"""``family`` study: where dropout sits between one network and K = 4 independent networks, beside
its explicit descendants (subnets, Masksembles, BatchEnsemble, MIMO, Packed-Ensembles), decided by
the rule pre-registered in ``experiments/family.yaml`` (its ``predictions:`` block).

A *cell* is one method's evaluation: ``plain`` (its one network), ``dropout`` twice (its
deterministic pass and MC with T = 4 masks), ``subnets``, ``masksembles`` at each scale S,
``batchensemble``, ``mimo``, ``packed`` and ``ensemble`` (the average of their 4 members). The
normalized disagreement ND = disagreement / (1 - mean member accuracy) (Fort, Hu &
Lakshminarayanan 2019) of a cell with members is read from its clean test row; a one-network cell
(plain, dropout's deterministic pass) has ND = 0 by definition.

Per arm (data x model), everything paired by seed:

- ``summary.{csv,md}``: every cell's accuracy, NLL and ECE (NLL and ECE also after temperature
  scaling fitted on the validation split; scaling does not change the top class), ND, parameters
  and training FLOPs per example (``run.json``, :mod:`dropens.cost`), wall time; on the
  Fashion-MNIST arm also the mean accuracy and NLL over every shifted set (all corruptions and
  severities, none left out) and the OOD AUROC by predictive entropy and by mutual information
  (:mod:`dropens.reporting.shift`'s keys); mean [95% CI] over seeds;
- ``paired.{csv,md}``: the pre-registered quantities F1 (rho = ND(dropout, mc4) / ND(ensemble,
  members), per seed; one-sample t-tests of the per-seed ratios against 0.25 and 0.5) and F2
  (g(dropout), g(ensemble), their difference; TOST and one-sided t-tests against the NLL
  margin, :func:`dropens.metrics.stats.margin_tests`) with 95% and 90% t-intervals, raw and
  Holm-adjusted p-values of the five deciding tests (one family per arm);
- ``verdict.{csv,md}``: per arm, the verdict by the decision rule (``regularizer-like``,
  ``ensemble-like``, ``not decided``; ``incomplete`` while a deciding cell lacks paired seeds),
  which predictions held, which intervals straddle a margin, what the data cannot decide;
- figures: ``plane`` (the diversity-accuracy plane: ND at 4 members against accuracy and
  calibrated NLL, one point per cell, 95% CIs in both directions), ``cost`` (accuracy, NLL and
  ECE, raw and temperature-scaled, against parameters and training FLOPs per example),
  ``scale_path`` (Masksembles S = 1.5 ... 6 as a path in (ND, calibrated NLL) beside dropout MC,
  subnets, the ensemble and the plain network).

Missing cells (not run yet, or an arm without them) are left out of the figures and named in the
section's results; the verdict of an arm waits for its deciding cells.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dropens import keys
from dropens.data.shift import parse_set_name
from dropens.metrics import stats
from dropens.reporting.common import (
    Section,
    ci_cell,
    fmt_ci,
    fmt_p,
    prereg_commit,
    summarize_groups,
    write_table,
)
from dropens.reporting.family_cells import (
    ARMS,
    DET,
    MC,
    MEMBERS,
    METRICS,
    Cell,
    K,
    arms_of,
    cells_of,
    runs_of,
)
from dropens.reporting.family_figures import cost_figure, plane_figure, scale_path_figure
from dropens.reporting.readings_tune import arm_of
from dropens.study import load_study_file

ALPHA = 0.05  # every test of the decision rule (one-sided, Holm within an arm)


def _col(runs: pd.DataFrame, key: str) -> np.ndarray:
    return runs[key].astype(float).to_numpy() if key in runs else np.full(len(runs), np.nan)


def _shifted_sets(df: pd.DataFrame) -> list[str]:
    """The names of the shifted test sets (``<corruption>_<severity>``) the records have."""
    found = {
        k.set
        for c in df.columns
        if (k := keys.parse(c)) is not None and k.stage == "test" and parse_set_name(k.set)
    }
    return sorted(found)


def _shift_mean(runs: pd.DataFrame, shifted: list[str], label: str, metric: str) -> np.ndarray:
    """Per run, the mean of ``metric`` over the shifted sets it has a value for (NaN: none)."""
    cols = {s: _col(runs, keys.test(s, label, metric)) for s in shifted}
    if not cols:
        return np.full(len(runs), np.nan)
    return pd.DataFrame(cols).mean(axis=1, skipna=True).to_numpy()


def per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, cell, seed) with :data:`METRICS` (NaN where a run lacks a key)."""
    df = df.assign(arm=df.apply(arm_of, axis=1)) if "arm" not in df else df
    shifted = _shifted_sets(df)
    parts = []
    for arm in arms_of(df):
        runs = df[df["arm"] == arm]
        for cell in cells_of(df):
            chosen = runs_of(runs, cell)
            if chosen.empty:
                continue
            lab, ts = cell.label, keys.ts_label(cell.label)

            def clean(label: str, metric: str, runs: pd.DataFrame = chosen) -> np.ndarray:
                return _col(runs, keys.test("clean", label, metric))

            if cell.one_network:
                nd = np.zeros(len(chosen))
                mi = np.zeros(len(chosen))
            else:
                nd = clean(lab, "disagreement") / (1.0 - clean(lab, "member_acc"))
                mi = clean(lab, "mi")

            parts.append(
                pd.DataFrame(
                    {
                        "arm": arm,
                        "cell": cell.key,
                        "seed": chosen["cfg.seed"].astype(int).to_numpy(),
                        "acc": clean(lab, "acc"),
                        "nll": clean(lab, "nll"),
                        "nll_ts": clean(ts, "nll"),
                        "ece": clean(lab, "ece"),
                        "ece_ts": clean(ts, "ece"),
                        "nd": nd,
                        "mi": mi,
                        "n_params": _col(chosen, "n_params"),
                        "flops": _col(chosen, "train_flops_per_example"),
                        "wall_s": _col(chosen, "wall_s"),
                        "shift_acc": _shift_mean(chosen, shifted, lab, "acc"),
                        "shift_nll": _shift_mean(chosen, shifted, lab, "nll"),
                        "shift_nll_ts": _shift_mean(chosen, shifted, ts, "nll"),
                        "auroc_entropy": _col(chosen, keys.test("ood", lab, "auroc_entropy")),
                        "auroc_mi": _col(chosen, keys.test("ood", lab, "auroc_mi"))
                        if not cell.one_network
                        else np.full(len(chosen), np.nan),
                    }
                )
            )
    columns = ["arm", "cell", "seed", *METRICS]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def _series(seeds: pd.DataFrame, arm: str, cell: str, column: str) -> pd.Series:
    """Per-seed values of one column of one cell of :func:`per_seed` (index: seed, finite only)."""
    rows = seeds[(seeds["arm"] == arm) & (seeds["cell"] == cell)]
    values = rows.set_index("seed")[column].astype(float)
    return values[np.isfinite(values)]


# ------------------------------------------------------------------ pre-registered quantities


@dataclass(frozen=True)
class Test:
    """One deciding test of the decision rule."""

    letter: str
    quantity: str  # qid of its row in :func:`analyse`
    column: str  # the p-value it reads
    reading: str  # "regularizer" | "ensemble"
    words: str  # what its rejection shows


DECIDING = (
    Test("a", "F1 rho", "p_below_ratio_low", "regularizer", "F1 rho < 0.25"),
    Test("b", "F2 g(dropout)", "p_tost", "regularizer", "F2 g(dropout) equivalent to 0"),
    Test("c", "F2 g(ensemble)", "p_below_low", "regularizer", "F2 g(ensemble) < -margin"),
    Test("d", "F1 rho", "p_above_ratio_high", "ensemble", "F1 rho > 0.5"),
    Test("e", "F2 g(dropout) - g(ensemble)", "p_tost", "ensemble", "F2 gains equivalent"),
)
REGULARIZER = "".join(t.letter for t in DECIDING if t.reading == "regularizer")
ENSEMBLE = "".join(t.letter for t in DECIDING if t.reading == "ensemble")


def _one_sample(values: pd.Series, delta: float, alpha: float = ALPHA) -> dict[str, float]:
    """Mean of per-seed ``values`` with its 95% and 90% t-intervals and the one-sided tests of
    :func:`dropens.metrics.stats.margin_tests` against ``±delta`` (values vs 0)."""
    x = values.to_numpy(dtype=float)
    if x.size < 2:
        return {"n": float(x.size), "mean": float(x.mean()) if x.size else np.nan}
    zero = np.zeros_like(x)
    ci95 = stats.paired_difference(x, zero)
    tests = stats.margin_tests(x, zero, delta, alpha)
    return {
        "n": float(x.size),
        "mean": float(x.mean()),
        "ci95_low": ci95["ci_low"],
        "ci95_high": ci95["ci_high"],
        "ci90_low": tests["ci90_low"],
        "ci90_high": tests["ci90_high"],
        "p_tost": tests["p_tost"],
        "p_below_low": tests["p_below_low"],
        "p_below_high": tests["p_below_high"],
        "p_above_high": tests["p_above_high"],
    }


def _aligned(*series: pd.Series) -> list[pd.Series]:
    """The series on the seeds they all have."""
    seeds = series[0].index
    for s in series[1:]:
        seeds = seeds.intersection(s.index)
    seeds = seeds.sort_values()
    return [s.loc[seeds] for s in series]


def quantities(seeds: pd.DataFrame, arm: str) -> dict[str, pd.Series]:
    """Per-seed values of F1's ratio and F2's gains in one arm (index: seed; only paired seeds)."""
    nd_mc, nd_ens = _aligned(
        _series(seeds, arm, "dropout_mc4", "nd"), _series(seeds, arm, "ensemble", "nd")
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = nd_mc / nd_ens
    rho = rho[np.isfinite(rho)]
    mc_ts, det_ts = _aligned(
        _series(seeds, arm, "dropout_mc4", "nll_ts"), _series(seeds, arm, "dropout_det", "nll_ts")
    )
    ens_ts, plain_ts = _aligned(
        _series(seeds, arm, "ensemble", "nll_ts"), _series(seeds, arm, "plain", "nll_ts")
    )
    g_dropout, g_ensemble = mc_ts - det_ts, ens_ts - plain_ts
    a, b = _aligned(g_dropout, g_ensemble)
    return {
        "F1 rho": rho,
        "F2 g(dropout)": g_dropout,
        "F2 g(ensemble)": g_ensemble,
        "F2 g(dropout) - g(ensemble)": a - b,
    }


QUANTITY_TEXT = {
    "F1 rho": f"rho = ND(dropout, {MC}) / ND(ensemble, members)",
    "F2 g(dropout)": f"g(dropout) = NLL(dropout, {keys.ts_label(MC)}) - NLL(dropout, "
    f"{keys.ts_label(DET)})",
    "F2 g(ensemble)": f"g(ensemble) = NLL(ensemble, {keys.ts_label(MEMBERS)}) - NLL(plain, "
    f"{keys.ts_label(DET)})",
    "F2 g(dropout) - g(ensemble)": "g(dropout) - g(ensemble)",
}


def analyse(df: pd.DataFrame, margins: dict[str, float]) -> pd.DataFrame:
    """One row per (arm, quantity): mean, 95% and 90% t-intervals, the one-sided p-values, the
    predicted regions and, per deciding test, raw and Holm-adjusted p-values (one family per arm)."""
    seeds = per_seed(df)
    low, high, nll = (float(margins[k]) for k in ("ratio_low", "ratio_high", "nll"))
    rows = []
    for arm in list(dict.fromkeys(seeds["arm"])) if len(seeds) else []:
        values = quantities(seeds, arm)
        rho_low, rho_high = _one_sample(values["F1 rho"], low), _one_sample(values["F1 rho"], high)
        arm_rows = [
            {
                "qid": "F1 rho",
                **rho_low,
                "p_below_ratio_low": rho_low.get("p_below_high", np.nan),
                "p_above_ratio_high": rho_high.get("p_above_high", np.nan),
                "margin": f"{low:g} / {high:g}",
                "regularizer": f"< {low:g}",
                "ensemble": f"> {high:g}",
            },
            {
                "qid": "F2 g(dropout)",
                **_one_sample(values["F2 g(dropout)"], nll),
                "margin": f"±{nll:g}",
                "regularizer": f"within ±{nll:g}",
                "ensemble": "-",
            },
            {
                "qid": "F2 g(ensemble)",
                **_one_sample(values["F2 g(ensemble)"], nll),
                "margin": f"±{nll:g}",
                "regularizer": f"< -{nll:g}",
                "ensemble": "-",
            },
            {
                "qid": "F2 g(dropout) - g(ensemble)",
                **_one_sample(values["F2 g(dropout) - g(ensemble)"], nll),
                "margin": f"±{nll:g}",
                "regularizer": "-",
                "ensemble": f"within ±{nll:g}",
            },
        ]
        for r in arm_rows:
            r["arm"] = arm
            r["quantity"] = QUANTITY_TEXT[r["qid"]]
        by_qid = {r["qid"]: r for r in arm_rows}
        raw = np.array([float(by_qid[t.quantity].get(t.column, np.nan)) for t in DECIDING])
        ok = np.isfinite(raw)
        adjusted = np.full(raw.shape, np.nan)
        if ok.any():
            adjusted[ok] = stats.holm(raw[ok])
        for t, p_raw, p_holm in zip(DECIDING, raw, adjusted):
            row = by_qid[t.quantity]
            row[f"p_{t.letter}"] = p_raw
            row[f"holm_{t.letter}"] = p_holm
        rows += arm_rows
    return pd.DataFrame(rows)


def _unpaired(seeds: pd.DataFrame, arm: str) -> str:
    """The deciding cells' seeds that the other deciding cells lack (``""``: all paired)."""
    deciding = ("plain", "dropout_det", "dropout_mc4", "ensemble")
    have = {c: set(_series(seeds, arm, c, "nll_ts").index) for c in deciding}
    union = set().union(*have.values())
    lacks = [f"{c} lacks seed(s) {sorted(union - s)}" for c, s in have.items() if union - s]
    missing_nd = sorted(union - set(_series(seeds, arm, "dropout_mc4", "nd").index))
    missing_nd += sorted(union - set(_series(seeds, arm, "ensemble", "nd").index))
    if missing_nd:
        lacks.append(f"no ND for seed(s) {sorted(set(missing_nd))}")
    mc = seeds[(seeds["arm"] == arm) & (seeds["cell"] == "dropout_mc4")]
    if len(mc) and mc["acc"].notna().any() and mc["nll_ts"].isna().all():
        lacks.append(
            f"dropout runs have {MC} but no {keys.ts_label(MC)} (temperature scaling covers the "
            f"MC headline only: eval.mc_samples must be {K})"
        )
    return "; ".join(lacks)


def verdicts(df: pd.DataFrame, table: pd.DataFrame, margins: dict[str, float]) -> pd.DataFrame:
    """Per arm, the pre-registered decision rule on the Holm-adjusted deciding tests; an arm whose
    deciding cells lack a test or a paired seed is ``incomplete``."""
    seeds = per_seed(df)
    out = []
    for arm, rows in table.groupby("arm", sort=False):
        by_qid = {r["qid"]: r for _, r in rows.iterrows()}
        rejected, untested = {}, []
        for t in DECIDING:
            p = float(by_qid[t.quantity].get(f"holm_{t.letter}", np.nan))
            rejected[t.letter] = bool(np.isfinite(p) and p < ALPHA)
            if not np.isfinite(p):
                untested.append(t.letter)
        unpaired = _unpaired(seeds, arm)
        if untested or unpaired:
            why = []
            if untested:
                why.append(f"no test for {''.join(untested)}: fewer than 2 paired seeds")
            if unpaired:
                why.append(unpaired)
            verdict = f"incomplete ({'; '.join(why)})"
        elif all(rejected[x] for x in REGULARIZER):
            verdict = "regularizer-like"
        elif all(rejected[x] for x in ENSEMBLE):
            verdict = "ensemble-like"
        else:
            verdict = "not decided"
        held = [t.words for t in DECIDING if rejected[t.letter]]
        failed = [t.words for t in DECIDING if not rejected[t.letter] and t.letter not in untested]
        not_tested = [t.words for t in DECIDING if t.letter in untested]
        out.append(
            {
                "arm": arm,
                "verdict": verdict,
                "pairs": ", ".join(
                    f"{q.split(' ', 1)[1]}: {int(r.get('n', 0))}" for q, r in by_qid.items()
                ),
                f"regularizer tests ({REGULARIZER}) rejected": "".join(
                    x for x in REGULARIZER if rejected[x]
                )
                or "none",
                f"ensemble tests ({ENSEMBLE}) rejected": "".join(x for x in ENSEMBLE if rejected[x])
                or "none",
                "held": "; ".join(held) or "none",
                "not shown": "; ".join(failed) or "none",
                "not tested": "; ".join(not_tested) or "none",
                "straddles a margin": straddles(by_qid, margins) or "none",
            }
        )
    return pd.DataFrame(out)


def straddles(by_qid: dict[str, pd.Series], margins: dict[str, float]) -> str:
    """The 90% intervals (those of the one-sided tests and TOST) that contain a margin."""
    low, high, nll = (float(margins[k]) for k in ("ratio_low", "ratio_high", "nll"))
    bounds = {
        "F1 rho": (low, high),
        "F2 g(dropout)": (-nll, nll),
        "F2 g(ensemble)": (-nll,),
        "F2 g(dropout) - g(ensemble)": (-nll, nll),
    }
    parts = []
    for qid, marks in bounds.items():
        r = by_qid.get(qid)
        if r is None or not np.isfinite(r.get("ci90_low", np.nan)):
            continue
        inside = [m for m in marks if r["ci90_low"] <= m <= r["ci90_high"]]
        if inside:
            parts.append(
                f"{qid.split(' ', 1)[1]} 90% CI [{r['ci90_low']:+.3f}, {r['ci90_high']:+.3f}] "
                f"contains {' and '.join(f'{m:g}' for m in inside)}"
            )
    return "; ".join(parts)


# ------------------------------------------------------------------ tables and text


def _paired_table(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in table.iterrows():
        tests = [
            f"({t.letter}) {t.words}: {fmt_p(r.get(f'p_{t.letter}', np.nan))} -> Holm "
            f"{fmt_p(r.get(f'holm_{t.letter}', np.nan))}"
            for t in DECIDING
            if t.quantity == r["qid"]
        ]
        mean = r.get("mean", np.nan)
        rows.append(
            {
                "arm": r["arm"],
                "quantity": f"{r['qid'].split(' ')[0]} {r['quantity']}",
                "n": int(r.get("n", 0)),
                "mean [95% CI]": fmt_ci(
                    mean, r.get("ci95_low", np.nan), r.get("ci95_high", np.nan), 4
                ),
                "90% CI": fmt_ci(
                    mean, r.get("ci90_low", np.nan), r.get("ci90_high", np.nan), 4
                ).split(" ", 1)[-1],
                "margin": r["margin"],
                "regularizer predicts": r["regularizer"],
                "ensemble predicts": r["ensemble"],
                "deciding tests (one-sided p, Holm within the arm)": "; ".join(tests),
            }
        )
    return pd.DataFrame(rows)


SUMMARY_COLUMNS = (  # (per-seed column, header, digits)
    ("acc", "accuracy", 4),
    ("nll", "NLL", 4),
    ("nll_ts", "NLL (TS)", 4),
    ("ece", "ECE", 4),
    ("ece_ts", "ECE (TS)", 4),
    ("nd", "ND", 3),
    ("wall_s", "wall time (s)", 0),
)
SHIFT_COLUMNS = (
    ("shift_acc", "shift accuracy", 4),
    ("shift_nll", "shift NLL", 4),
    ("shift_nll_ts", "shift NLL (TS)", 4),
    ("auroc_entropy", "OOD AUROC (entropy)", 3),
    ("auroc_mi", "OOD AUROC (MI)", 3),
)


def summary_stats(seeds: pd.DataFrame) -> pd.DataFrame:
    """:func:`dropens.reporting.common.summarize_groups` of :func:`per_seed` by (arm, cell).

    Parameters and FLOPs are the same for every seed of a cell: their t-interval of zero spread
    is NaN (numpy's warning about it silenced); only their means are shown."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return summarize_groups(seeds, ["arm", "cell"], METRICS)


def _count(mean: float) -> str:
    return f"{mean:,.0f}" if np.isfinite(mean) else "-"


def _summary_table(summary: pd.DataFrame, arms: list[str], cells: list[Cell]) -> pd.DataFrame:
    rows = []
    for arm in arms:
        shift = arm.startswith("fashion_mnist")
        for cell in cells:
            found = summary[(summary["arm"] == arm) & (summary["cell"] == cell.key)]
            row: dict[str, object] = {"arm": arm, "cell": cell.name}
            if found.empty:
                row["seeds"] = 0
                row.update({h: "-" for _, h, _ in SUMMARY_COLUMNS})
                row.update({"parameters": "-", "train FLOPs / example": "-"})
                if shift:
                    row.update({h: "-" for _, h, _ in SHIFT_COLUMNS})
                row["note"] = "not run yet"
                rows.append(row)
                continue
            r = found.iloc[0]
            row["seeds"] = int(r["n"])
            for col, header, digits in SUMMARY_COLUMNS:
                row[header] = ci_cell(r, col, digits)
            if cell.one_network:
                row["ND"] = "0 (one network)"
            row["parameters"] = _count(r["n_params_mean"])
            row["train FLOPs / example"] = (
                f"{r['flops_mean']:.3g}" if np.isfinite(r["flops_mean"]) else "-"
            )
            if shift:
                for col, header, digits in SHIFT_COLUMNS:
                    row[header] = ci_cell(r, col, digits)
            row["note"] = ""
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # the note last (only when a cell is missing); "-" where an arm has no such column (shift)
    notes = table.pop("note")
    if (notes != "").any():
        table["note"] = notes
    return table.fillna("-")


def _missing_cells(seeds: pd.DataFrame, arms: list[str], cells: list[Cell]) -> list[str]:
    out = []
    for arm in arms:
        have = set(seeds.loc[seeds["arm"] == arm, "cell"])
        gone = [c.name for c in cells if c.key not in have]
        if gone:
            out.append(f"{ARMS.get(arm, arm)}: {', '.join(gone)}")
    return out


def _verdict_lines(table: pd.DataFrame, verdict: pd.DataFrame) -> list[str]:
    lines = []
    for _, v in verdict.iterrows():
        arm = v["arm"]
        rows = {r["qid"]: r for _, r in table[table["arm"] == arm].iterrows()}

        def cell(qid: str, digits: int = 4, rows: dict = rows) -> str:
            r = rows[qid]
            if not np.isfinite(r.get("ci95_low", np.nan)):
                n = int(r.get("n", 0))
                mean = r.get("mean", np.nan)
                return f"{mean:+.{digits}f} ({n} seed)" if n else "no paired seeds"
            return (
                f"{r['mean']:+.{digits}f} [95% CI {r['ci95_low']:+.{digits}f}, "
                f"{r['ci95_high']:+.{digits}f}; 90% CI {r['ci90_low']:+.{digits}f}, "
                f"{r['ci90_high']:+.{digits}f}] (n={int(r['n'])})"
            )

        def p(letter: str, rows: dict = rows) -> str:
            t = next(t for t in DECIDING if t.letter == letter)
            r = rows[t.quantity]
            return (
                f"({letter}) {fmt_p(r.get(f'p_{letter}', np.nan))}, Holm "
                f"{fmt_p(r.get(f'holm_{letter}', np.nan))}"
            )

        name = ARMS.get(arm, arm)
        lines.append(
            f"**{name}: verdict {v['verdict']}** (decision rule of experiments/family.yaml; "
            f"Holm over the five one-sided deciding tests of the arm at {ALPHA}; held: "
            f"{v['held']}; not shown: {v['not shown']}; not tested: {v['not tested']})."
        )
        lines.append(
            f"{name}, F1 (diversity axis): {QUANTITY_TEXT['F1 rho']} = {cell('F1 rho', 3)}; "
            f"one-sample t-tests of the per-seed ratios (each seed's dropout run against the "
            f"ensemble of the same seed): rho < 0.25 {p('a')}; rho > 0.5 {p('d')}."
        )
        lines.append(
            f"{name}, F2 (what averaging buys, temperature-scaled NLL in nats): "
            f"{QUANTITY_TEXT['F2 g(dropout)']} = {cell('F2 g(dropout)')}, TOST {p('b')}; "
            f"{QUANTITY_TEXT['F2 g(ensemble)']} = {cell('F2 g(ensemble)')}, below -margin "
            f"{p('c')}; g(dropout) - g(ensemble) = {cell('F2 g(dropout) - g(ensemble)')}, "
            f"TOST {p('e')}."
        )
        lines.append(f"{name}, what the data cannot decide: {_cannot_decide(v)}")
    return lines


def _cannot_decide(v: pd.Series) -> str:
    parts = []
    if str(v["verdict"]).startswith("incomplete"):
        parts.append("no verdict until every deciding cell has its paired seeds")
    elif v["straddles a margin"] != "none":
        parts.append(f"intervals on a margin: {v['straddles a margin']}")
    parts.append(
        "a verdict reads the two pre-registered quantities at K = 4 on this arm only (the other "
        "arm has its own); the family methods' positions (F3, F4) are descriptive and their knobs "
        "are their papers' defaults, not tuned; with 5 seeds only effects of about two seed "
        "standard deviations are decidable, and a test that does not reject is not evidence of "
        "no difference"
    )
    return "; ".join(parts) + "."


def _scale_line(summary: pd.DataFrame, arm: str, cells: list[Cell]) -> str | None:
    """F3 (descriptive): ND and calibrated NLL along the masksembles path."""
    parts = []
    for cell in cells:
        found = summary[(summary["arm"] == arm) & (summary["cell"] == cell.key)]
        if found.empty or cell.key in ("plain", "dropout_det"):
            continue
        r = found.iloc[0]
        if cell.method in ("masksembles", "dropout", "subnets", "ensemble"):
            parts.append(
                f"{cell.name} ND {ci_cell(r, 'nd', 3)}, NLL (TS) {ci_cell(r, 'nll_ts', 4)}"
            )
    if not parts:
        return None
    means = [
        summary.loc[(summary["arm"] == arm) & (summary["cell"] == c.key), "nd_mean"]
        for c in cells
        if c.method == "masksembles"
    ]
    means = [float(m.iloc[0]) for m in means if len(m)]
    trend = ""
    if len(means) >= 2:
        grows = all(b > a for a, b in itertools.pairwise(means))
        trend = (
            " The mean ND grows with S at every step"
            if grows
            else " The mean ND does not grow with S at every step"
        ) + " (F3 predicts it grows; descriptive, not tested)."
    return f"{ARMS.get(arm, arm)}, F3 (the Masksembles path): " + "; ".join(parts) + "." + trend


def _cost_line(summary: pd.DataFrame, arm: str, cells: list[Cell]) -> str | None:
    """F4 (descriptive): parameters, FLOPs and wall time relative to the plain network."""
    base = summary[(summary["arm"] == arm) & (summary["cell"] == "plain")]
    if base.empty:
        return None
    b = base.iloc[0]
    parts = []
    for cell in cells:
        found = summary[(summary["arm"] == arm) & (summary["cell"] == cell.key)]
        if found.empty or cell.key in ("plain", "dropout_det"):
            continue
        ratio = {m: found.iloc[0][f"{m}_mean"] / b[f"{m}_mean"] for m in ("n_params", "flops")}
        ratio["wall_s"] = found.iloc[0]["wall_s_mean"] / b["wall_s_mean"]
        parts.append(
            f"{cell.name.replace(f', MC T={K}', '')} {ratio['n_params']:.2g}x parameters, "
            f"{ratio['flops']:.2g}x FLOPs, {ratio['wall_s']:.2g}x wall time"
        )
    if not parts:
        return None
    return (
        f"{ARMS.get(arm, arm)}, F4 cost against the plain network (means over seeds; "
        f"`summary.md` has accuracy, NLL and ECE of every cell): " + "; ".join(parts) + "."
    )


def build(df: pd.DataFrame, out_dir: Path) -> Section:
    section = Section()
    plan = load_study_file("family").predictions
    margins = {k: float(v) for k, v in plan["margins"].items()}
    df = df.assign(arm=df.apply(arm_of, axis=1))
    arms = arms_of(df)
    cells = cells_of(df)
    seeds = per_seed(df)
    summary = summary_stats(seeds)
    table = analyse(df, margins)
    verdict = verdicts(df, table, margins)
    section.results.append(
        f"Pre-registration: the quantities F1-F4, margins (ND ratio {margins['ratio_low']:g} / "
        f"{margins['ratio_high']:g}, NLL {margins['nll']:g} nats) and the decision rule were "
        f"committed in {prereg_commit('family')} (experiments/family.yaml; `git log -- "
        "experiments/family.yaml` lists every later change), before the first record of this "
        "study or its tuning stage (the Records line names theirs)."
    )
    section.results += _verdict_lines(table, verdict)
    for arm in arms:
        for line in (_scale_line(summary, arm, cells), _cost_line(summary, arm, cells)):
            if line:
                section.results.append(line)
    missing = _missing_cells(seeds, arms, cells)
    for arm in ARMS:
        if arm not in arms:
            missing.append(f"{ARMS[arm]}: every cell (no complete record of this arm)")
    if missing:
        section.results.append(
            "Missing cells (not in the tables' statistics, not drawn in the figures): "
            + "; ".join(missing)
            + "."
        )
    section.results.append(
        "ND = disagreement / (1 - mean member accuracy) on the clean test set, at 4 members "
        "(dropout: 4 MC masks; one-network cells: 0). TS: temperature scaling fitted on the "
        "validation split. Shift columns: the mean over every shifted set (5 corruptions x 5 "
        "severities), none left out; OOD AUROC: clean test images vs MNIST digits."
    )
    section.tables.append(write_table(_summary_table(summary, arms, cells), out_dir, "summary"))
    section.tables.append(write_table(_paired_table(table), out_dir, "paired"))
    section.tables.append(write_table(verdict, out_dir, "verdict"))
    section.figures.append(plane_figure(summary, arms, cells, out_dir))
    section.figures.append(cost_figure(summary, arms, cells, out_dir))
    section.figures.append(scale_path_figure(summary, arms, cells, out_dir))
    return section
