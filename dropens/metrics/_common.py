"""Shared input checks, the log clamp and the member aggregation used by every metric module.

Every public metric checks its inputs here before computing anything: shapes, labels (integer
class indices in ``[0, C)``) and values: probabilities must be finite, ``>= 0`` and sum to 1 over
the classes within :func:`prob_tolerance` (``1e-3`` for float32/float64, the dtype's rounding
for 16-bit floats). A violation raises :class:`dropens.errors.InputError` (a ``ConfigError``,
hence a ``ValueError``) with one line naming the argument; nothing returns a number for NaN,
logits or unnormalized scores.

Kept private so that :mod:`calibration`, :mod:`diversity` and :mod:`summary` can all use the
aggregation without an import cycle; the public home of :func:`aggregate` is
:mod:`dropens.metrics.summary` (``from dropens.metrics.summary import aggregate``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

from dropens.errors import InputError, check_choice

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


# Largest accepted |Σ_c p_c - 1| of one row of float32/float64 probabilities (prob_tolerance).
PROB_SUM_TOL = 1e-3


def prob_tolerance(dtype: torch.dtype) -> float:
    """Largest accepted ``|Σ_c p_c - 1|`` of one row of ``dtype`` probabilities.

    ``max(1e-3, 2 · eps(dtype))``: ``1e-3`` for float32/float64, ``2 · 2^-10 ≈ 2e-3`` for float16,
    ``2 · 2^-7 ≈ 1.6e-2`` for bfloat16. Why: rounding one value to nearest changes it by at most
    ``eps/2`` of itself, so every rounding of a whole row (softmax, a cast, a mean over members)
    moves its sum by at most ``eps/2``; ``2 · eps`` allows four of them. Legit float32 rows are
    off by about ``C · 1e-7`` (1e-6 for 10 classes), and rows read back from the float16
    ``predictions.npz`` by at most ``2^-11 ≈ 4.9e-4`` (plus ``2^-25`` per class flushed to zero):
    both well inside ``1e-3``, while every real mistake (logits, a sum of 2, a dropped class
    holding more than 0.1% of the mass) is far outside it.
    """
    return max(PROB_SUM_TOL, 2.0 * torch.finfo(dtype).eps)


_VALUES_CHECKED: ContextVar[bool] = ContextVar("dropens_metrics_values_checked", default=False)


@contextmanager
def values_checked() -> Iterator[None]:
    """Inside the block, :func:`check_prob_values` trusts its input (shapes are still checked).

    For a caller that has checked its probabilities once and hands them, or what it computes from
    them (an aggregate, one member), to several metrics: :func:`prediction_metrics` would
    otherwise check the same ``[M, N, C]`` values about six times. Per thread/context
    (a ``ContextVar``); restored on exit.
    """
    token = _VALUES_CHECKED.set(True)
    try:
        yield
    finally:
        _VALUES_CHECKED.reset(token)


def _index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        out.append(flat % size)
        flat //= size
    return tuple(reversed(out))


def _first(mask: Tensor) -> tuple[int, ...]:
    """Index of the first ``True`` of ``mask`` (which has at least one)."""
    return _index(int(mask.reshape(-1).int().argmax()), tuple(mask.shape))


def check_prob_values(x: Tensor, name: str, *, always: bool = False) -> Tensor:
    """Require probabilities along the last axis: finite, ``>= 0``, every row summing to 1 within
    :func:`prob_tolerance` (so each value is in ``[0, 1 + tol]``).

    Two vector passes on the fast path (the minimum and the row sums, accumulated in at least
    float32; a NaN or inf makes its row sum non-finite, so finiteness needs no pass of its own);
    the slow path, only on failure, finds what is wrong for the message. Skipped inside
    :func:`values_checked` unless ``always``.

    Raises:
        InputError: one line naming ``name``, the first bad index and what is valid.
    """
    if x.numel() == 0 or (_VALUES_CHECKED.get() and not always):
        return x
    tol = prob_tolerance(x.dtype)
    acc = torch.promote_types(x.dtype, torch.float32)
    dev = (x.sum(dim=-1, dtype=acc) - 1.0).abs().max()
    lo = x.min()
    if bool(dev <= tol) and bool(lo >= 0):
        return x
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        n_bad = int((~finite).sum())
        at = _first(~finite)
        raise InputError(
            f"{name} has {n_bad} non-finite value(s) (NaN or inf; first {float(x[at])} at index "
            f"{at}); expected probabilities in [0, 1] (a diverged model gives NaN)"
        )
    if not bool(lo >= 0):
        at = _first(x < 0)
        raise InputError(
            f"{name} has negative values (min {float(lo):.6g}, first at index {at}); expected "
            "probabilities in [0, 1] (pass softmax(logits), not logits or log-probabilities)"
        )
    sums = x.sum(dim=-1, dtype=acc)
    at = _first((sums - 1.0).abs() > tol)
    raise InputError(
        f"{name} row {at} sums to {float(sums[at]):.6g} over the last axis (classes); expected "
        f"probabilities summing to 1 within {tol:g} (pass softmax(logits), not scores)"
    )


def check_probs(probs: Tensor, name: str = "probs", values: bool = True) -> Tensor:
    """Require a floating ``[N, C]`` tensor with ``N >= 1``, ``C >= 1`` and (``values``)
    probabilities in every row (:func:`check_prob_values`)."""
    if not isinstance(probs, Tensor) or not probs.is_floating_point() or probs.dim() != 2:
        got = shape_str(probs) if isinstance(probs, Tensor) else type(probs).__name__
        raise InputError(
            f"{name} has shape {got}; expected a float tensor [N, C] (examples, classes)"
        )
    if probs.shape[0] < 1 or probs.shape[1] < 1:
        raise InputError(
            f"{name} has shape {shape_str(probs)}; expected at least one example and one class "
            "(N >= 1, C >= 1)"
        )
    return check_prob_values(probs, name) if values else probs


def check_member_probs(
    member_probs: Tensor, name: str = "member_probs", values: bool = True
) -> Tensor:
    """Require a floating ``[M, N, C]`` tensor with ``M, N, C >= 1`` and (``values``)
    probabilities in every row (:func:`check_prob_values`)."""
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
        raise InputError(
            f"{name} has shape {got}; expected a float tensor [M, N, C]"
            " (members, examples, classes)"
        )
    if min(member_probs.shape) < 1:
        raise InputError(
            f"{name} has shape {shape_str(member_probs)}; expected M >= 1, N >= 1 and C >= 1"
        )
    return check_prob_values(member_probs, name) if values else member_probs


def as_member_probs(probs: Tensor, name: str = "member_probs", values: bool = True) -> Tensor:
    """Accept ``[N, C]`` (one member) or ``[M, N, C]``; return ``[M, N, C]`` (checked as above)."""
    if isinstance(probs, Tensor) and probs.dim() == 2:
        return check_probs(probs, name, values).unsqueeze(0)
    return check_member_probs(probs, name, values)


def check_labels(labels: Tensor, n: int, n_classes: int, name: str = "labels") -> Tensor:
    """Require an integer ``[N]`` tensor with values in ``[0, C)``."""
    if (
        not isinstance(labels, Tensor)
        or labels.dim() != 1
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        got = (
            f"{shape_str(labels)} {str(labels.dtype).removeprefix('torch.')}"
            if isinstance(labels, Tensor)
            else type(labels).__name__
        )
        raise InputError(f"{name} has shape {got}; expected an integer tensor [N] (class indices)")
    if labels.shape[0] != n:
        raise InputError(
            f"{name} has {labels.shape[0]} entries; expected N={n} to match the predictions"
        )
    if n:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= n_classes:
            raise InputError(
                f"{name} has values in [{lo}, {hi}]; expected class indices in [0, {n_classes})"
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
        raise InputError(
            f"{name} has shape {got}; expected a float tensor [M] with M={n_members} members"
        )
    total = float(weights.double().sum())
    if bool((weights < 0).any()) or not abs(total - 1.0) <= 1e-5:
        raise InputError(
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

    Raises:
        InputError: ``member_probs`` not ``[M, N, C]`` probabilities (:func:`check_prob_values`),
            or bad weights.
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
