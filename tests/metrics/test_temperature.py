"""Temperature scaling (``fit_temperature`` / ``apply_temperature``): properties the ``shift`` study
relies on, beyond the recovery tests of ``test_calibration.py``.

- the fitted temperature never increases the NLL of the data it was fitted on (T = 1 is a
  candidate), whatever the miscalibration, for one model and for averaged predictions;
- a calibrated model is left alone: ``T = 1`` within the MLE's standard error;
- the fit depends on the prediction only (logits, log-probabilities and shifted logits agree).
"""

from __future__ import annotations

import pytest
import torch

from dropens.metrics import calibration as cal


def fisher_se(truth: torch.Tensor) -> float:
    """Asymptotic relative SE of the temperature MLE when ``softmax(truth)`` generates the labels:
    ``1 / sqrt(Σ_n Var_{y ~ p_n}(truth_{n,y}))`` (Fisher information of ``log T`` at T = 1)."""
    p = torch.softmax(truth, -1)
    var = (p * truth**2).sum(-1) - (p * truth).sum(-1) ** 2
    return float(var.sum() ** -0.5)


def sampled(z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(1)


@pytest.mark.parametrize("t0", [0.3, 1.0, 4.0])
@pytest.mark.parametrize("members", [1, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_fitted_temperature_never_increases_the_fitted_nll(t0, members, seed):
    g = torch.Generator().manual_seed(seed)
    n, c = 500, 10
    z = 3.0 * torch.randn(members, n, c, generator=g, dtype=torch.float64)
    labels = sampled(z.mean(0) / t0, g)  # the model is miscalibrated by t0 (1.0: calibrated)
    x = z[0] if members == 1 else z
    before = cal.nll(cal.apply_temperature(x, 1.0), labels)
    fitted = cal.fit_temperature(x, labels)
    after = cal.nll(cal.apply_temperature(x, fitted), labels)
    assert fitted > 0
    assert after <= before + 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibrated_model_keeps_temperature_one(seed):
    g = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(4000, 10, generator=g, dtype=torch.float64)
    labels = sampled(z, g)
    se = fisher_se(z)
    assert se < 0.02  # the check below is informative: within 4 SE means within 8%
    assert abs(cal.fit_temperature(z, labels) - 1.0) < 4 * se


def test_fit_depends_on_the_prediction_only():
    g = torch.Generator().manual_seed(3)
    z = 2.0 * torch.randn(2000, 6, generator=g, dtype=torch.float64)
    labels = sampled(z / 2.0, g)
    fitted = cal.fit_temperature(z, labels)
    shifted = z + 7.0 * torch.randn(2000, 1, generator=g, dtype=torch.float64)  # per-row shift
    assert cal.fit_temperature(shifted, labels) == pytest.approx(fitted, rel=1e-6)
    assert cal.fit_temperature(torch.log_softmax(z, -1), labels) == pytest.approx(fitted, rel=1e-6)
    # members: log-probabilities of the members give the same fit as their logits
    members = z + torch.randn(3, 2000, 6, generator=g, dtype=torch.float64)
    assert cal.fit_temperature(torch.log_softmax(members, -1), labels) == pytest.approx(
        cal.fit_temperature(members, labels), rel=1e-6
    )
