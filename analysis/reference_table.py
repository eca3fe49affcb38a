"""Reference accuracies of the default configs: run records -> reports/reference/table.{csv,md}.

Reads the `reference` study written by `scripts/reference.sh` (3 seeds of each default config) and
reports the test accuracy of the deterministic pass and of MC dropout (T = 32): mean, std and the
95% t-interval over seeds. Usage::

    .venv/bin/python analysis/reference_table.py [--results results] [--out reports/reference]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from dropens.metrics import stats
from dropens.reporting.tables import markdown_table
from dropens.results import load_study

PUBLISHED = {  # published reference accuracies (Greydanus 2020, MNIST-1D README) and the floors
    ("mnist1d", "cnn1d"): ("0.94", 0.90),
    ("mnist1d", "mlp"): ("0.68", 0.65),
    ("fashion_mnist", "cnn2d"): ("-", 0.90),
}
METRICS = {"deterministic": "test/clean/deterministic/acc", "MC T=32": "test/clean/mc32/acc"}


def table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (data, model), group in df.groupby(["cfg.data.name", "cfg.model.name"]):
        published, floor = PUBLISHED.get((data, model), ("-", float("nan")))
        row = {"data": data, "model": model, "seeds": len(group)}
        for label, key in METRICS.items():
            s = stats.summarize(group[key].to_numpy())
            row[f"{label} acc"] = (
                f"{s['mean']:.3f} ± {s['std']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
            )
            row[f"_{label}_mean"] = s["mean"]
        row["published"] = published
        row["required"] = floor
        row["meets"] = bool(row["_deterministic_mean"] >= floor)
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--out", default="reports/reference")
    args = parser.parse_args()
    df = load_study(args.results, "reference")
    if df.empty:
        raise SystemExit(
            f"no complete runs in {args.results}/reference; run scripts/reference.sh first"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tab = table(df)
    public = tab[[c for c in tab.columns if not c.startswith("_")]]
    public.to_csv(out / "table.csv", index=False)
    md = markdown_table(public)
    note = (
        "Test accuracy, mean ± std over seeds [95% t-interval]; "
        "command: `bash scripts/reference.sh && .venv/bin/python analysis/reference_table.py`\n"
    )
    everything = load_study(args.results, "reference", include_incomplete=True)
    incomplete = sorted(everything.loc[~everything["done"], "run_id"]) if len(everything) else []
    if incomplete:  # listed, never used
        md += "\n\nIncomplete runs (no DONE; not used above): " + ", ".join(
            f"`{r}`" for r in incomplete
        )
    (out / "table.md").write_text(note + "\n" + md + "\n")
    print(note + "\n" + md)


if __name__ == "__main__":
    main()
