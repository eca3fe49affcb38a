"""``explicit``: deterministic training with dropout's explicit regularizer -- dropout without masks.

The backbone is the one ``dropout`` trains (same layers, same dropout sites and ``p``), but its
dropout layers never sample: every step is the deterministic pass, and the loss is the
cross-entropy plus, for every dropout site with input ``h``, Wei, Kakade & Ma's (2020) explicit
regularizer ``R = (p / (2 keep)) sum_j h_j^2 J_j^T H J_j`` (:mod:`dropens.regularizers`: the
Gauss-Newton second-order term of what dropout adds to the expected loss, computed exactly with
one batched vector-Jacobian product per step, ``C`` cotangents at once, not approximated inside).

So there is no subnetwork to sample, average or ensemble -- only the penalty dropout's masks would
add on average. If dropout is a regularizer, this should recover its gain over the plain network;
if its gain comes from training an ensemble of subnetworks, it should not.

What it leaves out, on purpose: the *implicit* effect (the gradient noise of sampling a mask per
step; Wei et al. replace it by matched noise whose covariance needs per-example Jacobians at every
site, and any sampled estimate of it reintroduces the masks this control removes). The
``dropout`` method with ``method.samples=k`` (the mean loss of ``k`` masks per step: the same
expected objective, ``k`` times less update noise) is the control for that part.

Limits (checked before training): element-wise masks (``dropout.structure=element``), inverted
scaling, and a backbone whose dropout inputs all feed the logits in one deterministic pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from dropens import control
from dropens.methods.base import Method, require
from dropens.regularizers import site_penalties


class Explicit(Method):
    """Deterministic training + the explicit dropout regularizer at every dropout site."""

    name: ClassVar[str] = "explicit"
    # a deterministic network: no masks to sample or average at test time
    eval_strategies: ClassVar[tuple[str, ...]] = ("deterministic",)

    @classmethod
    def validate(cls, cfg: Mapping[str, Any]) -> None:
        dropout = cfg["dropout"]
        require(
            float(dropout["p"]) != 0,
            "dropout.p=0 with method=explicit has no regularizer; use method=plain or p > 0",
        )
        require(
            dropout["structure"] == "element",
            f"method=explicit needs dropout.structure=element (one draw per unit, the regularizer "
            f"of Wei et al. 2020); got {dropout['structure']!r}",
        )
        require(
            dropout["scale"] == "inverted",
            f"method=explicit needs dropout.scale=inverted (the deterministic pass is the mean "
            f"network); got {dropout['scale']!r}",
        )

    @classmethod
    def build_backbone(
        cls, cfg: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int
    ) -> nn.Module:
        """The dropout backbone; every site with ``p > 0`` must be element-wise and inverted
        (a ``model=custom`` model keeps the structure of its own dropout modules)."""
        backbone = super().build_backbone(cfg, input_shape, n_classes)
        for m in control.dropout_layers(backbone):
            require(
                m.p == 0 or (m.structure == "element" and m.scale == "inverted"),
                f"method=explicit needs element-wise inverted dropout at every site, but site "
                f"{m.site!r} has structure={m.structure!r}, scale={m.scale!r}; use "
                "model.dropout_sites=[after] or another method",
            )
        return backbone

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        logits, sites = self.forward_with_sites(x)
        penalty = sum(site_penalties(logits, sites), start=logits.new_zeros(()))
        return F.cross_entropy(logits, y) + penalty

    def forward_with_sites(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, float]]]:
        """The deterministic pass: logits ``[N, C]`` and ``(input, p)`` of every dropout site
        with ``p > 0`` that the forward called (each input is part of the graph of the logits)."""
        sites: list[tuple[Tensor, float]] = []

        def capture(module: nn.Module, args: tuple) -> None:
            sites.append((args[0], float(module.p)))

        layers = control.require_layers(self.backbone, "method=explicit")
        handles = [m.register_forward_pre_hook(capture) for m in layers]
        x = x.detach().requires_grad_(True)  # an input-site penalty differentiates by the input
        try:
            with control.deterministic(self.backbone):
                logits = self.backbone(x)
        finally:
            for handle in handles:
                handle.remove()
        return logits, sites
