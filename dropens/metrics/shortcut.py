"""Reliance on a spurious cue: counterfactual flips and group accuracies (tensors in, numbers out).

A *counterfactual pair* is the same inputs rendered twice, with the cue painted in (``on``) and
out (``off``) -- e.g. the ``teeth_on`` / ``teeth_off`` sets of :mod:`dropens.data.faces`. Then

- ``flip_rate``: the fraction of inputs whose predicted class changes between the two renders,
  the causal effect of the cue on the decision (0: the cue is ignored);
- ``acc_<class>_cue`` / ``acc_<class>_no_cue``: accuracy of each (class, cue) group, and
  ``worst_group_acc``, their minimum (Sagawa et al. 2020), measured on the same faces.

Running a model for them (the pairs of a run's stored predictions, occlusion maps): :mod:`dropens.cues`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


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
