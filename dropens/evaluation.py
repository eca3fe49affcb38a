"""Evaluate a trained backbone on every eval set with every strategy its method calls for.

Produces the flat metric dict of the run record (keys ``test/<set>/<strategy>/<metric>``) and the
member predictions ``[M, N, C]`` stored beside it. MC curves are nested: the predictions for ``T``
samples are the first ``T`` of one run of ``max(T)`` samples, so the curve over T is one trajectory
(as in Srivastava et al. 2014, Fig. 11) and costs one batched pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from dropens.errors import ConfigError
from dropens.inference import predict
from dropens.metrics.summary import prediction_metrics


@dataclass(frozen=True)
class EvalItem:
    """One strategy to evaluate: ``label`` names it in metric keys (e.g. ``mc32``)."""

    label: str
    strategy: str
    samples: int | None = None
    aggregate: str = "mean"


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
    with_mc: bool,
    stage: str = "test",
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Metrics and stored arrays for the deterministic pass and (``with_mc``) the MC curve.

    Args:
        eval_sets: ``{name: (x [N, *input_shape], y [N])}``.
        eval_cfg: the ``eval`` config node (mc_samples, mc_curve, n_bins, memory_budget_mb).

    Returns:
        ``(metrics, arrays)``: ``metrics["test/clean/mc32/ece"]``-style floats; arrays
        ``{"<set>/<strategy>": member_probs [M, N, C], "labels/<set>": [N]}``.
    """
    budget, n_bins = eval_cfg["memory_budget_mb"], eval_cfg["n_bins"]
    metrics: dict[str, float] = {}
    arrays: dict[str, Tensor] = {}
    for name, (x, y) in eval_sets.items():
        arrays[f"labels/{name}"] = y
        det = predict(backbone, x, "deterministic", memory_budget_mb=budget)
        arrays[f"{name}/deterministic"] = det.member_probs
        _put(
            metrics,
            f"{stage}/{name}/deterministic",
            prediction_metrics(det.member_probs, y.cpu(), n_bins=n_bins),
        )
        if not with_mc:
            continue
        sizes = mc_sizes(eval_cfg)
        mc = predict(backbone, x, "mc", samples=max(sizes), memory_budget_mb=budget)
        arrays[f"{name}/mc"] = mc.member_probs
        for t in sizes:
            _put(
                metrics,
                f"{stage}/{name}/mc{t}",
                prediction_metrics(mc.member_probs[:t], y.cpu(), n_bins=n_bins),
            )
    return metrics, arrays


def _put(out: dict[str, float], prefix: str, values: Mapping[str, float]) -> None:
    for key, value in values.items():
        out[f"{prefix}/{key}"] = float(value)
