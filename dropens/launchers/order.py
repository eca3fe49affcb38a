"""Longest run first: the order in which a launcher hands a study's pending runs to its workers.

With W workers, runs started in plan order can leave the longest run for last, alone on one
worker while the others idle (the family study's first rerun ended with ~7 min of one run on one
of 2 cores). Starting the longest runs first (the LPT rule) shortens that tail. A run's length is
its measured wall time (``info.wall_s``) from an earlier record: the same run id (the run's
config hash, so the same config) or, failing that, the median over its cell (the runs whose
config differs from its own only in the seed). Earlier records are read from the
study's results directory (complete runs) and from the committed ``reports/<study>/records.jsonl``.
Runs with no measurement go first, in plan order (they may be long). The order never changes what
a run computes: each run seeds itself from its config.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dropens.results import RunRecord, config_hash

Measured = dict[str, tuple[str, float]]  # run id -> (cell, wall seconds)


def cell_of(config: Mapping[str, Any]) -> str:
    """The hash of ``config`` with its seed left out: equal for runs that differ only in the seed."""
    return config_hash({**config, "seed": None})


def measured_seconds(results_dir: Path, records_file: Path | None) -> Measured:
    """``{run id: (cell, wall seconds)}`` of the complete runs in ``records_file`` (a committed
    ``records.jsonl``) and under ``results_dir`` (which wins for an id in both). Records that do
    not read back are skipped: an estimate is only an ordering hint."""
    measured: Measured = {}
    runs: list[Any] = []
    if records_file is not None and records_file.is_file():
        from dropens.records import read_records

        runs += read_records(records_file)[0]
    if results_dir.is_dir():
        runs += [r for r in map(RunRecord, sorted(results_dir.iterdir())) if r.path.is_dir()]
    for run in runs:
        try:
            if not run.done:
                continue
            wall = run.info().get("wall_s")
            if isinstance(wall, int | float) and wall > 0:
                measured[run.path.name.rsplit("#", 1)[-1]] = (cell_of(run.config()), float(wall))
        except Exception:  # a damaged record: no estimate from it
            continue
    return measured


def expected_seconds(
    configs: Sequence[Mapping[str, Any]], measured: Measured
) -> list[float | None]:
    """Each run's expected wall time: its own measurement, else the median over its cell (the
    other seeds of the same config), else ``None``."""
    by_cell: dict[str, list[float]] = {}
    for cell, wall in measured.values():
        by_cell.setdefault(cell, []).append(wall)
    out: list[float | None] = []
    for config in configs:
        own = measured.get(RunRecord.for_config(config).path.name)
        cell = by_cell.get(cell_of(config))
        out.append(own[1] if own else statistics.median(cell) if cell else None)
    return out


def longest_first(
    configs: Sequence[dict[str, Any]], results_dir: Path, records_file: Path | None
) -> tuple[list[dict[str, Any]], str]:
    """``configs`` reordered longest first (stable; unmeasured runs first, in plan order), and a
    one-line account of where the estimates came from."""
    estimates = expected_seconds(configs, measured_seconds(results_dir, records_file))
    known = sum(e is not None for e in estimates)
    order = sorted(
        range(len(configs)), key=lambda i: (estimates[i] is not None, -(estimates[i] or 0.0))
    )
    if not known:
        return list(configs), "order: plan order (no earlier wall time measured for these runs)"
    total = sum(e for e in estimates if e is not None)
    return [configs[i] for i in order], (
        f"order: longest first, by the measured wall time of earlier runs ({known}/{len(configs)}"
        f" runs estimated, {total / 60:.0f} min of runs in all)"
    )
