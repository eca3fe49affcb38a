"""``packed``: Packed-Ensembles (Laurent, Lafage, Tartaglione, Daniel, Martinez, Bursuc & Franchi,
ICLR 2023): ``M`` members as the groups of one network's grouped layers.

The backbone (the same one every method builds) is converted layer by layer
(:func:`dropens.methods.packed_layers.pack`): every Linear / Conv becomes a grouped layer with its
widths multiplied by ``alpha`` (``method.alpha``) and ``M * gamma`` groups (``method.k = M``,
``method.gamma``), BatchNorm is widened, the first layer keeps the input's width and the last gives
``M * C`` logits, one head per member. Member ``k`` is the backbone at widths ``~ alpha/M`` times
the plain ones, with its own weights: the members share no parameter and never read each other's
activations. ``alpha = M = gamma = 1`` is the plain backbone.

Training (the paper's, TorchUncertainty's ``RepeatTarget`` + mean cross-entropy): every example
goes through all ``M`` members; the loss is the mean over members of each member's mean
cross-entropy. Member ``k``'s gradient is ``1/M`` of the one it would get trained alone (the
``ensemble`` method sums instead): AdamW is nearly invariant to that scale; with SGD it is a learning
rate ``lr / M`` per member.

Dropout: the backbone is built with every dropout layer at ``p = 0`` (the paper's members have no
dropout) unless ``method.member_dropout=true``: then the packed layers' units are dropped as the
``dropout.*`` spec says (each member's units by their own draws), in training only.

Inference protocol (as ``ensemble``): the backbone has ``n_members = M`` and
``stacked_members = True``; its forward takes ``(M*B, ...)`` rows member-major ``(m b)`` and returns
``(M*B, C)``. Member ``k``'s rows enter through group ``k`` of the first layer (its inputs stacked on
the channels), so when the ``M`` row blocks are the same examples -- as in training and in the
``members`` strategy -- the output is exactly the paper's network with its dense first layer, and
with different rows each member sees its own. The evaluation plan is the members, alone and
aggregated.

Backbones: ``mlp``, ``cnn1d``, ``cnn2d``, ``resnet20`` (its option-A shortcuts pad each member's
channels on their own) and ``wrn`` are converted; ``custom`` models are refused (a forward may
reshape or mix channels in ways the conversion cannot see). Packed layers are initialized as
PyTorch initializes their grouped shapes (as TorchUncertainty's): ``resnet20`` / ``wrn`` lose their
Kaiming-normal initialization.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from dropens.errors import ConfigError
from dropens.layout import stack, unstack
from dropens.methods.base import (
    StackedMembersMethod,
    check_member_dropout,
    member_dropout_spec,
    require,
    warn_coupled_clipping,
)
from dropens.methods.packed_layers import member_network, member_state_dict, pack
from dropens.methods.subnets import check_k
from dropens.models import build_model


def check_alpha(alpha: Any) -> float:
    """``method.alpha`` as a finite float > 0, else a one-line ConfigError."""
    ok = isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
    require(
        ok and math.isfinite(alpha) and alpha > 0,
        f"method.alpha={alpha!r} is not valid; choose a number > 0 (width multiplier, paper: 2)",
    )
    return float(alpha)


def check_gamma(gamma: Any) -> int:
    """``method.gamma`` as an int >= 1, else a one-line ConfigError."""
    require(
        isinstance(gamma, int) and not isinstance(gamma, bool) and gamma >= 1,
        f"method.gamma={gamma!r} is not valid; choose an integer >= 1 (groups per member, paper: 1)",
    )
    return int(gamma)


class PackedEnsemble(nn.Module):
    """A packed backbone behind the stacked-members protocol.

    Args:
        net: the plain backbone (converted in place by :func:`~dropens.methods.packed_layers.pack`).
        n_members: ``M``; alpha, gamma: width multiplier and groups per member.
        input_shape: per-example input shape (the conversion's probe forward).

    Shapes: :meth:`forward` ``(M*B, ...) -> (M*B, C)`` member-major; :meth:`forward_members`
    ``(B, ...) -> [M, B, C]`` (every member on the same inputs).
    """

    stacked_members: ClassVar[bool] = True

    def __init__(
        self, net: nn.Module, n_members: int, alpha: float, gamma: int, input_shape: Sequence[int]
    ) -> None:
        super().__init__()
        self.n_members, self.alpha, self.gamma = int(n_members), float(alpha), int(gamma)
        self.net = pack(net, self.n_members, self.alpha, self.gamma, input_shape)

    def forward(self, x: Tensor) -> Tensor:
        """``(M*B, ...)`` stacked member-major ``->`` logits ``(M*B, C)``."""
        if x.shape[0] % self.n_members:
            raise ConfigError(
                f"batch of {x.shape[0]} rows is not a multiple of the {self.n_members} packed "
                "members (layout (m b): stack the input once per member)"
            )
        return self.net(x)

    def forward_members(self, x: Tensor) -> Tensor:
        """``[M, B, C]``: every member on the same batch ``x`` ``(B, ...)``."""
        return unstack(self.forward(stack(x, self.n_members)), self.n_members)

    def member(self, k: int) -> nn.Module:
        """A standalone copy of member ``k``: ``(B, ...) -> (B, C)``, the backbone at widths
        ``W'/M`` with member ``k``'s weights (magnitude records use member 0)."""
        return member_network(self.net, k, self.n_members)

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        """Member ``k``'s weights as the ``state_dict`` of the backbone at widths ``W'/M``."""
        return member_state_dict(self.net, k, self.n_members)

    def extra_repr(self) -> str:
        return f"n_members={self.n_members}, alpha={self.alpha}, gamma={self.gamma}"


class Packed(StackedMembersMethod):
    """Packed-Ensembles: ``M`` members as grouped layers of one widened backbone (module docstring)."""

    name: ClassVar[str] = "packed"

    @classmethod
    def validate(cls, cfg: Mapping[str, Any]) -> None:
        method = cfg["method"]
        check_k(method["k"])
        check_alpha(method["alpha"])
        check_gamma(method["gamma"])
        check_member_dropout(cfg)
        model = cfg["model"].get("name")
        require(
            model != "custom",
            "method=packed converts the built-in backbones (mlp, cnn1d, cnn2d, resnet20, wrn); "
            "model.name='custom' is not supported (its forward may reshape or mix channels)",
        )
        warn_coupled_clipping(cfg, "packed")

    @classmethod
    def build_backbone(
        cls, cfg: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int
    ) -> nn.Module:
        """The plain backbone (dropout at ``p = 0``), packed into ``method.k`` members."""
        method = cfg["method"]
        net = build_model(cfg["model"], member_dropout_spec(cfg), input_shape, n_classes)
        return PackedEnsemble(
            net,
            check_k(method["k"]),
            check_alpha(method["alpha"]),
            check_gamma(method["gamma"]),
            input_shape,
        )

    # ------------------------------------------------------------------ training

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean over members of their mean cross-entropy: ``CE`` of the ``(M*B, C)`` logits
        against the labels repeated per member (TorchUncertainty's ``RepeatTarget``)."""
        m = self.backbone.n_members
        return F.cross_entropy(self.backbone(stack(x, m)), y.repeat(m))

    # ------------------------------------------------------------------ validation
