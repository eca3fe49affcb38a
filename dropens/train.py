"""One run: config -> data module + backbone + method -> Lightning fit -> evaluation -> run record.

Everything that can be wrong with the input is checked in :func:`prepare` — data present, names
valid, the dropout structure applicable at every site (a dry forward pass of two examples) —
before a run directory is touched or a step is trained.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import subprocess
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from dropens import control, keys, tracking
from dropens.cues import OCCLUSION_FIELDS, cue_metrics, occlusion_record
from dropens.data import build_datamodule
from dropens.errors import ConfigError
from dropens.evaluation import check_temperature_scaling, evaluate, magnitudes, mc_sizes, plan
from dropens.layout import stack
from dropens.masks import validate_spec
from dropens.methods import Method, method_class
from dropens.results import RunRecord


class _DropLitTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_lightning() -> None:
    """Hide Lightning's advertising and notices that do not apply to these runs."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropLitTips())
    # dropens launches SLURM jobs itself (submitit), one process per run: no srun wrapper needed.
    warnings.filterwarnings("ignore", message=r"The `srun` command is available")
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")


@dataclass
class Prepared:
    """Everything a run needs, validated."""

    config: dict[str, Any]
    record: RunRecord
    datamodule: Any
    method: Method


def _dry_run(backbone: nn.Module, x: torch.Tensor) -> None:
    """Forward two examples in train and eval mode so shape errors surface before training.

    A ``stacked_members`` backbone (``ensemble``) gets its input once per member, ``(m b)``; a
    backbone whose dropout layers form a finite family (``subnets``) also runs its members.
    Uses a forked RNG and restores every buffer (BatchNorm running statistics), so that training
    starts exactly where it would without this check.
    """
    if getattr(backbone, "stacked_members", False):
        x = stack(x, int(backbone.n_members))
    n_members = {m.n_members for m in control.dropout_layers(backbone) if m.p > 0} - {None}
    buffers = {name: b.clone() for name, b in backbone.named_buffers()}
    with torch.random.fork_rng(), torch.no_grad(), control.preserved(backbone):
        try:
            backbone.train()
            backbone(x)
            backbone.eval()
            backbone(x)
            for k in n_members:
                with control.member(backbone, list(range(k))):
                    backbone(stack(x, k))
        finally:
            for name, b in backbone.named_buffers():
                b.copy_(buffers[name])


def validate_config(config: Mapping[str, Any]) -> None:
    """The checks that need no data or model: mask spec, method node, eval sizes, step budget.

    Raises:
        ConfigError: one line naming the bad field, its value and the valid choices.
    """
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
    if config["trainer"].get("max_steps", -1) in (None, 0):
        raise ConfigError(
            "trainer.max_steps=0 trains nothing; choose a positive number (or -1 with max_epochs)"
        )


def select_eval_sets(
    datamodule: Any, names: Sequence[str], data_name: str
) -> dict[str, tuple[Tensor, Tensor]]:
    """The eval sets named by ``eval.sets`` (``all``: every set the data module provides), in the
    data module's order (``clean``, the test set, first).

    Raises:
        ConfigError: a name the data module does not provide (one line, with the valid choices).
    """
    available = datamodule.eval_sets()
    names = list(names)
    if "all" in names:
        return dict(available)
    missing = [s for s in names if s not in available]
    if missing or not names:
        raise ConfigError(
            f"eval.sets={missing or names} not provided by data.name={data_name!r}; "
            f"choose from: {', '.join(['all', *available])}"
        )
    return {k: v for k, v in available.items() if k in names}


def prepare(config: Mapping[str, Any]) -> Prepared:
    """Validate ``config`` (a resolved dict) and build data, backbone and method; trains nothing.

    Raises:
        ConfigError: one line naming the bad field, its value and the valid choices.
    """
    config = dict(config)
    validate_config(config)
    cls, eval_cfg = method_class(config["method"]["name"]), config["eval"]
    if config.get("cpu_threads"):
        torch.set_num_threads(int(config["cpu_threads"]))
    L.seed_everything(int(config["seed"]), workers=True, verbose=False)
    datamodule = build_datamodule(config["data"], seed=int(config["seed"]))
    datamodule.prepare_data()
    datamodule.setup("fit")
    # fail before training: unknown eval sets, temperature scaling without its fit set
    sets = select_eval_sets(datamodule, eval_cfg["sets"], config["data"]["name"])
    check_temperature_scaling(eval_cfg, list(sets))
    backbone = cls.build_backbone(config, datamodule.input_shape, datamodule.n_classes)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
    datamodule.drop_last_train = has_bn and len(datamodule.x_train) % datamodule.batch_size == 1
    _dry_run(backbone, datamodule.x_train[:2])
    check_early_stopping(config, len(datamodule.x_train) // datamodule.batch_size or 1)
    method = cls(backbone, config)
    return Prepared(config, RunRecord.for_config(config), datamodule, method)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _git_commit() -> tuple[str | None, bool | None]:
    """``(HEAD commit, whether tracked files differ from it)`` of the code a run starts with."""
    commit = _git("rev-parse", "HEAD") or None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)


BEST = "best"  # checkpoints/best.ckpt: the weights of the best validation NLL (early_stopping)


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


def _restore_best(method: Method, best: ModelCheckpoint) -> dict[str, Any]:
    """Load the best checkpoint's weights into ``method``; its step and score for run.json."""
    path = best.best_model_path
    if not path or not Path(path).exists():
        raise ConfigError(
            "early_stopping=true but no validation result was checkpointed; validate more often"
        )
    state = torch.load(path, map_location="cpu", weights_only=False)
    method.load_state_dict(state["state_dict"])
    return {
        "selected_step": int(state.get("global_step", -1)),
        "selected_val_nll": float(best.best_model_score),
    }


def fit_and_record(prep: Prepared) -> RunRecord:
    """Train ``prep.method`` (resuming from the record's last checkpoint) and write the record."""
    config, record, method = prep.config, prep.record, prep.method
    start, (commit, dirty) = time.time(), _git_commit()  # the code the run starts with
    _quiet_lightning()
    record.begin(config)
    if config.get("overwrite", False):  # retrain from scratch, not from the old final checkpoint
        shutil.rmtree(record.checkpoint_dir, ignore_errors=True)
    logger = tracking.build_logger(config, record.path)
    # one rolling checkpoint, overwritten after every epoch (save_top_k=0 + save_last never saves
    # before the end of training: Lightning only writes "last" when a top-k checkpoint was written)
    checkpoint = ModelCheckpoint(
        dirpath=str(record.checkpoint_dir),
        filename="last",
        save_top_k=1,
        enable_version_counter=False,
    )
    callbacks = [checkpoint]
    best = None
    if config.get("early_stopping", False):  # keep the checkpoint of the best validation NLL
        best = ModelCheckpoint(
            dirpath=str(record.checkpoint_dir),
            filename=BEST,
            monitor=keys.key("val", "clean", method.selection_label, "nll"),
            mode="min",
            save_top_k=1,
            enable_version_counter=False,
        )
        callbacks.append(best)
    trainer = L.Trainer(
        **config["trainer"],
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        default_root_dir=str(record.path),
    )
    trainer.fit(method, datamodule=prep.datamodule, ckpt_path=record.last_checkpoint())
    selected = _restore_best(method, best) if best is not None else {}
    # Lightning moves the module back to the CPU when fit ends: evaluate (MC, members, exhaustive:
    # the expensive part on a GPU run) on the device it trained on (inputs follow the model)
    device = trainer.strategy.root_device
    method.to(device)
    eval_sets = select_eval_sets(prep.datamodule, config["eval"]["sets"], config["data"]["name"])
    metrics, arrays = evaluate(
        method.backbone,
        eval_sets,
        config["eval"],
        method.eval_strategies,
        train_x=prep.datamodule.x_train,
        train_batch_size=prep.datamodule.batch_size,
        seed=int(config["seed"]),
    )
    metrics.update(cue_metrics(prep.datamodule, eval_sets, arrays, config["eval"]))
    record.write_json("metrics.json", metrics)
    occlusion = config["eval"].get("occlusion")
    if occlusion:
        record.write_json(
            "occlusion.json",
            occlusion_record(method.backbone, eval_sets, method.eval_strategies, occlusion),
        )
    if config["eval"].get("save_predictions", True):
        record.write_predictions(arrays)
    # after metrics.json; a forked RNG seeded by the run's seed, so it is reproducible too
    record.write_json("magnitudes.json", magnitudes(method.backbone, eval_sets, config["seed"]))
    tracking.log_summary(logger, metrics)
    tracking.log_run_figures(logger, metrics, arrays)
    tracking.finish(logger)
    info = {
        "wall_s": round(time.time() - start, 2),
        "steps": int(trainer.global_step),
        **selected,
        "git_commit": commit,
        "git_dirty": dirty,  # true: uncommitted changes on top of git_commit
        "torch": torch.__version__,
        "lightning": L.__version__,
        "host": platform.node(),
        "device": str(device),
    }
    record.write_json("run.json", info)
    record.finish(info)
    return record


def train(config: Mapping[str, Any]) -> RunRecord:
    """Run one config end to end; a complete record is kept unless ``overwrite`` is set."""
    record = RunRecord.for_config(config)
    if record.done and not config.get("overwrite", False):
        print(f"complete, skipped: {record.path} (overwrite=true retrains)")
        return record
    return fit_and_record(prepare(config))


def summarize(record: RunRecord, keys: tuple[str, ...] = ("acc", "nll", "ece")) -> str:
    """A short text table of a record's headline metrics: one line per (set, strategy) that has at
    least one of ``keys`` (the OOD AUROCs and the teeth-pair metrics have none and are left out)."""
    metrics = record.metrics()
    rows = sorted({k.rsplit("/", 1)[0] for k in metrics if k.rsplit("/", 1)[-1] in keys})
    lines = [f"{'':32s}" + "".join(f"{k:>9s}" for k in keys)]
    for row in rows:
        lines.append(
            f"{row:32s}" + "".join(f"{metrics.get(f'{row}/{k}', float('nan')):9.4f}" for k in keys)
        )
    return "\n".join(lines) + f"\nrecord: {record.path}\n" + json.dumps({"done": record.done})
