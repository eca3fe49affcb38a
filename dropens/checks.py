"""Every check of a run config that can be made before anything is written: keys and values
(:mod:`dropens.schema`), the mask spec, the method node, the evaluation plan and sizes against this
machine's memory, the Trainer on this machine (accelerator, precision), validation within the step
budget for early stopping. :func:`dropens.train.prepare` runs them before the run directory exists.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any

import lightning as L
from torch import Tensor

from dropens.cues import OCCLUSION_FIELDS
from dropens.errors import ConfigError
from dropens.evaluation import OOD_SET, mc_sizes, plan
from dropens.masks import validate_spec
from dropens.methods import Method, method_class
from dropens.schema import check_keys, check_values


def validate_config(config: Mapping[str, Any]) -> None:
    """The checks that need no data, model or machine: every key (unknown ones refused, even
    added with ``+``) and value (:mod:`dropens.schema`), mask spec, method node, eval sizes, step
    budget.

    Raises:
        ConfigError: one line naming the bad field, its value and the valid choices.
    """
    check_keys(config)
    check_values(config)
    d = config["dropout"]
    validate_spec(d["p"], d["dist"], d["structure"], d["scale"], d["block_size"])
    cls = method_class(config["method"]["name"])
    cls.validate(config)
    eval_cfg = config["eval"]
    mc_sizes(eval_cfg)
    plan(cls.eval_strategies, eval_cfg)
    occlusion = eval_cfg.get("occlusion")
    if occlusion not in (None, False, True) and not isinstance(occlusion, Mapping):
        raise ConfigError(
            f"eval.occlusion={occlusion!r} is not valid; use true, false or a mapping with "
            f"fields {', '.join(OCCLUSION_FIELDS)}"
        )
    for key, value in occlusion.items() if isinstance(occlusion, Mapping) else ():
        if key not in OCCLUSION_FIELDS:
            raise ConfigError(
                f"eval.occlusion.{key} is not a field; valid fields: {', '.join(OCCLUSION_FIELDS)}"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"eval.occlusion.{key}={value!r} is not valid; must be an integer >= 1"
            )


def check_trainer(config: Mapping[str, Any]) -> None:
    """Build (and drop) a ``lightning.Trainer`` of ``config.trainer`` without logger or
    checkpoints: what only this machine can tell (``accelerator=gpu`` without a GPU, devices,
    strategy, precision) fails here, before anything is written.

    Raises:
        ConfigError: one line with Lightning's reason.
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    trainer_cfg = dict(config["trainer"])
    quiet = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            L.Trainer(**trainer_cfg, logger=False, enable_checkpointing=False)
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        accel = trainer_cfg.get("accelerator", "auto")
        where = f"trainer.accelerator={accel!r}: " if accel not in ("auto", "cpu") else "trainer: "
        raise ConfigError(
            f"{where}Lightning refuses these settings on this machine: {reason[:300]}"
        ) from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)


def check_val_interval(config: Mapping[str, Any], batches_per_epoch: int) -> None:
    """An integer ``trainer.val_check_interval`` fits in an epoch unless validation counts steps
    across epochs (``check_val_every_n_epoch=null``), as Lightning requires at fit time.

    Raises:
        ConfigError: one line with both ways out.
    """
    trainer = config["trainer"]
    interval = trainer.get("val_check_interval")
    every = trainer.get("check_val_every_n_epoch", 1)
    if isinstance(interval, bool) or not isinstance(interval, int) or every is None:
        return
    if interval > batches_per_epoch:
        raise ConfigError(
            f"trainer.val_check_interval={interval} is more than the {batches_per_epoch} batches "
            f"of an epoch; set trainer.check_val_every_n_epoch=null to validate every {interval} "
            f"steps across epochs, or choose <= {batches_per_epoch}"
        )


def memory_bytes() -> int | None:
    """Physical memory of this machine (``None`` where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_eval_memory(
    config: Mapping[str, Any],
    cls: type[Method],
    sets: Mapping[str, tuple[Tensor, Tensor]],
    n_classes: int,
) -> None:
    """The member predictions evaluation keeps (``[M, N, C]`` float32 per set and strategy, twice
    when temperature scaling or OOD scores keep the log-probabilities too) fit in half of this
    machine's memory: ``eval.mc_samples=1000000000`` is refused here, not after training.

    Raises:
        ConfigError: one line with the size and what to lower.
    """
    eval_cfg = config["eval"]
    strategies = plan(cls.eval_strategies, eval_cfg)
    members = 0
    if "mc" in strategies:
        members += max(mc_sizes(eval_cfg))
    if "members" in strategies:
        members += int(config["method"].get("k", 1))
    members += len([s for s in strategies if s not in ("mc", "members", "exhaustive")])
    factor = 2 if eval_cfg.get("temperature_scaling") or OOD_SET in sets else 1
    n = sum(len(y) for _, y in sets.values())
    need = factor * members * n * n_classes * 4
    total = memory_bytes()
    if total is not None and need > total / 2:
        raise ConfigError(
            f"eval.mc_samples={eval_cfg['mc_samples']} / eval.mc_curve: evaluation would hold "
            f"{need / 2**30:.1f} GiB of predictions ({members} members x {n} examples x "
            f"{n_classes} classes, float32), more than half of this machine's "
            f"{total / 2**30:.1f} GiB; lower eval.mc_samples / eval.mc_curve "
            "(or data.eval_limit, eval.sets)"
        )


def check_early_stopping(config: Mapping[str, Any], batches_per_epoch: int) -> None:
    """``early_stopping`` (optional, absent by default so run ids do not change): ``true`` keeps
    the checkpoint with the lowest validation NLL of the method's selection label
    (``val/clean/deterministic/nll``; the members' for an ensemble) over the whole step budget and
    evaluates it ("early stopping" with the budget fixed and the best weights restored). Needs a
    validation within the budget.

    Raises:
        ConfigError: not a bool, or no validation epoch within the step budget.
    """
    value = config.get("early_stopping", False)
    if not isinstance(value, bool):
        raise ConfigError(f"early_stopping={value!r} is not valid; choose one of: true, false")
    trainer = config["trainer"]
    steps = int(trainer.get("max_steps", -1))
    every = trainer.get("check_val_every_n_epoch")
    interval = trainer.get("val_check_interval")
    if isinstance(interval, int) and not isinstance(interval, bool):
        # every `interval` steps (across epochs when check_val_every_n_epoch is None)
        first = interval + (0 if every is None else (int(every) - 1) * batches_per_epoch)
    else:  # a fraction of the epoch (default 1.0) in every `every`-th epoch
        fraction = 1.0 if interval is None else float(interval)
        first = (int(every or 1) - 1) * batches_per_epoch + max(
            1, int(fraction * batches_per_epoch)
        )
    if value and steps > 0 and first > steps:
        raise ConfigError(
            f"early_stopping=true selects by validation NLL, but the first validation comes after "
            f"{first} steps (trainer.check_val_every_n_epoch / val_check_interval), beyond the "
            f"{steps}-step budget; validate more often"
        )


def batches_per_epoch(n_train: int, batch_size: int) -> int:
    """Training batches of one epoch (at least one)."""
    return n_train // batch_size or 1


def check_schedule(config: Mapping[str, Any], batches: int) -> None:
    """The checks that need the epoch length ``batches``: :func:`check_early_stopping` and
    :func:`check_val_interval`."""
    check_early_stopping(config, batches)
    check_val_interval(config, batches)


def needs_epoch_length(config: Mapping[str, Any]) -> bool:
    """Whether :func:`check_schedule` can fail for ``config`` (early stopping, or an integer
    ``trainer.val_check_interval``), so a study knows when to load the data to check it."""
    interval = config["trainer"].get("val_check_interval")
    integer = isinstance(interval, int) and not isinstance(interval, bool)
    return bool(config.get("early_stopping", False)) or integer
