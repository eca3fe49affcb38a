"""``dropout``: standard dropout training (Srivastava et al. 2014), with the objective control.

``objective=member`` minimizes the mean over masks of the per-mask loss (what dropout optimizes:
every subnetwork is trained to be good on its own). ``objective=ensemble`` minimizes the loss of the
prediction averaged over ``samples`` masks, ``-log mean_s p_s(y|x)`` ("dropout boosting",
Warde-Farley et al. 2014): the subnetworks are trained as one ensemble. Same masks, same weights:
only the objective differs, which is what separates the two readings of dropout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from dropens import keys
from dropens.errors import check_choice
from dropens.inference import DROPOUT_PROBES
from dropens.layout import stack, unstack
from dropens.methods.base import Method, require

OBJECTIVES = ("member", "ensemble")


def stacked_loss(logits: Tensor, y: Tensor, m: int, objective: str) -> Tensor:
    """Loss of ``m`` stacked members.

    Args:
        logits: ``[(m b), C]`` — member-major stacking of ``m`` passes over the same ``b`` examples.
        y: ``[b]`` labels.
        objective: ``member`` = mean_m CE(logits_m, y); ``ensemble`` = -mean_b log mean_m p_m(y|x).
    """
    logp = unstack(F.log_softmax(logits.float(), dim=-1), m)  # [m, b, C]
    logp_y = logp.gather(-1, y.expand(m, -1).unsqueeze(-1)).squeeze(-1)  # [m, b]
    if objective == "member":
        return -logp_y.mean()
    return -(torch.logsumexp(logp_y, dim=0) - math.log(m)).mean()


class DropoutMethod(Method):
    """Dropout training: masks sampled fresh per example and step (mode ``sample``)."""

    name: ClassVar[str] = "dropout"
    # weight scaling, MC dropout at every T of eval.mc_curve (the mc rows also hold the mean
    # single-subnetwork metrics member_acc / member_nll), one random subnetwork (single); the
    # weight-scaling probe (ws_off, ws_on) and BatchNorm statistics recomputed with dropout off
    # (only where the backbone has BatchNorm): one deterministic pass each
    eval_strategies: ClassVar[tuple[str, ...]] = ("deterministic", "mc", "single", *DROPOUT_PROBES)

    @classmethod
    def validate(cls, cfg: Mapping[str, Any]) -> None:
        method = cfg["method"]
        check_choice("method.objective", method["objective"], OBJECTIVES)
        samples = method["samples"]
        require(
            isinstance(samples, int) and samples >= 1,
            f"method.samples={samples!r} is not valid; choose an integer >= 1",
        )
        require(
            method["objective"] == "member" or samples >= 2,
            f"method.samples={samples} with method.objective=ensemble averages nothing; choose >= 2",
        )
        require(
            float(cfg["dropout"]["p"]) != 0,
            "dropout.p=0 with method=dropout trains the plain network; use method=plain or p > 0",
        )

    def validation_plan(self) -> dict[str, tuple[str, int | None]]:
        """Deterministic pass plus MC dropout with ``eval.val_mc_samples`` masks."""
        t = int(self.eval_cfg.get("val_mc_samples", 8))
        return {**super().validation_plan(), keys.mc_label(t): ("mc", t)}

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        m = int(self.method_cfg["samples"])
        if m == 1:
            return F.cross_entropy(self.backbone(x), y)
        logits = self.backbone(stack(x, m))  # (m b): fresh mask per row
        return stacked_loss(logits, y, m, self.method_cfg["objective"])
