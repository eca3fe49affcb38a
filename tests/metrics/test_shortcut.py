"""Cue-reliance metrics: counterfactual flip rate and group accuracies."""

from __future__ import annotations

import pytest
import torch

from dropens.errors import InputError
from dropens.metrics.shortcut import counterfactual_metrics


def _onehot(pred: list[int], c: int = 2) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(pred), c).float()


def test_counterfactual_metrics_count_flips_and_groups():
    y = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    on = _onehot([1, 1, 1, 1, 1, 1, 0, 0])  # teeth painted in: two angry faces become smiling
    off = _onehot([1, 0, 1, 1, 0, 0, 0, 0])  # teeth out: one smiling face becomes angry
    m = counterfactual_metrics(on, off, y, ("angry", "smiling"))
    assert m["flip_rate"] == 3 / 8
    assert m["acc_smiling_cue"] == 1.0 and m["acc_smiling_no_cue"] == 0.75
    assert m["acc_angry_cue"] == 0.5 and m["acc_angry_no_cue"] == 1.0
    assert m["worst_group_acc"] == 0.5


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda on, off, y, names: (on * 2, off, y, names), r"probs_on row \(0,\) sums to 2"),
        (lambda on, off, y, names: (on, off - 0.5, y, names), r"probs_off has negative values"),
        (
            lambda on, off, y, names: (
                on.index_fill(0, torch.tensor([1]), float("nan")),
                off,
                y,
                names,
            ),
            r"probs_on has 2 non-finite",
        ),
        (lambda on, off, y, names: (on, off[:4], y, names), r"probs_off has shape \(4, 2\)"),
        (lambda on, off, y, names: (on, off, y + 1, names), r"y has values in \[1, 2\]"),
        (lambda on, off, y, names: (on, off, y.float(), names), r"y has shape \(8,\) float32"),
        (lambda on, off, y, names: (on, off, y, ("angry",)), r"class_names=\('angry',\)"),
    ],
)
def test_bad_inputs_raise_one_line_errors(change, match):
    y = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    on, off = _onehot([1, 1, 1, 1, 1, 1, 0, 0]), _onehot([1, 0, 1, 1, 0, 0, 0, 0])
    with pytest.raises(InputError, match=match) as info:
        counterfactual_metrics(*change(on, off, y, ("angry", "smiling")))
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)
