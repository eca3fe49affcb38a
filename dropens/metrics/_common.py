"""Shared input checks, the log clamp and the member aggregation used by every metric module.

Kept private so that :mod:`calibration`, :mod:`diversity` and :mod:`summary` can all use the
aggregation without an import cycle; the public home of :func:`aggregate` is
:mod:`dropens.metrics.summary` (``from dropens.metrics.summary import aggregate``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dropens.errors import ConfigError, check_choice

AGGREGATES = ("mean", "geometric")
REDUCTIONS = ("mean", "none")


def safe_log(p: Tensor) -> Tensor:
    """``log(max(p, tiny))`` with ``tiny = torch.finfo(p.dtype).tiny``.

    The clamp keeps ``log 0`` finite (about -87 in float32, -708 in float64), so ``0 * log 0 = 0``
    in entropies and KL terms, and an NLL of a zero-probability label is large but finite.
    """
    return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def shape_str(x: Tensor) -> str:
    return str(tuple(x.shape))


def check_probs(probs: Tensor, name: str = "probs") -> Tensor:
    """Require a floating ``[N, C]`` tensor with ``C >= 1``."""
    if not isinstance(probs, Tensor) or not probs.is_floating_point() or probs.dim() != 2:
        got = shape_str(probs) if isinstance(probs, Tensor) else type(probs).__name__
        raise ConfigError(
            f"{name} has shape {got}; expected a float tensor [N, C] (examples, classes)"
        )
    if probs.shape[1] < 1:
        raise ConfigError(
            f"{name} has shape {shape_str(probs)}; expected at least one class (C >= 1)"
        )
    return probs


def check_member_probs(member_probs: Tensor, name: str = "member_probs") -> Tensor:
    """Require a floating ``[M, N, C]`` tensor with ``M >= 1`` and ``C >= 1``."""
    if (
        not isinstance(member_probs, Tensor)
        or not member_probs.is_floating_point()
        or member_probs.dim() != 3
    ):
        got = (
            shape_str(member_probs)
            if isinstance(member_probs, Tensor)
            else type(member_probs).__name__
        )
        raise ConfigError(
            f"{name} has shape {got}; expected a float tensor [M, N, C]"
            " (members, examples, classes)"
        )
    if member_probs.shape[0] < 1 or member_probs.shape[2] < 1:
        raise ConfigError(f"{name} has shape {shape_str(member_probs)}; expected M >= 1 and C >= 1")
    return member_probs


def as_member_probs(probs: Tensor, name: str = "member_probs") -> Tensor:
    """Accept ``[N, C]`` (one member) or ``[M, N, C]``; return ``[M, N, C]``."""
    if isinstance(probs, Tensor) and probs.dim() == 2:
        return check_probs(probs, name).unsqueeze(0)
    return check_member_probs(probs, name)


def check_labels(labels: Tensor, n: int, n_classes: int, name: str = "labels") -> Tensor:
    """Require an integer ``[N]`` tensor with values in ``[0, C)``."""
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point():
        got = shape_str(labels) if isinstance(labels, Tensor) else type(labels).__name__
        raise ConfigError(f"{name} has shape {got}; expected an integer tensor [N]")
    if labels.shape[0] != n:
        raise ConfigError(
            f"{name} has {labels.shape[0]} entries; expected N={n} to match the predictions"
        )
    if n and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ConfigError(
            f"{name} has values in [{int(labels.min())}, {int(labels.max())}]; "
            f"expected [0, {n_classes})"
        )
    return labels.long()


def check_reduction(reduction: str) -> None:
    check_choice("reduction", reduction, REDUCTIONS)


def reduce(values: Tensor, reduction: str) -> Tensor:
    """``mean`` over examples (0-dim) or ``none`` (``[N]``)."""
    check_reduction(reduction)
    return values.mean() if reduction == "mean" else values


def check_weights(weights: Tensor, n_members: int, name: str = "weights") -> Tensor:
    """Require ``[M]`` non-negative floating member weights summing to 1 (within 1e-5)."""
    if (
        not isinstance(weights, Tensor)
        or not weights.is_floating_point()
        or tuple(weights.shape) != (n_members,)
    ):
        got = shape_str(weights) if isinstance(weights, Tensor) else type(weights).__name__
        raise ConfigError(
            f"{name} has shape {got}; expected a float tensor [M] with M={n_members} members"
        )
    total = float(weights.double().sum())
    if bool((weights < 0).any()) or not abs(total - 1.0) <= 1e-5:
        raise ConfigError(
            f"{name} must be non-negative and sum to 1; they sum to {total!r} "
            f"(min {float(weights.min())!r})"
        )
    return weights


def aggregate(member_probs: Tensor, how: str = "mean", weights: Tensor | None = None) -> Tensor:
    """Aggregate member probabilities ``[M, N, C]`` into one prediction ``[N, C]``.

    - ``mean``: arithmetic mean ``p̄ = Σ_m w_m p_m`` (deep-ensemble / MC-dropout average);
    - ``geometric``: normalized geometric mean ``softmax(Σ_m w_m log p_m)``, logs clamped at
      ``finfo.tiny`` (:func:`safe_log`). For one member both return ``p_1`` (up to rounding).

    With ``weights=None`` every member has weight ``w_m = 1/M``. Weights make the aggregate an
    expectation over a known distribution of members, e.g. every dropout mask weighted by its
    probability ``keep^{#kept} p^{#dropped}`` (:func:`dropens.inference.predict`, ``exhaustive``).

    Args:
        member_probs: ``[M, N, C]`` probabilities.
        how: ``mean`` | ``geometric``.
        weights: optional ``[M]`` non-negative member weights summing to 1; the weighted sum is
            accumulated in float64 (:func:`weighted_sum`).

    Returns:
        ``[N, C]`` probabilities, in the dtype of ``member_probs``.
    """
    check_choice("aggregate", how, AGGREGATES)
    check_member_probs(member_probs)
    if weights is None:
        if how == "mean":
            return member_probs.mean(dim=0)
        return torch.softmax(safe_log(member_probs).mean(dim=0), dim=-1)
    w = check_weights(weights, member_probs.shape[0])
    if how == "mean":
        return weighted_sum(w, member_probs).to(member_probs.dtype)
    logs = weighted_sum(w, member_probs, transform=safe_log)
    return torch.softmax(logs, dim=-1).to(member_probs.dtype)


def weighted_sum(
    weights: Tensor,
    members: Tensor,
    transform: Callable[[Tensor], Tensor] | None = None,
    chunk_bytes: int = 2**26,
) -> Tensor:
    """``Σ_m w_m f(x_m)`` over ``members`` ``[M, ...]``, accumulated in float64: ``[...]`` float64.

    Float32 accumulation over thousands of members (exhaustive masks) loses about 1e-6; members
    are converted to float64 a chunk of about ``chunk_bytes`` at a time, so memory stays bounded.
    ``transform`` (e.g. :func:`safe_log`) is applied per chunk, in the members' dtype.
    """
    per_member = max(1, members[0].numel() * 8)
    step = max(1, chunk_bytes // per_member)
    acc = torch.zeros(members.shape[1:], dtype=torch.float64, device=members.device)
    w = weights.to(device=members.device, dtype=torch.float64)
    for j0 in range(0, members.shape[0], step):
        chunk = members[j0 : j0 + step]
        if transform is not None:
            chunk = transform(chunk)
        acc += torch.tensordot(w[j0 : j0 + step], chunk.double(), dims=1)
    return acc
