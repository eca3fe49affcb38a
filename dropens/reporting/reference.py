"""``reference`` study: the default configs' test accuracies against the published numbers.

One table, ``table.{csv,md}``: per (data, model, method) the test accuracy of the deterministic pass
and of MC dropout (headline T), mean ± std [95% t-interval] over seeds, the published accuracy of
the *plain* network (Greydanus & Kobak 2020 for MNIST-1D; none for this Fashion-MNIST CNN) and the
floor the project requires of its default configs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dropens import keys
from dropens.reporting.common import Section, headline_t, seed_stats, write_table

# published plain-network test accuracies (Greydanus & Kobak 2020, the MNIST-1D README: no dropout)
# and the floor the foundation issue required of the default configs
PUBLISHED = {
    ("mnist1d", "cnn1d"): ("0.94", 0.90),
    ("mnist1d", "mlp"): ("0.68", 0.65),
    ("fashion_mnist", "cnn2d"): ("-", 0.90),
}


def _cell(values: pd.Series) -> tuple[str, float]:
    s = seed_stats(values.astype(float))
    if not s["n"]:
        return "-", np.nan
    if s["n"] < 2:
        return f"{s['mean']:.3f}", s["mean"]
    text = f"{s['mean']:.3f} ± {s['std']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
    return text, s["mean"]


def build(df: pd.DataFrame, out_dir: Path) -> Section:
    section = Section()
    t = headline_t(df)
    rows = []
    for (data, model, method), group in df.groupby(
        ["cfg.data.name", "cfg.model.name", "cfg.method.name"], sort=True
    ):
        published, floor = PUBLISHED.get((data, model), ("-", float("nan")))
        det, det_mean = _cell(group[keys.test("clean", "deterministic", "acc")])
        mc_key = keys.test("clean", keys.mc_label(t), "acc")
        mc = _cell(group[mc_key])[0] if method != "plain" and mc_key in group else "-"
        rows.append(
            {
                "data": data,
                "model": model,
                "method": method,
                "seeds": len(group),
                "deterministic acc": det,
                f"MC T={t} acc": mc,
                "published (plain)": published,
                "required": floor,
                "meets": bool(det_mean >= floor),
            }
        )
        section.results.append(
            f"{data} {model} {method}: deterministic test accuracy {det} over {len(group)} seeds "
            f"(published plain network: {published}; floor {floor})"
        )
    section.tables.append(write_table(pd.DataFrame(rows), out_dir, "table"))
    return section
