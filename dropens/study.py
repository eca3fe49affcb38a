"""Studies: a named grid of runs that tests one claim (``experiments/<name>.yaml``).

A study file states the claim, the setup, the seeds, the grid and the figures it feeds::

    claim: "..."                   # one sentence: what the grid tests
    setup: "..."                   # data, model, budget, in words
    report: quickstart             # figure builder of dropens.reporting (default: the study name)
    overrides: [data=mnist1d, model=cnn1d, steps=1500]   # common to every run
    seeds: [0, 1, 2]
    grid:                          # union of blocks; each block is the product of its values
      - {method: plain}
      - {method: subnets, method.k: [1, 2, 4]}            # conditional: k only for subnets
    smoke: [trainer=smoke]         # overrides of the tiny form (slow smoke test, SLURM test)

Each run is ``compose(overrides + block values [+ smoke] + seed + command-line overrides +
study=<name>)``: the tiny form (``smoke=true``) wins over the grid (a block's per-arm validation
interval or evaluation size would otherwise undo it), the command line over everything; every
run is an ordinary ``dropens train`` config (same run id, same record). :func:`expand` composes
and validates every run before anything trains; the launchers (:mod:`dropens.launchers`) skip runs
whose record is complete, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dropens import keys
from dropens.config import (
    _shipped,
    compose,
    config_dirs,
    config_file,
    to_container,
    user_config_dirs,
)
from dropens.errors import ConfigError, NoRecords, bad_choice
from dropens.failures import DamagedFile
from dropens.paths import check_name
from dropens.results import RunRecord

STUDY_KEYS = (
    "claim",
    "setup",
    "report",
    "overrides",
    "seeds",
    "grid",
    "smoke",
    "figures",
    "predictions",
    "anchors",  # YAML anchors the grid refers to (not overrides themselves)
)
# A grid value "@<study>/<group>/<method>/<key>" is the value the report of study <study> selected
# (reports/<study>/selected.yaml, written by `dropens report <study>`: e.g. readings_tune chooses
# every method's hyper-parameter on validation data).
SELECTED_FILE = "selected.yaml"
# Study-level overrides of the command line (not run config): which seeds, the tiny form, launcher.
STUDY_OVERRIDES = ("seeds", "smoke", "launcher")


def experiments_dir() -> Path:
    """``experiments/`` of the repository (editable install) or the copy shipped in the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_experiments", here.parent / "experiments"):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"no experiments/ directory found next to {here}; reinstall dropens")


def user_experiments_dirs() -> list[Path]:
    """The user's studies, first wins: the sibling ``experiments/`` of every user configs
    directory (:func:`dropens.config.user_config_dirs`: ``--config-dir``,
    ``$DROPENS_CONFIG_PATH``, ``./configs``) and ``./experiments``; only existing directories,
    never the shipped one, each once."""
    shipped = _shipped("experiments")
    candidates = [d.parent / "experiments" for d in user_config_dirs()]
    candidates.append(Path.cwd() / "experiments")
    out: list[Path] = []
    for path in candidates:
        path = path.resolve()
        if path.is_dir() and path != shipped and path not in out:
            out.append(path)
    return out


def experiments_dirs() -> list[Path]:
    """Every directory studies are read from, first wins: :func:`user_experiments_dirs`, then
    the shipped :func:`experiments_dir`."""
    shipped = experiments_dir()
    return [*(d for d in user_experiments_dirs() if d != shipped.resolve()), shipped]


def study_file(name: str) -> Path | None:
    """``<dir>/<name>.yaml`` of the first directory of :func:`experiments_dirs` that has it."""
    for base in experiments_dirs():
        if (base / f"{name}.yaml").is_file():
            return base / f"{name}.yaml"
    return None


def reports_dir() -> Path:
    """``reports/`` beside ``experiments/`` (where study selections are committed)."""
    return experiments_dir().parent / "reports"


def _reports_of(study: str) -> Path:
    """``reports/`` beside the experiments directory of ``study`` (a user study's selections live
    in the user's project)."""
    path = study_file(study)
    if path is not None and path.parent in user_experiments_dirs():
        return path.parent.parent / "reports"
    return reports_dir()


def study_names() -> list[str]:
    """Names of the studies in every experiments directory (:func:`experiments_dirs`)."""
    return sorted({p.stem for base in experiments_dirs() for p in base.glob("*.yaml")})


def search_dirs_text() -> str:
    """Two lines: the configs and experiments directories read, first wins."""
    return (
        f"configs: {', '.join(map(str, config_dirs()))}\n"
        f"experiments: {', '.join(map(str, experiments_dirs()))}"
    )


@dataclass
class Study:
    """A parsed ``experiments/<name>.yaml``."""

    name: str
    claim: str
    setup: str
    report: str
    overrides: list[str]
    seeds: list[int]
    grid: list[dict[str, Any]]
    smoke: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    predictions: dict[str, Any] = field(default_factory=dict)  # pre-registered (readings)

    def blocks(self) -> list[list[str]]:
        """The grid as override lists, one per grid point (seeds not included); ``@`` values
        resolved (:func:`selected_value`)."""
        points: list[list[str]] = []
        for block in self.grid:
            keys = list(block)
            values = [
                [selected_value(x) for x in (v if isinstance(v, list) else [v])]
                for v in block.values()
            ]
            for combo in itertools.product(*values):
                points.append([f"{k}={_override_value(v)}" for k, v in zip(keys, combo)])
        return points


def selected_value(value: Any) -> Any:
    """``value``, or for ``"@<study>/<group>/<method>/<key>"`` the value that study's report
    selected (``reports/<study>/selected.yaml`` beside ``experiments/``).

    Raises:
        ConfigError: the selection is not there yet (one line: which report to run first).
    """
    if not (isinstance(value, str) and value.startswith("@")):
        return value
    parts = value[1:].split("/", 3)
    if len(parts) != 4:
        raise ConfigError(
            f"grid value {value!r} is not valid; a selection reads @<study>/<group>/<method>/<key>"
        )
    study, group, method, key = parts
    path = _reports_of(study) / study / SELECTED_FILE
    chosen = yaml.safe_load(path.read_text()) if path.exists() else None
    try:
        return chosen[group][method][key]
    except (KeyError, TypeError):
        raise NoRecords(
            f"grid value {value!r}: no selection in {path}; run `dropens study {study}` and "
            f"`dropens report {study}` first"
        ) from None


def _override_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def load_study_file(name: str) -> Study:
    """Parse and check ``experiments/<name>.yaml``.

    Raises:
        ConfigError: unknown study (naming the valid ones) or a malformed file.
    """
    check_name("study", name)
    path = study_file(name)
    if path is None:
        raise bad_choice("study", name, study_names())
    raw = _read_study_yaml(path)
    unknown = sorted(set(raw) - set(STUDY_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; valid keys: {', '.join(STUDY_KEYS)}")
    grid = raw.get("grid") or [{}]
    if not isinstance(grid, list) or not all(isinstance(b, dict) for b in grid):
        raise ConfigError(f"{path}: grid must be a list of {{override: value | [values]}} blocks")
    seeds = raw.get("seeds", [0])
    seeds = seeds if isinstance(seeds, list) else [seeds]
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(
            f"{path}: seeds={seeds!r} is not valid; give a list of integers, e.g. [0, 1, 2]"
        )
    lists = {key: raw.get(key) or [] for key in ("overrides", "smoke", "figures")}
    for key, value in lists.items():
        if not isinstance(value, list) or any(isinstance(v, (dict, list)) for v in value):
            raise ConfigError(f"{path}: {key} must be a list of strings, e.g. [data=mnist1d]")
    predictions = raw.get("predictions") or {}
    if not isinstance(predictions, dict):
        raise ConfigError(f"{path}: predictions must be a mapping")
    return Study(
        name=name,
        claim=str(raw.get("claim", "")).strip(),
        setup=str(raw.get("setup", "")).strip(),
        report=str(raw.get("report", name)),
        overrides=[str(o) for o in lists["overrides"]],
        seeds=seeds,
        grid=grid,
        smoke=[str(o) for o in lists["smoke"]],
        figures=[str(f) for f in lists["figures"]],
        predictions=dict(predictions),
    )


def _read_study_yaml(path: Path) -> dict[str, Any]:
    """An experiments file as a mapping; one line naming the file and the fix otherwise."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DamagedFile(
            f"{path}: not UTF-8 text (byte {err.start}: {err.object[err.start : err.start + 1]!r}); "
            "save it as UTF-8"
        ) from None
    except OSError as err:
        raise DamagedFile(f"{path}: cannot be read ({err.strerror}); check the file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise DamagedFile(f"{path}: not valid YAML ({where}{problem}); fix the file") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DamagedFile(
            f"{path}: holds a {type(raw).__name__} ({str(raw)[:40]!r}), not a mapping of "
            f"{', '.join(STUDY_KEYS)}; fix the file"
        )
    return raw


@dataclass
class Plan:
    """A study expanded into validated run configs, plus the launcher settings."""

    study: Study
    name: str  # results/<name>/ and the W&B group (``study=`` on the command line renames it)
    runs: list[dict[str, Any]]
    launcher: dict[str, Any]

    def records(self) -> list[RunRecord]:
        return [RunRecord.for_config(c) for c in self.runs]

    def select(self, text: str) -> Plan:
        """The runs whose run id contains ``text`` (a subset to train or list)."""
        runs = [c for c in self.runs if text in RunRecord.for_config(c).path.name]
        if not runs:
            raise ConfigError(
                f"--match {text!r} selects none of the {len(self.runs)} runs of study {self.name}"
            )
        return Plan(self.study, self.name, runs, self.launcher)

    def pending(self) -> list[dict[str, Any]]:
        """Runs whose record is not complete (what a launcher still has to train)."""
        return [c for c in self.runs if not RunRecord.for_config(c).done]


def split_overrides(overrides: Sequence[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """Separate study-level overrides (``seeds=``, ``smoke=``, ``launcher=``) from run overrides.

    Returns ``(study_level, launcher_overrides, run_overrides)``; ``launcher.<key>=<v>`` goes to the
    launcher config.
    """
    study_level: dict[str, str] = {}
    launcher: list[str] = []
    runs: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key == "seed":
            raise ConfigError(
                f"seed={value} is not a study override; choose the seeds with seeds=[{value}]"
            )
        if sep and key in STUDY_OVERRIDES:
            study_level[key] = value
        elif sep and key.startswith("launcher."):
            launcher.append(f"{key.removeprefix('launcher.')}={value}")
        else:
            runs.append(item)
    return study_level, launcher, runs


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = yaml.safe_load(text)
    except yaml.YAMLError:
        seeds = None
    seeds = seeds if isinstance(seeds, list) else [seeds]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(
            f"seeds={text!r} is not valid; give a list of integers, e.g. seeds=[0,1,2]"
        )
    return seeds


def launcher_config(name: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``configs/launcher/<name>.yaml`` with ``key=value`` overrides applied."""
    from omegaconf import OmegaConf

    options = sorted({p.stem for base in config_dirs() for p in (base / "launcher").glob("*.yaml")})
    if name not in options:
        raise bad_choice("launcher", name, options)
    cfg = OmegaConf.load(config_file(f"launcher/{name}.yaml"))
    for item in overrides:
        key, _, value = item.partition("=")
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise bad_choice(f"launcher.{key}", value, [f"launcher.{k}" for k in cfg])
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"launcher.{key}={value!r} is not a valid value") from None
        OmegaConf.update(cfg, key, parsed, merge=False)
    out = OmegaConf.to_container(cfg, resolve=True)
    check_launcher(out)  # type: ignore[arg-type]
    return out  # type: ignore[return-value]


# launcher settings that must be integers >= the bound (when present); booleans; optional text
LAUNCHER_INTS = {
    "workers": 1,
    "timeout_min": 1,
    "cpus_per_task": 1,
    "array_parallelism": 1,
    "gpus_per_node": 0,
    "signal_delay_s": 1,
}
LAUNCHER_BOOLS = ("keep_going", "wait")
LAUNCHER_TEXT = ("partition", "account", "qos", "constraint", "folder", "requeue_signal")


def check_launcher(launcher: Mapping[str, Any]) -> None:
    """One-line errors for launcher values of the wrong kind (before anything is submitted)."""
    from dropens.schema import check_bool, check_int, check_number

    for key, low in LAUNCHER_INTS.items():
        if key in launcher:
            check_int(f"launcher.{key}", launcher[key], low)
    for key in LAUNCHER_BOOLS:
        if key in launcher:
            check_bool(f"launcher.{key}", launcher[key])
    for key in LAUNCHER_TEXT:
        if launcher.get(key) is not None and not isinstance(launcher[key], str):
            raise ConfigError(f"launcher.{key}={launcher[key]!r} is not valid; give text or null")
    name = launcher.get("requeue_signal")
    if name is not None and not hasattr(signal, "SIG" + str(name).upper().removeprefix("SIG")):
        raise ConfigError(f"launcher.requeue_signal={name!r} is not a signal; e.g. USR1")
    if launcher.get("mem_gb") is not None:
        check_number("launcher.mem_gb", launcher["mem_gb"], strict=True)


def expand(name: str, overrides: Sequence[str] = ()) -> Plan:
    """Compose and validate every run of study ``name`` (nothing is trained or written).

    Args:
        overrides: command-line overrides: run overrides (Hydra syntax, applied to every run, after
            the study's own), ``seeds=[..]``, ``smoke=true`` (the study's tiny form),
            ``launcher=local|slurm`` and ``launcher.<key>=<value>``.

    Raises:
        ConfigError: the first bad override or grid point, as one line.
    """
    from dropens.checks import validate_config

    study = load_study_file(name)
    study_level, launcher_overrides, run_overrides = split_overrides(overrides)
    seeds = _parse_seeds(study_level["seeds"]) if "seeds" in study_level else study.seeds
    smoke = yaml.safe_load(study_level.get("smoke", "false"))
    if not isinstance(smoke, bool):
        raise bad_choice("smoke", study_level["smoke"], ["true", "false"])
    launcher = launcher_config(study_level.get("launcher", "local"), launcher_overrides)
    tiny = study.smoke if smoke else []
    runs: list[dict[str, Any]] = []
    seen: set[Path] = set()
    for point in study.blocks():
        # one composition per grid point (Hydra composes in ~0.3 s); the seeds differ only in the
        # top-level `seed` (no config interpolates it; tests/test_study.py checks the equivalence)
        # the tiny form after the grid point: smoke is tiny whatever a block sets (e.g. its arm's
        # trainer.val_check_interval, beyond the smoke trainer's 8 steps)
        composed = to_container(
            compose([*study.overrides, *point, *tiny, f"study={name}", *run_overrides])
        )
        for seed in seeds:
            config = {**copy.deepcopy(composed), "seed": seed}
            validate_config(config)
            path = RunRecord.for_config(config).path
            if path in seen:  # two grid points that resolve to the same run (e.g. p for plain)
                continue
            seen.add(path)
            runs.append(config)
    check_schedules(runs)
    study_name = runs[0]["study"] if runs else name
    return Plan(study=study, name=study_name, runs=runs, launcher=launcher)


def check_schedules(runs: Sequence[Mapping[str, Any]]) -> None:
    """Validation within the step budget (:func:`dropens.checks.check_schedule`) for every run,
    before anything is trained or submitted: the data of each distinct data config is loaded once
    for its epoch length. Data this machine cannot read (a SLURM login node) is left to the run's
    own check.

    Raises:
        ConfigError: the first run whose validation schedule cannot work, as one line.
    """
    from dropens.checks import batches_per_epoch, check_schedule, needs_epoch_length
    from dropens.data import build_datamodule

    lengths: dict[str, int | None] = {}
    for config in runs:
        if not needs_epoch_length(config):
            continue
        data_key = json.dumps(config["data"], sort_keys=True, default=str)
        if data_key not in lengths:
            module = build_datamodule(config["data"], seed=int(config["seed"]))
            try:
                module.prepare_data()
                module.setup("fit")
            except OSError:
                lengths[data_key] = None
            else:
                lengths[data_key] = batches_per_epoch(len(module.x_train), module.batch_size)
        if lengths[data_key] is not None:
            check_schedule(config, lengths[data_key])


def run_one(config: Mapping[str, Any]) -> str:
    """Train one run of a study (skipped if complete); returns the record path.

    Module-level so SLURM jobs (submitit pickles it) call the same code as the local launcher.
    """
    from dropens.train import train

    return str(train(config).path)


def describe(plan: Plan) -> str:
    """One line per run: state and run id."""
    lines = [f"study {plan.name}: {len(plan.runs)} runs, {len(plan.pending())} to train"]
    for i, record in enumerate(plan.records(), 1):
        state = "done   " if record.done else "damaged" if record.damage() else "pending"
        lines.append(f"  [{i:>3}/{len(plan.runs)}] {state} {record.path.name}")
    return "\n".join(lines)


def results_dir(plan: Plan) -> Path:
    return Path(plan.runs[0]["results_root"]) / plan.name if plan.runs else Path()


def committed_records(plan: Plan) -> Path:
    """``reports/<study>/records.jsonl``: the study's committed compact records (may not exist)."""
    return _reports_of(plan.study.name) / plan.name / "records.jsonl"


STUDY_LOG = "study_log.jsonl"


def log_invocation(
    plan: Plan, launcher: str, workers: int, trained: int, elapsed_s: float, cpus: int | None
) -> None:
    """Append one line per ``dropens study`` invocation that trained something to
    ``results/<study>/study_log.jsonl``: the measured wall time the report quotes as the study's
    cost (summed over invocations, since an interrupted study resumes in a later one).

    Args:
        workers: parallel runs (local pool size, or the SLURM array's task count).
        cpus: CPU cores of the machine the runs shared (local), ``None`` for SLURM.
    """
    if trained == 0:
        return
    entry = {
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "launcher": launcher,
        "workers": workers,
        "cpus": cpus,
        "host": socket.gethostname(),
        "trained": trained,
        "elapsed_s": round(elapsed_s, 1),
    }
    path = results_dir(plan) / STUDY_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    # one write of one line with O_APPEND: concurrent or interrupted invocations never interleave
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def read_study_log(study_dir: Path) -> list[dict]:
    """The entries :func:`log_invocation` wrote for a study folder (empty when none); a line that
    does not parse is left out with a one-line warning naming the file."""
    path = Path(study_dir) / STUDY_LOG
    if not path.exists():
        return []
    entries, bad = [], []
    for i, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            entries.append(entry)
        else:
            bad.append(i)
    if bad:
        print(
            f"warning: {path}: lines {bad} are not JSON objects and are left out of the study's "
            "measured time (delete them to silence this)",
            file=sys.stderr,
        )
    return entries


def summary_line(record: RunRecord) -> str:
    """``acc 0.955 nll 0.143`` of a record's deterministic (or members) row, for progress output."""
    metrics = record.metrics()
    for label in ("deterministic", "members"):
        acc = metrics.get(keys.test("clean", label, "acc"))
        if acc is not None:
            return f"{label} acc {acc:.4f} nll {metrics[keys.test('clean', label, 'nll')]:.4f}"
    return ""


def _first_sentence(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    # a full stop before a capital letter, not "et al. (", "Fig. 11", "e.g. x"
    end = re.search(r"(?<!\bal)(?<!\bFig)(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z\"])", text)
    text = text[: end.start() + 1] if end else text
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def overview(reports_root: str | Path = "reports", overrides: Sequence[str] = ()) -> str:
    """``dropens list``: one line per study of ``experiments/``: its planned runs (with
    ``overrides``, e.g. ``results_root=...`` or ``smoke=true``), how many are complete in the
    results root and in the committed compact records (``reports/<study>/records.jsonl``), and the
    first sentence of its claim."""
    from dropens.records import RECORDS_FILE, read_records

    lines = [
        *search_dirs_text().splitlines(),
        "",
        f"{'study':20s} {'runs':>5s} {'results':>8s} {'records':>8s}  claim",
    ]
    for name in study_names():
        try:
            plan = expand(name, overrides)
        except ConfigError as err:
            lines.append(f"{name:20s} error: {err}")
            continue
        planned = {r.path.name for r in plan.records()}
        local = sum(r.done for r in plan.records())
        path = Path(reports_root) / plan.name / RECORDS_FILE
        committed = len(planned & {r.run_id for r in read_records(path)[0]}) if path.exists() else 0
        lines.append(
            f"{name:20s} {len(planned):5d} {local:8d} {committed:8d}  "
            f"{_first_sentence(plan.study.claim)}"
        )
    lines += [
        "",
        "results: complete run directories under the results root (trained here); records: runs "
        "in the committed compact records, from which `dropens report NAME` regenerates figures",
    ]
    return "\n".join(lines)
