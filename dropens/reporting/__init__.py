"""``dropens report NAME``: a study's run records -> ``reports/NAME/`` figures and tables, REPORT.md.

Reads the study's records from one of two sources and says which:

- ``results``: the run directories under ``results/NAME/`` (where the study was trained); the
  report then also writes their compact form, ``reports/NAME/records.jsonl`` (and the study log),
  so the committed records stay in sync with the committed figures;
- ``records``: the committed compact records ``reports/NAME/records.jsonl``
  (:mod:`dropens.records`), so a fresh clone regenerates every figure without training.

``auto`` (the default) uses ``results`` when it holds a complete run of the study's plan, else
``records``. Runs planned by ``experiments/NAME.yaml`` but without a complete record are listed as
incomplete or missing instead of used, and so are damaged lines of the compact records; the
complete ones go to the study's builder (``report:`` key of the study file; one module per builder
in this package). No training; seconds per study.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dropens.errors import ConfigError, NoRecords, bad_choice
from dropens.records import (
    LOG_FILE,
    RECORDS_FILE,
    compact,
    read_log,
    read_records,
    write_log,
    write_records,
)
from dropens.reporting import (
    common,
    ensemble_view,
    family,
    magnitude,
    mask_distributions,
    mc_samples,
    readings,
    readings_tune,
    reference,
    shift,
    shortcut,
    structured,
)
from dropens.reporting.markdown import compute_line, update_report_md
from dropens.results import load_study, runs_frame
from dropens.study import expand, load_study_file, read_study_log

Builder = Callable[[pd.DataFrame, Path], common.Section]
BUILDERS: dict[str, Builder] = {
    "magnitude": magnitude.build,
    "ensemble_view": ensemble_view.build,
    "mask_distributions": mask_distributions.build,
    "structured": structured.build,
    "mc_samples": mc_samples.build,
    "shortcut": shortcut.build,
    "shift": shift.build,
    "reference": reference.build,
    "readings_tune": readings_tune.build,
    "readings": readings.build,
    "family": family.build,
}


def provenance(run: dict) -> str:
    """``abc1234567`` (the commit a run trained from), ``+ uncommitted changes`` when its tree was dirty;
    ``code_commit`` (set by hand on records run from a tree later committed) wins."""
    if isinstance(run.get("code_commit"), str):
        return str(run["code_commit"])[:10]
    commit = str(run.get("git_commit") or "unknown")[:10]
    return commit + (" + uncommitted changes" if run.get("git_dirty") is True else "")


SOURCES = ("auto", "results", "records")


@dataclass
class Records:
    """The runs a report reads, and where they came from."""

    frame: pd.DataFrame  # :func:`dropens.results.runs_frame` rows (complete and incomplete)
    source: str  # "results" | "records"
    where: Path  # results/NAME or reports/NAME/records.jsonl
    log: list[dict]  # the study log (measured `dropens study` wall times)
    damaged: list[str]  # unusable lines of the compact records


def _planned_done(frame: pd.DataFrame, planned: set[str]) -> int:
    if frame.empty:
        return 0
    return int((frame["run_id"].isin(planned) & frame["done"].astype(bool)).sum())


def read_records_of(
    name: str, results_dir: Path, out_dir: Path, planned: set[str], source: str = "auto"
) -> Records:
    """The study's records from ``results_dir`` or ``out_dir/records.jsonl`` (module docstring).

    Raises:
        ConfigError: an unknown ``source``, or the chosen source has nothing to read.
    """
    if source not in SOURCES:
        raise bad_choice("--from", source, SOURCES)
    compact_path = out_dir / RECORDS_FILE
    local = load_study(results_dir.parent, results_dir.name, include_incomplete=True)
    if source == "results" or (source == "auto" and _planned_done(local, planned)):
        if local.empty:
            raise ConfigError(
                f"study={name!r} has no run record under {results_dir}; run `dropens study "
                f"{name}` first, or report the committed records with --from records"
            )
        return Records(local, "results", results_dir, read_study_log(results_dir), [])
    if not compact_path.exists():
        raise NoRecords(
            f"study={name!r} has no complete run record under {results_dir} and no compact "
            f"records {compact_path}; run `dropens study {name}` first"
        )
    runs, damaged = read_records(compact_path)
    return Records(runs_frame(runs), "records", compact_path, read_log(out_dir / LOG_FILE), damaged)


def build_report(
    name: str,
    overrides: Sequence[str] = (),
    reports_root: str | os.PathLike = "reports",
    wandb: bool = False,
    source: str = "auto",
) -> Path:
    """Write ``reports_root/name/`` and update ``reports_root/REPORT.md``; returns the study's folder.

    Args:
        overrides: the ones the study was run with (``smoke=true``, ``seeds=[0]``,
            ``results_root=...``): they define which runs the report expects.
        source: ``auto`` | ``results`` | ``records`` (module docstring).

    Raises:
        ConfigError: unknown study, builder or source, or no complete record to report on.
    """
    start = time.time()
    study = load_study_file(name)
    if study.report not in BUILDERS:
        raise bad_choice(f"experiments/{name}.yaml report", study.report, sorted(BUILDERS))
    plan = expand(name, overrides)
    results_dir = Path(plan.runs[0]["results_root"]) / plan.name
    out_dir = Path(reports_root) / plan.name
    planned = {r.path.name for r in plan.records()}
    got = read_records_of(plan.name, results_dir, out_dir, planned, source)
    records = got.frame if not got.frame.empty else pd.DataFrame(columns=["run_id", "done"])
    in_plan = records["run_id"].isin(planned)
    done = records[in_plan & records["done"].astype(bool)]
    # run directories marked DONE (or not) whose files do not read back: listed, never used
    why = records["damaged"] if "damaged" in records else pd.Series(None, index=records.index)
    damaged = dict(zip(records.loc[in_plan & why.notna(), "run_id"], why[in_plan & why.notna()]))
    not_done = in_plan & ~records["done"].astype(bool) & why.isna()
    incomplete = sorted(records.loc[not_done, "run_id"])
    missing = sorted(planned - set(records["run_id"]))
    extra = sorted(records.loc[~in_plan, "run_id"])
    what = "run records" if got.source == "results" else "committed compact records"
    print(f"report {plan.name}: reading {len(done)} complete {what} from {got.where}")
    for problem in got.damaged:
        print(f"  damaged record, not used: {got.where} {problem}")
    if done.empty:
        raise ConfigError(
            f"study={plan.name!r} has no complete run record of its plan in {got.where}; "
            f"run `dropens study {name}` first"
        )
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
    if got.source == "results":  # keep the committed compact records in sync with the figures
        _sync_records(out_dir, done, got.log)
    commits = sorted(set(map(provenance, done.to_dict("records"))))
    update_report_md(
        Path(reports_root) / "REPORT.md",
        plan.name,
        study,
        section,
        n_done=len(done),
        seeds=sorted({int(s) for s in done["cfg.seed"]}),
        commits=commits,
        incomplete=sorted([*incomplete, *damaged]),
        missing=missing,
        compute=compute_line(list(done["wall_s"].astype(float)), got.log),
    )
    if wandb:
        from dropens.reporting.wandb_report import log_report

        log_report(plan.name, out_dir, section, results_dir.parent)
    print(
        f"report {plan.name}: {len(done)} of {len(planned)} runs complete, {len(incomplete)} incomplete, "
        f"{len(missing)} missing{f', {len(damaged)} damaged' if damaged else ''} -> {out_dir} "
        f"({len(section.figures)} figures, {len(section.tables)} tables, {time.time() - start:.1f}s)"
    )
    for rid in incomplete:
        print(f"  incomplete (not used): {rid}")
    for rid, reason in sorted(damaged.items()):
        print(f"  damaged (not used): {rid}: {reason}")
    for rid in missing:
        print(f"  missing (not run yet): {rid}")
    if extra:
        print(f"  {len(extra)} other records in {got.where} are not runs of this plan (not used)")
    return out_dir


def _sync_records(out_dir: Path, done: pd.DataFrame, log: list[dict]) -> None:
    """``out_dir/records.jsonl`` := the compact form of the reported runs (and the study log)."""
    path = out_dir / RECORDS_FILE
    before = {run.run_id for run in read_records(path)[0]} if path.exists() else set()
    n = write_records(path, (compact(run) for run in done["record"]))
    write_log(out_dir / LOG_FILE, log)
    dropped = sorted(before - set(done["run_id"]))
    print(f"  wrote {n} compact records to {path}")
    if dropped:
        print(
            f"  note: {len(dropped)} runs of the previous {path.name} are not complete under "
            f"results/ and were dropped from it (git restores them; --from records reports them)"
        )
