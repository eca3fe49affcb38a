"""``mimo``: ``M`` subnetworks in one backbone, multi-input multi-output (Havasi et al., ICLR 2021).

Havasi, Jenatton, Fort, Liu, Snoek, Lakshminarayanan, Dai & Tran, "Training independent
subnetworks for robust prediction". The backbone is built for ``M`` inputs and ``M`` outputs: its
first layer takes the ``M`` inputs concatenated, its classifier has ``M`` heads; every hidden layer
is shared. In training each input slot gets its own example and head ``m`` is trained on the label
of input ``m``, so the subnetworks learn the task independently; at test time one input is repeated
in all ``M`` slots and the ``M`` heads are the members (their mean is the paper's prediction,
``p(y|x) = 1/M sum_m p_m(y | x, ..., x)``).

Widening (:func:`widened_shape`, built by :func:`dropens.models.build_model` itself, no backbone
code copied): per-example input ``(C, *spatial)`` becomes ``(M*C, *spatial)`` (inputs concatenated
along channels, member-major: channels ``m*C .. (m+1)*C - 1`` are input ``m``); a 1-D input ``(F,)``
becomes ``(M, F)`` (``M`` channels of a sequence for ``cnn1d``; ``M*F`` member-major features once
``mlp`` flattens it). The classifier is built with ``M * n_classes`` outputs; head ``m`` is the
logits ``m*C .. (m+1)*C - 1``. The layout of TorchUncertainty's ``_MIMOResNet``
(``(m b) c h w -> b (m c) h w``, ``b (m d) -> (m b) d``); uncertainty-baselines'
``wide_resnet_mimo`` interleaves the channels instead (``c*M + m``), a mere permutation of the
first layer's input weights (i.i.d. at initialization, so the same model). Only the first layer and
the classifier grow; the first layer's default initialization sees an ``M`` times larger fan-in
(as in both references).

Models: ``mlp``, ``cnn1d``, ``cnn2d``, ``resnet20`` and ``wrn`` (the first conv / Linear is widened
the same way for every built-in backbone). ``model=custom`` is refused with one line: its layers
come from a user factory that dropens cannot rebuild for a wider input.

Training batch (:func:`mimo_indices`, as in the authors' uncertainty-baselines
``baselines/cifar/mimo.py``): the ``B`` examples of the loader's batch are tiled
``R = method.batch_repetition`` times and shuffled (``main``); the first ``floor(R*B*(1 - rho))``
positions are shuffled again independently for every member, the last ones are kept, so a share
``rho = method.input_repetition`` of the ``R*B`` rows gives every member the same example (input
repetition) and every member sees every example ``R`` times (batch repetition). One step runs
``R*B`` widened rows: ``R`` times the rows of ``plain`` (the authors divide the loader's batch by
``R`` to keep the rows per step; here ``data.batch_size`` is the loader's batch, set it to ``B / R``
for that). The permutations are drawn from the global torch RNG (CPU), which checkpoints carry
(:mod:`dropens.methods.base`), so a resumed run continues them.

Loss: the **sum** over heads of each head's mean cross-entropy on its own labels (the paper's
``sum_m -log p(y_m | x_1..x_M)``; uncertainty-baselines ``reduce_mean(reduce_sum(CE, axis=1))``).
TorchUncertainty averages over heads instead (``1/M`` of this: with SGD an ``M`` times smaller
step; AdamW is nearly blind to the scale, but not its weight decay's relative strength).
``train/loss`` logs the sum divided by ``M``, comparable with the other methods.

Dropout: the backbone's dropout layers are built at ``p = 0`` unless ``method.member_dropout=true``
(as for ``ensemble``; then they sample a fresh mask per row in training and are off at test time):
the authors' MIMO WRN-28-10 (uncertainty-baselines ``wide_resnet_mimo``) has no dropout;
TorchUncertainty's keeps its WRN dropout (0.3) by default.

Inference protocol (``predict(model, x, "members")``): :class:`MimoNet` has ``n_members = M`` and
``stacked_members = True``; its forward takes ``(M*B, ...)`` rows member-major ``(m b)`` -- rows of
member ``m`` are input slot ``m`` -- and returns ``(M*B, C)``, rows of member ``m`` from head ``m``.
The ``members`` strategy stacks the same ``x`` ``M`` times: exactly the paper's inference. There is
no deterministic pass of one network besides this, so the evaluation plan is the members.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dropens.errors import ConfigError
from dropens.layout import stack, unstack
from dropens.methods.base import (
    StackedMembersMethod,
    check_member_dropout,
    member_dropout_spec,
    require,
)
from dropens.methods.subnets import check_k
from dropens.models import build_model


def widened_shape(input_shape: Sequence[int], k: int) -> tuple[int, ...]:
    """The per-example input shape of the ``k``-input backbone:
    ``(C, *spatial) -> (k*C, *spatial)``; ``(F,) -> (k, F)``."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 1:
        return (int(k), shape[0])
    return (int(k) * shape[0], *shape[1:])


def merge_inputs(x: Tensor, k: int) -> Tensor:
    """``(k*B, *shape)`` member-major ``->`` ``(B, *widened_shape(shape, k))``: row ``b`` holds
    input ``b`` of every member, member ``m``'s in channel block ``m``."""
    b = x.shape[0] // k
    return unstack(x, k).transpose(0, 1).reshape(b, *widened_shape(x.shape[1:], k))


def split_heads(logits: Tensor, k: int) -> Tensor:
    """``(B, k*C)`` ``->`` ``(k*B, C)`` member-major: rows of member ``m`` are head ``m``."""
    b = logits.shape[0]
    return logits.reshape(b, k, -1).transpose(0, 1).reshape(k * b, -1)


class MimoNet(nn.Module):
    """A backbone built for ``k`` inputs and ``k`` heads (module docstring), as a stacked ensemble.

    Args:
        net: the backbone built for :func:`widened_shape` inputs with ``k * n_classes`` logits.
        k: ``M``, the number of input slots and heads.

    Attributes:
        n_members: ``M``.
        stacked_members: ``True`` (the ``members`` inference protocol).

    Shapes: :meth:`forward` ``(M*B, *input_shape) -> (M*B, C)`` member-major ``(m b)``.
    """

    stacked_members: ClassVar[bool] = True

    def __init__(self, net: nn.Module, k: int) -> None:
        super().__init__()
        self.net = net
        self.n_members = int(k)

    def forward(self, x: Tensor) -> Tensor:
        """``(M*B, ...)``: rows of member ``m`` are input slot ``m`` ``->`` logits ``(M*B, C)``."""
        k = self.n_members
        if x.shape[0] % k:
            raise ConfigError(
                f"batch of {x.shape[0]} rows is not a multiple of the {k} MIMO members "
                "(layout (m b): one block of rows per input slot)"
            )
        return split_heads(self.net(merge_inputs(x, k)), k)

    def member(self, k: int) -> nn.Module:
        """Member ``k`` alone, ``(B, ...) -> (B, C)``: head ``k`` with ``x`` in every input slot.
        A view sharing this module's parameters (the members share every hidden layer)."""
        return MimoMember(self, k)

    def extra_repr(self) -> str:
        return f"n_members={self.n_members}"


class MimoMember(nn.Module):
    """Head ``k`` of ``mimo`` on its input repeated in all slots: ``(B, ...) -> (B, C)``."""

    def __init__(self, mimo: MimoNet, k: int) -> None:
        super().__init__()
        self.mimo = mimo
        self.k = int(k)

    def forward(self, x: Tensor) -> Tensor:
        m = self.mimo.n_members
        return unstack(self.mimo(stack(x, m)), m)[self.k]


def shuffled_rows(n_rows: int, input_repetition: float) -> int:
    """Rows that every member permutes on its own: ``floor(n_rows * (1 - rho))`` (the authors'
    ``to_shuffle``; the ``1e-9`` keeps ``1 - 0.9`` from rounding ``10 * 0.1`` down to 0)."""
    return min(n_rows, math.floor(n_rows * (1.0 - float(input_repetition)) + 1e-9))


def mimo_indices(
    batch_size: int,
    k: int,
    input_repetition: float,
    batch_repetition: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``[k, R*B]`` int64: the example (index into the loader's batch) of every member and row.

    ``main`` = a random permutation of ``arange(B)`` tiled ``R`` times; member ``m``'s row is its
    own permutation of ``main[:s]`` followed by ``main[s:]``, ``s = shuffled_rows(R*B, rho)``
    (module docstring). Drawn from ``generator`` (default: the global torch CPU RNG).
    """
    n = int(batch_size) * int(batch_repetition)
    base = torch.arange(int(batch_size)).repeat(int(batch_repetition))
    main = base[torch.randperm(n, generator=generator)]
    s = shuffled_rows(n, input_repetition)
    head, tail = main[:s], main[s:]
    rows = [torch.cat([head[torch.randperm(s, generator=generator)], tail]) for _ in range(k)]
    return torch.stack(rows)


def mimo_batch(
    x: Tensor,
    y: Tensor,
    k: int,
    input_repetition: float,
    batch_repetition: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The training rows of a loader batch ``x (B, ...)``, ``y [B]``: ``(k*R*B, ...)`` inputs and
    ``[k*R*B]`` labels, member-major ``(m b)``, from :func:`mimo_indices`."""
    idx = mimo_indices(len(x), k, input_repetition, batch_repetition, generator)
    flat = idx.reshape(-1).to(x.device)
    return x[flat], y[flat.to(y.device)]


def mimo_loss(logits: Tensor, y: Tensor, k: int) -> Tensor:
    """``sum_m mean_b CE(head m)`` of logits ``(k*n, C)`` and labels ``[k*n]``, member-major."""
    return k * F.cross_entropy(logits, y)


def _check_model(cfg: Mapping[str, Any]) -> None:
    require(
        cfg["model"].get("name") != "custom",
        "method=mimo widens the first layer and the classifier of a built-in backbone; "
        "model.name='custom' cannot be rebuilt for M inputs; choose one of: mlp, cnn1d, cnn2d, "
        "resnet20, wrn",
    )


class Mimo(StackedMembersMethod):
    """``M`` subnetworks of one multi-input multi-output backbone (see the module docstring)."""

    name: ClassVar[str] = "mimo"

    @classmethod
    def validate(cls, cfg: Mapping[str, Any]) -> None:
        method = cfg["method"]
        check_k(method["k"])
        rho = method["input_repetition"]
        require(
            isinstance(rho, (int, float)) and not isinstance(rho, bool) and 0 <= rho <= 1,
            f"method.input_repetition={rho!r} is not valid; choose a number in [0, 1] "
            "(share of training rows where every member gets the same example)",
        )
        reps = method["batch_repetition"]
        require(
            isinstance(reps, int) and not isinstance(reps, bool) and reps >= 1,
            f"method.batch_repetition={reps!r} is not valid; choose an integer >= 1 "
            "(times every member sees each example of a batch)",
        )
        check_member_dropout(cfg)
        _check_model(cfg)

    @classmethod
    def build_backbone(
        cls, cfg: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int
    ) -> nn.Module:
        """The backbone for ``M`` inputs and ``M * n_classes`` logits, dropout at ``p = 0``."""
        k = check_k(cfg["method"]["k"])
        _check_model(cfg)
        dropout = member_dropout_spec(cfg)
        net = build_model(cfg["model"], dropout, widened_shape(input_shape, k), k * n_classes)
        return MimoNet(net, k)

    # ------------------------------------------------------------------ training

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Sum over heads of their mean cross-entropy on the rows of :func:`mimo_batch`."""
        k = self.backbone.n_members
        xs, ys = mimo_batch(
            x,
            y,
            k,
            float(self.method_cfg["input_repetition"]),
            int(self.method_cfg["batch_repetition"]),
        )
        return mimo_loss(self.backbone(xs), ys, k)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.training_loss(x, y)
        # logged per member (sum / M), comparable with the train/loss of the other methods; every
        # log_every_n_steps only, as Method.training_step does
        per_member = loss.detach() / self.backbone.n_members
        self._loss_sum = self._loss_sum + per_member * len(y)
        self._loss_count += len(y)
        if self.global_step % max(self.trainer.log_every_n_steps, 1) == 0:
            self.log("train/loss_step", per_member, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    # ------------------------------------------------------------------ validation
