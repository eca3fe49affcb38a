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

from dropens.errors import InputError
from dropens.metrics._common import check_labels, check_probs


def counterfactual_metrics(
    probs_on: Tensor, probs_off: Tensor, y: Tensor, class_names: Sequence[str]
) -> dict[str, float]:
    """Flip rate and (class, cue) group accuracies of one counterfactual pair.

    Args:
        probs_on: ``[N, C]`` probabilities on the inputs with the cue (checked like every
            metric's input: finite, rows summing to 1).
        probs_off: ``[N, C]`` probabilities on the same inputs without it.
        y: ``[N]`` integer labels in ``[0, C)``.
        class_names: ``C`` names, used in the keys.

    Returns:
        ``{"flip_rate", "worst_group_acc", "acc_<class>_cue", "acc_<class>_no_cue", ...}``
        (groups without an example are left out).
    """
    check_probs(probs_on, "probs_on")
    check_probs(probs_off, "probs_off")
    if probs_off.shape != probs_on.shape:
        raise InputError(
            f"probs_off has shape {tuple(probs_off.shape)}; expected {tuple(probs_on.shape)} "
            "like probs_on (the same inputs, rendered twice)"
        )
    if isinstance(class_names, str) or len(class_names) != probs_on.shape[1]:
        raise InputError(
            f"class_names={class_names!r} is not valid; expected {probs_on.shape[1]} names, "
            "one per class"
        )
    y = check_labels(y, probs_on.shape[0], probs_on.shape[1], "y").cpu()
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
