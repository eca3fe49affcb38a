"""The standard scalars of one evaluated prediction, and the member aggregation.

:func:`aggregate` is the one place where member probabilities ``[M, N, C]`` (optionally weighted,
``weights [M]``) become a prediction ``[N, C]``; :func:`prediction_metrics` is what training code
logs and the run record stores (``metrics.json``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dropens.metrics import _common, calibration, diversity
from dropens.metrics._common import AGGREGATES, aggregate, check_labels, check_member_probs

__all__ = ["AGGREGATES", "PREDICTION_KEYS", "aggregate", "prediction_metrics"]

PREDICTION_KEYS = ("acc", "nll", "brier", "ece", "mce", "aurc")
ENSEMBLE_KEYS = ("mi", "disagreement", "ensemble_gain", "member_acc", "member_nll")


def prediction_metrics(
    member_probs: Tensor, labels: Tensor, aggregate: str = "mean", n_bins: int = 15
) -> dict[str, float]:
    """Standard scalars of the aggregated prediction ``p̄ = aggregate(member_probs, aggregate)``.

    Always (of ``p̄``): ``acc`` (top-1 accuracy), ``nll`` (nats), ``brier`` (summed over classes),
    ``ece`` / ``mce`` (``n_bins`` equal-width bins), ``aurc`` (max-probability confidence).
    When ``M > 1`` also: ``mi`` (mutual information, arithmetic mean), ``disagreement`` (mean
    pairwise top-1), ``ensemble_gain`` (mean member NLL - NLL of ``p̄``, same ``aggregate``),
    ``member_acc`` and ``member_nll`` (means over members). Formulas: :mod:`.calibration`,
    :mod:`.diversity`.

    Args:
        member_probs: ``[M, N, C]`` probabilities.
        labels: ``[N]`` int64.
        aggregate: ``mean`` (arithmetic) | ``geometric`` (normalized geometric mean).
        n_bins: bins of ``ece``/``mce``.

    Returns:
        ``{key: float}`` with the keys above.

    Raises:
        InputError: ``member_probs`` not finite probabilities (rows summing to 1 within
            ``max(1e-3, 2 · eps(dtype))``), or labels not ``[N]`` class indices in ``[0, C)``.
    """
    check_member_probs(member_probs)
    labels = check_labels(labels, member_probs.shape[1], member_probs.shape[2])
    member_probs = member_probs.detach()
    with _common.values_checked():  # checked once above, not again by every metric
        return _metrics(member_probs, labels, aggregate, n_bins)


def _metrics(member_probs: Tensor, labels: Tensor, aggregate: str, n_bins: int) -> dict[str, float]:
    probs = _common.aggregate(member_probs, aggregate)  # the argument shadows the function
    out = {
        "acc": calibration.accuracy(probs, labels),
        "nll": calibration.nll(probs, labels),
        "brier": calibration.brier(probs, labels),
        "ece": calibration.ece(probs, labels, n_bins),
        "mce": calibration.mce(probs, labels, n_bins),
        "aurc": calibration.aurc(probs, labels),
    }
    if member_probs.shape[0] > 1:
        out["mi"] = diversity.mutual_information(member_probs)
        out["disagreement"] = diversity.disagreement(member_probs)
        out["ensemble_gain"] = diversity.ensemble_gain(member_probs, labels, aggregate)
        out["member_acc"] = (member_probs.argmax(-1) == labels).to(probs.dtype).mean()
        out["member_nll"] = torch.stack([calibration.nll(p, labels) for p in member_probs]).mean()
    return {k: float(v) for k, v in out.items()}
