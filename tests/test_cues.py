"""Cue reliance of a model: the counterfactual pairs of its stored predictions, occlusion maps."""

from __future__ import annotations

import torch
from torch import nn

from dropens.cues import occlusion_map, pair_metrics


def _onehot(pred: list[int], c: int = 2) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(pred), c).float()


def test_pair_metrics_read_mc_as_its_headline_average():
    y = torch.tensor([0, 1])
    # 4 MC samples: the first 2 say class 1 for example 0 when the cue is on, the last 2 class 0
    mc_on = torch.stack([_onehot([1, 1]), _onehot([1, 1]), _onehot([0, 1]), _onehot([0, 1])])
    mc_off = torch.stack([_onehot([0, 1])] * 4)
    arrays = {
        "labels/on": y,
        "on/mc": mc_on,
        "off/mc": mc_off,
        "on/deterministic": _onehot([0, 1])[None],
    }
    out = pair_metrics(arrays, {"cue": ("on", "off")}, ("a", "b"), mc_samples=2)
    assert out["test/cue/mc2/flip_rate"] == 0.5  # only stored in both sets -> no deterministic key
    assert not any("deterministic" in k for k in out)


class OnePatch(nn.Module):
    """Logits that depend only on the mean of the 4x4 square at rows 8..11, cols 20..23."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0, 8:12, 20:24].mean((1, 2)) * 10
        return torch.stack([-s, s], dim=1)


def test_occlusion_map_lights_up_exactly_where_the_model_looks():
    x = torch.ones(5, 1, 32, 32)
    y = torch.ones(5, dtype=torch.long)  # the model is confident in class 1 on bright inputs
    drop = occlusion_map(OnePatch(), x, y, patch=8, stride=4)
    assert drop.shape == (7, 7)
    rows, cols = range(0, 25, 4), range(0, 25, 4)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            overlaps = r < 12 and r + 8 > 8 and c < 24 and c + 8 > 20
            assert (drop[i, j] > 0.1) == overlaps, (r, c, float(drop[i, j]))
            if not overlaps:
                assert drop[i, j] == 0.0
