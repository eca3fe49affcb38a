"""``packed``: Packed-Ensembles -- alpha = M = gamma = 1 is the plain backbone, member k is the small
network of group k's weights, identical row blocks give the paper's dense first layer, the groups
and parameter counts of the paper's construction, members independent of the batch and of each
other, the loss, the record of a real run, and bad input."""

from __future__ import annotations

import copy
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
from dropens.layout import stack
from dropens.methods import Packed, PackedEnsemble, method_class
from dropens.methods.packed_layers import (
    PACKED_LAYERS,
    PackedConv2d,
    PackedLinear,
    channels_to_rows,
    pack,
    packed_width,
    rows_to_channels,
)
from dropens.models import MLP, CifarResNet, CNN1d, CNN2d, WideResNet, count_parameters
from dropens.train import fit_and_record, prepare

SMOKE = ["trainer=smoke", "logger=csv"]
C = 10
SEQ, IMG, CIFAR = (1, 40), (1, 8, 8), (3, 32, 32)


def _cfg(*overrides: str) -> dict:
    return to_container(compose(["method=packed", *SMOKE, "results_root=unused", *overrides]))


class SmallResNet(CifarResNet):
    """The CIFAR ResNet at widths (8, 16, 32): one member of a packed (16, 32, 64) x alpha=2, M=4."""

    widths = (8, 16, 32)


# (builder of the plain backbone, builder of member k's network, input shape); members alpha=2, M=4
NETS = {
    "mlp": (lambda: MLP(SEQ, C), lambda: MLP(SEQ, C, widths=(50, 50)), SEQ),
    "mlp_bn": (
        lambda: MLP(SEQ, C, batchnorm=True),
        lambda: MLP(SEQ, C, widths=(50, 50), batchnorm=True),
        SEQ,
    ),
    # 25 channels x 2 = 50 rounded up to 52, a multiple of the 4 groups: 13 per member
    "cnn1d": (lambda: CNN1d(SEQ, C), lambda: CNN1d(SEQ, C, channels=13), SEQ),
    "cnn2d_bn": (
        lambda: CNN2d(IMG, C, batchnorm=True),
        lambda: CNN2d(IMG, C, channels=(16, 32), hidden=64, batchnorm=True),
        IMG,
    ),
    "resnet8": (
        lambda: CifarResNet(CIFAR, C, depth=8),
        lambda: SmallResNet(CIFAR, C, depth=8),
        CIFAR,
    ),
}


def _randomize_bn(net: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm affine parameters and running statistics (else they are 1 / 0)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(1 + 0.3 * torch.randn(n, generator=g))
                m.bias.copy_(0.3 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def _packed(net: nn.Module, shape, m=4, alpha=2.0, gamma=1) -> PackedEnsemble:
    torch.manual_seed(0)
    return PackedEnsemble(net, m, alpha, gamma, shape)


# ----------------------------------------------------------------------------- definition


@pytest.mark.parametrize("name", sorted(NETS))
def test_alpha_m_gamma_one_is_the_plain_backbone(name):
    """Same parameters -> the same outputs (float32, 1e-6), in eval and in train mode (BatchNorm
    on batch statistics); the parameter names and shapes are the plain backbone's."""
    build, _, shape = NETS[name]
    torch.manual_seed(3)
    plain = build()
    _randomize_bn(plain, 1)
    packed = PackedEnsemble(copy.deepcopy(plain), 1, 1.0, 1, shape)
    x = torch.randn(6, *shape)
    with torch.no_grad():
        assert not torch.allclose(packed.eval()(x), plain.eval()(x))  # fresh packed weights
    packed.net.load_state_dict(plain.state_dict())  # strict: same keys, same shapes
    for train in (False, True):
        plain.train(train)
        packed.train(train)
        with torch.no_grad():
            torch.testing.assert_close(packed(x), plain(x), atol=1e-6, rtol=0)
    assert count_parameters(packed) == count_parameters(plain)


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_member_k_is_the_small_network_of_group_k(name, train):
    """Member k of PE(alpha=2, M=4, gamma=1), fed its own rows, equals the backbone at widths
    W'/M loaded with group k's weights (float64: the grouped and the small layers sum the same
    products, possibly in another order)."""
    build, build_member, shape = NETS[name]
    m = 4
    packed = _packed(build(), shape).double()
    _randomize_bn(packed, 2)
    x = torch.randn(m * 5, *shape, dtype=torch.float64)  # a different batch for every member
    packed.train(train)
    with torch.no_grad():
        out = packed(x).reshape(m, 5, C)
    for k in range(m):
        small = build_member().double().train(train)
        small.load_state_dict(packed.member_state_dict(k))  # strict: the small network's shapes
        alone = packed.member(k)  # the same network, sliced generically
        with torch.no_grad():
            expected = small(x[5 * k : 5 * (k + 1)])
            sliced = alone(x[5 * k : 5 * (k + 1)])
        torch.testing.assert_close(out[k], expected, atol=1e-10, rtol=0, msg=f"member {k}")
        torch.testing.assert_close(sliced, expected, atol=1e-10, rtol=0, msg=f"member {k}")
        assert count_parameters(alone) == count_parameters(small)


def test_member_with_gamma_groups_is_a_packed_network_of_one_member():
    """With gamma = 2, member k (M = 2, alpha = 2) is PE(M=1, alpha=1, gamma=2) of the backbone at
    the member's widths: gamma groups inside the member, a dense first layer and one head."""
    packed = _packed(MLP(SEQ, C), SEQ, m=2, gamma=2).double()
    groups = [mod.groups for mod in packed.modules() if isinstance(mod, PackedLinear)]
    assert groups == [2, 4, 2]  # first: M; hidden: M * gamma; last: M
    x = torch.randn(2 * 3, *SEQ, dtype=torch.float64)
    with torch.no_grad():
        out = packed(x).reshape(2, 3, C)
    for k in range(2):
        small = _packed(MLP(SEQ, C), SEQ, m=1, alpha=1.0, gamma=2).double()
        small.net.load_state_dict(packed.member_state_dict(k))
        with torch.no_grad():
            torch.testing.assert_close(out[k], small(x[3 * k : 3 * (k + 1)]), atol=1e-10, rtol=0)


class _DenseFirst(nn.Module):
    """The paper's / TorchUncertainty's first layer (``first=True``): one dense layer, ``groups=1``,
    on the ``B`` input rows; its output block k feeds member k."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.layer.weight, self.layer.bias
        if isinstance(self.layer, PackedLinear):
            return F.linear(x, w, b)
        return F.conv2d(x, w, b, self.layer.stride, self.layer.padding, self.layer.dilation)


@pytest.mark.parametrize("name", ["mlp", "cnn2d_bn", "resnet8"])
def test_identical_row_blocks_give_the_papers_network(name):
    """The stacked protocol with the same B rows for every member == the paper's network (dense first
    layer on the B rows, no stacking); float64."""
    build, _, shape = NETS[name]
    packed = _packed(build(), shape).double().eval()
    _randomize_bn(packed, 3)
    paper = copy.deepcopy(packed.net)
    ((parent, child_name, first),) = [
        (parent, child_name, child)
        for parent in paper.modules()
        for child_name, child in parent.named_children()
        if isinstance(child, PACKED_LAYERS) and child.first
    ]
    setattr(parent, child_name, _DenseFirst(first))
    x = torch.randn(5, *shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(packed(stack(x, 4)), paper(x), atol=1e-10, rtol=0)


def test_layouts_round_trip():
    x = torch.arange(4 * 3 * 2 * 5.0).reshape(12, 2, 5)  # (m b) c l with M=4, B=3
    ch = rows_to_channels(x, 4)
    assert ch.shape == (3, 8, 5)
    assert torch.equal(ch[1, 2:4], x[1 * 3 + 1])  # example 1 of member 1 -> channels 2..3
    assert torch.equal(channels_to_rows(ch, 4), x)


def test_groups_widths_and_parameter_count_follow_the_paper():
    """MLP 40-100-100-10, alpha=2, M=4: first layer M groups on the un-widened input, hidden layers
    M*gamma groups (alpha^2/(M gamma) of the plain weights), last M heads of C logits."""
    for gamma, hidden_groups in ((1, 4), (2, 8)):
        packed = _packed(MLP(SEQ, C), SEQ, gamma=gamma)
        first, hidden, last = [m for m in packed.modules() if isinstance(m, PackedLinear)]
        assert (first.groups, hidden.groups, last.groups) == (4, hidden_groups, 4)
        assert first.weight.shape == (200, 40)  # the paper's dense [alpha*100, 40]
        assert hidden.weight.shape == (200, 200 // hidden_groups)
        assert last.weight.shape == (4 * C, 200 // 4)
        weights = 200 * 40 + 200 * 200 // hidden_groups + 4 * C * 200 // 4
        assert count_parameters(packed) == weights + 200 + 200 + 4 * C
    # hidden weights: alpha^2 / (M gamma) x the plain 100 x 100 = 1 x for the paper's PE-(2, 4, 1)
    assert 200 * 200 // 4 == 2**2 / (4 * 1) * 100 * 100
    # cnn2d on 8x8: convs 64, 64, 128, 128 channels (4 groups), hidden 256 on 128 x 2 x 2 features
    packed = _packed(CNN2d(IMG, C), IMG)
    convs = [m for m in packed.modules() if isinstance(m, PackedConv2d)]
    assert [c.groups for c in convs] == [4, 4, 4, 4]
    expected = (64 * 1 * 9 + 64) + (64 * 16 * 9 + 64) + (128 * 16 * 9 + 128) + (128 * 32 * 9 + 128)
    expected += (256 * 512 // 4 + 256) + (4 * C * 256 // 4 + 4 * C)
    assert count_parameters(packed) == expected
    assert packed_width(25, 2, 4) == 52 and packed_width(100, 1, 1) == 100
    assert packed_width(10, 1.5, 4) == 16


# ----------------------------------------------------------------------------- independence


# the Wide ResNet (1x1 shortcut convolutions, pre-activation BatchNorm) has no member builder: its
# stem width is fixed, so its members are checked through the generic slicing (PackedEnsemble.member)
INDEPENDENCE = {
    **{name: (NETS[name][0], NETS[name][2]) for name in ("cnn2d_bn", "resnet8", "cnn1d")},
    "wrn10_2": (lambda: WideResNet(CIFAR, C, depth=10, widen=2), CIFAR),
}


@pytest.mark.parametrize("name", sorted(INDEPENDENCE))
def test_members_independent_of_batch_and_of_each_other(name):
    """Eval mode: member k's output for an example does not change when the other examples, or the
    other members' rows, change, and equals member k run alone. Train mode (BatchNorm on batch
    statistics): not when the other members' rows change. Changing member k's own rows does change
    it (the check can fail)."""
    build, shape = INDEPENDENCE[name]
    m, b = 4, 6
    packed = _packed(build(), shape).double()
    _randomize_bn(packed, 4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, b, *shape, generator=g, dtype=torch.float64)
    other = torch.randn(m, b, *shape, generator=g, dtype=torch.float64)

    def run(xs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return packed(xs.reshape(-1, *shape)).reshape(m, -1, C)

    packed.eval()
    ref = run(x)
    batch = x.clone()
    batch[:, 1:] = other[:, 1:]  # other examples in the batch
    torch.testing.assert_close(run(batch)[:, 0], ref[:, 0], atol=1e-12, rtol=0)
    alone = run(x[:, :1])  # the example alone
    torch.testing.assert_close(alone[:, 0], ref[:, 0], atol=1e-12, rtol=0)
    with torch.no_grad():
        single = packed.member(2)(x[2])  # member 2 as a network of its own
    torch.testing.assert_close(single, ref[2], atol=1e-10, rtol=0)
    for mode in ("eval", "train"):
        packed.train(mode == "train")
        ref = run(x)
        mixed = x.clone()
        mixed[1:] = other[1:]  # every member but 0 gets other rows
        got = run(mixed)
        torch.testing.assert_close(got[0], ref[0], atol=1e-12, rtol=0)
        assert not torch.allclose(got[1], ref[1])


def test_training_loss_is_the_mean_of_member_losses():
    cfg = _cfg("model=mlp")
    torch.manual_seed(0)
    method = Packed(Packed.build_backbone(cfg, SEQ, C), cfg)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, *SEQ, generator=g), torch.randint(0, C, (8,), generator=g)
    with torch.no_grad():
        members = method.backbone.forward_members(x)  # [M, B, C]
        expected = torch.stack([F.cross_entropy(members[k], y) for k in range(4)]).mean()
        torch.testing.assert_close(method.training_loss(x, y), expected, atol=1e-6, rtol=0)


def test_backbone_has_no_dropout_and_the_stacked_protocol():
    cfg = _cfg("model=cnn1d", "dropout.p=0.5")
    backbone = Packed.build_backbone(cfg, SEQ, C)
    layers = control.dropout_layers(backbone)
    assert layers and all(m.p == 0.0 for m in layers)
    on = Packed.build_backbone(
        _cfg("model=cnn1d", "dropout.p=0.5", "method.member_dropout=true"), SEQ, C
    )
    assert all(m.p == 0.5 for m in control.dropout_layers(on))
    rows = torch.randn(4 * 3, *SEQ)
    with torch.no_grad():  # dropout samples in training only
        assert not torch.equal(on.train()(rows), on.train()(rows))
        torch.testing.assert_close(on.eval()(rows), on.eval()(rows), atol=0, rtol=0)
    assert backbone.n_members == 4 and backbone.stacked_members is True
    assert method_class("packed") is Packed and Packed.eval_strategies == ("members",)
    x = torch.randn(3, *SEQ)
    probs = predict(backbone, x, "members").member_probs
    assert probs.shape == (4, 3, C)
    torch.testing.assert_close(probs, F.softmax(backbone.eval().forward_members(x), -1))
    with pytest.raises(ConfigError, match="multiple of the 4 packed members"):
        backbone(x)


def test_pack_refuses_what_it_cannot_convert():
    with pytest.raises(ConfigError, match=r"cannot convert layer '1'.*LayerNorm"):
        pack(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)), 2, 2.0, 1, (4,))
    # MLP 40-40 with residual=true: the first layer's input (rows) is added to its output (channels)
    with pytest.raises(ConfigError, match="is the first layer inside a residual block"):
        pack(MLP(SEQ, C, widths=(40,), residual=True), 2, 2.0, 1, SEQ)
    shared = nn.Linear(4, 4)
    with pytest.raises(ConfigError, match="called 2 times"):
        pack(nn.Sequential(shared, nn.ReLU(), shared), 2, 2.0, 1, (4,))


# ----------------------------------------------------------------------------- a real run


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=mlp"],
        ["model=cnn1d"],
        ["data=digits", "model=cnn2d", "model.channels=[8,16]", "model.hidden=32"],
    ],
    ids=["mlp", "cnn1d", "cnn2d"],
)
def test_record_has_every_member_and_both_aggregates(tmp_path, overrides):
    cfg = to_container(compose(["method=packed", *overrides, *SMOKE, f"results_root={tmp_path}"]))
    prep = prepare(cfg)
    record = fit_and_record(prep)
    assert record.done
    metrics = record.metrics()
    for label in [f"member{k}" for k in range(4)] + ["members", "members_geometric"]:
        for metric in ("acc", "nll", "ece", "brier"):
            assert np.isfinite(metrics[f"test/clean/{label}/{metric}"]), (label, metric)
    for metric in ("mi", "disagreement", "ensemble_gain", "member_acc", "member_nll"):
        assert f"test/clean/members/{metric}" in metrics
    # no single network: no deterministic pass, no MC
    assert not any(re.search(r"/(deterministic|mc\d+)/", key) for key in metrics)
    preds = record.predictions()
    n = len(preds["labels/clean"])
    assert preds["clean/members"].shape == (4, n, prep.datamodule.n_classes)
    header = (record.path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/clean/members/acc" in header and "train/loss_step" in header
    # the checkpoint holds the packed weights: a reload predicts the same
    x = prep.datamodule.eval_sets()["clean"][0][:32]
    expected = predict(prep.method.backbone, x, "members").member_probs
    shape, n_classes = prep.datamodule.input_shape, prep.datamodule.n_classes
    fresh = Packed(Packed.build_backbone({**cfg, "seed": 5}, shape, n_classes), cfg)
    checkpoint = torch.load(record.last_checkpoint(), map_location="cpu", weights_only=False)
    fresh.load_state_dict(checkpoint["state_dict"])
    assert torch.equal(predict(fresh.backbone, x, "members").member_probs, expected)


# ----------------------------------------------------------------------------- TorchUncertainty


@pytest.mark.slow
def test_layers_match_torch_uncertainty():
    """TorchUncertainty's PackedLinear / PackedConv2d (hidden and ``first``) with the same parameters
    give the same outputs (float32, 1e-5). Skipped unless ``torch_uncertainty`` is importable."""
    tu = pytest.importorskip("torch_uncertainty.layers")
    torch.manual_seed(0)
    x = torch.randn(5, 200)
    theirs = tu.PackedLinear(100, 100, alpha=2, num_estimators=4)
    mine = PackedLinear(200, 200, groups=4, n_members=4)
    with torch.no_grad():
        mine.weight.copy_(theirs.weight.reshape(mine.weight.shape))
        mine.bias.copy_(theirs.bias)
        torch.testing.assert_close(mine(x), theirs(x), atol=1e-5, rtol=0)
    img = torch.randn(2, 32, 6, 6)
    theirs = tu.PackedConv2d(
        16, 32, 3, alpha=2, num_estimators=4, padding=1, minimum_channels_per_group=1
    )
    groups = theirs.conv.groups
    mine = PackedConv2d(32, 64, 3, padding=1, groups=groups, n_members=4)
    with torch.no_grad():
        mine.weight.copy_(theirs.weight)
        mine.bias.copy_(theirs.bias)
        torch.testing.assert_close(mine(img), theirs(img), atol=1e-5, rtol=0)
    # first layer: theirs dense (groups=1) on B rows, mine grouped on the M stacked copies
    img = torch.randn(2, 3, 6, 6)
    theirs = tu.PackedConv2d(3, 16, 3, alpha=2, num_estimators=4, padding=1, first=True)
    mine = PackedConv2d(12, 32, 3, padding=1, groups=4, n_members=4, first=True)
    with torch.no_grad():
        mine.weight.copy_(theirs.weight)
        mine.bias.copy_(theirs.bias)
        torch.testing.assert_close(mine(stack(img, 4)), theirs(img), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- bad input


def test_gradient_clipping_warns_that_it_couples_members():
    with pytest.warns(UserWarning, match="no longer trained independently"):
        Packed.validate(_cfg("trainer.gradient_clip_val=1.0"))


BAD = {
    "k_zero": (["method.k=0"], ["method.k=0", ">= 1"]),
    "k_not_int": (["method.k=2.5"], ["method.k=2.5", "integer"]),
    "alpha_zero": (["method.alpha=0"], ["method.alpha=0", "number > 0"]),
    "alpha_negative": (["method.alpha=-2"], ["method.alpha=-2", "number > 0"]),
    "alpha_not_number": (["method.alpha=wide"], ["method.alpha='wide'", "number > 0"]),
    "alpha_bool": (["method.alpha=true"], ["method.alpha=True", "number > 0"]),
    "gamma_zero": (["method.gamma=0"], ["method.gamma=0", "integer >= 1"]),
    "gamma_float": (["method.gamma=1.5"], ["method.gamma=1.5", "integer >= 1"]),
    "member_dropout_text": (
        ["method.member_dropout=yes"],
        ["method.member_dropout='yes'", "true, false"],
    ),
    "member_dropout_without_p": (
        ["method.member_dropout=true", "dropout.p=0"],
        ["method.member_dropout=true with dropout.p=0"],
    ),
    "custom_model": (
        ["model=custom", "model.target=torchvision.models:resnet18"],
        ["method=packed", "model.name='custom'", "mlp, cnn1d, cnn2d"],
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_one_line_error_and_nothing_written(name, assert_rejected):
    overrides, must_contain = BAD[name]
    assert_rejected(["method=packed", *overrides], must_contain)
