"""One run: config -> data module + backbone + method -> Lightning fit -> evaluation -> run record.

Everything that can be wrong with the input is checked in :func:`prepare` — every key and value of
the config (:mod:`dropens.schema`), the paths, data present, names valid, the Trainer settings on
this machine (a Trainer is built and dropped), the evaluation sizes against memory, the dropout
structure applicable at every site (a dry forward pass of two examples) — before a run directory
is touched or a step is trained.

A record is complete (``DONE``) only if it is sound: the training loss stayed finite (a
non-finite loss stops the run at once with one line naming the step), the planned budget was
trained, and every planned eval set and strategy has finite accuracy and NLL. While it trains,
the run holds its lock (:mod:`dropens.locks`); a stop signal ends it at a batch boundary
(:mod:`dropens.signals`) and the next ``dropens train`` resumes it from its last epoch-end
checkpoint; a damaged checkpoint is moved aside and the run restarts with a warning.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor, nn

from dropens import control, keys, signals, tracking
from dropens.checks import (
    batches_per_epoch,
    check_eval_memory,
    check_schedule,
    check_trainer,
    validate_config,
)
from dropens.cost import cost_info
from dropens.cues import cue_metrics, occlusion_record
from dropens.data import build_datamodule
from dropens.data.base import resolve_root
from dropens.errors import ConfigError
from dropens.evaluation import (
    IN_SET,
    OOD_SET,
    check_temperature_scaling,
    context,
    evaluate,
    magnitudes,
    plan,
)
from dropens.failures import RunFailed, Stopped
from dropens.inference import get
from dropens.layout import stack
from dropens.locks import RunLock
from dropens.methods import Method, method_class
from dropens.paths import check_dir
from dropens.results import RunRecord
from dropens.rng import set_rng_state


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
    check_dir(config["results_root"], "results_root")
    data_root = resolve_root(config["data"].get("root"))
    check_dir(data_root, "data.root", writable=False)  # a read-only root with the data is fine
    check_trainer(config)
    cls, eval_cfg = method_class(config["method"]["name"]), config["eval"]
    if config.get("cpu_threads"):
        torch.set_num_threads(int(config["cpu_threads"]))
    L.seed_everything(int(config["seed"]), workers=True, verbose=False)
    datamodule = build_datamodule(config["data"], seed=int(config["seed"]))
    try:
        datamodule.prepare_data()
        datamodule.setup("fit")
    except OSError as err:
        raise ConfigError(
            f"data.root={str(data_root)!r}: cannot read or write the data ({err.strerror or err}: "
            f"{err.filename}); point data.root (or $DROPENS_DATA) at a writable directory"
        ) from None
    # fail before training: unknown eval sets, temperature scaling without its fit set
    sets = select_eval_sets(datamodule, eval_cfg["sets"], config["data"]["name"])
    check_temperature_scaling(eval_cfg, list(sets))
    backbone = cls.build_backbone(config, datamodule.input_shape, datamodule.n_classes)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
    datamodule.drop_last_train = has_bn and len(datamodule.x_train) % datamodule.batch_size == 1
    _dry_run(backbone, datamodule.x_train[:2])
    check_schedule(config, batches_per_epoch(len(datamodule.x_train), datamodule.batch_size))
    check_eval_memory(config, cls, sets, datamodule.n_classes)
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


class RunGuard(Callback):
    """Stops a run at a batch boundary: on a stop signal (:func:`dropens.signals.check`) and on a
    non-finite training loss (before its backward pass, so no step is taken with it)."""

    def __init__(self, method_name: str, lr: Any) -> None:
        self.method_name = method_name
        self.lr = lr

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        signals.check()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        signals.check()

    def on_before_backward(self, trainer, pl_module, loss: Tensor) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            value = float(loss.detach().float().flatten()[0])
            raise RunFailed(
                f"the training loss of method={self.method_name} is {value} at step "
                f"{trainer.global_step + 1} (epoch {trainer.current_epoch}): the run diverged and "
                f"stops without DONE; lower optim.lr (now {self.lr}) or check the data"
            )


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def usable_checkpoint(record: RunRecord, method: Method) -> Path | None:
    """``checkpoints/last.ckpt`` if it loads and fits ``method``; a damaged or foreign one is
    moved aside with the rest of ``checkpoints/`` (``checkpoints.damaged-<time>``) and the run
    restarts from the beginning, with a one-line warning naming both."""
    path = record.last_checkpoint()
    if path is None:
        return None
    problem = None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated, garbage, empty: whatever torch.load says
        problem = " ".join(f"{type(err).__name__}: {err}".split())[:160]
    else:
        if not isinstance(state, dict) or not {"state_dict", "global_step"} <= set(state):
            problem = "not a Lightning checkpoint"
        else:
            ours = {k: tuple(v.shape) for k, v in method.state_dict().items()}
            theirs = {k: tuple(getattr(v, "shape", ())) for k, v in state["state_dict"].items()}
            if ours != theirs:
                problem = "its weights do not fit this run's model"
    if problem is None:
        return path
    aside = record.checkpoint_dir.with_name(f"checkpoints.damaged-{_stamp()}")
    record.checkpoint_dir.rename(aside)
    print(
        f"warning: checkpoint {path} is damaged ({problem}); moved to {aside.name}, the run "
        "restarts from the beginning",
        file=sys.stderr,
        flush=True,
    )
    return None


def check_trained(trainer: L.Trainer, config: Mapping[str, Any]) -> None:
    """Fit ended having trained the planned budget (not stopped early by anything).

    Raises:
        RunFailed: one line with the steps trained and planned.
    """
    steps = int(config["trainer"].get("max_steps", -1))
    epochs = config["trainer"].get("max_epochs")
    reached = (steps > 0 and trainer.global_step >= steps) or (
        epochs is not None and epochs > 0 and trainer.current_epoch >= epochs
    )
    if trainer.interrupted or not reached:
        raise RunFailed(
            f"training stopped at step {trainer.global_step} (epoch {trainer.current_epoch}) "
            f"before its budget (trainer.max_steps={steps}, trainer.max_epochs={epochs}); "
            "no DONE: rerun the same command to resume"
        )


def check_metrics(
    metrics: Mapping[str, float],
    backbone: nn.Module,
    eval_sets: Mapping[str, Any],
    strategies: Sequence[str],
    eval_cfg: Mapping[str, Any],
) -> None:
    """Every planned eval set and strategy has its row, and every accuracy, NLL and OOD AUROC is
    finite (a strategy that does not apply to the backbone has no rows: not applicable).

    Raises:
        RunFailed: one line naming the first missing or non-finite key.
    """
    ctx = context(eval_cfg)
    for name in eval_sets:
        if name == OOD_SET:
            continue
        for strategy in (get(s) for s in plan(strategies, eval_cfg)):
            if not strategy.applies(backbone):
                continue
            label = strategy.labels(ctx)[0]
            if keys.key("test", name, label, "nll") not in metrics:
                raise RunFailed(
                    f"evaluation left no row test/{name}/{label} (strategy {strategy.name}); "
                    "no DONE: rerun the same command"
                )
    for key, value in metrics.items():
        metric = key.rsplit("/", 1)[-1]
        if (metric in ("acc", "nll") or metric.startswith("auroc_")) and not math.isfinite(value):
            raise RunFailed(
                f"evaluation gave {key}={value}: the trained model's predictions are not finite; "
                "no DONE (lower optim.lr, or check the data)"
            )
    if (
        OOD_SET in eval_sets
        and IN_SET in eval_sets
        and not any(k.startswith(f"test/{OOD_SET}/") for k in metrics)
    ):
        raise RunFailed("evaluation left no OOD AUROC rows (test/ood/...); no DONE")


def _stopped(stop: Stopped, record: RunRecord, trainer: L.Trainer | None) -> Stopped:
    """``stop`` with one line saying what was stopped and how it resumes."""
    if stop.message:
        return stop
    where = f"at step {trainer.global_step}" if trainer is not None else "before training"
    if trainer is not None and trainer.state.stage is None and not trainer.interrupted:
        where = "during evaluation (training was complete)"
    resume = (
        "the same command resumes it from its last epoch-end checkpoint"
        if record.last_checkpoint() is not None
        else "the same command starts it again (no epoch was finished)"
    )
    return Stopped(stop.signum, f"run {record.path} stopped {where}, without DONE; {resume}")


def fit_and_record(prep: Prepared) -> RunRecord:
    """Train ``prep.method`` (resuming from the record's last checkpoint) and write the record.

    The caller holds the run's lock (:func:`train`). Stop signals end it at a batch boundary
    (:class:`~dropens.failures.Stopped` with one line); a non-finite loss, a budget not trained
    or a missing or non-finite evaluation row end it with :class:`~dropens.failures.RunFailed`.
    ``DONE`` is written only at the end of a sound run.
    """
    config, record, method = prep.config, prep.record, prep.method
    start, (commit, dirty) = time.time(), _git_commit()  # the code the run starts with
    _quiet_lightning()
    record.begin(config)
    resume = usable_checkpoint(record, method)
    logger = tracking.build_logger(config, record.path)
    # one rolling checkpoint, overwritten at the end of every epoch and only there, whatever the
    # validation schedule (an in-memory loader cannot resume mid-epoch exactly), and at the end
    # of training (save_top_k=0 + save_last never saves before the end of training: Lightning only
    # writes "last" when a top-k checkpoint was written)
    checkpoint = ModelCheckpoint(
        dirpath=str(record.checkpoint_dir),
        filename="last",
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=True,
    )
    callbacks: list[Callback] = [checkpoint, RunGuard(method.name, config["optim"]["lr"])]
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
    try:
        with signals.deferred():
            try:
                trainer.fit(method, datamodule=prep.datamodule, ckpt_path=resume)
            except SIGTERMException:  # Lightning's own SIGTERM exit (a SystemExit with status 0)
                raise Stopped(signal.SIGTERM) from None
        signals.check()  # a signal that came after the last batch
        check_trained(trainer, config)
        # a run resumed from its final checkpoint trains no epoch, so the saved RNG stream (which
        # the uninterrupted run evaluates with) has not been restored yet
        pending_rng = getattr(method, "_resume_rng", None)
        if pending_rng is not None:
            set_rng_state(pending_rng)
            method._resume_rng = None
        return _evaluate_and_record(prep, trainer, best, logger, start, commit, dirty)
    except Stopped as stop:
        raise _stopped(stop, record, trainer) from None


def _evaluate_and_record(
    prep: Prepared,
    trainer: L.Trainer,
    best: ModelCheckpoint | None,
    logger: Any,
    start: float,
    commit: str | None,
    dirty: bool | None,
) -> RunRecord:
    config, record, method = prep.config, prep.record, prep.method
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
    check_metrics(metrics, method.backbone, eval_sets, method.eval_strategies, config["eval"])
    record.write_metrics(metrics)
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
    batch = prep.datamodule.x_train[: prep.datamodule.batch_size].to(device)
    labels = prep.datamodule.y_train[: prep.datamodule.batch_size].to(device)
    info = {
        "wall_s": round(time.time() - start, 2),
        "steps": int(trainer.global_step),
        **selected,
        **cost_info(method, batch, labels),  # after training: it cannot touch the trajectory
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
    """Run one config end to end; a complete record is kept unless ``overwrite`` is set.

    Order: validate everything (:func:`prepare`); take the run's lock (a second process training
    the same run is refused with one line naming the holder); with ``overwrite=true`` move the old
    record aside (``.<run id>.replaced-<time>``; nothing is deleted); then train and record. A
    record marked ``DONE`` whose files do not read back is trained again (resumed).

    Raises:
        ConfigError: bad input, one line, before anything is written.
        RunFailed: the run could not complete soundly (one line, no ``DONE``).
        Stopped: a stop signal (one line; the same call resumes the run).
    """
    config = dict(config)
    validate_config(config)
    record = RunRecord.for_config(config)
    overwrite = bool(config.get("overwrite", False))
    if record.marked_done and not overwrite:
        damage = record.damage()
        if damage is None:
            print(f"complete, skipped: {record.path} (overwrite=true retrains)")
            return record
        print(f"warning: {damage}; this run is trained (resumed) again", file=sys.stderr)
    with signals.guard():
        prep = prepare(config)
        with RunLock(record.path):
            if not overwrite and record.done:  # finished by another process in the meantime
                print(f"complete, skipped: {record.path} (overwrite=true retrains)")
                return record
            if overwrite:
                moved = record.move_aside()
                if moved is not None:
                    print(f"overwrite=true: the previous record is kept at {moved}")
            return fit_and_record(prep)


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
