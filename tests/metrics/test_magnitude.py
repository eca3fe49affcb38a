"""Activation recorder, variance shift and BatchNorm mismatch: closed forms vs measurements."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from dropens import activations
from dropens.errors import ConfigError
from dropens.metrics import magnitude as mag


def _var_se(x: torch.Tensor) -> float:
    """Standard error of the sample variance: sqrt((m4 - s^4) / n), moments estimated from x."""
    d = x - x.mean()
    s2, m4 = (d**2).mean(), (d**4).mean()
    return float(((m4 - s2**2) / x.numel()).sqrt())


def _measured_ratio(x: torch.Tensor, y_train: torch.Tensor, y_eval: torch.Tensor):
    """Var_eval / Var_train and a conservative standard error of it.

    SD(log a - log b) <= SD(log a) + SD(log b) whatever their correlation, so the relative SE of
    the ratio is at most the sum of the two relative SEs (delta method).
    """
    v_eval, v_train = y_eval.var(correction=0), y_train.var(correction=0)
    ratio = float(v_eval / v_train)
    rel_se = _var_se(y_eval) / float(v_eval) + _var_se(y_train) / float(v_train)
    return ratio, ratio * rel_se


# ----------------------------------------------------------------------------- variance_shift


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("c, v", [(0.0, 1.0), (1.0, 1.0), (2.0, 0.5), (-1.5, 3.0)])
def test_variance_shift_matches_measured_ratio(p, c, v):
    g = torch.Generator().manual_seed(int(100 * p + 10 * c + v))
    x = c + math.sqrt(v) * torch.randn(200_000, generator=g, dtype=torch.float64)
    keep_mask = torch.bernoulli(torch.full_like(x, 1 - p), generator=g)
    y_train = x * keep_mask / (1 - p)  # inverted Bernoulli dropout
    ratio, se = _measured_ratio(x, y_train, x)
    predicted = mag.variance_shift(c, v, p)
    assert abs(ratio - predicted) < 4 * se
    # the formula without the mean term would be wrong whenever c != 0
    if c != 0:
        assert abs(ratio - (1 - p)) > 4 * se


def test_variance_shift_closed_form_values():
    assert mag.variance_shift(0.0, 2.0, 0.3) == pytest.approx(0.7)
    assert mag.variance_shift(1.0, 1.0, 0.5) == pytest.approx(0.5 / 1.5)
    assert mag.variance_shift(5.0, 1.0, 0.0) == 1.0
    assert math.isnan(mag.variance_shift(0.0, 0.0, 0.5))
    t = mag.variance_shift(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0]), 0.5)
    assert torch.allclose(t, torch.tensor([0.5, 0.5 / 1.5]))
    with pytest.raises(ConfigError, match=r"p=1.0"):
        mag.variance_shift(0.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "dist, scale", [("bernoulli", "none"), ("gaussian", "inverted"), ("uniform", "none")]
)
def test_variance_shift_holds_for_dropens_variants(dist, scale):
    layers = pytest.importorskip("dropens.layers")
    p, c, v = 0.4, 1.0, 2.0
    torch.manual_seed(3)
    x = c + math.sqrt(v) * torch.randn(400_000, 1, dtype=torch.float64)
    layer = layers.Dropout(p, dist=dist, scale=scale)
    y_train = layer.train()(x)
    y_eval = layer.eval()(x)
    ratio, se = _measured_ratio(x, y_train, y_eval)
    assert abs(ratio - mag.variance_shift(c, v, p)) < 4 * se


# ----------------------------------------------------------------------------- activation stats


def test_activation_stats_match_numpy():
    x = torch.tensor([[0.0, 1.0, -2.0], [3.0, 0.0, 4.0]])
    stats = mag.activation_stats(x)
    a = x.numpy().astype(np.float64)
    assert stats["mean"] == pytest.approx(a.mean())
    assert stats["var"] == pytest.approx(a.var())
    assert stats["mean_abs"] == pytest.approx(np.abs(a).mean())
    assert stats["frac_zero"] == pytest.approx(2 / 6)
    assert stats["l2"] == pytest.approx(np.mean([math.sqrt(5), 5.0]))


# ----------------------------------------------------------------------------- recorder hooks


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 32),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.BatchNorm1d(32),
        nn.Linear(32, 4),
    )


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_recorder_leaves_no_hooks_behind():
    model = small_model()
    user_handle = model[0].register_forward_hook(lambda *args: None)
    with activations.ActivationRecorder(model) as rec:
        assert _hook_count(model) == 1 + 2 * 2  # pre + post hook on Dropout and BatchNorm
        model(torch.randn(16, 8))
    assert _hook_count(model) == 1 and len(model[0]._forward_hooks) == 1
    assert {(r["layer"], r["where"]) for r in rec.records} == {
        ("2", "input"),
        ("2", "output"),
        ("3", "input"),
        ("3", "output"),
    }
    user_handle.remove()
    assert _hook_count(model) == 0


def test_recorder_removes_hooks_after_an_exception():
    model = small_model()
    with pytest.raises(RuntimeError, match="mat1 and mat2"), activations.ActivationRecorder(model):
        model(torch.randn(16, 5))  # wrong width: the first Linear raises
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_recorder_manual_attach_detach_and_kinds():
    model = small_model()
    rec = activations.ActivationRecorder(model, kinds=["batchnorm"])
    rec.attach()
    with pytest.raises(RuntimeError, match="already attached"):
        rec.attach()
    model.eval()(torch.randn(4, 8))
    rec.detach()
    rec.detach()
    assert _hook_count(model) == 0
    assert {r["kind"] for r in rec.records} == {"batchnorm"}
    with pytest.raises(ConfigError, match=r"kinds='relu'"):
        activations.ActivationRecorder(model, kinds=["relu"])


def test_recorder_sees_the_input_of_inplace_dropout_before_it_is_modified():
    model = nn.Sequential(nn.Dropout(0.5, inplace=True)).train()
    x = torch.rand(64, 100) + 0.5  # no zeros
    with activations.ActivationRecorder(model) as rec:
        model(x.clone())
    by_where = {r["where"]: r for r in rec.records}
    assert by_where["input"]["frac_zero"] == 0.0
    assert by_where["output"]["frac_zero"] > 0.3


def test_layer_kind_recognises_dropouts_and_batchnorms():
    assert activations.layer_kind(nn.Dropout2d()) == "dropout"
    assert activations.layer_kind(nn.AlphaDropout()) == "dropout"
    assert activations.layer_kind(nn.BatchNorm2d(3)) == "batchnorm"
    assert activations.layer_kind(nn.ReLU()) is None
    layers = pytest.importorskip("dropens.layers")
    assert activations.layer_kind(layers.Dropout(0.2)) == "dropout"


# ----------------------------------------------------------------------------- record_train_eval


def test_record_train_eval_restores_the_model():
    model = small_model()
    model.train()
    model[3].eval()  # mixed modes must come back as they were
    for _ in range(3):  # non-trivial running statistics
        model[3].train()
        model(torch.randn(32, 8) + 1)
    model[3].eval()
    buffers = {name: (buf, buf.clone()) for name, buf in model.named_buffers()}
    flags = [m.training for m in model.modules()]
    x = torch.randn(64, 8)
    rng = torch.get_rng_state()

    rows = activations.record_train_eval(model, x, seed=7)

    assert [m.training for m in model.modules()] == flags
    for name, buf in model.named_buffers():
        obj, saved = buffers[name]
        assert buf is obj and torch.equal(buf, saved), name
    assert torch.equal(torch.get_rng_state(), rng)  # seeded pass ran on a forked RNG
    assert _hook_count(model) == 0
    json.dumps(rows)  # run-record ready
    again = activations.record_train_eval(model, x, seed=7)
    assert json.dumps(again) == json.dumps(rows)  # reproducible with a seed


def test_record_train_eval_restores_after_an_exception():
    model = small_model().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    class Boom(nn.Module):
        def forward(self, x):
            if not self.training:
                return x
            raise ValueError("boom in the training pass")

    model.append(Boom())
    model[3].eval()
    with pytest.raises(ValueError, match="boom"):
        activations.record_train_eval(model, torch.randn(16, 8))
    assert model.training and not model[3].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert _hook_count(model) == 0


def test_record_train_eval_statistics_of_a_dropout_layer():
    p, n = 0.3, 200 * 500
    model = nn.Sequential(nn.Dropout(p))
    g = torch.Generator().manual_seed(0)
    x = 1.0 + torch.randn(200, 500, generator=g, dtype=torch.float64)
    rows = {r["where"]: r for r in activations.record_train_eval(model, x, seed=1)}
    inp, out = rows["input"], rows["output"]
    assert inp["var_ratio"] == 1.0 and inp["mean_ratio"] == 1.0  # same batch in both passes
    assert out["p"] == p
    # fraction dropped ~ Binomial(n, p) / n
    assert abs(out["frac_zero_train"] - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert out["frac_zero_eval"] == 0.0
    assert out["mean_eval"] == pytest.approx(inp["mean_eval"])
    predicted = mag.variance_shift(inp["mean_eval"], inp["var_eval"], p)
    assert out["var_ratio_predicted"] == pytest.approx(predicted)
    torch.manual_seed(1)
    y_train = nn.Dropout(p).train()(x)  # the same masks as the seeded training pass
    assert out["var_train"] == pytest.approx(float(y_train.var(correction=0)))
    ratio, se = _measured_ratio(x, y_train, x)
    assert out["var_ratio"] == pytest.approx(ratio)
    assert abs(out["var_ratio"] - predicted) < 4 * se
    assert math.isnan(out["bn_var_ratio"]) and math.isnan(inp["var_ratio_predicted"])


def test_record_train_eval_uses_sample_and_off_modes_of_dropens_dropout():
    layers = pytest.importorskip("dropens.layers")
    layer = layers.Dropout(0.5, scale="none")
    layer.set_mode("member")
    model = nn.Sequential(layer)
    x = torch.rand(32, 50) + 0.5
    rows = {r["where"]: r for r in activations.record_train_eval(model, x)}
    assert layer.mode == "member"
    out = rows["output"]
    assert out["mean_eval"] == pytest.approx(0.5 * rows["input"]["mean_eval"])  # weight scaling
    assert out["frac_zero_eval"] == 0.0 and out["frac_zero_train"] > 0.3  # sampled masks
    assert not math.isnan(out["var_ratio_predicted"])


# ----------------------------------------------------------------------------- BatchNorm mismatch


def test_bn_variance_mismatch_per_channel():
    bn = nn.BatchNorm2d(3)
    bn.running_var.copy_(torch.tensor([1.0, 2.0, 4.0]))
    x = torch.randn(8, 3, 5, 5, dtype=torch.float64)
    res = mag.bn_variance_mismatch(bn, x)
    ref = x.permute(1, 0, 2, 3).reshape(3, -1).var(dim=1)
    assert torch.allclose(res["input_var"], ref)
    assert torch.allclose(res["ratio"], ref / torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    with pytest.raises(ConfigError, match=r"x has shape \(8, 4\)"):
        mag.bn_variance_mismatch(bn, torch.randn(8, 4))
    with pytest.raises(ConfigError, match="track_running_stats=False"):
        mag.bn_variance_mismatch(nn.BatchNorm1d(3, track_running_stats=False), torch.randn(4, 3))


def test_batchnorm_after_dropout_shows_the_variance_shift():
    """Li et al. (2019): BN running variance learned on training passes overestimates the
    deterministic-pass variance by the factor of variance_shift."""
    p, c, v, channels = 0.5, 1.0, 1.0, 64
    bn = nn.BatchNorm1d(channels, momentum=None)  # cumulative average of the batch variances
    model = nn.Sequential(nn.Dropout(p), bn).train()
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(40):
            model(c + math.sqrt(v) * torch.randn(256, channels, generator=g))
    x = c + math.sqrt(v) * torch.randn(2048, channels, generator=g)
    rows = activations.record_train_eval(model, x, seed=0)
    bn_row = next(r for r in rows if r["kind"] == "batchnorm" and r["where"] == "input")
    ratio = mag.bn_variance_mismatch(bn, x)["ratio"]  # channels are i.i.d. replicates
    assert bn_row["bn_var_ratio"] == pytest.approx(float(ratio.mean()))
    assert bn_row["bn_eval_var"] == pytest.approx(float(x.double().var(dim=0).mean()))
    se = float(ratio.std() / math.sqrt(channels))
    assert abs(bn_row["bn_var_ratio"] - mag.variance_shift(c, v, p)) < 4 * se
    assert abs(bn_row["bn_var_ratio"] - 1.0) > 4 * se  # the shift is real, not 1
