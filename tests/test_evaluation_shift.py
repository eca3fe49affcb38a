"""What ``evaluate`` adds for the ``shift`` study: temperature scaling fitted on the eval set ``val``
(``eval.temperature_scaling``) and the OOD AUROC of ``clean`` vs ``ood``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dropens.errors import ConfigError
from dropens.evaluation import evaluate
from dropens.layers import Dropout
from dropens.metrics.calibration import ood_auroc, ood_scores
from dropens.metrics.summary import PREDICTION_KEYS

EVAL = {"mc_samples": 2, "mc_curve": [], "n_bins": 5, "memory_budget_mb": 16}
TS = {**EVAL, "temperature_scaling": True}
STRATEGIES = ("deterministic", "mc")
F_IN, C = 8, 4


def toy(scale: float = 1.0) -> nn.Sequential:
    """Dropout -> Linear without bias; logits have standard deviation ~ ``scale * sqrt(F_IN)``."""
    torch.manual_seed(0)
    model = nn.Sequential(Dropout(0.2, seed=1), nn.Linear(F_IN, C, bias=False))
    with torch.no_grad():
        model[1].weight.normal_(0.0, scale)
    return model.eval()


def inputs(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, F_IN, generator=torch.Generator().manual_seed(seed))


def labels_from(model: nn.Module, x: torch.Tensor, t0: float, seed: int) -> torch.Tensor:
    """Labels drawn from ``softmax(logits / t0)``: the deterministic pass is off by ``t0``."""
    with torch.no_grad():
        p = torch.softmax(model(x) / t0, -1)
    return torch.multinomial(p, 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)


def rows(metrics: dict[str, float], name: str, label: str) -> dict[str, float]:
    prefix = f"test/{name}/{label}/"
    return {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}


def fisher_se(truth: torch.Tensor) -> float:
    """Relative SE of the temperature MLE (see tests/metrics/test_temperature.py)."""
    p = torch.softmax(truth.double(), -1)
    var = (p * truth**2).sum(-1) - (p * truth).sum(-1) ** 2
    return float(var.sum() ** -0.5)


def test_temperature_fitted_on_val_recovers_the_miscalibration_and_is_applied_everywhere():
    t0 = 2.0
    model = toy(scale=1.0)
    x_val, x_test = inputs(4000, 1), inputs(500, 2)
    sets = {
        "clean": (x_test, labels_from(model, x_test, t0, 3)),
        "val": (x_val, labels_from(model, x_val, t0, 4)),
    }
    metrics, arrays = evaluate(model, sets, TS, STRATEGIES)
    with torch.no_grad():
        se = fisher_se(model(x_val) / t0)
    assert 4 * se < 0.1  # informative: the tolerance below is 4 SE
    fitted = rows(metrics, "val", "deterministic_ts")["temperature"]
    assert abs(fitted / t0 - 1) < 4 * se
    for label in ("deterministic", "mc2"):
        for name in sets:
            ts = rows(metrics, name, f"{label}_ts")
            assert set(ts) == {*PREDICTION_KEYS, "temperature"}
            assert ts["temperature"] == rows(metrics, "val", f"{label}_ts")["temperature"]
            assert ts["acc"] == rows(metrics, name, label)["acc"]  # T > 0 keeps the argmax
        # fitted on val: its NLL cannot be worse than the unscaled prediction's
        assert rows(metrics, "val", f"{label}_ts")["nll"] <= rows(metrics, "val", label)["nll"]
    assert not any(k.endswith("_ts") for k in arrays)  # nothing new stored


def test_temperature_scaling_is_off_by_default_and_needs_val():
    model, x = toy(), inputs(50, 1)
    sets = {"clean": (x, torch.zeros(50, dtype=torch.long))}
    metrics, _ = evaluate(model, sets, EVAL, STRATEGIES)
    assert not any("_ts/" in k or "temperature" in k or "auroc" in k for k in metrics)
    with pytest.raises(ConfigError, match=r"eval.temperature_scaling=true.*'val'.*eval_val"):
        evaluate(model, sets, TS, STRATEGIES)
    with pytest.raises(ConfigError, match=r"eval.temperature_scaling='yes'.*true, false"):
        evaluate(model, sets, {**EVAL, "temperature_scaling": "yes"}, STRATEGIES)


def test_ood_auroc_separated_and_identical_sets():
    model, x = toy(scale=1.0), inputs(200, 5)
    y = labels_from(model, x, 1.0, 6)  # calibrated: T ~ 1 (constant labels would give T -> inf)
    # zero inputs: every prediction is uniform (least confident) and no mask changes it (MI = 0)
    sets = {"clean": (x, y), "val": (x, y), "ood": (torch.zeros(100, F_IN), y[:100])}
    metrics, arrays = evaluate(model, sets, TS, STRATEGIES)
    for label in ("deterministic", "mc2", "deterministic_ts", "mc2_ts"):
        assert rows(metrics, "ood", label)["auroc_maxprob"] == 1.0
        assert rows(metrics, "ood", label)["auroc_entropy"] == 1.0
    # larger = more in-distribution: clean has MI >= 0, ood exactly 0, so -MI ranks ood higher
    # (below chance; clean examples whose two masks agree tie with ood); from the stored arrays
    mi_in = ood_scores(arrays["clean/mc"][:2])["mi"]
    mi_out = ood_scores(arrays["ood/mc"][:2])["mi"]
    assert rows(metrics, "ood", "mc2")["auroc_mi"] == float(ood_auroc(mi_in, mi_out)) < 0.5
    assert "auroc_mi" not in rows(metrics, "ood", "deterministic")  # one member: no MI
    # the OOD labels are never scored; its predictions are stored
    assert not any(
        k.startswith("test/ood/") and not k.split("/")[-1].startswith("auroc") for k in metrics
    )
    assert arrays["ood/deterministic"].shape == (1, 100, C)
    # identical in- and out-sets: exactly chance for the deterministic pass (ties count 1/2)
    same, _ = evaluate(model, {"clean": (x, y), "ood": (x.clone(), y)}, EVAL, ("deterministic",))
    assert same["test/ood/deterministic/auroc_maxprob"] == 0.5
    assert same["test/ood/deterministic/auroc_entropy"] == 0.5
