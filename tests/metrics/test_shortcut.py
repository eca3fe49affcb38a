"""Cue-reliance metrics: counterfactual flip rate and group accuracies."""

from __future__ import annotations

import torch

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
