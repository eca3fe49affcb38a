"""``subnets``: an explicit ensemble of ``K`` fixed-mask subnetworks that share every weight.

Member ``k`` is the backbone with every dropout layer in ``member`` mode: the fixed mask of
subnetwork ``k``, one draw of the *same* mask spec that ``dropout`` samples from (a pure function of
the layer seed, ``k`` and the per-example shape, see :mod:`dropens.masks`). Dropout samples a fresh
subnetwork from an effectively infinite family at every step; ``subnets`` trains a finite family of
``K``, so ``K -> inf`` recovers dropout and ``K = 1`` is one thinned network (a capacity reduction,
no ensemble). The layer seeds are buffers, so the masks survive checkpoint reloads bit for bit.

Batching (``method.batching``):

- ``repeat``: every example goes through all ``K`` members, stacked on the batch axis ``(m b)``
  (batch ``K * B``). ``objective=member`` minimizes the mean of the members' losses (what dropout
  optimizes); ``objective=ensemble`` minimizes the loss of the members' averaged prediction
  (``-log mean_k p_k(y|x)``, "dropout boosting", Warde-Farley et al. 2014).
- ``partition``: every example goes through one member (same cost per step as ``plain``). The
  assignment of the ``b``-th example of step ``t`` is ``(b + t) mod K``: the loader has already
  shuffled the batch, so members see random examples; the ``+ t`` rotates which members get the
  extra examples when ``K`` does not divide ``B`` (balanced over steps), and the assignment is a
  pure function of the step, so a resumed run continues it. ``objective=member`` only (an example
  seen by one member has no ensemble prediction to train).

BatchNorm (where a backbone has it) is shared like every weight: in training its batch statistics
pool the rows of all members of the step (as dropout's do over its masks), and its running
statistics serve every member at test time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dropens import control
from dropens.errors import ConfigError, check_choice
from dropens.inference import DROPOUT_PROBES
from dropens.layout import stack
from dropens.methods.base import Method, require
from dropens.methods.dropout import OBJECTIVES, stacked_loss

BATCHINGS = ("repeat", "partition")


def check_k(k: Any) -> int:
    """``method.k`` as an int >= 1, else a one-line ConfigError."""
    require(
        isinstance(k, int) and not isinstance(k, bool) and k >= 1,
        f"method.k={k!r} is not valid; choose an integer >= 1 (number of members)",
    )
    return int(k)


def check_batching(method: Mapping[str, Any]) -> None:
    """``method.batching`` and ``method.objective`` of a fixed-mask method (``subnets``,
    ``masksembles``): valid choices, and not ``partition`` with ``ensemble`` (one-line errors)."""
    check_choice("method.batching", method["batching"], BATCHINGS)
    check_choice("method.objective", method["objective"], OBJECTIVES)
    require(
        not (method["batching"] == "partition" and method["objective"] == "ensemble"),
        "method.batching=partition with method.objective=ensemble is not valid: each example "
        "goes through one member, so there is no ensemble prediction to train; "
        "use batching=repeat or objective=member",
    )


def partition_assignment(batch_size: int, k: int, step: int, device=None) -> Tensor:
    """``[B]`` member index of every example of step ``step``: ``(arange(B) + step) mod k``."""
    return (torch.arange(batch_size, device=device) + int(step)) % k


class Subnets(Method):
    """``K`` fixed-mask subnetworks sharing all weights (see the module docstring).

    Validation logs the deterministic pass (weight scaling of the shared weights) and the ``K``
    members (``val/clean/members/...``: calibration of their mean, plus diversity). The test-time
    evaluation plan (:attr:`eval_strategies`) adds MC dropout, every member alone, the
    weight-scaling probe and recomputed BatchNorm statistics.
    """

    name: ClassVar[str] = "subnets"
    # + the weight-scaling probe and recomputed BatchNorm statistics, as for dropout
    eval_strategies: ClassVar[tuple[str, ...]] = (
        "deterministic",
        "members",
        "mc",
        "single",
        *DROPOUT_PROBES,
    )

    @classmethod
    def validate(cls, cfg: Mapping[str, Any]) -> None:
        method = cfg["method"]
        check_k(method["k"])
        check_batching(method)
        require(
            float(cfg["dropout"]["p"]) != 0,
            "dropout.p=0 with method=subnets gives K identical copies of the plain network "
            "(the member masks keep everything); choose dropout.p > 0",
        )

    @classmethod
    def build_backbone(
        cls, cfg: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int
    ) -> nn.Module:
        """The shared backbone, its dropout layers declared a family of ``method.k`` members."""
        backbone = super().build_backbone(cfg, input_shape, n_classes)
        if not [m for m in control.dropout_layers(backbone) if m.p > 0]:
            raise ConfigError(
                f"method=subnets needs dropout layers, but model.dropout_sites="
                f"{list(getattr(backbone, 'selected_sites', []))} places none; select a site"
            )
        control.set_n_members(backbone, check_k(cfg["method"]["k"]))
        return backbone

    @property
    def k(self) -> int:
        return int(self.method_cfg["k"])

    # ------------------------------------------------------------------ training

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        k = self.k
        if self.method_cfg["batching"] == "partition":
            assignment = partition_assignment(len(x), k, self.global_step, x.device)
            with control.member(self.backbone, list(range(k)), assignment=assignment):
                return F.cross_entropy(self.backbone(x), y)
        with control.member(self.backbone, list(range(k))):
            logits = self.backbone(stack(x, k))  # (m b)
        return stacked_loss(logits, y, k, self.method_cfg["objective"])

    # ------------------------------------------------------------------ validation

    def validation_plan(self) -> dict[str, tuple[str, int | None]]:
        """Deterministic pass (weight scaling) plus the ``K`` members."""
        return {**super().validation_plan(), "members": ("members", None)}
