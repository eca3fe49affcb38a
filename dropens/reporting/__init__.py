"""``dropens report NAME``: a study's run records -> ``reports/NAME/`` figures and tables, REPORT.md.

Reads every record of the study (:func:`dropens.results.load_study`), lists the incomplete and the
missing ones (planned by ``experiments/NAME.yaml`` but without a complete record) instead of using
them, and hands the complete ones to the study's builder (``report:`` key of the study file; one
module per builder in this package). No training; seconds for the shipped studies.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from dropens.errors import ConfigError, bad_choice
from dropens.reporting import (
    common,
    ensemble_view,
    magnitude,
    mask_distributions,
    mc_samples,
    quickstart,
    shift,
    shortcut,
    structured,
)
from dropens.reporting.markdown import compute_line, update_report_md
from dropens.results import load_study
from dropens.study import expand, load_study_file, read_study_log

Builder = Callable[[pd.DataFrame, Path], common.Section]
BUILDERS: dict[str, Builder] = {
    "quickstart": quickstart.build,
    "magnitude": magnitude.build,
    "ensemble_view": ensemble_view.build,
    "mask_distributions": mask_distributions.build,
    "structured": structured.build,
    "mc_samples": mc_samples.build,
    "shortcut": shortcut.build,
    "shift": shift.build,
}


def provenance(run: dict) -> str:
    """``abc1234567`` (the commit a run trained from), ``+ uncommitted changes`` when its tree was dirty;
    ``code_commit`` (set by hand on records run from a tree later committed) wins."""
    if isinstance(run.get("code_commit"), str):
        return str(run["code_commit"])[:10]
    commit = str(run.get("git_commit") or "unknown")[:10]
    return commit + (" + uncommitted changes" if run.get("git_dirty") is True else "")


def build_report(
    name: str,
    overrides: Sequence[str] = (),
    reports_root: str | os.PathLike = "reports",
    wandb: bool = False,
) -> Path:
    """Write ``reports_root/name/`` and update ``reports_root/REPORT.md``; returns the study's folder.

    Args:
        overrides: the ones the study was run with (``smoke=true``, ``seeds=[0]``,
            ``results_root=...``): they define which runs the report expects.

    Raises:
        ConfigError: unknown study or builder, or no complete record to report on.
    """
    start = time.time()
    study = load_study_file(name)
    if study.report not in BUILDERS:
        raise bad_choice(f"experiments/{name}.yaml report", study.report, sorted(BUILDERS))
    plan = expand(name, overrides)
    root = Path(plan.runs[0]["results_root"])
    planned = {r.path.name for r in plan.records()}
    records = load_study(root, plan.name, include_incomplete=True)
    if records.empty:
        records = pd.DataFrame(columns=["run_id", "done"])
    in_plan = records["run_id"].isin(planned)
    done = records[in_plan & records["done"].astype(bool)]
    incomplete = sorted(records.loc[in_plan & ~records["done"].astype(bool), "run_id"])
    missing = sorted(planned - set(records["run_id"]))
    extra = sorted(records.loc[~in_plan, "run_id"])
    if done.empty:
        raise ConfigError(
            f"study={plan.name!r} has no complete run record under {root / plan.name}; "
            f"run `dropens study {name}` first"
        )
    out_dir = Path(reports_root) / plan.name
    out_dir.mkdir(parents=True, exist_ok=True)
    section = BUILDERS[study.report](done.reset_index(drop=True), out_dir)
    keep = [
        c
        for c in done.columns
        if (c.startswith("cfg.") and not c.startswith("cfg.trainer.")) or c.startswith("test/")
    ]
    # every run's config and metrics: CSV only (thousands of columns for the shift study, unreadable
    # as Markdown); REPORT.md links it
    done[["run_id", "git_commit", "device", "wall_s", *keep]].to_csv(
        out_dir / "runs.csv", index=False
    )
    commits = sorted(set(map(provenance, done.to_dict("records"))))
    update_report_md(
        Path(reports_root) / "REPORT.md",
        plan.name,
        study,
        section,
        n_done=len(done),
        seeds=sorted({int(s) for s in done["cfg.seed"]}),
        commits=commits,
        incomplete=incomplete,
        missing=missing,
        compute=compute_line(list(done["wall_s"].astype(float)), read_study_log(root / plan.name)),
    )
    if wandb:
        from dropens.reporting.wandb_report import log_report

        log_report(plan.name, out_dir, section, root)
    print(
        f"report {plan.name}: {len(done)} of {len(planned)} runs complete, {len(incomplete)} incomplete, "
        f"{len(missing)} missing -> {out_dir} ({len(section.figures)} figures, "
        f"{len(section.tables)} tables, {time.time() - start:.1f}s)"
    )
    for rid in incomplete:
        print(f"  incomplete (not used): {rid}")
    for rid in missing:
        print(f"  missing (not run yet): {rid}")
    if extra:
        print(
            f"  {len(extra)} other records in {root / plan.name} are not runs of this plan (not used)"
        )
    return out_dir
