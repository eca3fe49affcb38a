"""Inference strategies: a trained model -> :class:`Predictions` with members ``[M, N, C]``.

Every strategy runs its ``M`` members batched on the batch axis as ``(m b)`` (member-major: rows
``m*b .. (m+1)*b - 1`` are member ``m``), in chunks of examples sized to a memory budget — never as a
Python loop over single passes.

- ``deterministic``: one pass with every dropout layer off (weight scaling; ``scale=none`` layers
  multiply by keep). ``M = 1``.
- ``mc``: ``samples`` passes with fresh masks (MC dropout, Gal & Ghahramani 2016), model in eval mode
  (BatchNorm uses running statistics). ``M = samples``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dropens import control
from dropens.errors import ConfigError, bad_choice
from dropens.metrics.summary import aggregate as aggregate_probs

AGGREGATES = ("mean", "geometric")


@dataclass
class Predictions:
    """Per-member predictive distributions of one eval set.

    Attributes:
        member_probs: ``[M, N, C]`` float32 probabilities (members, examples, classes).
        aggregate: how :attr:`probs` combines members: ``mean`` (arithmetic mean of probabilities)
            or ``geometric`` (softmax of the mean log-probabilities).
        strategy: the strategy that produced them (e.g. ``mc``).
    """

    member_probs: Tensor
    aggregate: str = "mean"
    strategy: str = ""

    @property
    def probs(self) -> Tensor:
        """``[N, C]`` aggregate of the members."""
        return aggregate_probs(self.member_probs, self.aggregate)

    @property
    def n_members(self) -> int:
        return self.member_probs.shape[0]


# A strategy yields (context manager switching the model, number of stacked members M).
Strategy = Callable[[nn.Module, int | None], tuple[AbstractContextManager, int]]


def _deterministic(model: nn.Module, samples: int | None) -> tuple[AbstractContextManager, int]:
    return control.deterministic(model), 1


def _mc(model: nn.Module, samples: int | None) -> tuple[AbstractContextManager, int]:
    if samples is None or int(samples) < 1:
        raise ConfigError(
            f"eval.mc_samples={samples!r} is not valid; MC dropout needs an integer >= 1"
        )
    return control.mc(model), int(samples)


STRATEGIES: dict[str, Strategy] = {"deterministic": _deterministic, "mc": _mc}


def _chunks(n: int, rows: int) -> Iterator[slice]:
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def rows_per_chunk(n_members: int, example_numel: int, memory_budget_mb: float) -> int:
    """Examples per chunk so that ``M * b`` stacked rows fit the budget.

    Budget per stacked row: ``4 bytes * 64 * max(input numel, 64)`` — the factor 64 is headroom for
    the hidden activations of a backbone (a coarse bound, not a measurement).
    """
    row_bytes = 4 * 64 * max(example_numel, 64)
    return max(1, int(memory_budget_mb * 2**20) // (row_bytes * n_members))


@torch.no_grad()
def predict(
    model: nn.Module,
    x: Tensor,
    strategy: str,
    samples: int | None = None,
    aggregate: str = "mean",
    memory_budget_mb: float = 256,
) -> Predictions:
    """Run ``strategy`` on inputs ``x`` ``[N, *input_shape]``; returns members ``[M, N, C]`` on CPU.

    The model is put in eval mode for the call (BatchNorm running statistics) and its previous
    train/eval state and dropout modes are restored afterwards.

    Raises:
        ConfigError: unknown strategy/aggregate, ``mc`` with samples < 1, or a model without dropout
            for ``mc``.
    """
    if strategy not in STRATEGIES:
        raise bad_choice("strategy", strategy, sorted(STRATEGIES))
    if aggregate not in AGGREGATES:
        raise bad_choice("aggregate", aggregate, AGGREGATES)
    context, m = STRATEGIES[strategy](model, samples)
    device = next(model.parameters()).device
    rows = rows_per_chunk(m, math.prod(x.shape[1:]), memory_budget_mb)
    was_training = model.training
    model.eval()
    try:
        with context:
            out = [_stacked_logprobs(model, x[sl].to(device), m) for sl in _chunks(len(x), rows)]
    finally:
        model.train(was_training)
    return Predictions(torch.cat(out, dim=1).exp(), aggregate, strategy)


def _stacked_logprobs(model: nn.Module, xb: Tensor, m: int) -> Tensor:
    """``[m, b, C]`` float32 log-probabilities of ``m`` stacked passes over the chunk ``xb``."""
    stacked = xb.repeat(m, *([1] * (xb.dim() - 1))) if m > 1 else xb
    logits = model(stacked)
    return F.log_softmax(logits.float(), dim=-1).reshape(m, len(xb), -1).cpu()
