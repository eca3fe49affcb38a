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

from dropens.errors import ConfigError, InputError
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
    before = cal.nll(cal.apply_temperature(x, 1.0, inputs="logits"), labels)
    fitted = cal.fit_temperature(x, labels, inputs="logits")
    after = cal.nll(cal.apply_temperature(x, fitted, inputs="logits"), labels)
    assert fitted > 0
    assert after <= before + 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibrated_model_keeps_temperature_one(seed):
    g = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(4000, 10, generator=g, dtype=torch.float64)
    labels = sampled(z, g)
    se = fisher_se(z)
    assert se < 0.02  # the check below is informative: within 4 SE means within 8%
    assert abs(cal.fit_temperature(z, labels, inputs="logits") - 1.0) < 4 * se


def test_fit_depends_on_the_prediction_only():
    g = torch.Generator().manual_seed(3)
    z = 2.0 * torch.randn(2000, 6, generator=g, dtype=torch.float64)
    labels = sampled(z / 2.0, g)
    fitted = cal.fit_temperature(z, labels, inputs="logits")
    shifted = z + 7.0 * torch.randn(2000, 1, generator=g, dtype=torch.float64)  # per-row shift
    assert cal.fit_temperature(shifted, labels, inputs="logits") == pytest.approx(fitted, rel=1e-6)
    assert cal.fit_temperature(torch.log_softmax(z, -1), labels) == pytest.approx(fitted, rel=1e-6)
    # members: log-probabilities of the members give the same fit as their logits
    members = z + torch.randn(3, 2000, 6, generator=g, dtype=torch.float64)
    assert cal.fit_temperature(torch.log_softmax(members, -1), labels) == pytest.approx(
        cal.fit_temperature(members, labels, inputs="logits"), rel=1e-6
    )


# ----------------------------------------------------------------------------- inputs=


def _prediction(members: int, seed: int = 5, n: int = 1500, c: int = 6):
    g = torch.Generator().manual_seed(seed)
    z = 2.5 * torch.randn(members, n, c, generator=g, dtype=torch.float64)
    labels = sampled(z.mean(0) / 1.7, g)
    z = z[0] if members == 1 else z
    return z, labels


@pytest.mark.parametrize("how", ["mean", "geometric"])
@pytest.mark.parametrize("members", [1, 3])
def test_logits_logprobs_and_probs_of_one_prediction_give_one_temperature(members, how):
    z, labels = _prediction(members)
    forms = {
        "logits": z,
        "logprobs": torch.log_softmax(z, -1),
        "probs": torch.softmax(z, -1),
    }
    fitted = {k: cal.fit_temperature(x, labels, how, inputs=k) for k, x in forms.items()}
    assert fitted["logits"] != pytest.approx(1.0, abs=0.05)  # a real fit, not the start value
    for kind in ("logprobs", "probs"):
        assert fitted[kind] == pytest.approx(fitted["logits"], abs=1e-6), kind
    scaled = {k: cal.apply_temperature(x, 1.3, how, inputs=k) for k, x in forms.items()}
    for kind in ("logprobs", "probs"):
        assert torch.allclose(scaled[kind], scaled["logits"], atol=1e-12), kind


def test_default_is_logprobs_and_inputs_is_keyword_only():
    z, labels = _prediction(1)
    logp = torch.log_softmax(z, -1)
    assert cal.fit_temperature(logp, labels) == cal.fit_temperature(logp, labels, inputs="logprobs")
    with pytest.raises(TypeError):
        cal.fit_temperature(z, labels, "mean", 200, "logits")  # type: ignore[misc]
    with pytest.raises(TypeError):
        cal.apply_temperature(z, 1.0, "mean", "logits")  # type: ignore[misc]


@pytest.mark.parametrize("fn", ["fit", "apply"])
@pytest.mark.parametrize("members", [1, 3])
@pytest.mark.parametrize(
    "given, inputs, match",
    [
        # the reported case: probabilities where log-probabilities are expected
        (
            "probs",
            "logprobs",
            r"inputs='logprobs' but .* it looks like probabilities: pass inputs='probs'",
        ),
        (
            "logits",
            "logprobs",
            r"inputs='logprobs' but .* it looks like logits: pass inputs='logits'",
        ),
        ("probs", "logits", r"inputs='logits' but every row .* pass inputs='probs'"),
        ("logprobs", "probs", r"inputs='probs' but .* not probabilities"),
        ("logits", "probs", r"inputs='probs' but .* it looks like logits: pass inputs='logits'"),
        ("nan", "logits", r"inputs='logits' but .* is not finite; it has NaN or inf"),
        ("nan", "logprobs", r"inputs='logprobs' but .* has NaN or \+inf"),
        ("nan", "probs", r"inputs='probs' but .* it has NaN or inf"),
        ("plus_inf", "logprobs", r"inputs='logprobs' but .* has NaN or \+inf"),
        (
            "logprobs",
            "bogus",
            r"inputs='bogus' is not valid; choose one of: logits, logprobs, probs",
        ),
    ],
)
def test_input_that_is_not_what_inputs_says_is_refused(given, inputs, match, members, fn):
    z, labels = _prediction(members, n=50)
    x = {
        "logits": z,
        "logprobs": torch.log_softmax(z, -1),
        "probs": torch.softmax(z, -1),
        "nan": z.clone().fill_(float("nan")),
        "plus_inf": torch.log_softmax(z, -1).index_fill(-1, torch.tensor([0]), float("inf")),
    }[given]
    expected = ConfigError if inputs == "bogus" else InputError  # InputError is a ConfigError
    with pytest.raises(expected, match=match) as info:
        if fn == "fit":
            cal.fit_temperature(x, labels, inputs=inputs)
        else:
            cal.apply_temperature(x, 1.5, inputs=inputs)
    message = str(info.value)
    assert "\n" not in message and "inputs=" in message
    assert isinstance(info.value, ValueError)


def test_log_of_zero_is_a_log_probability():
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    labels = torch.tensor([0, 1, 2, 2])
    with torch.no_grad():
        logp = probs.log()  # contains -inf
    from_probs = cal.fit_temperature(probs, labels, inputs="probs")
    assert cal.fit_temperature(logp, labels) == pytest.approx(from_probs, abs=1e-6)
    assert torch.allclose(
        cal.apply_temperature(logp, 2.0), cal.apply_temperature(probs, 2.0, inputs="probs")
    )


def test_low_precision_logprobs_are_accepted():
    z, labels = _prediction(1, n=300)
    reference = cal.fit_temperature(z, labels, inputs="logits")
    for dtype in (torch.float32, torch.float16):
        logp = torch.log_softmax(z, -1).to(dtype)
        assert cal.fit_temperature(logp, labels) == pytest.approx(reference, rel=1e-2)
    # float16 probabilities as stored in predictions.npz, read back as float32
    probs = torch.softmax(z, -1).half().float()
    assert cal.fit_temperature(probs, labels, inputs="probs") == pytest.approx(reference, rel=1e-2)


def test_bad_shapes_and_max_iter():
    z, labels = _prediction(1, n=20)
    with pytest.raises(InputError, match=r"logits_or_logprobs has shape \(20,\)"):
        cal.fit_temperature(z[:, 0], labels, inputs="logits")
    with pytest.raises(InputError, match=r"logits_or_logprobs has shape \(0, 6\)"):
        cal.fit_temperature(z[:0], labels[:0], inputs="logits")
    with pytest.raises(InputError, match=r"labels has 19 entries"):
        cal.fit_temperature(z, labels[:19], inputs="logits")
    with pytest.raises(InputError, match=r"labels has values in \[0, 6\]"):
        cal.fit_temperature(
            z, labels.clamp_max(5).index_fill(0, torch.tensor([0]), 6), inputs="logits"
        )
    with pytest.raises(ConfigError, match=r"max_iter=0 is not valid"):
        cal.fit_temperature(z, labels, max_iter=0, inputs="logits")


def test_inputs_check_does_not_depend_on_the_trusted_block():
    from dropens.metrics._common import values_checked

    z, labels = _prediction(1, n=50)
    with values_checked():  # e.g. called from inside prediction_metrics-like code
        fitted = cal.fit_temperature(z, labels, inputs="logits")
        with pytest.raises(InputError, match="pass inputs='probs'"):
            cal.fit_temperature(torch.softmax(z, -1), labels)
    assert fitted == cal.fit_temperature(z, labels, inputs="logits")
