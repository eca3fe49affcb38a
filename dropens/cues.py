"""Cue reliance of a trained model (the ``shortcut`` study): the counterfactual pairs of its stored
predictions, and occlusion-sensitivity maps.

A *counterfactual pair* is the same inputs rendered twice, with the cue painted in (``on``) and
out (``off``) -- e.g. the ``teeth_on`` / ``teeth_off`` sets of :mod:`dropens.data.faces`;
:func:`pair_metrics` scores every strategy stored for both
(:func:`dropens.metrics.shortcut.counterfactual_metrics`: flip rate, group accuracies).
:func:`occlusion_map` is the occlusion sensitivity of Zeiler & Fergus (2014): the mean drop of the
true-class probability when a ``patch x patch`` square is blanked, at every position of a grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dropens import keys
from dropens.inference import predict
from dropens.metrics.shortcut import counterfactual_metrics

OCCLUSION_FIELDS = {"patch": 8, "stride": 4, "n": 500}


def _aggregate(member_probs: Tensor, members: int | None = None) -> Tensor:
    """``[N, C]`` mean of the first ``members`` (all: ``None``) of ``[M, N, C]`` probabilities."""
    return member_probs[:members].float().mean(0)


def pair_metrics(
    arrays: Mapping[str, Tensor],
    pairs: Mapping[str, tuple[str, str]],
    class_names: Sequence[str],
    mc_samples: int,
    stage: str = "test",
) -> dict[str, float]:
    """:func:`counterfactual_metrics` of every pair and every strategy stored for both sets.

    Args:
        arrays: the stored predictions of :func:`dropens.evaluation.evaluate`
            (``"<set>/<strategy>"``: ``[M, N, C]``, ``"labels/<set>"``: ``[N]``).
        pairs: ``{pair name: (set with the cue, set without)}``.
        mc_samples: the ``mc`` strategy is read as the average of its first ``mc_samples`` masks
            (label ``mc<T>``, the headline MC metric); others as the mean of all members.

    Returns:
        ``{"<stage>/<pair>/<label>/<metric>": value}``, labels ``deterministic``, ``mc<T>``,
        ``members``, ... as in the run record.
    """
    out: dict[str, float] = {}
    for pair, (on, off) in pairs.items():
        y = arrays[f"labels/{on}"]
        for key in arrays:
            if not key.startswith(f"{on}/"):
                continue
            strategy = key.split("/", 1)[1]
            if f"{off}/{strategy}" not in arrays:
                continue
            members = mc_samples if strategy == "mc" else None
            label = keys.mc_label(mc_samples) if strategy == "mc" else strategy
            values = counterfactual_metrics(
                _aggregate(arrays[key], members),
                _aggregate(arrays[f"{off}/{strategy}"], members),
                y,
                class_names,
            )
            for metric, value in values.items():
                out[keys.key(stage, pair, label, metric)] = value
    return out


def cue_metrics(
    datamodule: Any,
    eval_sets: Mapping[str, Any],
    arrays: Mapping[str, Tensor],
    eval_cfg: Mapping[str, Any],
) -> dict[str, float]:
    """Flip rates and group accuracies of the data module's counterfactual pairs (e.g. the
    ``teeth_on``/``teeth_off`` sets of ``faces``) that were evaluated; ``{}`` for other data."""
    pairs = {
        name: (on, off)
        for name, (on, off) in getattr(datamodule, "counterfactual_pairs", {}).items()
        if on in eval_sets and off in eval_sets
    }
    if not pairs:
        return {}
    return pair_metrics(arrays, pairs, datamodule.class_names, int(eval_cfg["mc_samples"]))


def occlusion_record(
    backbone: nn.Module,
    eval_sets: Mapping[str, tuple[Tensor, Tensor]],
    strategies: Sequence[str],
    cfg: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``occlusion.json`` record (``eval.occlusion: {patch, stride, n}``): the occlusion
    sensitivity map (:func:`dropens.metrics.shortcut.occlusion_map`) of the first ``n`` examples
    of the first eval set, for the deterministic pass (the members' average for an ensemble)."""
    opts = {**OCCLUSION_FIELDS, **dict(cfg if isinstance(cfg, Mapping) else {})}
    name, (x, y) = next(iter(eval_sets.items()))
    strategy = "deterministic" if "deterministic" in strategies else "members"
    n = int(opts["n"])
    drop = occlusion_map(backbone, x[:n], y[:n], strategy, int(opts["patch"]), int(opts["stride"]))
    return {
        "eval_set": name,
        "strategy": strategy,
        "n_examples": min(n, len(x)),
        "patch": int(opts["patch"]),
        "stride": int(opts["stride"]),
        "map": drop.tolist(),
    }


@torch.no_grad()
def occlusion_map(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    strategy: str = "deterministic",
    patch: int = 8,
    stride: int = 4,
    fill: float = 0.0,
    memory_budget_mb: float = 256,
) -> Tensor:
    """Occlusion sensitivity: ``[P_h, P_w]`` mean drop of the true-class probability.

    Every input is evaluated once as it is and once per grid position with the ``patch x patch``
    square at ``(i * stride, j * stride)`` set to ``fill`` (0 = the training mean of standardized
    inputs), all positions stacked in one batched :func:`~dropens.inference.predict` call.

    Args:
        model: a backbone mapping ``(N, C, H, W)`` to logits.
        x: ``[N, C, H, W]`` inputs; y: ``[N]`` labels.
        strategy: ``deterministic`` or ``members`` (an ensemble's average).

    Returns:
        ``[P_h, P_w]`` float32 on the CPU, ``P = (side - patch) // stride + 1``: entry ``(i, j)`` =
        mean over inputs of ``p(y | x) - p(y | x occluded at (i, j))``.
    """
    n, _, h, w = x.shape
    rows = range(0, h - patch + 1, stride)
    cols = range(0, w - patch + 1, stride)
    occluded = x.unsqueeze(0).repeat(len(rows) * len(cols), 1, 1, 1, 1)
    for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
        occluded[k, :, :, r : r + patch, c : c + patch] = fill
    batch = torch.cat([x, occluded.flatten(0, 1)])
    probs = predict(model, batch, strategy, memory_budget_mb=memory_budget_mb).probs
    yy = y.cpu().repeat(len(rows) * len(cols) + 1)
    p_true = probs.gather(1, yy.view(-1, 1)).view(-1, n)
    drop = (p_true[:1] - p_true[1:]).mean(1)
    return drop.view(len(rows), len(cols)).float()
