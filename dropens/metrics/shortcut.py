"""Reliance on a spurious cue: counterfactual flips, group accuracies, occlusion sensitivity.

A *counterfactual pair* is the same inputs rendered twice, with the cue painted in (``on``) and
out (``off``) -- e.g. the ``teeth_on`` / ``teeth_off`` sets of :mod:`dropens.data.faces`. Then

- ``flip_rate``: the fraction of inputs whose predicted class changes between the two renders,
  the causal effect of the cue on the decision (0: the cue is ignored);
- ``acc_<class>_cue`` / ``acc_<class>_no_cue``: accuracy of each (class, cue) group, and
  ``worst_group_acc``, their minimum (Sagawa et al. 2020), measured on the same faces.

:func:`occlusion_map` is the occlusion sensitivity of Zeiler & Fergus (2014): the mean drop of the
true-class probability when a ``patch x patch`` square is blanked, at every position of a grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from dropens.inference import predict


def _aggregate(member_probs: Tensor, members: int | None = None) -> Tensor:
    """``[N, C]`` mean of the first ``members`` (all: ``None``) of ``[M, N, C]`` probabilities."""
    return member_probs[:members].float().mean(0)


def counterfactual_metrics(
    probs_on: Tensor, probs_off: Tensor, y: Tensor, class_names: Sequence[str]
) -> dict[str, float]:
    """Flip rate and (class, cue) group accuracies of one counterfactual pair.

    Args:
        probs_on: ``[N, C]`` predictions on the inputs with the cue.
        probs_off: ``[N, C]`` predictions on the same inputs without it.
        y: ``[N]`` labels.
        class_names: ``C`` names, used in the keys.

    Returns:
        ``{"flip_rate", "worst_group_acc", "acc_<class>_cue", "acc_<class>_no_cue", ...}``
        (groups without an example are left out).
    """
    y = y.cpu()
    pred_on, pred_off = probs_on.argmax(-1).cpu(), probs_off.argmax(-1).cpu()
    out = {"flip_rate": float((pred_on != pred_off).float().mean())}
    groups = []
    for c, name in enumerate(class_names):
        rows = y == c
        if rows.any():
            for suffix, pred in (("cue", pred_on), ("no_cue", pred_off)):
                acc = float((pred[rows] == c).float().mean())
                out[f"acc_{name}_{suffix}"] = acc
                groups.append(acc)
    out["worst_group_acc"] = min(groups)
    return out


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
            label = f"mc{mc_samples}" if strategy == "mc" else strategy
            values = counterfactual_metrics(
                _aggregate(arrays[key], members),
                _aggregate(arrays[f"{off}/{strategy}"], members),
                y,
                class_names,
            )
            for metric, value in values.items():
                out[f"{stage}/{pair}/{label}/{metric}"] = value
    return out


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
