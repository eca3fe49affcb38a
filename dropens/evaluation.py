"""Evaluate a trained backbone on every eval set with every strategy its method calls for.

A method declares its plan in ``eval_strategies`` (a class attribute of :class:`dropens.methods.Method`;
e.g. ``("deterministic", "mc")`` for dropout). :func:`evaluate` runs the plan and produces the flat
metric dict of the run record (keys ``test/<set>/<label>/<metric>``) and the member predictions
``[M, N, C]`` stored beside it (``<set>/<strategy>``):

- ``deterministic``: label ``deterministic`` (weight scaling); stored ``<set>/deterministic``.
- ``mc``: labels ``mc<T>`` for every ``T`` of ``eval.mc_curve`` and ``eval.mc_samples``; stored
  ``<set>/mc`` (the ``max(T)`` samples).
- ``members``: labels ``members`` (mean aggregate), ``members_geometric`` (normalized geometric
  mean) and ``member<k>`` (member ``k`` alone, ``k = 0..K-1``); stored ``<set>/members``
  ``[K, N, C]``.

MC curves are nested: the predictions for ``T`` samples are the first ``T`` of one run of ``max(T)``
samples, so the curve over T is one trajectory (as in Srivastava et al. 2014, Fig. 11) and costs one
batched pass. The ``mc`` rows also hold ``member_acc`` / ``member_nll``: the mean single-sample
(single random subnetwork) metrics. ``members`` runs the ``members`` inference protocol
(:func:`dropens.inference.predict`): the ``K`` subnetworks of ``subnets`` or the ``K`` networks of
``ensemble``, once; both aggregates are computed from the same member predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from dropens.errors import ConfigError, check_choice
from dropens.inference import Predictions, geometric_from_logprobs, predict
from dropens.metrics.summary import prediction_metrics

EVAL_STRATEGIES = ("deterministic", "mc", "members")


def mc_sizes(eval_cfg: Mapping[str, Any]) -> list[int]:
    """Sorted MC sample sizes to report: ``eval.mc_curve`` plus ``eval.mc_samples``."""
    sizes = [*eval_cfg.get("mc_curve", []), eval_cfg["mc_samples"]]
    for t in sizes:
        if not isinstance(t, int) or t < 1:
            raise ConfigError(
                f"eval.mc_samples/mc_curve value {t!r} is not valid; MC needs integers >= 1"
            )
    return sorted(set(sizes))


def evaluate(
    backbone: nn.Module,
    eval_sets: Mapping[str, tuple[Tensor, Tensor]],
    eval_cfg: Mapping[str, Any],
    strategies: Sequence[str] = ("deterministic",),
    stage: str = "test",
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Metrics and stored arrays of every strategy of ``strategies`` (a method's ``eval_strategies``).

    Args:
        eval_sets: ``{name: (x [N, *input_shape], y [N])}``.
        eval_cfg: the ``eval`` config node (mc_samples, mc_curve, n_bins, memory_budget_mb).
        strategies: a subset of :data:`EVAL_STRATEGIES` (what each records: module docstring).

    Returns:
        ``(metrics, arrays)``: ``metrics["test/clean/mc32/ece"]``-style floats; arrays
        ``{"<set>/<strategy>": member_probs [M, N, C], "labels/<set>": [N]}``.
    """
    for strategy in strategies:
        check_choice("eval strategy", strategy, EVAL_STRATEGIES)
    budget, n_bins = eval_cfg["memory_budget_mb"], eval_cfg["n_bins"]
    metrics: dict[str, float] = {}
    arrays: dict[str, Tensor] = {}

    def record(label: str, preds: Predictions, y: Tensor) -> dict[str, float]:
        values = prediction_metrics(preds.member_probs, y, aggregate=preds.aggregate, n_bins=n_bins)
        _put(metrics, f"{stage}/{label}", values)
        return values

    for name, (x, y) in eval_sets.items():
        y = y.cpu()
        arrays[f"labels/{name}"] = y
        if "deterministic" in strategies:
            det = predict(backbone, x, "deterministic", memory_budget_mb=budget)
            arrays[f"{name}/deterministic"] = det.member_probs
            record(f"{name}/deterministic", det, y)
        if "members" in strategies:
            members = predict(
                backbone,
                x,
                "members",
                aggregate="mean",
                memory_budget_mb=budget,
                keep_logprobs=True,
            )
            probs = members.member_probs
            arrays[f"{name}/members"] = probs
            mean_row = record(f"{name}/members", members, y)
            # The geometric aggregate from log-probabilities (stored probabilities underflow); its
            # member-level rows are those of `members`, its ensemble gain is against its own NLL.
            geometric = geometric_from_logprobs(members.member_logprobs).unsqueeze(0)
            row = prediction_metrics(geometric, y, n_bins=n_bins)
            if len(probs) > 1:
                row.update(
                    {k: mean_row[k] for k in ("mi", "disagreement", "member_acc", "member_nll")}
                )
                row["ensemble_gain"] = mean_row["member_nll"] - row["nll"]
            _put(metrics, f"{stage}/{name}/members_geometric", row)
            for k in range(len(probs)):
                record(f"{name}/member{k}", Predictions(probs[k : k + 1], "mean", "members"), y)
        if "mc" in strategies:
            sizes = mc_sizes(eval_cfg)
            mc = predict(backbone, x, "mc", samples=max(sizes), memory_budget_mb=budget)
            arrays[f"{name}/mc"] = mc.member_probs
            for t in sizes:
                record(f"{name}/mc{t}", Predictions(mc.member_probs[:t], "mean", "mc"), y)
    return metrics, arrays


def _put(out: dict[str, float], prefix: str, values: Mapping[str, float]) -> None:
    for key, value in values.items():
        out[f"{prefix}/{key}"] = float(value)
