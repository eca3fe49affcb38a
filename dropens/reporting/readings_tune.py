"""``readings_tune`` study: every method's hyper-parameter chosen on validation data.

- ``selection.{csv,md}``: per arm (data x model), method and value of its tuned hyper-parameter,
  the validation NLL and accuracy of the deterministic pass (of the early-stopped checkpoint),
  mean [95% CI] over the tuning seeds, and which value is selected;
- ``selected.yaml``: ``{arm: {method: {override key: value}}}``, what ``experiments/readings.yaml``
  reads (``@readings_tune/<arm>/<method>/<key>``); written only for a (arm, method) whose every
  value has every tuning seed, so an incomplete tuning never selects;
- ``selection``: validation NLL against the hyper-parameter, one panel per arm and method.

The rule (pre-registered in experiments/readings.yaml): the lowest mean validation NLL of the
deterministic pass over the tuning seeds; ties go to the smaller value.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml

from dropens import keys
from dropens.reporting.common import Section, fmt_ci, save_figure, seed_stats, write_table

KNOBS = {"plain": "optim.weight_decay", "dropout": "dropout.p", "explicit": "dropout.p"}
ARM_TITLES = {
    "mnist1d_mlp": "MNIST-1D MLP (residual)",
    "mnist1d_cnn1d": "MNIST-1D CNN",
    "fashion_mnist_mlp": "Fashion-MNIST MLP (10k train)",
    "fashion_mnist_cnn2d": "Fashion-MNIST CNN",  # + its channels (arm_title)
}
VAL_NLL = keys.test("val", "deterministic", "nll")
VAL_ACC = keys.test("val", "deterministic", "acc")


def arm_of(run: pd.Series | dict) -> str:
    """``<data>_<model>``: the arm a run belongs to."""
    return f"{run['cfg.data.name']}_{run['cfg.model.name']}"


def arm_title(arm: str, runs: pd.DataFrame) -> str:
    """A readable arm name; a 2-D CNN arm also names its channels (the readings and family studies
    tune CNNs of different widths under the same ``<data>_<model>`` arm)."""
    title = ARM_TITLES.get(arm, arm)
    if arm.endswith("cnn2d") and "cfg.model.channels" in runs and len(runs):
        channels = runs["cfg.model.channels"].iloc[0]
        title += f" {list(channels) if isinstance(channels, (list, tuple)) else channels}"
    return title


def selection_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, method, value): seeds, validation NLL/accuracy statistics, ``selected``."""
    df = df.assign(arm=df.apply(arm_of, axis=1))
    n_seeds = df["cfg.seed"].nunique()
    rows = []
    arms = [a for a in ARM_TITLES if a in set(df["arm"])] + sorted(set(df["arm"]) - set(ARM_TITLES))
    for arm, method in ((a, m) for a in arms for m in KNOBS):
        group = df[(df["arm"] == arm) & (df["cfg.method.name"] == method)]
        if group.empty:
            continue
        knob = KNOBS[method]
        title = arm_title(arm, group)
        cells = []
        for value, runs in group.groupby(f"cfg.{knob}", sort=True):
            nll, acc = seed_stats(runs[VAL_NLL]), seed_stats(runs[VAL_ACC])
            cells.append(
                {
                    "arm": arm,
                    "title": title,
                    "method": method,
                    "knob": knob,
                    "value": float(value),
                    "seeds": len(runs),
                    "val_nll_mean": nll["mean"],
                    "val_nll_lo": nll["ci_low"],
                    "val_nll_hi": nll["ci_high"],
                    "val_acc_mean": acc["mean"],
                    "val_acc_lo": acc["ci_low"],
                    "val_acc_hi": acc["ci_high"],
                }
            )
        complete = all(c["seeds"] == n_seeds for c in cells)
        best = min(cells, key=lambda c: (c["val_nll_mean"], c["value"]))
        edge = best["value"] == max(c["value"] for c in cells)
        for c in cells:
            c["selected"] = bool(complete and c is best)
            c["complete"] = complete
            c["edge"] = bool(c["selected"] and edge)
        rows += cells
    return pd.DataFrame(rows)


def build(df: pd.DataFrame, out_dir: Path) -> Section:
    section = Section()
    table = selection_table(df)
    shown = pd.DataFrame(
        {
            "arm": table["arm"],
            "method": table["method"],
            "hyper-parameter": table["knob"] + "=" + table["value"].map("{:g}".format),
            "seeds": table["seeds"],
            "validation NLL": [
                fmt_ci(m, lo, hi, 4)
                for m, lo, hi in zip(
                    table["val_nll_mean"], table["val_nll_lo"], table["val_nll_hi"]
                )
            ],
            "validation acc": [
                fmt_ci(m, lo, hi, 3)
                for m, lo, hi in zip(
                    table["val_acc_mean"], table["val_acc_lo"], table["val_acc_hi"]
                )
            ],
            "selected": [
                ("selected (largest value tried)" if e else "selected") if sel else ""
                for sel, e in zip(table["selected"], table["edge"])
            ],
        }
    )
    section.tables.append(write_table(shown, out_dir, "selection"))
    selected: dict[str, dict[str, dict[str, float]]] = {}
    for _, row in table[table["selected"]].iterrows():
        selected.setdefault(row["arm"], {})[row["method"]] = {row["knob"]: float(row["value"])}
        section.results.append(
            f"{row['title']}, {row['method']}: {row['knob']}="
            f"{row['value']:g} (validation NLL {fmt_ci(row['val_nll_mean'], row['val_nll_lo'], row['val_nll_hi'], 4)}"
            f" over {int(row['seeds'])} seeds)"
            + (
                " -- the largest value tried: the optimum may lie beyond the grid"
                if row["edge"]
                else ""
            )
        )
    for (_, method), group in table.groupby(["arm", "method"], sort=False):
        if not group["complete"].all():
            section.results.append(
                f"{group['title'].iloc[0]}, {method}: tuning incomplete, nothing selected yet"
            )
    (out_dir / "selected.yaml").write_text(
        "# written by `dropens report readings_tune`: the hyper-parameters experiments/readings.yaml"
        " uses\n" + yaml.safe_dump(selected, sort_keys=True)
    )
    section.figures.append(_figure(table, out_dir))
    return section


def _figure(table: pd.DataFrame, out_dir: Path) -> str:
    arms = list(dict.fromkeys(table["arm"]))
    methods = [m for m in KNOBS if m in set(table["method"])]
    fig, axes = plt.subplots(
        len(arms), len(methods), figsize=(3.6 * len(methods), 2.9 * len(arms)), squeeze=False
    )
    for i, arm in enumerate(arms):
        for j, method in enumerate(methods):
            ax = axes[i, j]
            rows = table[(table["arm"] == arm) & (table["method"] == method)]
            if rows.empty:
                ax.axis("off")
                continue
            x = np.arange(len(rows))
            mean = rows["val_nll_mean"].to_numpy()
            err = np.vstack(
                [mean - rows["val_nll_lo"].to_numpy(), rows["val_nll_hi"].to_numpy() - mean]
            )
            ax.errorbar(x, mean, yerr=np.nan_to_num(err), fmt="o-", capsize=3, color="#0173b2")
            chosen = rows["selected"].to_numpy()
            if chosen.any():
                ax.plot(x[chosen], mean[chosen], "*", ms=14, color="#de8f05", label="selected")
                ax.legend(fontsize=7, loc="best")
            ax.set_xticks(x, [f"{v:g}" for v in rows["value"]])
            ax.set_xlabel(rows["knob"].iloc[0], fontsize=8)
            ax.set_ylabel("validation NLL (nats)", fontsize=8)
            ax.set_title(f"{rows['title'].iloc[0]}\n{method}", fontsize=9)
            ax.grid(alpha=0.3)
    fig.suptitle(
        "Tuning on validation data: NLL of the deterministic pass (mean and 95% CI over the tuning "
        "seeds)",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, out_dir, "selection")
