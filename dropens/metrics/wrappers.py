"""Thin ``torchmetrics.Metric`` wrappers over the functional metrics, for validation-time logging.

Keys follow ``stage/set/strategy/metric`` when cloned into a ``MetricCollection`` with a prefix
(e.g. ``prefix="val/clean/mc8/"``); the metrics themselves know nothing about logging.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from dropens.errors import ConfigError, check_choice
from dropens.metrics._common import AGGREGATES, as_member_probs, check_labels
from dropens.metrics.summary import prediction_metrics


class PredictionMetrics(Metric):
    """Accumulate member predictions over batches and compute :func:`prediction_metrics` once.

    ``update(member_probs [M, B, C] (or [B, C] for one member), labels [B])`` stores the batch;
    ``compute()`` concatenates all batches along the example axis and returns
    ``prediction_metrics(member_probs [M, N, C], labels [N], aggregate, n_bins)`` as 0-dim float32
    tensors (same keys; float32 so that every logger and device accepts them). Internally the
    states are kept example-first, ``[B, M, C]``, so that the ``dist_reduce_fx="cat"`` gather
    across processes concatenates examples, not members.
    Memory: all ``M · N · C`` probabilities of the epoch are kept until ``reset()``.

    Args:
        aggregate: ``mean`` | ``geometric`` (see :func:`dropens.metrics.summary.aggregate`).
        n_bins: bins of ``ece``/``mce``.
        **kwargs: passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, aggregate: str = "mean", n_bins: int = 15, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_choice("aggregate", aggregate, AGGREGATES)
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
            raise ConfigError(f"n_bins={n_bins!r} is not valid; expected an integer >= 1")
        self.aggregate = aggregate
        self.n_bins = n_bins
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, member_probs: Tensor, labels: Tensor) -> None:
        # shapes now; values once, on the CPU, in compute (prediction_metrics): no GPU sync here
        member_probs = as_member_probs(member_probs.detach(), values=False)
        labels = check_labels(labels.detach(), member_probs.shape[1], member_probs.shape[2])
        if self.probs and self.probs[0].shape[1:] != member_probs.transpose(0, 1).shape[1:]:
            m, c = self.probs[0].shape[1:]
            raise ConfigError(
                f"member_probs has shape {tuple(member_probs.shape)}; "
                f"expected [{m}, B, {c}] like earlier batches"
            )
        self.probs.append(member_probs.transpose(0, 1))
        self.labels.append(labels)

    def compute(self) -> dict[str, Tensor]:
        # on the CPU: once per validation, and the calibration bins (scatter_add_) then need no
        # deterministic CUDA kernel when the trainer runs with deterministic=true on a GPU
        member_probs = dim_zero_cat(self.probs).transpose(0, 1).cpu()
        labels = dim_zero_cat(self.labels).cpu()
        values = prediction_metrics(member_probs, labels, self.aggregate, self.n_bins)
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}
