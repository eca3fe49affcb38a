"""``dropens report NAME --wandb``: the study's figures and tables as one W&B run (job type
``report``, same group as the study's runs), offline unless ``WANDB_MODE=online``."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from dropens.reporting.common import Section


def log_report(name: str, out_dir: Path, section: Section, results_root: Path) -> str:
    """Log ``out_dir``'s figures (PNG) and tables (CSV) to a W&B run; returns the run directory."""
    import wandb

    run_dir = results_root / name / "_report"
    run_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "dropens"),
        group=name,
        job_type="report",
        name=f"{name} report",
        dir=str(run_dir),
        mode=os.environ.get("WANDB_MODE", "offline"),
        settings=wandb.Settings(silent=True, console="off"),
    )
    payload: dict = {
        f"figures/{stem}": wandb.Image(str(out_dir / f"{stem}.png")) for stem in section.figures
    }
    for stem in section.tables:
        payload[f"tables/{stem}"] = wandb.Table(
            dataframe=pd.read_csv(out_dir / f"{stem}.csv").astype(str)
        )
    run.log(payload)
    run.summary["results"] = "\n".join(section.results)
    path = run.dir
    run.finish()
    return str(path)
