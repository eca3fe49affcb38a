"""Diversity of ensemble members and the uncertainty decomposition of their average.

Shapes: ``member_probs`` is ``[M, N, C]`` (members, examples, classes) probabilities,
``labels`` is ``[N]`` int64; ``p̄ = (1/M) Σ_m p_m`` is the arithmetic mean unless an ``aggregate``
argument says otherwise. Entropies and divergences are in nats, with logs of
``max(p, finfo.tiny)``. Top-1 predictions use ``argmax`` (ties: the first maximal index).

Pairwise statistics average over member pairs; with one member there are no pairs: the
divergences and disagreements are 0 (no diversity), the error correlation and Q-statistic NaN
(undefined).

Inputs are checked (:mod:`dropens.metrics._common`): finite probabilities, ``>= 0``, every member's
rows summing to 1 within ``max(1e-3, 2 · eps(dtype))``; labels integer class indices in
``[0, C)``. Anything else raises :class:`dropens.errors.InputError` (a ``ValueError``) with one
line naming the argument.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dropens.metrics._common import aggregate as _aggregate
from dropens.metrics._common import (
    as_member_probs,
    check_labels,
    check_member_probs,
    reduce,
    safe_log,
    values_checked,
)


def _entropy(probs: Tensor) -> Tensor:
    """``H[p] = -Σ_c p_c log p_c`` over the last axis."""
    return -(probs * safe_log(probs)).sum(dim=-1)


def _kl(p: Tensor, q: Tensor) -> Tensor:
    """``KL(p || q) = Σ_c p_c (log p_c - log q_c)`` over the last axis."""
    return (p * (safe_log(p) - safe_log(q))).sum(dim=-1)


def _with_labels(member_probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    check_member_probs(member_probs)
    return member_probs, check_labels(labels, member_probs.shape[1], member_probs.shape[2])


def _upper(matrix: Tensor) -> Tensor:
    """Entries ``i < j`` of an ``[M, M]`` matrix as a flat tensor (empty for M = 1)."""
    i, j = torch.triu_indices(matrix.shape[0], matrix.shape[1], offset=1, device=matrix.device)
    return matrix[i, j]


def _errors(member_probs: Tensor, labels: Tensor) -> Tensor:
    """``[M, N]`` 0/1 top-1 errors in the dtype of ``member_probs``."""
    return (member_probs.argmax(dim=-1) != labels).to(member_probs.dtype)


# ----------------------------------------------------------------------------- entropies


def predictive_entropy(member_probs: Tensor, reduction: str = "mean") -> Tensor:
    """Predictive (total) entropy ``H[p̄] = -Σ_c p̄_c log p̄_c`` with ``p̄ = (1/M) Σ_m p_m``.

    Args:
        member_probs: ``[M, N, C]``, or ``[N, C]`` for one prediction.
        reduction: ``mean`` over examples (0-dim) | ``none`` (``[N]``).
    """
    return reduce(_entropy(as_member_probs(member_probs).mean(dim=0)), reduction)


def expected_entropy(member_probs: Tensor, reduction: str = "mean") -> Tensor:
    """Expected (aleatoric) entropy ``(1/M) Σ_m H[p_m]``.

    Args:
        member_probs: ``[M, N, C]``, or ``[N, C]`` for one prediction.
        reduction: ``mean`` over examples (0-dim) | ``none`` (``[N]``).
    """
    return reduce(_entropy(as_member_probs(member_probs)).mean(dim=0), reduction)


def mutual_information(member_probs: Tensor, reduction: str = "mean") -> Tensor:
    """Mutual information (epistemic part, BALD; Houlsby et al. 2011; Depeweg et al. 2018).

    ``MI = H[p̄] - (1/M) Σ_m H[p_m] = (1/M) Σ_m KL(p_m || p̄) >= 0``, ``p̄`` the arithmetic mean
    (the identity needs it). 0 for one member or identical members.

    Args:
        member_probs: ``[M, N, C]``, or ``[N, C]`` for one prediction (MI = 0).
        reduction: ``mean`` over examples (0-dim) | ``none`` (``[N]``).
    """
    member_probs = as_member_probs(member_probs)
    mi = _entropy(member_probs.mean(dim=0)) - _entropy(member_probs).mean(dim=0)
    return reduce(mi, reduction)


# ----------------------------------------------------------------------------- disagreement


def disagreement(member_probs: Tensor) -> Tensor:
    """Mean pairwise top-1 disagreement ``(2 / (M(M-1))) Σ_{m<m'} (1/N) Σ_n 1[ŷ_m,n ≠ ŷ_m',n]``.

    Computed per example from the vote counts ``k_c`` as ``1 - Σ_c k_c (k_c - 1) / (M (M - 1))``.
    0 for ``M = 1``.

    Args:
        member_probs: ``[M, N, C]``.

    Returns:
        0-dim tensor in ``[0, 1]``.
    """
    member_probs = check_member_probs(member_probs)
    m, _, c = member_probs.shape
    if m < 2:
        return member_probs.new_zeros(())
    votes = F.one_hot(member_probs.argmax(dim=-1), c).sum(dim=0).to(member_probs.dtype)  # [N, C]
    agree = (votes * (votes - 1)).sum(dim=-1) / (m * (m - 1))
    return (1.0 - agree).mean()


def _pair_disagreement(member_probs: Tensor) -> Tensor:
    """``[M, M]`` matrix ``D_ij = (1/N) Σ_n 1[ŷ_i,n ≠ ŷ_j,n]``."""
    onehot = F.one_hot(member_probs.argmax(dim=-1), member_probs.shape[-1]).to(member_probs.dtype)
    return 1.0 - torch.einsum("inc,jnc->ij", onehot, onehot) / member_probs.shape[1]


def normalized_disagreement(member_probs: Tensor, labels: Tensor) -> Tensor:
    """Disagreement divided by the reference error (Fort et al. 2019, "Deep ensembles: a loss
    landscape perspective", sec. 4): ``disagreement / ((1/M) Σ_m err_m)``.

    The reference error is the mean top-1 error of the members; a value near 1 means the members
    disagree about as much as their errors allow (independent-looking errors), near 0 that they
    make the same predictions. NaN when every member is always right (0 / 0).

    Args:
        member_probs: ``[M, N, C]``; labels: ``[N]`` int64.

    Returns:
        0-dim tensor.
    """
    member_probs, labels = _with_labels(member_probs, labels)
    return disagreement(member_probs) / _errors(member_probs, labels).mean()


def diversity_accuracy_plane(member_probs: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Coordinates of the diversity-accuracy plane of Fort et al. (2019, fig. 4), one point per
    **ordered member pair** ``(r, m)``, ``r ≠ m`` (``P = M (M - 1)`` points):

    - ``accuracy`` = top-1 accuracy of member ``m`` (x axis);
    - ``disagreement`` = ``D_rm``, fraction of examples where ``m`` and the reference ``r`` differ;
    - ``normalized_disagreement`` = ``D_rm / (1 - acc_r)`` (y axis): disagreement relative to the
      reference's error (``inf``/NaN when the reference is never wrong).

    Ordered, because the normalization uses the reference's error. Empty for ``M = 1``.

    Args:
        member_probs: ``[M, N, C]``; labels: ``[N]`` int64.

    Returns:
        ``{"reference": [P] int64, "member": [P] int64, "accuracy": [P], "disagreement": [P],
        "normalized_disagreement": [P]}``.
    """
    member_probs, labels = _with_labels(member_probs, labels)
    m = member_probs.shape[0]
    err = _errors(member_probs, labels).mean(dim=1)  # [M]
    ref, mem = (~torch.eye(m, dtype=torch.bool, device=member_probs.device)).nonzero(as_tuple=True)
    d = _pair_disagreement(member_probs)[ref, mem]
    return {
        "reference": ref,
        "member": mem,
        "accuracy": 1.0 - err[mem],
        "disagreement": d,
        "normalized_disagreement": d / err[ref],
    }


# ----------------------------------------------------------------------------- divergences


def pairwise_kl(member_probs: Tensor, matrix: bool = False) -> Tensor:
    """Mean pairwise KL divergence ``(1 / (M(M-1))) Σ_{i≠j} (1/N) Σ_n KL(p_i,n || p_j,n)``.

    ``KL(p || q) = Σ_c p_c (log p_c - log q_c)``; computed without forming all pairs, as
    ``Σ p_i log p_i`` minus a cross term ``Σ p_i log p_j`` from one ``einsum``.

    Args:
        member_probs: ``[M, N, C]``.
        matrix: return the ``[M, M]`` matrix ``K_ij = (1/N) Σ_n KL(p_i,n || p_j,n)`` instead.

    Returns:
        0-dim tensor (0 for ``M = 1``), or ``[M, M]`` (zero diagonal).
    """
    member_probs = check_member_probs(member_probs)
    m, n, _ = member_probs.shape
    logp = safe_log(member_probs)
    self_term = (member_probs * logp).sum(dim=(1, 2)) / n  # [M]
    cross = torch.einsum("inc,jnc->ij", member_probs, logp) / n  # [M, M]
    kl = self_term[:, None] - cross
    kl.fill_diagonal_(0.0)
    if matrix:
        return kl
    return kl.sum() / (m * (m - 1)) if m > 1 else kl.new_zeros(())


def pairwise_js(member_probs: Tensor, matrix: bool = False) -> Tensor:
    """Mean pairwise Jensen-Shannon divergence over pairs ``i < j`` (Lin 1991):
    ``JS(p, q) = ½ KL(p || a) + ½ KL(q || a)``, ``a = (p + q) / 2``, in ``[0, log 2]``.

    Args:
        member_probs: ``[M, N, C]``.
        matrix: return the symmetric ``[M, M]`` matrix of example-mean JS instead.

    Returns:
        0-dim tensor (0 for ``M = 1``), or ``[M, M]`` (zero diagonal).
    """
    member_probs = check_member_probs(member_probs)
    m = member_probs.shape[0]
    js = member_probs.new_zeros((m, m))
    for i in range(m):
        for j in range(i + 1, m):
            p, q = member_probs[i], member_probs[j]
            a = 0.5 * (p + q)
            js[i, j] = js[j, i] = (0.5 * _kl(p, a) + 0.5 * _kl(q, a)).mean()
    if matrix:
        return js
    return _upper(js).mean() if m > 1 else js.new_zeros(())


# ----------------------------------------------------------------------- ensemble decompositions


def ensemble_gain(member_probs: Tensor, labels: Tensor, aggregate: str = "mean") -> Tensor:
    """Jensen gap of the log score: ``(1/M) Σ_m NLL(p_m) - NLL(aggregate(p))`` >= 0.

    ``NLL(p) = -(1/N) Σ_n log p_{n,y_n}``. Non-negative for ``mean`` (``-log`` is convex) and for
    ``geometric`` (the gap is ``-log Z >= 0`` with ``Z = Σ_c Π_m p_{m,c}^{1/M} <= 1`` by AM-GM).
    0 for one member or identical members.

    Args:
        member_probs: ``[M, N, C]``; labels: ``[N]`` int64; aggregate: ``mean`` | ``geometric``.

    Returns:
        0-dim tensor.
    """
    member_probs, labels = _with_labels(member_probs, labels)
    with values_checked():
        probs = _aggregate(member_probs, aggregate)
    idx = labels[None, :, None].expand(member_probs.shape[0], -1, 1)
    member_nll = -safe_log(member_probs.gather(2, idx)).mean()
    return member_nll + safe_log(probs.gather(1, labels[:, None])).mean()


def brier_ambiguity(member_probs: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Ambiguity decomposition of the Brier score (Krogh & Vedelsby 1995), exact:

    ``Brier(p̄) = (1/M) Σ_m Brier(p_m) - (1/(M N)) Σ_m Σ_n ||p_m,n - p̄_n||²``

    with ``Brier(p) = (1/N) Σ_n ||p_n - e_{y_n}||²`` (summed over classes) and ``p̄`` the
    arithmetic mean. ``spread`` is the mean squared distance of the members to their average.

    Args:
        member_probs: ``[M, N, C]``; labels: ``[N]`` int64.

    Returns:
        ``{"ensemble": Brier(p̄), "mean_member": mean_m Brier(p_m), "spread": ...}`` (0-dim each),
        with ``ensemble = mean_member - spread``.
    """
    member_probs, labels = _with_labels(member_probs, labels)
    onehot = F.one_hot(labels, member_probs.shape[-1]).to(member_probs.dtype)
    mean = member_probs.mean(dim=0)
    return {
        "ensemble": ((mean - onehot) ** 2).sum(dim=-1).mean(),
        "mean_member": ((member_probs - onehot) ** 2).sum(dim=-1).mean(),
        "spread": ((member_probs - mean) ** 2).sum(dim=-1).mean(),
    }


# ----------------------------------------------------------------------------- error statistics


def error_correlation(member_probs: Tensor, labels: Tensor) -> Tensor:
    """Mean pairwise Pearson correlation of the members' 0/1 top-1 errors (the φ coefficient;
    Kuncheva & Whitaker 2003): ``mean_{i<j} corr_n(e_i,n, e_j,n)``.

    Pairs with a constant error vector (a member always or never wrong) have no correlation and
    are left out; NaN if no pair is left (also for ``M = 1``).

    Args:
        member_probs: ``[M, N, C]``; labels: ``[N]`` int64.

    Returns:
        0-dim tensor in ``[-1, 1]``.
    """
    member_probs, labels = _with_labels(member_probs, labels)
    err = _errors(member_probs, labels)
    if err.shape[0] < 2:
        return err.new_tensor(float("nan"))
    return _upper(torch.corrcoef(err)).nanmean()


def q_statistic(member_probs: Tensor, labels: Tensor) -> Tensor:
    """Mean pairwise Yule's Q-statistic of the members' top-1 correctness (Yule 1900;
    Kuncheva & Whitaker 2003):

    ``Q_ij = (N11 N00 - N01 N10) / (N11 N00 + N01 N10)``

    with ``N11`` = examples both get right, ``N00`` both wrong, ``N10``/``N01`` only one. ``Q = 1``
    for identical members, ~0 for independent ones, negative when they err on different examples.
    Pairs with a zero denominator are left out; NaN if none is left (also for ``M = 1``).

    Args:
        member_probs: ``[M, N, C]``; labels: ``[N]`` int64.

    Returns:
        0-dim tensor in ``[-1, 1]``.
    """
    member_probs, labels = _with_labels(member_probs, labels)
    wrong = _errors(member_probs, labels)
    right = 1.0 - wrong
    n11, n00 = right @ right.T, wrong @ wrong.T
    n10, n01 = right @ wrong.T, wrong @ right.T
    q = _upper((n11 * n00 - n01 * n10) / (n11 * n00 + n01 * n10))
    return q.nanmean() if q.numel() else wrong.new_tensor(float("nan"))
