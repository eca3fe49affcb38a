"""Compact run records: what the reports read of each run, committed beside the reports.

``results/`` (run directories with predictions, checkpoints and W&B folders: ~1-10 MB a run) stays
on the machine that trained it. What the figures and tables of ``reports/`` read is small, so
``dropens report NAME`` writes it to ``reports/NAME/records.jsonl`` — one JSON line per complete
run, sorted by run id — and regenerates every figure from it on a fresh clone (no training)::

    {"schema": 1, "run_id": "...",
     "config": {...},            # config.yaml: the resolved config (enough to rerun the run)
     "info": {...},              # run.json: commit, wall time, versions, device, cost
     "metrics": {...},           # metrics.json: every scalar, keys stage/set/strategy/metric
     "magnitudes": {...} | null, # magnitudes.json: per-layer activation statistics
     "occlusion": {...} | null,  # occlusion.json: occlusion-sensitivity map (shortcut study)
     "reliability": {"<set>/<label>": {"count": [B], "confidence": [B], "accuracy": [B]}}}

``reliability`` replaces the raw predictions (``predictions.npz``, ~1 MB a run) by the per-bin
reliability-diagram data of every stored prediction of the sets in :data:`SUMMARY_SETS`
(:func:`reliability_summaries`), computed from the stored predictions the same way in both
sources, so a figure pooled over seeds has the same bars from either. Numbers are written as
Python's :mod:`json` writes them (``NaN`` where a statistic is undefined), so every value reads
back bit for bit. The study log (measured ``dropens study`` wall times) travels beside it as
``reports/NAME/study_log.jsonl``.

A line that does not parse, has another schema version or lacks a field is reported by
:func:`read_records` and not used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dropens.results import RunRecord, atomic_write, magnitudes_frame

SCHEMA = 1
RECORDS_FILE = "records.jsonl"
LOG_FILE = "study_log.jsonl"
FIELDS = ("schema", "run_id", "config", "info", "metrics", "magnitudes", "occlusion", "reliability")
SUMMARY_SETS = ("clean",)  # eval sets whose reliability summaries are kept (the test set)
RELIABILITY_BINS = 15  # bins of the stored reliability summaries (Guo et al. 2017)


def reliability_summaries(
    predictions: Mapping[str, np.ndarray],
    mc_samples: int,
    sets: Iterable[str] = SUMMARY_SETS,
    n_bins: int = RELIABILITY_BINS,
) -> dict[str, dict[str, np.ndarray]]:
    """Reliability-diagram data of every stored prediction of ``sets``.

    Args:
        predictions: a record's ``predictions.npz`` arrays: ``"<set>/<strategy>"`` member
            probabilities ``[M, N, C]`` (float16) and ``"labels/<set>"`` ``[N]``.
        mc_samples: the headline number of MC samples: the ``mc`` array's first ``mc_samples``
            members give label ``mc<mc_samples>``.

    Returns:
        ``{"<set>/<label>": {"count": [B] int64, "confidence": [B], "accuracy": [B]}}`` (float64;
        NaN in empty bins) of the members' mean probabilities, renormalized after the float16
        round trip (:func:`dropens.metrics.calibration.reliability`).
    """
    import torch

    from dropens.metrics.calibration import reliability

    out: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in predictions.items():
        name, _, strategy = key.partition("/")
        if name == "labels" or name not in set(sets) or f"labels/{name}" not in predictions:
            continue
        label, members = strategy, arr
        if strategy == "mc":
            label, members = f"mc{int(mc_samples)}", arr[: int(mc_samples)]
        probs = torch.from_numpy(members.astype(np.float32)).mean(0)
        probs = probs / probs.sum(-1, keepdim=True)
        labels = torch.from_numpy(predictions[f"labels/{name}"].astype(np.int64))
        r = reliability(probs, labels, n_bins=n_bins)
        out[f"{name}/{label}"] = {
            "count": r["count"].numpy().astype(np.int64),
            "confidence": r["confidence"].numpy().astype(np.float64),
            "accuracy": r["accuracy"].numpy().astype(np.float64),
        }
    return out


def compact(record: RunRecord) -> dict[str, Any]:
    """The compact line of a complete run directory (module docstring)."""
    config = record.config()
    summaries = {}
    if (record.path / "predictions.npz").exists():
        summaries = reliability_summaries(record.predictions(), int(config["eval"]["mc_samples"]))
    return {
        "schema": SCHEMA,
        "run_id": record.path.name,
        "config": config,
        "info": record.info(),
        "metrics": record.metrics(),
        "magnitudes": record.read_json("magnitudes.json"),
        "occlusion": record.read_json("occlusion.json"),
        "reliability": {
            key: {k: v.tolist() for k, v in value.items()} for key, value in summaries.items()
        },
    }


class CompactRun:
    """One line of a ``records.jsonl``: the same reading interface as
    :class:`dropens.results.RunRecord` (``config``, ``metrics``, ``info``, ``magnitudes``,
    ``occlusion``, ``reliability``), always complete."""

    done = True

    def __init__(self, data: Mapping[str, Any], source: Path) -> None:
        self.data = dict(data)
        self.run_id = str(data["run_id"])
        self.path = Path(f"{source}#{self.run_id}")  # where it came from, for messages

    def config(self) -> dict[str, Any]:
        return self.data["config"]

    def metrics(self) -> dict[str, float]:
        return self.data["metrics"]

    def info(self) -> dict[str, Any]:
        return self.data["info"] or {}

    def magnitudes(self) -> pd.DataFrame | None:
        return magnitudes_frame(self.data["magnitudes"])

    def occlusion(self) -> dict[str, Any] | None:
        return self.data["occlusion"]

    def reliability(self, key: str) -> dict[str, np.ndarray] | None:
        value = self.data["reliability"].get(key)
        if value is None:
            return None
        return {
            "count": np.asarray(value["count"], dtype=np.int64),
            "confidence": np.asarray(value["confidence"], dtype=np.float64),
            "accuracy": np.asarray(value["accuracy"], dtype=np.float64),
        }


def reliability(run: RunRecord | CompactRun, key: str) -> dict[str, np.ndarray] | None:
    """Reliability-diagram data of a run's stored prediction ``"<set>/<label>"`` (e.g.
    ``clean/deterministic``): from a compact record as stored, from a run directory computed from its
    ``predictions.npz`` (:func:`reliability_summaries`, cached on the record); ``None`` when the
    run has no such prediction."""
    if isinstance(run, CompactRun):
        return run.reliability(key)
    cache = run.__dict__.setdefault("_reliability", None)
    if cache is None:
        cache = {}
        if (run.path / "predictions.npz").exists():
            mc = int(run.config()["eval"]["mc_samples"])
            cache = reliability_summaries(run.predictions(), mc)
        run.__dict__["_reliability"] = cache
    return cache.get(key)


def write_records(path: Path, lines: Iterable[Mapping[str, Any]]) -> int:
    """Write compact lines (sorted by run id; keys in their own order, as the config files have
    them) to ``path`` atomically; returns the count."""
    rows = sorted(lines, key=lambda line: line["run_id"])
    text = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode())
    return len(rows)


def read_records(path: Path) -> tuple[list[CompactRun], list[str]]:
    """The usable lines of a ``records.jsonl`` and one message per line that is not usable
    (``line 7: not JSON (...)``, another schema version, missing fields, a repeated run id)."""
    runs: list[CompactRun] = []
    problems: list[str] = []
    seen: set[str] = set()
    raw = path.read_bytes()
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            problems.append(f"line {i}: not JSON ({str(err).splitlines()[0][:60]})")
            continue
        if not isinstance(data, dict):
            problems.append(f"line {i}: not a JSON object")
            continue
        if data.get("schema") != SCHEMA:
            problems.append(
                f"line {i}: schema {data.get('schema')!r}; this dropens reads schema {SCHEMA}"
            )
            continue
        missing = [f for f in FIELDS if f not in data]
        if missing or not isinstance(data.get("config"), dict):
            problems.append(f"line {i}: missing fields {missing or ['config']}")
            continue
        if not isinstance(data.get("metrics"), dict) or not isinstance(
            data.get("reliability"), dict
        ):
            problems.append(f"line {i} ({data['run_id']}): metrics/reliability are not objects")
            continue
        if data["run_id"] in seen:
            problems.append(f"line {i}: run {data['run_id']} repeated (the first line is used)")
            continue
        seen.add(data["run_id"])
        runs.append(CompactRun(data, path))
    return runs, problems


def read_log(path: Path) -> list[dict]:
    """A study log (one JSON object a line); empty when absent."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_log(path: Path, entries: Iterable[Mapping[str, Any]]) -> None:
    """Write a study log copy (one JSON object a line) atomically; removes ``path`` when empty."""
    entries = list(entries)
    if not entries:
        path.unlink(missing_ok=True)
        return
    atomic_write(path, "".join(json.dumps(dict(e)) + "\n" for e in entries).encode())


def records_size(reports_root: str | os.PathLike) -> int:
    """Bytes of every committed ``records.jsonl`` and study log under ``reports_root``."""
    root = Path(reports_root)
    return sum(
        p.stat().st_size for p in (*root.glob(f"*/{RECORDS_FILE}"), *root.glob(f"*/{LOG_FILE}"))
    )
