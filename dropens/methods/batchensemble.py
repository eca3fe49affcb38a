"""``batchensemble``: ``K`` members sharing every weight up to rank-one factors (Wen, Tran & Ba,
"BatchEnsemble: an alternative approach to efficient ensemble and lifelong learning", ICLR 2020).

The backbone is the plain one, converted (:func:`~dropens.methods.batchensemble_layers.convert`):
every ``nn.Linear`` and ``nn.ConvNd`` becomes a BatchEnsemble layer whose member ``k`` has weight
``W * (s_k r_k^T)`` and its own bias (paper eq. 1-2; layers and initialization in
:mod:`dropens.methods.batchensemble_layers`). Every other layer is shared by all members:
BatchNorm (as in TorchUncertainty's batched ResNets and uncertainty-baselines' BatchEnsemble
WRN-28-10: in training its batch statistics pool the rows of all members of the step, and its
running statistics serve every member at test time), and the dropout layers.

Training. Every example of the batch goes through all ``K`` members, stacked ``(m b)``
(:func:`dropens.layout.stack`, ``K * B`` rows), and the loss is the **mean** over members of their
mean cross-entropy, i.e. the mean over the ``K * B`` rows (uncertainty-baselines
``baselines/cifar/batchensemble.py`` tiles images and labels ``ensemble_size`` times and takes
``reduce_mean``; it divides the per-core batch by ``K`` first, so a step has ``B`` rows there and
``K * B`` here). Unlike ``ensemble`` (sum), the mean keeps the shared ``W``'s gradient at the
scale of one network's.

Optimizer groups (:meth:`BatchEnsemble.param_groups`): the fast weights ``r, s`` get no weight
decay (decay would pull them to 0, not to their mean 1; uncertainty-baselines regularizes only
kernels, biases and BatchNorm) and, with the per-member biases, the learning rate
``optim.lr * method.fast_lr_multiplier`` (uncertainty-baselines' ``fast_weight_lr_multiplier``).

Dropout. The backbone's dropout layers are built at ``p = 0`` (the reference BatchEnsemble has
none) unless ``method.member_dropout=true``: then they sample a fresh mask per row in training
(every member its own masks) and are off at test time.

Inference: the ``members`` protocol (``n_members = K``, ``stacked_members = True``, forward
``(K*B, ...) -> (K*B, C)``); :meth:`BatchEnsembleNet.member` builds member ``k`` as a plain backbone
(used to record its activation magnitudes). ``K = 1`` is one network with rescaled weights.

Backbones: ``mlp``, ``cnn1d``, ``cnn2d``, ``resnet20`` and ``wrn`` work (their shortcut and stem
convolutions are converted too). ``custom`` models are converted the same way; layers they call
through ``F.linear`` / ``F.conv*`` with their own parameters stay shared, and a model without any
``nn.Linear`` / ``nn.ConvNd`` is refused with one line.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from dropens.errors import check_choice
from dropens.layout import stack
from dropens.methods.base import (
    StackedMembersMethod,
    check_member_dropout,
    member_dropout_spec,
    require,
)
from dropens.methods.batchensemble_layers import (
    FAST_INITS,
    BatchEnsembleNet,
    be_layers,
    convert,
)
from dropens.methods.dropout import stacked_loss
from dropens.methods.subnets import check_k
from dropens.models import build_model


def _positive_number(field: str, value: Any) -> float:
    require(
        isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0,
        f"{field}={value!r} is not valid; choose a number > 0",
    )
    return float(value)


class BatchEnsemble(StackedMembersMethod):
    """``K`` BatchEnsemble members trained together on the tiled batch (module docstring)."""

    name: ClassVar[str] = "batchensemble"

    @classmethod
    def validate(cls, cfg: Mapping[str, Any]) -> None:
        method = cfg["method"]
        check_k(method["k"])
        check_choice("method.fast_init", method["fast_init"], FAST_INITS)
        _positive_number("method.fast_init_std", method["fast_init_std"])
        _positive_number("method.fast_lr_multiplier", method["fast_lr_multiplier"])
        check_member_dropout(cfg)

    @classmethod
    def build_backbone(
        cls, cfg: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int
    ) -> nn.Module:
        """The plain backbone (the one ``plain`` builds from the same RNG state), converted to
        ``method.k`` members; fast weights drawn next from the global RNG."""
        method = cfg["method"]
        k = check_k(method["k"])
        net = build_model(cfg["model"], member_dropout_spec(cfg), input_shape, n_classes)
        convert(net, k, method["fast_init"], float(method["fast_init_std"]))
        return BatchEnsembleNet(net, k)

    @property
    def k(self) -> int:
        return int(self.method_cfg["k"])

    # ------------------------------------------------------------------ training

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean over the ``K`` members of their mean cross-entropy on the tiled batch."""
        logits = self.backbone(stack(x, self.k))  # (m b)
        return stacked_loss(logits, y, self.k, "member")

    def param_groups(self) -> list[dict[str, Any]]:
        """Slow weights (``W``, BatchNorm, ...) as configured; fast weights ``r, s`` without weight
        decay and the per-member biases, both at ``optim.lr * method.fast_lr_multiplier``."""
        layers = be_layers(self.backbone)
        fast = [p for m in layers for p in (m.r, m.s)]
        biases = [m.bias for m in layers if m.bias is not None]
        taken = {id(p) for p in (*fast, *biases)}
        slow = [p for p in self.parameters() if id(p) not in taken]
        lr = float(self.optim_cfg["lr"]) * float(self.method_cfg["fast_lr_multiplier"])
        groups = [
            {"params": slow},
            {"params": fast, "lr": lr, "weight_decay": 0.0},
            {"params": biases, "lr": lr},
        ]
        return [g for g in groups if g["params"]]

    # ------------------------------------------------------------------ validation


__all__ = ["BatchEnsemble", "BatchEnsembleNet"]
