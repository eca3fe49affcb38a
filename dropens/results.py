"""The run record on disk, and loading a study's records into a DataFrame.

One run writes one directory, complete or visibly incomplete::

    <results root>/<study>/<run id>/
      config.yaml        the resolved config (enough to rerun it)
      metrics.json       flat scalars, keys ``stage/set/label/metric`` (e.g. ``test/clean/mc16/ece``, :mod:`dropens.keys`)
      predictions.npz    per eval set and strategy: members ``[M, N, C]`` float16 (+ ``labels/<set>``)
      magnitudes.json    per-layer activation statistics, train mode vs eval mode
                         (``dropens.evaluation.magnitudes``; read with :meth:`RunRecord.magnitudes`)
      run.json           wall time, versions, git commit, parameter count and training FLOPs per
                         example (dropens.cost; not in metrics.json, which must be reproducible)
      checkpoints/       Lightning checkpoints (resume)
      DONE               written last, atomically

Every file is written to a temporary name and moved into place (``os.replace``), so a crash never
leaves a truncated file; ``DONE`` is removed before a run (re)starts, so a directory without
``DONE`` is never taken for complete. ``metrics.json`` is strict JSON: a non-finite value is
written as ``null`` and read back as NaN (:meth:`RunRecord.metrics`). A record is *done* when it
has ``DONE`` and its ``config.yaml``, ``metrics.json`` and ``run.json`` read back
(:meth:`RunRecord.damage`): a record damaged after the fact is neither complete nor a crash, it
is listed as damaged and retrained.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from torch import Tensor

DONE = "DONE"
_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 10x faster


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling and move it into place (never a truncated file)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # an error or a stop signal: no temporary file left behind
        tmp.unlink(missing_ok=True)
        raise


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def read_metrics_file(path: Path) -> dict[str, float]:
    """A ``metrics.json``: ``null`` read back as NaN.

    Raises:
        DamagedFile: unreadable, not JSON, or not an object of numbers (one line: file and fix).
    """
    from dropens.failures import DamagedFile

    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise DamagedFile(_damage_line(path, err)) from None
    if not isinstance(data, dict) or not all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
        for v in data.values()
    ):
        raise DamagedFile(_damage_line(path, "not a JSON object of numbers"))
    return {k: math.nan if v is None else v for k, v in data.items()}


def _damage_line(path: Path, err: object) -> str:
    reason = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    reason = " ".join(str(reason).split())[:160]
    return (
        f"{path} is damaged ({reason}); the run record is not usable: rerun the run "
        f"(dropens train ... overwrite=true) or delete {path.parent}"
    )


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
    """Whether the run's dropout layers follow the ``dropout.*`` spec: not ``plain``, not a member
    family without ``member_dropout``, not ``masksembles`` (whose scale sets its masks)."""
    method = config["method"]
    owned = method["name"] in ("plain", "masksembles")
    return not owned and bool(method.get("member_dropout", True))


def default_run_id(config: Mapping[str, Any]) -> str:
    """Readable, unique run id: ``<method>-<model>-<data>[-rho<rho>]-p<p>[-<dist>-<structure>]-s<seed>-<hash>``."""
    method, dropout = config["method"], config["dropout"]
    parts = [method["name"]]
    if "k" in method:
        parts.append(f"k{method['k']}")
    if "scale" in method:  # masksembles
        parts.append(f"S{method['scale']}")
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
    def marked_done(self) -> bool:
        """``DONE`` exists (the run finished), whether or not its files still read back."""
        return (self.path / DONE).exists()

    @property
    def done(self) -> bool:
        """Complete: ``DONE`` exists and the record reads back (:meth:`damage`)."""
        return self.marked_done and self.damage() is None

    def damage(self) -> str | None:
        """Why a record marked ``DONE`` is not usable (one line naming the file), else ``None``."""
        from dropens.failures import DamagedFile

        if not self.marked_done:
            return None
        try:
            self.config()
            read_metrics_file(self.path / "metrics.json")
            self.info()
        except DamagedFile as err:
            return str(err)
        return None

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def last_checkpoint(self) -> Path | None:
        last = self.checkpoint_dir / "last.ckpt"
        return last if last.exists() else None

    # ------------------------------------------------------------------ writing

    def move_aside(self) -> Path | None:
        """Move the directory to a hidden timestamped sibling ``.<run id>.replaced-<time>`` (which
        :func:`study_runs` does not list); nothing is deleted. Returns the new path."""
        if not self.path.exists():
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f".{self.path.name}.replaced-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f".{self.path.name}.replaced-{stamp}-{n}")
        self.path.rename(target)
        return target

    def begin(self, config: Mapping[str, Any]) -> None:
        """Create the directory, mark it incomplete (remove ``DONE``) and write ``config.yaml``."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / DONE).unlink(missing_ok=True)
        self.write_yaml("config.yaml", dict(config))

    def write_yaml(self, name: str, obj: Any) -> None:
        atomic_write(self.path / name, yaml.safe_dump(obj, sort_keys=False).encode())

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write(self.path / name, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())

    def write_metrics(self, metrics: Mapping[str, float]) -> None:
        """``metrics.json`` as strict JSON: non-finite values as ``null`` (read back as NaN)."""
        text = json.dumps(strict_json(dict(metrics)), indent=1, sort_keys=True, allow_nan=False)
        atomic_write(self.path / "metrics.json", (text + "\n").encode())

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
        """``config.yaml``.

        Raises:
            DamagedFile: unreadable or not a mapping (one line: the file and the fix).
        """
        from dropens.failures import DamagedFile

        path = self.path / "config.yaml"
        try:
            data = yaml.load(path.read_bytes(), Loader=_YamlLoader)
        except (OSError, ValueError, yaml.YAMLError) as err:
            raise DamagedFile(_damage_line(path, err)) from None
        if not isinstance(data, dict):
            raise DamagedFile(_damage_line(path, "not a mapping"))
        return data

    def metrics(self) -> dict[str, float]:
        """``metrics.json`` (``null`` read back as NaN); :class:`DamagedFile` if unreadable."""
        return read_metrics_file(self.path / "metrics.json")

    def read_json(self, name: str) -> Any:
        """A JSON file of the record (``magnitudes.json``, ``occlusion.json``...); ``None`` if absent.

        Raises:
            DamagedFile: present but not readable JSON (one line: the file and the fix).
        """
        from dropens.failures import DamagedFile

        path = self.path / name
        if not path.exists():
            return None
        try:
            return json.loads(path.read_bytes())
        except (OSError, ValueError) as err:
            raise DamagedFile(_damage_line(path, err)) from None

    def magnitudes(self) -> pd.DataFrame | None:
        """``magnitudes.json`` as one row per (layer, ``input`` | ``output``, call); ``None`` if absent
        (:func:`magnitudes_frame`)."""
        return magnitudes_frame(self.read_json("magnitudes.json"))

    def occlusion(self) -> dict[str, Any] | None:
        """``occlusion.json`` (the shortcut study's occlusion-sensitivity map); ``None`` if absent."""
        return self.read_json("occlusion.json")

    def info(self) -> dict[str, Any]:
        """``run.json`` (wall time, versions, commit, device); empty if absent."""
        from dropens.failures import DamagedFile

        info = self.read_json("run.json")
        if info is not None and not isinstance(info, dict):
            raise DamagedFile(_damage_line(self.path / "run.json", "not a JSON object"))
        return info or {}

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
    """Every run directory of a study (complete or not), sorted by name; hidden ones (records
    moved aside by ``overwrite=true``, ``.submitit``) are not runs."""
    root = Path(results_root) / study
    if not root.is_dir():
        return []
    return [
        RunRecord(p)
        for p in sorted(root.iterdir())
        if not p.name.startswith(".") and (p / "config.yaml").exists()
    ]


def runs_frame(runs: Sequence[Any]) -> pd.DataFrame:
    """One row per run (a :class:`RunRecord` or a :class:`dropens.records.CompactRun`): the
    flattened config (``cfg.<path>``), metrics (their own keys), ``run_id``, ``done``, ``path``,
    run info (``git_commit``, ``git_dirty``, ``code_commit``, ``wall_s``, ``device``, ``steps``,
    and the cost ``n_params``, ``train_flops_per_example``: :mod:`dropens.cost`) and ``record``: the run object itself (``record.magnitudes()``, ``.occlusion()``,
    ``.reliability(key)`` read what a figure needs beyond the scalars). A run directory marked
    ``DONE`` whose files do not read back has ``done`` false and ``damaged`` saying why."""
    from dropens.failures import DamagedFile

    rows = []
    for run in runs:
        if isinstance(run, RunRecord):
            damage = run.damage()
            done = run.marked_done and damage is None
        else:
            damage, done = None, bool(run.done)
        row: dict[str, Any] = {
            "run_id": getattr(run, "run_id", run.path.name),
            "done": done,
            "path": str(run.path),
        }
        if damage is not None:
            row["damaged"] = damage
        cfg: dict[str, Any] = {}
        try:
            _flatten("cfg", run.config(), cfg)
        except DamagedFile as err:  # an incomplete run whose config does not read back
            row.setdefault("damaged", str(err))
        row.update(cfg)
        if row["done"]:
            row.update(run.metrics())
            info = run.info()
            row.update({k: info.get(k) for k in INFO_COLUMNS})
        row["record"] = run
        rows.append(row)
    return pd.DataFrame(rows)


INFO_COLUMNS = (
    "git_commit",
    "git_dirty",
    "code_commit",
    "wall_s",
    "device",
    "steps",
    "n_params",  # dropens.cost: NaN (None) in records older than the cost fields
    "train_flops_per_example",
)


def load_study(
    results_root: str | os.PathLike, study: str, include_incomplete: bool = False
) -> pd.DataFrame:
    """:func:`runs_frame` of a study's run directories under ``results_root``.

    Incomplete runs (no ``DONE``) are left out unless ``include_incomplete``; their metrics are NaN.
    """
    runs = [r for r in study_runs(results_root, study) if r.done or include_incomplete]
    return runs_frame(runs)
