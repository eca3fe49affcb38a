"""What every training method shares: the backbone, the optimizer and schedule, and validation logging.

A method is a small LightningModule subclass that says only how a batch becomes a loss
(:meth:`Method.training_loss`) and how its backbone is built; data loops, evaluation and the run
record live elsewhere (STYLE.md anti-pattern: one routine class with 17 switches).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dropens import keys
from dropens.errors import ConfigError, check_choice
from dropens.inference import predict
from dropens.metrics.wrappers import PredictionMetrics
from dropens.models import build_model
from dropens.rng import rng_state, set_rng_state

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "none")


class Method(L.LightningModule):
    """Base LightningModule: ``backbone`` maps ``(N, *input_shape)`` to logits ``[N, C]``.

    Args:
        backbone: the model (built by :meth:`build_backbone` from the same config for every method).
        config: the resolved run config; the method reads ``optim`` (name, lr, schedule, ...),
            ``method``, ``trainer.max_steps`` (schedule length) and ``eval`` (validation metrics).

    Validation logs, at every validation epoch, the calibration (and, for several members,
    diversity) metrics of :func:`dropens.metrics.summary.prediction_metrics` for every entry of
    :meth:`validation_plan` -- the same registered strategies as the test-time evaluation
    (:mod:`dropens.inference`) -- under keys ``val/clean/<label>/<metric>`` (STYLE.md 3).
    """

    name: ClassVar[str] = "base"
    # The test-time evaluation plan: registered strategies (dropens.inference.STRATEGIES) that
    # dropens.evaluation.evaluate runs on every eval set.
    eval_strategies: ClassVar[tuple[str, ...]] = ("deterministic",)
    # the validation label whose NLL early stopping selects by (a label of validation_plan)
    selection_label: ClassVar[str] = "deterministic"

    def __init__(self, backbone: nn.Module, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.optim_cfg = dict(config["optim"])
        self.method_cfg = dict(config["method"])
        self.eval_cfg = dict(config["eval"])
        self.max_steps = int(config["trainer"].get("max_steps", -1))
        n_bins = int(self.eval_cfg.get("n_bins", 15))
        self._loss_sum: Tensor | float = (
            0.0  # epoch mean of the training loss, logged once per epoch
        )
        self._loss_count = 0
        self._resume_rng: dict[str, Any] | None = None  # set by on_load_checkpoint
        self.val_metrics = nn.ModuleDict(
            {label: PredictionMetrics(n_bins=n_bins) for label in self.validation_plan()}
        )

    # ------------------------------------------------------------------ construction

    @classmethod
    def build_backbone(
        cls, cfg: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int
    ) -> nn.Module:
        """The backbone of this method for the run config ``cfg`` (same layers for every method)."""
        return build_model(cfg["model"], cfg["dropout"], input_shape, n_classes)

    @classmethod
    def validate(cls, cfg: Mapping[str, Any]) -> None:
        """Reject a bad ``method`` node with a one-line ConfigError (before any training)."""

    # ------------------------------------------------------------------ training

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy of one forward pass (dropout layers sample in train mode)."""
        return F.cross_entropy(self.backbone(x), y)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.training_loss(x, y)
        # Lightning's self.log costs ~1.6 ms per call on CPU (benchmarks/bench_lightning.py): log the
        # step loss every log_every_n_steps only, and the epoch mean once per epoch.
        self._loss_sum = self._loss_sum + loss.detach() * len(y)
        self._loss_count += len(y)
        if self.global_step % max(self.trainer.log_every_n_steps, 1) == 0:
            self.log("train/loss_step", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_start(self) -> None:
        # The batch order of an epoch is a function of the loader's epoch index. Lightning's own
        # count is one ahead after resuming from an end-of-epoch checkpoint (it replays the saved
        # epoch as an empty one), so index epochs by the optimizer steps taken instead: a resumed
        # run sees the batches the uninterrupted run saw.
        loader = self.trainer.train_dataloader
        n_batches = self.trainer.num_training_batches
        if hasattr(loader, "set_epoch") and 0 < n_batches < math.inf:
            batches = self.global_step * self.trainer.accumulate_grad_batches
            loader.set_epoch(int(batches // n_batches))
        # ... and continues the global RNG stream saved with the checkpoint (after the sanity
        # validation, which sets its own draws aside), so it draws the same dropout masks.
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a resumed run re-saves the restored checkpoint before its first step: keep the saved
        # stream, not the fresh process's
        pending = self._resume_rng
        checkpoint["dropens_rng_state"] = pending if pending is not None else rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resume_rng = checkpoint.get("dropens_rng_state")

    def on_train_epoch_end(self) -> None:
        if self._loss_count:
            self.log("train/loss_epoch", self._loss_sum / self._loss_count, on_epoch=True)
        self._loss_sum, self._loss_count = 0.0, 0

    # ------------------------------------------------------------------ validation

    def validation_plan(self) -> dict[str, tuple[str, int | None]]:
        """``{label: (strategy, samples)}`` evaluated on the validation set at every validation
        epoch: registered strategies of :mod:`dropens.inference` (``samples``: MC masks)."""
        return {"deterministic": ("deterministic", None)}

    def on_validation_epoch_start(self) -> None:
        # Validation samples MC masks; keep it from consuming the training RNG, so the training
        # trajectory does not depend on how often validation runs.
        self._rng_state = rng_state()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        budget = float(self.eval_cfg.get("memory_budget_mb", 256))
        for label, (strategy, samples) in self.validation_plan().items():
            preds = predict(self.backbone, x, strategy, samples=samples, memory_budget_mb=budget)
            self.val_metrics[label].update(preds.member_probs, y.cpu())

    def on_validation_epoch_end(self) -> None:
        set_rng_state(self._rng_state)
        for label, metric in self.val_metrics.items():
            values = metric.compute()
            metric.reset()
            self.log_dict({keys.key("val", "clean", label, k): v for k, v in values.items()})
            if label == "deterministic":
                self.log("val_acc", values["acc"], prog_bar=True, logger=False)

    # ------------------------------------------------------------------ optimizer

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: one group of every parameter by default (``optim.lr``
        and ``optim.weight_decay``); a method gives some parameters their own ``lr`` or
        ``weight_decay`` by returning more groups (the schedule scales every group alike)."""
        return [{"params": list(self.parameters())}]

    def configure_optimizers(self):
        cfg = self.optim_cfg
        check_choice("optim.name", cfg["name"], OPTIMIZERS)
        check_choice("optim.schedule", cfg["schedule"], SCHEDULES)
        params = self.param_groups()
        if cfg["name"] == "adamw":
            opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        else:
            opt = torch.optim.SGD(
                params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
            )
        warmup, total = int(cfg.get("warmup_steps", 0)), max(self.max_steps, 1)
        schedule = cfg["schedule"]

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if schedule == "cosine":
                t = min((step - warmup) / max(total - warmup, 1), 1.0)
                return 0.5 * (1.0 + math.cos(math.pi * t))
            if schedule == "step":
                return cfg["gamma"] ** ((step - warmup) // cfg["step_size"])
            return 1.0

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class StackedMembersMethod(Method):
    """A method whose backbone is a stacked ensemble of ``K`` members (``n_members``,
    ``stacked_members = True``: ``ensemble``, ``batchensemble``, ``mimo``, ``packed``). There is no
    single deterministic network: it is validated, early-stopped and evaluated by its members."""

    eval_strategies: ClassVar[tuple[str, ...]] = ("members",)
    selection_label: ClassVar[str] = "members"

    def validation_plan(self) -> dict[str, tuple[str, int | None]]:
        """The ``K`` members."""
        return {"members": ("members", None)}


def require(cond: bool, message: str) -> None:
    """Raise a one-line ConfigError with ``message`` unless ``cond``."""
    if not cond:
        raise ConfigError(message)


def check_member_dropout(cfg: Mapping[str, Any]) -> bool:
    """``method.member_dropout`` of an ensemble-family method as a bool (one-line ConfigError for
    a non-bool, or for ``true`` with ``dropout.p=0``, which would train the members without it)."""
    member_dropout = cfg["method"]["member_dropout"]
    require(
        isinstance(member_dropout, bool),
        f"method.member_dropout={member_dropout!r} is not valid; choose one of: true, false",
    )
    require(
        not member_dropout or float(cfg["dropout"]["p"]) != 0,
        "method.member_dropout=true with dropout.p=0 trains members without dropout; "
        "choose dropout.p > 0 or method.member_dropout=false",
    )
    return member_dropout


def member_dropout_spec(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``dropout`` node the members' backbone is built with: ``cfg["dropout"]``, at ``p = 0``
    unless ``method.member_dropout`` (the ensemble family's members have no dropout by default)."""
    dropout = dict(cfg["dropout"])
    if not cfg["method"]["member_dropout"]:
        dropout["p"] = 0.0
    return dropout


def warn_coupled_clipping(cfg: Mapping[str, Any], method: str) -> None:
    """Warn that ``trainer.gradient_clip_val`` clips one norm over all of ``method``'s members,
    so that one member's large gradient shrinks every member's step (they are no longer
    trained independently)."""
    if cfg.get("trainer", {}).get("gradient_clip_val"):
        warnings.warn(
            f"trainer.gradient_clip_val with method={method} clips one norm over all members: "
            "the members are no longer trained independently",
            stacklevel=3,
        )
