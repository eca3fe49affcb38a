"""The run config as a whole, checked before anything is written: keys and values.

**Keys.** Every node of a resolved run config has an allow-list; a key outside it is refused with
one line naming the nearest valid key, whether it came from a config file, an override or a
``+key=value`` addition (Hydra accepts any ``+`` key). The allow-lists are read from the config
files themselves plus the optional keys studies add with ``+`` (absent from the files so that the
run ids of ordinary configs, which hash the resolved config, do not change):

=========  ==========================================================================
node       valid keys
=========  ==========================================================================
(top)      ``configs/train.yaml`` keys, the groups, :data:`OPTIONAL_TOP`
optim      ``configs/train.yaml`` ``optim`` keys
eval       ``configs/train.yaml`` ``eval`` keys, :data:`OPTIONAL_EVAL`
method     the keys of ``configs/method/<method.name>.yaml``
dropout    the keys of ``configs/dropout/*.yaml``
logger     the keys of ``configs/logger/<logger.name>.yaml``
trainer    the arguments of ``lightning.Trainer`` (passed through), less those a run sets itself
data       the fields of the data module (``dropens.data.base.config_fields``, with
           ``OPTIONAL_FIELDS``)
model      the constructor arguments of the model (``architecture_fields``), ``name``,
           ``dropout_sites``
=========  ==========================================================================

**Values.** :func:`check_values`: the seed, the optimizer, the step/epoch budget (finite and at
least one step), the precision, the evaluation sizes, names that become directories. What needs
the data or the machine (eval sizes against memory, accelerator availability, the dry forward
pass) is checked by :func:`dropens.train.prepare`, still before the run directory exists.
"""

from __future__ import annotations

import difflib
import inspect
import math
import typing
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

import yaml

from dropens.config import GROUPS, config_dirs, config_file
from dropens.errors import ConfigError, bad_choice
from dropens.paths import RUN_ID, check_name

OPTIONAL_TOP = ("early_stopping",)  # dropens.checks.check_early_stopping
OPTIONAL_EVAL = ("temperature_scaling", "occlusion")  # dropens.evaluation, dropens.cues
# lightning.Trainer arguments a run sets itself (its logger, checkpoints and record directory)
TRAINER_RESERVED = ("self", "logger", "callbacks", "default_root_dir", "enable_checkpointing")
MAX_SEED = 2**32 - 1  # numpy's (and lightning.seed_everything's) seed range


def _load(path) -> dict[str, Any]:
    raw = yaml.safe_load(path.read_text()) or {}
    return {k: v for k, v in raw.items() if k != "defaults"}


def _train_yaml() -> dict[str, Any]:
    return _train_yaml_of(tuple(config_dirs()))


@cache
def _train_yaml_of(dirs: tuple) -> dict[str, Any]:
    return _load(config_file("train.yaml"))


def _group_keys(group: str, name: str | None = None) -> tuple[str, ...]:
    """Keys of ``configs/<group>/<name>.yaml`` as Hydra finds it (every file of the group in every
    configs directory when ``name`` is None; :func:`dropens.config.config_dirs`)."""
    return _group_keys_of(tuple(config_dirs()), group, name)


@cache
def _group_keys_of(dirs: tuple, group: str, name: str | None) -> tuple[str, ...]:
    if name:
        found = config_file(f"{group}/{name}.yaml")
        files = [found] if found is not None else []
    else:
        files = [p for base in dirs for p in sorted((base / group).glob("*.yaml"))]
    keys: dict[str, None] = {}
    for path in files:
        keys.update(dict.fromkeys(_load(path)))
    return tuple(keys)


@cache
def trainer_keys() -> tuple[str, ...]:
    import lightning as L

    params = inspect.signature(L.Trainer.__init__).parameters
    return tuple(p for p in params if p not in TRAINER_RESERVED)


def _group_files(group: str) -> tuple[str, ...]:
    dirs = config_dirs()
    return tuple(sorted({p.stem for base in dirs for p in (base / group).glob("*.yaml")}))


def _unknown(node: str, key: str, valid: Sequence[str], what: str) -> ConfigError:
    near = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    hint = f"did you mean {node}.{near[0]}? " if near else ""
    return ConfigError(f"{node}.{key} is not a key of {what}; {hint}valid: {', '.join(valid)}")


def _check_node(
    node: str,
    value: Any,
    valid: Sequence[str],
    what: str,
    required: Iterable[str] = (),
) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{node}={value!r} is not valid; {node} must be a mapping of {what}")
    for key in value:
        if key not in valid:
            raise _unknown(node, str(key), valid, what)
    for key in required:
        if key not in value:
            raise ConfigError(f"{node}.{key} is missing; {what} needs it (was it removed with ~?)")


def check_keys(config: Mapping[str, Any]) -> None:
    """Refuse unknown keys anywhere in a resolved run config (module docstring), and missing ones.

    Raises:
        ConfigError: one line naming the key and the nearest valid one.
    """
    from dropens.data import DATAMODULES
    from dropens.data.base import config_fields
    from dropens.models import MODELS, architecture_fields

    top = _train_yaml()
    valid_top = [*top, *GROUPS, *OPTIONAL_TOP]
    for key in config:
        if key not in valid_top:
            near = difflib.get_close_matches(str(key), valid_top, n=1, cutoff=0.5)
            hint = f"did you mean {near[0]}? " if near else ""
            raise ConfigError(
                f"{key} is not a key of the run config; {hint}valid: {', '.join(valid_top)}"
            )
    for key in [*top, *GROUPS]:
        if key not in config:
            raise ConfigError(f"{key} is missing from the run config (was it removed with ~?)")
    _check_node("optim", config["optim"], list(top["optim"]), "optim", top["optim"])
    eval_keys = [*top["eval"], *OPTIONAL_EVAL]
    _check_node("eval", config["eval"], eval_keys, "eval", top["eval"])
    _check_node("trainer", config["trainer"], trainer_keys(), "lightning.Trainer")
    dropout_keys = _group_keys("dropout")
    _check_node("dropout", config["dropout"], dropout_keys, "dropout", dropout_keys)
    for group in ("method", "logger"):
        node = config[group]
        name = node.get("name") if isinstance(node, Mapping) else None
        if name not in _group_files(group):
            raise bad_choice(f"{group}.name", name, _group_files(group))
        keys = _group_keys(group, name)
        _check_node(group, node, keys, f"{group} {name} (configs/{group}/{name}.yaml)", keys)
    data = config["data"]
    name = data.get("name") if isinstance(data, Mapping) else None
    if name not in DATAMODULES:
        raise bad_choice("data.name", name, DATAMODULES)
    fields = ["name", *(f for f in config_fields(DATAMODULES[name]) if f != "seed")]
    _check_node("data", data, fields, f"data {name}")
    model = config["model"]
    name = model.get("name") if isinstance(model, Mapping) else None
    if name not in MODELS:
        raise bad_choice("model.name", name, MODELS)
    fields = ["name", *architecture_fields(MODELS[name]), "dropout_sites"]
    _check_node("model", model, fields, f"model {name}")


# ---------------------------------------------------------------------------------- values


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(field: str, value: Any, low: int | None = None, allow: Sequence[Any] = ()) -> int:
    """``value`` as an integer ``>= low`` (or one of ``allow``); else a one-line ConfigError."""
    if value in allow and (value is None or not isinstance(value, bool)):
        return value
    if not _is_int(value) or (low is not None and value < low):
        extra = f" or {', '.join(map(str, allow))}" if allow else ""
        bound = f" >= {low}" if low is not None else ""
        raise ConfigError(f"{field}={value!r} is not valid; must be an integer{bound}{extra}")
    return value


def check_number(field: str, value: Any, low: float = 0.0, strict: bool = False) -> float:
    """``value`` as a finite number ``> low`` (``strict``) or ``>= low``; else one line."""
    ok = _is_number(value) and math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ConfigError(f"{field}={value!r} is not valid; must be a finite number {bound}")
    return float(value)


def check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise bad_choice(field, value, ["true", "false"])
    return value


def precision_values() -> tuple[Any, ...]:
    """Every ``trainer.precision`` Lightning accepts (its own ``Literal`` types)."""
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

    def flat(tp: Any) -> list[Any]:
        args = typing.get_args(tp)
        return [v for a in args for v in flat(a)] if args else [tp]

    return tuple(dict.fromkeys(flat(_PRECISION_INPUT)))


def check_budget(trainer: Mapping[str, Any]) -> None:
    """The step/epoch budget is finite and trains at least one step.

    Raises:
        ConfigError: ``max_steps`` not an integer >= 1 or -1, no epoch limit with ``max_steps=-1``
            (trains forever), ``max_epochs=0`` (trains nothing), or a clock limit ``max_time``.
    """
    steps = trainer.get("max_steps", -1)
    epochs = trainer.get("max_epochs")
    if steps in (None, 0):
        raise ConfigError(
            f"trainer.max_steps={steps!r} trains nothing; choose a positive number "
            "(or -1 with trainer.max_epochs >= 1)"
        )
    check_int("trainer.max_steps", steps, 1, allow=(-1,))
    check_int("trainer.max_epochs", epochs, 0, allow=(-1, None))
    if epochs == 0:
        raise ConfigError("trainer.max_epochs=0 trains nothing; choose >= 1 or -1 (no epoch limit)")
    if steps == -1 and (epochs is None or epochs == -1):
        raise ConfigError(
            f"trainer.max_steps=-1 with trainer.max_epochs={epochs!r} has no finite budget "
            "(trains forever); set steps=N (trainer.max_steps) or trainer.max_epochs=N"
        )
    if trainer.get("max_time") is not None:
        raise ConfigError(
            f"trainer.max_time={trainer['max_time']!r} stops training by the clock, so the run "
            "would not be reproducible; budget it in steps (steps=N) or trainer.max_epochs"
        )


def check_values(config: Mapping[str, Any]) -> None:
    """The values that need no data, model or machine (module docstring).

    Raises:
        ConfigError: one line naming the field, the value and what is valid.
    """
    from dropens.methods.base import OPTIMIZERS, SCHEDULES

    seed = config["seed"]
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed={seed!r} is not valid; must be an integer in [0, {MAX_SEED}]")
    check_name("study", config["study"])
    if config.get("run_id") is not None:
        check_name("run_id", config["run_id"], RUN_ID)
    if not isinstance(config["results_root"], str) or not config["results_root"]:
        raise ConfigError(f"results_root={config['results_root']!r} is not valid; give a directory")
    check_bool("overwrite", config["overwrite"])
    check_int("cpu_threads", config["cpu_threads"], 1, allow=(None,))
    optim = config["optim"]
    if optim["name"] not in OPTIMIZERS:
        raise bad_choice("optim.name", optim["name"], OPTIMIZERS)
    if optim["schedule"] not in SCHEDULES:
        raise bad_choice("optim.schedule", optim["schedule"], SCHEDULES)
    check_number("optim.lr", optim["lr"], strict=True)
    check_number("optim.weight_decay", optim["weight_decay"])
    check_number("optim.momentum", optim["momentum"])
    check_int("optim.step_size", optim["step_size"], 1)
    check_number("optim.gamma", optim["gamma"], strict=True)
    check_int("optim.warmup_steps", optim["warmup_steps"], 0)
    trainer = config["trainer"]
    check_budget(trainer)
    precision = trainer.get("precision", "32-true")
    if precision not in precision_values():
        raise bad_choice("trainer.precision", precision, precision_values())
    if not isinstance(trainer.get("accelerator", "auto"), str):
        raise ConfigError(
            f"trainer.accelerator={trainer['accelerator']!r} is not valid; e.g. auto, cpu, gpu"
        )
    ev = config["eval"]
    check_int("eval.val_mc_samples", ev["val_mc_samples"], 1)
    check_int("eval.n_bins", ev["n_bins"], 1)
    check_number("eval.memory_budget_mb", ev["memory_budget_mb"], strict=True)
    check_bool("eval.save_predictions", ev["save_predictions"])
    check_bool("eval.exhaustive", ev["exhaustive"])
    sets = ev["sets"]
    if not isinstance(sets, list) or not sets or not all(isinstance(s, str) for s in sets):
        raise ConfigError(f"eval.sets={sets!r} is not valid; give a list of eval set names")
