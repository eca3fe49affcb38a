"""Dropout's explicit regularizer (Wei, Kakade & Ma, ICML 2020, "The Implicit and Explicit
Regularization Effects of Dropout"): what dropout adds to the expected training loss, without masks.

For dropout with unit-mean noise of variance ``p / keep`` on the input ``h`` of a layer, with logits
``z``, softmax ``s`` and cross-entropy loss ``l``, the second-order expansion of
``E_mask[l(masked)] - l(deterministic)`` is

    R = (p / (2 keep)) * sum_j h_j^2 * J_j^T H J_j,      H = diag(s) - s s^T,   J_j = dz / dh_j,

(the Hessian of softmax cross-entropy in the logits; the first-order term vanishes because the
noise has mean 1). This is the Gauss-Newton part of the second-order term, as in Wei et al.: the
part with the network's own second derivative ``d^2 z / dh^2`` is left out; it is zero where the
layers between the site and the logits are piecewise linear (ReLU networks) and at the head. ``J_j^T H J_j = sum_c s_c (J_jc - sum_k s_k J_jk)^2`` is the variance of the
column ``J_j`` under ``s``. It depends only on the noise *variance*, so Bernoulli, Gaussian and
uniform masks of the same variance share it; it holds for element-wise masks (one draw per unit).

- :func:`explicit_dropout_penalty`: ``R`` at the head (``z = W h + b``: ``J_j`` is column ``j`` of
  ``W``), in closed form; exact to second order.
- :func:`site_penalty`: ``R`` at any site: ``J^T (e_c - s)`` for all ``C`` classes at once by one
  batched vector-Jacobian product (``torch.autograd.grad(..., is_grads_batched=True,
  create_graph=True)``), so the penalty is differentiable for training. Exact (no approximation
  of the Jacobian; the expansion is the only approximation), at ``C`` VJPs per step.

For Bernoulli masks the dropped perturbation of a unit is ``-h_j``, not small, so ``R`` matches the
true expectation only when the per-unit contributions are small (tested against the exact
probability-weighted average over every mask of a small layer). The *implicit* effect -- the
gradient noise of sampling masks -- is not part of ``R`` (see :mod:`dropens.methods.explicit`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dropens.errors import ConfigError


def _check_p(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) < 1.0:
        raise ConfigError(f"p={p!r} is not valid; expected a drop probability in [0, 1)")
    return float(p)


def explicit_dropout_penalty(
    hidden: Tensor, head_weight: Tensor, logits: Tensor, p: float
) -> Tensor:
    """Dropout's explicit regularizer at the head site, batch mean.

    Args:
        hidden: ``[N, F]`` the input of the head (the dropout site).
        head_weight: ``[C, F]`` the head's weight ``W`` (``logits = hidden @ W.T + b``).
        logits: ``[N, C]`` the head's output.
        p: drop probability of the site (noise variance ``p / (1 - p)``).

    Returns:
        0-dim: ``(p / (2 keep)) * mean_n sum_j h_nj^2 (sum_c s_nc W_cj^2 - (sum_c s_nc W_cj)^2)``.
    """
    p = _check_p(p)
    if hidden.dim() != 2 or head_weight.dim() != 2 or logits.dim() != 2:
        raise ConfigError(
            f"explicit_dropout_penalty needs hidden [N, F], head_weight [C, F], logits [N, C]; got "
            f"{tuple(hidden.shape)}, {tuple(head_weight.shape)}, {tuple(logits.shape)}"
        )
    if head_weight.shape != (logits.shape[1], hidden.shape[1]) or len(hidden) != len(logits):
        raise ConfigError(
            f"explicit_dropout_penalty: shapes do not match: hidden {tuple(hidden.shape)}, "
            f"head_weight {tuple(head_weight.shape)}, logits {tuple(logits.shape)}"
        )
    s = F.softmax(logits, dim=-1)
    mean_w = s @ head_weight  # [N, F]: sum_c s_c W_cj
    mean_w2 = s @ head_weight.square()  # [N, F]: sum_c s_c W_cj^2
    per_example = (hidden.square() * (mean_w2 - mean_w.square())).sum(-1)
    return p / (2.0 * (1.0 - p)) * per_example.mean()


def site_penalties(
    logits: Tensor, sites: list[tuple[Tensor, float]], create_graph: bool = True
) -> list[Tensor]:
    """Dropout's explicit regularizer at every site, each a 0-dim batch mean.

    Args:
        logits: ``[N, C]`` of a deterministic forward pass in which every site's input was used.
        sites: ``(hidden [N, *unit], p)`` per site: the tensor the site's dropout would multiply
            (its input in the deterministic pass, part of the graph of ``logits``), and its ``p``.
        create_graph: keep the graph of the Jacobians (needed to train with the penalty).

    Returns:
        ``R`` of each site (module docstring), in the order of ``sites``.
    """
    if not sites:
        return []
    n, c = logits.shape
    s = F.softmax(logits, dim=-1)  # [N, C]
    # cotangents e_c - s_n for every class c: [C, N, C]; g_c = J^T (e_c - s) by one batched VJP
    eye = torch.eye(c, dtype=logits.dtype, device=logits.device)
    cotangents = eye[:, None, :] - s[None]
    grads = torch.autograd.grad(
        logits,
        [h for h, _ in sites],
        grad_outputs=cotangents,
        is_grads_batched=True,
        create_graph=create_graph,
    )
    out = []
    for (h, p), g in zip(sites, grads):
        p = _check_p(p)
        h2 = h.reshape(n, -1).square()  # [N, F]
        g2 = g.reshape(c, n, -1).square()  # [C, N, F]
        variance = torch.einsum("nc,cnf->nf", s, g2)  # J_j^T H J_j per example and unit
        out.append(p / (2.0 * (1.0 - p)) * (h2 * variance).sum(-1).mean())
    return out


def site_penalty(hidden: Tensor, logits: Tensor, p: float, create_graph: bool = True) -> Tensor:
    """:func:`site_penalties` of one site: ``hidden [N, *unit]`` feeding ``logits [N, C]``."""
    return site_penalties(logits, [(hidden, p)], create_graph)[0]
