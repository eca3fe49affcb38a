"""``batchensemble``: member ``k`` of every layer is the plain layer with weight ``W * (s_k r_k^T)``
and bias ``b_k``; member ``k`` of a converted backbone is the plain backbone with those weights;
members do not see each other's rows or the rest of the batch; ``K = 1`` with ``r = s = 1`` is the
plain network; the parameter count; the fast-weight initializations; the loss and optimizer groups;
a real run's record; bad input; and (slow, where installed) TorchUncertainty's layers.

Tolerances. The float64 comparisons sum the same products in another association (scale the input
and output vs scale the weight): the rounding error of a sum of ``n`` products is at most
``n * eps * sum |terms|`` with ``eps = 1.1e-16``; with ``n <= 600`` and ``sum |terms| <= 1e2`` here,
``1e-11`` bounds it.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dropens import control
from dropens.config import compose, to_container
from dropens.errors import ConfigError
from dropens.inference import predict
from dropens.layout import stack, unstack
from dropens.methods import BatchEnsemble, method_class
from dropens.methods.batchensemble_layers import (
    BatchEnsembleLayer,
    BatchEnsembleNet,
    be_layers,
    convert,
)
from dropens.models import build_model, count_parameters
from dropens.train import fit_and_record, prepare

SMOKE = ["trainer=smoke", "logger=csv", "eval.mc_curve=[1,4]", "eval.mc_samples=4"]
C = 10
TOL = {"atol": 1e-11, "rtol": 1e-11}  # float64, module docstring
# (model overrides, per-example input shape): every backbone the method converts
BACKBONES = {
    "mlp": (["model=mlp"], (1, 40)),
    "mlp_bn": (["model=mlp", "model.batchnorm=true"], (1, 40)),
    "cnn1d": (["model=cnn1d"], (1, 40)),
    "cnn2d_bn": (["model=cnn2d", "model.batchnorm=true", "model.channels=[4,8]"], (1, 8, 8)),
    "resnet20": (["model=resnet20"], (3, 8, 8)),
}


def _cfg(*overrides: str) -> dict:
    return to_container(
        compose(["method=batchensemble", *SMOKE, "results_root=unused", *overrides])
    )


def _randomize(module: nn.Module, seed: int = 0) -> None:
    """Fast weights, biases and BatchNorm affine parameters / statistics away from their inits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, BatchEnsembleLayer):
                for t in (m.r, m.s, m.bias):
                    if t is not None:
                        t.copy_(1 + 0.5 * torch.randn(t.shape, generator=g, dtype=t.dtype))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(0.3 * torch.randn(t.shape, generator=g, dtype=t.dtype))
                m.weight.add_(1)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def _backbone(name: str, k: int, seed: int = 0) -> tuple[BatchEnsembleNet, dict, tuple]:
    overrides, shape = BACKBONES[name]
    cfg = _cfg(f"method.k={k}", *overrides)
    torch.manual_seed(seed)
    net = BatchEnsemble.build_backbone(cfg, shape, C).double()
    _randomize(net, seed)
    return net.eval(), cfg, shape


# ----------------------------------------------------------------------------- one layer


def _be(layer: nn.Module, k: int) -> BatchEnsembleLayer:
    be = BatchEnsembleLayer(layer.double(), k)
    _randomize(be)
    return be


def test_linear_member_k_is_f_linear_with_the_rank_one_weight():
    k, b = 3, 5
    be = _be(nn.Linear(7, 4), k)
    x = torch.randn(k * b, 7, dtype=torch.float64)
    y = unstack(be(x), k)
    w = be.shared.weight
    for i in range(k):
        weight = w * torch.outer(be.s[i], be.r[i])
        torch.testing.assert_close(y[i], F.linear(unstack(x, k)[i], weight, be.bias[i]), **TOL)
    assert y.shape == (k, b, 4)


@pytest.mark.parametrize("dims", [1, 2])
def test_conv_member_k_is_the_conv_with_the_rank_one_weight(dims):
    k, b = 3, 2
    conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(3, 5, 3, stride=2, padding=1)
    be = _be(conv, k)
    x = torch.randn(k * b, 3, *[9] * dims, dtype=torch.float64)
    y = unstack(be(x), k)
    fn = F.conv1d if dims == 1 else F.conv2d
    ones = [1] * dims
    for i in range(k):
        weight = be.shared.weight * be.s[i].view(5, 1, *ones) * be.r[i].view(1, 3, *ones)
        ref = fn(unstack(x, k)[i], weight, be.bias[i], stride=2, padding=1)
        torch.testing.assert_close(y[i], ref, **TOL)
        torch.testing.assert_close(be.member_weight(i), weight, **TOL)


def test_grouped_conv_scales_each_group_by_its_own_slice():
    """groups=2: output channels 0..2 see input channels 0..1 (``r[0:2]``), 3..5 see 2..3."""
    k = 2
    be = _be(nn.Conv2d(4, 6, 3, groups=2, bias=False), k)
    assert be.bias is None
    x = torch.randn(k * 3, 4, 6, 6, dtype=torch.float64)
    y = unstack(be(x), k)
    w = be.shared.weight
    for i in range(k):
        s, r = be.s[i].view(6, 1, 1, 1), be.r[i]
        weight = torch.cat([w[:3] * r[:2].view(1, 2, 1, 1), w[3:] * r[2:].view(1, 2, 1, 1)]) * s
        torch.testing.assert_close(y[i], F.conv2d(unstack(x, k)[i], weight, groups=2), **TOL)


def test_rows_must_be_a_multiple_of_k():
    be = _be(nn.Linear(3, 2), 4)
    with pytest.raises(ConfigError, match="not a multiple of the 4 BatchEnsemble members"):
        be(torch.zeros(6, 3, dtype=torch.float64))


# ----------------------------------------------------------------------------- whole backbones


def _plain_member(net: BatchEnsembleNet, cfg: dict, shape: tuple, k: int) -> nn.Module:
    """The plain backbone, built independently, loaded with member ``k``'s effective weights
    (computed here from ``W, r, s, b``) and every other tensor of ``net`` by name."""
    plain = build_model(cfg["model"], {**cfg["dropout"], "p": 0.0}, shape, C).double().eval()
    modules = dict(net.net.named_modules())
    tensors = net.net.state_dict()
    state = {}
    for name in plain.state_dict():
        path, _, leaf = name.rpartition(".")
        be = modules.get(path)
        if not isinstance(be, BatchEnsembleLayer):
            state[name] = tensors[name]
        elif leaf == "bias":
            state[name] = be.bias[k]
        else:
            w = be.shared.weight
            ones = [1] * (w.dim() - 2)
            state[name] = w * be.s[k].view(-1, 1, *ones) * be.r[k].view(1, -1, *ones)
    plain.load_state_dict(state)  # strict: every tensor of the plain backbone is given
    return plain


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_member_k_is_the_plain_backbone_with_member_k_weights(name):
    k = 3
    net, cfg, shape = _backbone(name, k)
    x = torch.randn(4, *shape, dtype=torch.float64)
    with torch.no_grad():
        members = net.forward_members(x)
        for i in range(k):
            plain = _plain_member(net, cfg, shape, i)
            torch.testing.assert_close(members[i], plain(x), **TOL)
            torch.testing.assert_close(members[i], net.member(i).eval()(x), **TOL)
    assert not torch.allclose(members[0], members[1])


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_linear_and_conv_is_converted_and_w_is_the_plain_init(name):
    """The shared W of every layer is the weight ``plain`` builds from the same RNG state."""
    overrides, shape = BACKBONES[name]
    cfg = _cfg("method.k=2", *overrides)
    torch.manual_seed(3)
    plain = build_model(cfg["model"], {**cfg["dropout"], "p": 0.0}, shape, C)
    torch.manual_seed(3)
    net = BatchEnsemble.build_backbone(cfg, shape, C)
    layers = be_layers(net)
    shared = {id(m.shared) for m in layers}
    plain_layers = [m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]
    assert plain_layers and all(id(m) in shared for m in plain_layers)
    expected = [m for m in plain.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]
    assert len(expected) == len(layers)
    for be, ref in zip(layers, expected):
        assert torch.equal(be.shared.weight, ref.weight)
        assert be.shared.bias is None
        if ref.bias is not None:
            assert torch.equal(be.bias, ref.bias.expand(2, -1))


@pytest.mark.parametrize("name", ["mlp_bn", "cnn2d_bn"])
def test_members_independent_of_batch_composition_in_eval(name):
    """Member k's outputs for an example change neither with the other examples of the batch nor
    with what the other members' rows hold (eval mode: BatchNorm on running statistics)."""
    k = 3
    net, _, shape = _backbone(name, k)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, *shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ref = unstack(net(stack(x, k)), k)
        # other examples: a different batch (size 4) that shares x[:2]
        other = torch.cat([x[:2], torch.randn(2, *shape, generator=g, dtype=torch.float64)])
        torch.testing.assert_close(unstack(net(stack(other, k)), k)[:, :2], ref[:, :2], **TOL)
        # other members' rows: member 1 keeps x, members 0 and 2 get noise
        mixed = stack(x, k).clone()
        mixed[:6] = torch.randn(6, *shape, generator=g, dtype=torch.float64)
        mixed[12:] = torch.randn(6, *shape, generator=g, dtype=torch.float64)
        torch.testing.assert_close(unstack(net(mixed), k)[1], ref[1], **TOL)


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "cnn2d_bn"])
def test_k1_with_unit_fast_weights_is_the_plain_backbone(name):
    overrides, shape = BACKBONES[name]
    cfg = _cfg("method.k=1", *overrides)
    torch.manual_seed(4)
    plain = build_model(cfg["model"], {**cfg["dropout"], "p": 0.0}, shape, C).double().eval()
    torch.manual_seed(4)
    net = BatchEnsemble.build_backbone(cfg, shape, C).double().eval()
    with torch.no_grad():
        for m in be_layers(net):
            m.r.fill_(1.0)
            m.s.fill_(1.0)
    x = torch.randn(5, *shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), **TOL)


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("k", [1, 4])
def test_parameter_count(name, k):
    """plain + per layer ``K * (in + out + out * has_bias) - out * has_bias``: K fast-weight pairs,
    and K biases replacing the plain one."""
    overrides, shape = BACKBONES[name]
    cfg = _cfg(f"method.k={k}", *overrides)
    plain = build_model(cfg["model"], cfg["dropout"], shape, C)
    expected = count_parameters(plain)
    for m in plain.modules():
        if isinstance(m, nn.Linear):
            n_in, n_out = m.in_features, m.out_features
        elif isinstance(m, nn.Conv1d | nn.Conv2d):
            n_in, n_out = m.in_channels, m.out_channels
        else:
            continue
        has_bias = m.bias is not None
        expected += k * (n_in + n_out + n_out * has_bias) - n_out * has_bias
    assert count_parameters(BatchEnsemble.build_backbone(cfg, shape, C)) == expected


@pytest.mark.parametrize("init", ["normal", "random_sign"])
def test_fast_weight_init(init):
    """``normal``: mean 1, std 0.5 (tolerances: 5 standard errors, ``sigma / sqrt(n)`` for the
    mean and ``sigma / sqrt(2n)`` for the std of a normal sample); ``random_sign``: every value
    +-1, the share of +1 within 5 standard errors ``sqrt(1/4n)`` of 1/2."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(500, 400))
    convert(model, 4, init, 0.5)
    values = torch.cat([model[0].r.flatten(), model[0].s.flatten()]).detach().double()
    n = len(values)  # 3600
    if init == "normal":
        assert abs(values.mean() - 1) < 5 * 0.5 / n**0.5
        assert abs(values.std() - 0.5) < 5 * 0.5 / (2 * n) ** 0.5
    else:
        assert set(values.tolist()) == {-1.0, 1.0}
        assert abs((values > 0).double().mean() - 0.5) < 5 * (0.25 / n) ** 0.5


def test_model_without_linear_or_conv_is_refused():
    with pytest.raises(ConfigError, match="has none"):
        convert(nn.Sequential(nn.ReLU()), 2)


# ----------------------------------------------------------------------------- training


def test_loss_is_the_mean_of_member_losses():
    cfg = _cfg("method.k=3", "model=mlp", "model.batchnorm=true")
    torch.manual_seed(0)
    method = BatchEnsemble(BatchEnsemble.build_backbone(cfg, (1, 40), C), cfg)
    x, y = torch.randn(6, 1, 40), torch.randint(0, C, (6,))
    torch.manual_seed(1)
    loss = method.training_loss(x, y)
    torch.manual_seed(1)
    logits = unstack(method.backbone(stack(x, 3)), 3)  # train mode: BN pools all 18 rows
    expected = sum(F.cross_entropy(logits[i], y) for i in range(3)) / 3
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)  # float32, 3 terms


def test_optimizer_groups_fast_weights_without_decay():
    cfg = _cfg("model=cnn2d", "model.batchnorm=true", "optim.weight_decay=0.1", "optim.lr=0.01")
    method = BatchEnsemble(BatchEnsemble.build_backbone(cfg, (1, 8, 8), C), cfg)
    opt = method.configure_optimizers()["optimizer"]
    slow, fast, biases = opt.param_groups
    layers = be_layers(method.backbone)
    assert {id(p) for p in fast["params"]} == {id(p) for m in layers for p in (m.r, m.s)}
    assert {id(p) for p in biases["params"]} == {id(m.bias) for m in layers if m.bias is not None}
    assert (fast["lr"], fast["weight_decay"]) == (0.005, 0.0)  # fast_lr_multiplier 0.5
    assert (biases["lr"], biases["weight_decay"]) == (0.005, 0.1)
    assert (slow["lr"], slow["weight_decay"]) == (0.01, 0.1)
    every = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in method.parameters())  # each exactly once


def test_dropout_layers_off_unless_member_dropout():
    off = BatchEnsemble.build_backbone(_cfg("model=mlp", "dropout.p=0.5"), (1, 40), C)
    assert control.dropout_layers(off) and all(m.p == 0 for m in control.dropout_layers(off))
    cfg = _cfg("model=mlp", "dropout.p=0.5", "method.member_dropout=true", "method.k=2")
    on = BatchEnsemble.build_backbone(cfg, (1, 40), C)
    assert all(m.p == 0.5 for m in control.dropout_layers(on))
    x = torch.randn(3, 1, 40)
    with torch.no_grad():
        eval_out = on.eval().forward_members(x)
        torch.testing.assert_close(eval_out, on.eval().forward_members(x))
        assert not torch.equal(on.train().forward_members(x), eval_out)


# ----------------------------------------------------------------------------- a real run


@pytest.mark.parametrize(
    "overrides",
    [["model=mlp"], ["data=digits", "model=cnn2d", "model.channels=[8,16]", "model.hidden=32"]],
    ids=["mlp_mnist1d", "cnn2d_digits"],
)
def test_record_has_every_member_and_both_aggregates(tmp_path, overrides):
    cfg = to_container(
        compose(["method=batchensemble", *overrides, *SMOKE, f"results_root={tmp_path}"])
    )
    prep = prepare(cfg)
    record = fit_and_record(prep)
    assert record.done
    metrics = record.metrics()
    for label in [f"member{k}" for k in range(4)] + ["members", "members_geometric"]:
        for metric in ("acc", "nll", "ece", "brier"):
            assert np.isfinite(metrics[f"test/clean/{label}/{metric}"]), (label, metric)
    for metric in ("mi", "disagreement", "ensemble_gain", "member_acc", "member_nll"):
        assert f"test/clean/members/{metric}" in metrics
    assert not any(re.search(r"/(deterministic|mc\d+)/", key) for key in metrics)
    preds = record.predictions()
    assert preds["clean/members"].shape == (4, len(preds["labels/clean"]), 10)
    assert record.read_json("magnitudes.json")["member"] == 0
    header = (record.path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/clean/members/acc" in header and "train/loss_step" in header

    # the checkpoint holds W, r, s and the biases: a reload predicts the same
    x = prep.datamodule.eval_sets()["clean"][0][:32]
    shape = prep.datamodule.input_shape
    expected = predict(prep.method.backbone, x, "members").member_probs
    torch.manual_seed(9)
    fresh = BatchEnsemble(BatchEnsemble.build_backbone(cfg, shape, 10), cfg)
    assert not torch.equal(predict(fresh.backbone, x, "members").member_probs, expected)
    checkpoint = torch.load(record.last_checkpoint(), map_location="cpu", weights_only=False)
    fresh.load_state_dict(checkpoint["state_dict"])
    assert torch.equal(predict(fresh.backbone, x, "members").member_probs, expected)


def test_registered():
    assert method_class("batchensemble") is BatchEnsemble
    assert BatchEnsemble.eval_strategies == ("members",)
    cfg = _cfg("model=mlp")
    method = BatchEnsemble(BatchEnsemble.build_backbone(cfg, (1, 40), C), cfg)
    assert method.validation_plan() == {"members": ("members", None)}
    assert method.selection_label == "members"
    assert method.backbone.n_members == 4 and method.backbone.stacked_members is True


# ----------------------------------------------------------------------------- bad input

BAD = {
    "k_zero": (["method.k=0"], ["method.k=0", ">= 1"]),
    "k_not_int": (["method.k=two"], ["method.k='two'", "integer"]),
    "fast_init": (["method.fast_init=ones"], ["method.fast_init='ones'", "normal, random_sign"]),
    "fast_init_std_zero": (["method.fast_init_std=0"], ["method.fast_init_std=0", "> 0"]),
    "fast_init_std_text": (["method.fast_init_std=wide"], ["method.fast_init_std='wide'", "> 0"]),
    "fast_lr_multiplier": (["method.fast_lr_multiplier=-1"], ["fast_lr_multiplier=-1", "> 0"]),
    "member_dropout_not_bool": (
        ["method.member_dropout=maybe"],
        ["method.member_dropout='maybe'", "true, false"],
    ),
    "member_dropout_p_zero": (
        ["method.member_dropout=true", "dropout.p=0"],
        ["method.member_dropout=true", "dropout.p=0"],
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_one_line_error_and_nothing_written(name, assert_rejected):
    overrides, must_contain = BAD[name]
    assert_rejected(["method=batchensemble", *overrides], must_contain)


# ----------------------------------------------------------------------------- TorchUncertainty


@pytest.mark.slow
def test_layers_match_torch_uncertainty_given_the_same_parameters():
    """TorchUncertainty's BatchLinear / BatchConv2d (``r_group``, ``s_group``, ``bias``, weight in
    ``.linear`` / ``.conv``) on the same parameters and the same ``(m b)`` rows."""
    tu = pytest.importorskip("torch_uncertainty.layers")
    k, b = 3, 4
    linear = _be(nn.Linear(6, 5), k)
    ref = tu.BatchLinear(6, 5, num_estimators=k).double()
    conv = _be(nn.Conv2d(3, 4, 3, padding=1), k)
    ref_conv = tu.BatchConv2d(3, 4, 3, num_estimators=k, padding=1).double()
    with torch.no_grad():
        for ours, theirs, inner in ((linear, ref, ref.linear), (conv, ref_conv, ref_conv.conv)):
            inner.weight.copy_(ours.shared.weight)
            theirs.r_group.copy_(ours.r)
            theirs.s_group.copy_(ours.s)
            theirs.bias.copy_(ours.bias)
        x = torch.randn(k * b, 6, dtype=torch.float64)
        torch.testing.assert_close(linear(x), ref(x), **TOL)
        x = torch.randn(k * b, 3, 7, 7, dtype=torch.float64)
        torch.testing.assert_close(conv(x), ref_conv(x), **TOL)
