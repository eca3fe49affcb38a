"""The torchmetrics wrapper accumulated over batches equals prediction_metrics on the whole set."""

from __future__ import annotations

import pytest
import torch
from torchmetrics import MetricCollection

from dropens.errors import ConfigError
from dropens.metrics.summary import prediction_metrics
from dropens.metrics.wrappers import PredictionMetrics


def random_members(m: int, n: int, c: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(2.0 * torch.randn(m, n, c, generator=g), -1)
    return probs, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("m", [1, 4])
@pytest.mark.parametrize("how", ["mean", "geometric"])
def test_accumulated_over_batches_equals_prediction_metrics(m, how):
    probs, labels = random_members(m, 250, 6, seed=m)
    metric = PredictionMetrics(aggregate=how, n_bins=10)
    for start in range(0, 250, 64):  # uneven last batch
        metric.update(probs[:, start : start + 64], labels[start : start + 64])
    assert metric.probs[0].shape == (64, m, 6)  # example-first states: "cat" gathers examples
    got = metric.compute()
    ref = prediction_metrics(probs, labels, aggregate=how, n_bins=10)
    assert set(got) == set(ref)
    for key, value in ref.items():
        assert got[key].item() == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_single_prediction_batches_reset_and_collection_prefix():
    probs, labels = random_members(1, 100, 3, seed=0)
    metric = PredictionMetrics()
    metric.update(probs[0, :50], labels[:50])  # [B, C] is one member
    metric.update(probs[0, 50:], labels[50:])
    assert metric.compute()["nll"].item() == pytest.approx(prediction_metrics(probs, labels)["nll"])
    metric.reset()
    metric.update(probs[0, :10], labels[:10])
    assert metric.compute()["acc"].item() == pytest.approx(
        prediction_metrics(probs[:, :10], labels[:10])["acc"]
    )
    collection = MetricCollection({"pred": PredictionMetrics()}, prefix="val/clean/det/")
    collection.update(probs, labels)
    assert "val/clean/det/ece" in collection.compute()


def test_bad_input_raises_config_error():
    with pytest.raises(ConfigError, match=r"aggregate='median'"):
        PredictionMetrics(aggregate="median")
    metric = PredictionMetrics()
    probs, labels = random_members(3, 8, 4, seed=0)
    metric.update(probs, labels)
    with pytest.raises(ConfigError, match=r"expected \[3, B, 4\]"):
        metric.update(probs[:2], labels)


def test_values_are_checked_at_compute():
    probs, labels = random_members(2, 8, 4, seed=0)
    metric = PredictionMetrics()
    metric.update(probs * 2, labels)  # shapes only per batch: no GPU sync
    with pytest.raises(ConfigError, match=r"member_probs row \(0, 0\) sums to 2"):
        metric.compute()
