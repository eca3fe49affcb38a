"""prediction_metrics / aggregate, and the documentation contract of the metrics package."""

from __future__ import annotations

import inspect

import pytest
import torch

import dropens.metrics as metrics
from dropens.errors import ConfigError, InputError
from dropens.metrics import calibration as cal
from dropens.metrics import diversity as div
from dropens.metrics import stats
from dropens.metrics.summary import aggregate, prediction_metrics

BASE_KEYS = {"acc", "nll", "brier", "ece", "mce", "aurc"}
ENSEMBLE_KEYS = {"mi", "disagreement", "ensemble_gain", "member_acc", "member_nll"}


def random_members(m: int, n: int, c: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(2.0 * torch.randn(m, n, c, generator=g, dtype=torch.float64), -1)
    return probs, torch.randint(0, c, (n,), generator=g)


def test_aggregate_mean_and_geometric():
    probs, _ = random_members(3, 50, 4, seed=0)
    assert torch.allclose(aggregate(probs, "mean"), probs.mean(0))
    geo = probs.prod(0) ** (1 / 3)
    assert torch.allclose(aggregate(probs, "geometric"), geo / geo.sum(-1, keepdim=True))
    assert torch.allclose(aggregate(probs[:1], "geometric"), probs[0])
    with pytest.raises(ConfigError, match=r"aggregate='max' is not valid; choose one of: mean"):
        aggregate(probs, "max")
    with pytest.raises(ConfigError, match=r"member_probs has shape \(50, 4\)"):
        aggregate(probs[0])


@pytest.mark.parametrize("how", ["mean", "geometric"])
def test_prediction_metrics_keys_and_values(how):
    probs, labels = random_members(4, 300, 5, seed=1)
    out = prediction_metrics(probs, labels, aggregate=how, n_bins=10)
    assert set(out) == BASE_KEYS | ENSEMBLE_KEYS
    assert all(isinstance(v, float) for v in out.values())
    p = aggregate(probs, how)
    assert out["acc"] == pytest.approx(cal.accuracy(p, labels).item())
    assert out["nll"] == pytest.approx(cal.nll(p, labels).item())
    assert out["brier"] == pytest.approx(cal.brier(p, labels).item())
    assert out["ece"] == pytest.approx(cal.ece(p, labels, 10).item())
    assert out["mce"] == pytest.approx(cal.mce(p, labels, 10).item())
    assert out["aurc"] == pytest.approx(cal.aurc(p, labels).item())
    assert out["mi"] == pytest.approx(div.mutual_information(probs).item())
    assert out["disagreement"] == pytest.approx(div.disagreement(probs).item())
    assert out["ensemble_gain"] == pytest.approx(div.ensemble_gain(probs, labels, how).item())
    assert out["member_acc"] == pytest.approx(
        sum(cal.accuracy(q, labels).item() for q in probs) / 4
    )
    assert out["member_nll"] - out["nll"] == pytest.approx(out["ensemble_gain"])


def test_prediction_metrics_single_member():
    probs, labels = random_members(1, 100, 3, seed=2)
    out = prediction_metrics(probs, labels)
    assert set(out) == BASE_KEYS
    assert out["nll"] == pytest.approx(cal.nll(probs[0], labels).item())
    with pytest.raises(ConfigError, match="labels has 99 entries"):
        prediction_metrics(probs, labels[:99])


def _public_callables():
    for module in (
        metrics.calibration,
        metrics.diversity,
        metrics.magnitude,
        stats,
        metrics.summary,
        metrics.wrappers,
    ):
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{module.__name__}.{name}", obj


@pytest.mark.parametrize("name, obj", list(_public_callables()))
def test_every_public_function_documents_its_formula_and_shapes(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert len(doc.splitlines()) >= 3, f"{name} needs a docstring with formula and shapes"
    # a formula/paper and shapes or types are written in ``...`` literals
    assert "``" in doc, f"{name}: write formulas and shapes as ``literals``"


def test_package_exports():
    for name in metrics.__all__:
        assert hasattr(metrics, name), name


# ----------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p: p * 2, r"member_probs row \(0, 0\) sums to 2"),
        (lambda p: p.index_fill(2, torch.tensor([0]), float("nan")), r"member_probs has 100 non"),
        (lambda p: p - 0.25, r"member_probs has negative values"),
        (lambda p: torch.log(p), r"member_probs has negative values"),
        (lambda p: p[0], r"member_probs has shape \(50, 4\)"),
    ],
)
@pytest.mark.parametrize(
    "fn",
    [
        lambda p, y: aggregate(p),
        lambda p, y: aggregate(p, "geometric", torch.full((2,), 0.5, dtype=torch.float64)),
        prediction_metrics,
        lambda p, y: prediction_metrics(p, y, "geometric"),
    ],
)
def test_aggregate_and_prediction_metrics_refuse_non_probabilities(fn, change, match):
    probs, labels = random_members(2, 50, 4, seed=3)
    with pytest.raises(InputError, match=match) as info:
        fn(change(probs), labels)
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)


def test_prediction_metrics_refuses_bad_labels_and_weights():
    probs, labels = random_members(2, 50, 4, seed=3)
    with pytest.raises(InputError, match=r"labels has values in \[0, 4\]"):
        prediction_metrics(probs, labels.index_fill(0, torch.tensor([0]), 4))
    with pytest.raises(InputError, match=r"weights must be non-negative and sum to 1"):
        aggregate(probs, "mean", torch.tensor([0.5, float("nan")], dtype=torch.float64))


def test_prediction_metrics_checks_once_and_accepts_float16_round_trips():
    probs, labels = random_members(3, 200, 10, seed=4)
    stored = probs.half().float()  # predictions.npz round trip, not renormalized
    ref = prediction_metrics(probs, labels)
    got = prediction_metrics(stored, labels)
    assert got["nll"] == pytest.approx(ref["nll"], rel=1e-2)
    # inside prediction_metrics the values are trusted after the one check; outside they are not
    from dropens.metrics import _common

    with _common.values_checked():
        aggregate(probs * 2)
    with pytest.raises(InputError):
        aggregate(probs * 2)
