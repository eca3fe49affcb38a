"""The run record on disk, and loading a study's records into a DataFrame.

One run writes one directory, complete or visibly incomplete::

    <results root>/<study>/<run id>/
      config.yaml        the resolved config (enough to rerun it)
      metrics.json       flat scalars, keys ``stage/set/label/metric`` (e.g. ``test/clean/mc16/ece``, :mod:`dropens.keys`)
      predictions.npz    per eval set and strategy: members ``[M, N, C]`` float16 (+ ``labels/<set>``)
      magnitudes.json    per-layer activation statistics, train mode vs eval mode
                         (``dropens.evaluation.magnitudes``; read with :meth:`RunRecord.magnitudes`)
      run.json           wall time, versions, git commit (not in metrics.json, which must be reproducible)
      checkpoints/       Lightning checkpoints (resume)
      DONE               written last, atomically

Every file is written to a temporary name and moved into place (``os.replace``), so a crash never
leaves a truncated file; ``DONE`` is removed before a run (re)starts, so a directory without
``DONE`` is never taken for complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from torch import Tensor

DONE = "DONE"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling and move it into place (never a truncated file)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# Settings that say where or how visibly a run executes, not what it computes: the same run on a
# laptop, a SLURM GPU node or with/without a progress bar is the same record.
PLACEMENT_KEYS = {
    "": ("results_root", "run_id", "overwrite", "logger", "cpu_threads"),
    "trainer": ("accelerator", "devices", "enable_progress_bar", "enable_model_summary"),
    "eval": ("memory_budget_mb", "save_predictions"),
    "data": ("root", "debian_dir", "download"),
}


def config_hash(config: Mapping[str, Any]) -> str:
    """Short stable hash of a resolved config: what the run computes (:data:`PLACEMENT_KEYS` left out)."""
    body = {k: v for k, v in config.items() if k not in PLACEMENT_KEYS[""]}
    for node, keys in PLACEMENT_KEYS.items():
        if node and isinstance(body.get(node), Mapping):
            body[node] = {k: v for k, v in body[node].items() if k not in keys}
    return hashlib.blake2b(
        json.dumps(body, sort_keys=True, default=str).encode(), digest_size=4
    ).hexdigest()


def uses_dropout(config: Mapping[str, Any]) -> bool:
    """Whether the run's backbone trains with dropout (not ``plain``, not a dropout-free ensemble)."""
    method = config["method"]
    return method["name"] != "plain" and bool(method.get("member_dropout", True))


def default_run_id(config: Mapping[str, Any]) -> str:
    """Readable, unique run id: ``<method>-<model>-<data>[-rho<rho>]-p<p>[-<dist>-<structure>]-s<seed>-<hash>``."""
    method, dropout = config["method"], config["dropout"]
    parts = [method["name"]]
    if "k" in method:
        parts.append(f"k{method['k']}")
    if method.get("batching", "repeat") != "repeat":
        parts.append(method["batching"])
    if method.get("objective", "member") != "member":
        parts.append(f"{method['objective']}-objective")
    parts += [config["model"]["name"], config["data"]["name"]]
    if "rho" in config["data"]:  # shortcut data: the cue-label agreement rate
        parts.append(f"rho{config['data']['rho']}")
    if uses_dropout(config):
        parts.append(f"p{dropout['p']}")
        if dropout["dist"] != "bernoulli":
            parts.append(dropout["dist"])
        if dropout["structure"] != "element":
            parts.append(dropout["structure"])
    parts += [f"s{config['seed']}", config_hash(config)]
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(str(p) for p in parts))


class RunRecord:
    """One run's directory ``<root>/<study>/<run id>``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def for_config(cls, config: Mapping[str, Any]) -> RunRecord:
        run_id = config.get("run_id") or default_run_id(config)
        return cls(Path(config["results_root"]) / config["study"] / run_id)

    # ------------------------------------------------------------------ state

    @property
    def done(self) -> bool:
        return (self.path / DONE).exists()

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def last_checkpoint(self) -> Path | None:
        last = self.checkpoint_dir / "last.ckpt"
        return last if last.exists() else None

    # ------------------------------------------------------------------ writing

    def begin(self, config: Mapping[str, Any]) -> None:
        """Create the directory, mark it incomplete (remove ``DONE``) and write ``config.yaml``."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / DONE).unlink(missing_ok=True)
        self.write_yaml("config.yaml", dict(config))

    def write_yaml(self, name: str, obj: Any) -> None:
        atomic_write(self.path / name, yaml.safe_dump(obj, sort_keys=False).encode())

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write(self.path / name, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())

    def write_predictions(self, arrays: Mapping[str, Tensor | np.ndarray]) -> None:
        """Store ``{"<set>/<strategy>": member_probs [M, N, C], "labels/<set>": [N]}`` compactly.

        Probabilities are stored as float16 (about 3 significant digits; metrics are computed from
        float32 before storing), labels as int16.
        """
        out = {}
        for key, value in arrays.items():
            arr = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
            out[key] = arr.astype(np.int16 if key.startswith("labels/") else np.float16)
        buf = io.BytesIO()
        np.savez_compressed(buf, **out)
        atomic_write(self.path / "predictions.npz", buf.getvalue())

    def finish(self, info: Mapping[str, Any] | None = None) -> None:
        """Write ``DONE`` last, atomically (its body: a small JSON of run info)."""
        atomic_write(self.path / DONE, json.dumps(dict(info or {}), sort_keys=True).encode())

    # ------------------------------------------------------------------ reading

    def config(self) -> dict[str, Any]:
        return yaml.safe_load((self.path / "config.yaml").read_text())

    def metrics(self) -> dict[str, float]:
        return json.loads((self.path / "metrics.json").read_text())

    def read_json(self, name: str) -> Any:
        """A JSON file of the record (``magnitudes.json``, ``occlusion.json``...); ``None`` if absent."""
        path = self.path / name
        return json.loads(path.read_text()) if path.exists() else None

    def magnitudes(self) -> pd.DataFrame | None:
        """``magnitudes.json`` as one row per (layer, ``input`` | ``output``, call); ``None`` if absent
        (:func:`magnitudes_frame`)."""
        return magnitudes_frame(self.read_json("magnitudes.json"))

    def occlusion(self) -> dict[str, Any] | None:
        """``occlusion.json`` (the shortcut study's occlusion-sensitivity map); ``None`` if absent."""
        return self.read_json("occlusion.json")

    def info(self) -> dict[str, Any]:
        """``run.json`` (wall time, versions, commit, device); empty if absent."""
        path = self.path / "run.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def predictions(self) -> dict[str, np.ndarray]:
        with np.load(self.path / "predictions.npz") as z:
            return {k: z[k] for k in z.files}


def magnitudes_frame(data: Mapping[str, Any] | None) -> pd.DataFrame | None:
    """A ``magnitudes.json`` document as one row per (layer, ``input`` | ``output``, call).

    Columns: those of :func:`dropens.metrics.magnitude.record_train_eval` (``layer, type, kind,
    where, call, p``, ``{stat}_train``, ``{stat}_eval``, ``{stat}_ratio`` (eval/train),
    ``var_ratio_predicted``, ``bn_running_var``, ``bn_eval_var``, ``bn_var_ratio``); the header
    (``eval_set``, ``n_examples``, ``seed``, ``member``) is in ``df.attrs``. ``None`` for ``None``.
    """
    if data is None:
        return None
    frame = pd.DataFrame(data["layers"])
    frame.attrs.update({k: v for k, v in data.items() if k != "layers"})
    return frame


def _flatten(prefix: str, node: Any, out: dict[str, Any]) -> None:
    if isinstance(node, Mapping):
        for k, v in node.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(node, list):
        out[prefix] = json.dumps(node)
    else:
        out[prefix] = node


def study_runs(results_root: str | os.PathLike, study: str) -> list[RunRecord]:
    """Every run directory of a study (complete or not), sorted by name."""
    root = Path(results_root) / study
    if not root.is_dir():
        return []
    return [RunRecord(p) for p in sorted(root.iterdir()) if (p / "config.yaml").exists()]


def runs_frame(runs: Sequence[Any]) -> pd.DataFrame:
    """One row per run (a :class:`RunRecord` or a :class:`dropens.records.CompactRun`): the
    flattened config (``cfg.<path>``), metrics (their own keys), ``run_id``, ``done``, ``path``,
    run info (``git_commit``, ``git_dirty``, ``code_commit``, ``wall_s``, ``device``, ``steps``)
    and ``record``: the run object itself (``record.magnitudes()``, ``.occlusion()``,
    ``.reliability(key)`` read what a figure needs beyond the scalars)."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "run_id": getattr(run, "run_id", run.path.name),
            "done": run.done,
            "path": str(run.path),
        }
        cfg: dict[str, Any] = {}
        _flatten("cfg", run.config(), cfg)
        row.update(cfg)
        if run.done:
            row.update(run.metrics())
            info = run.info()
            row.update({k: info.get(k) for k in INFO_COLUMNS})
        row["record"] = run
        rows.append(row)
    return pd.DataFrame(rows)


INFO_COLUMNS = ("git_commit", "git_dirty", "code_commit", "wall_s", "device", "steps")


def load_study(
    results_root: str | os.PathLike, study: str, include_incomplete: bool = False
) -> pd.DataFrame:
    """:func:`runs_frame` of a study's run directories under ``results_root``.

    Incomplete runs (no ``DONE``) are left out unless ``include_incomplete``; their metrics are NaN.
    """
    runs = [r for r in study_runs(results_root, study) if r.done or include_incomplete]
    return runs_frame(runs)
