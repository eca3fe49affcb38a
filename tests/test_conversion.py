"""``dropens.convert`` / ``dropens.add_dropout`` (dropens/conversion.py): torchvision's
classifiers, the structures each torch module maps to, drop statistics (tests/stats_helpers.py
conventions), and the one-line refusals."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from stats_helpers import assert_within, binomial_se
from torch import nn
from torchvision import models

import dropens
from dropens import control
from dropens.conversion import torch_dropout_modules
from dropens.errors import ConfigError
from dropens.inference import predict
from dropens.layers import Dropout

# every builder of torchvision.models (classification) whose model has a dropout module,
# as of torchvision 0.29 (test_dropout_builders_are_listed keeps it complete)
DROPOUT_BUILDERS = (
    "alexnet",
    *(f"efficientnet_b{i}" for i in range(8)),
    *(f"efficientnet_v2_{s}" for s in "sml"),
    "googlenet",
    "inception_v3",
    "maxvit_t",
    *(f"mnasnet{w}" for w in ("0_5", "0_75", "1_0", "1_3")),
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "squeezenet1_0",
    "squeezenet1_1",
    *(f"swin_{v}" for v in ("t", "s", "b", "v2_t", "v2_s", "v2_b")),
    *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
    *(f"vit_{v}" for v in ("b_16", "b_32", "l_16", "l_32", "h_14")),
)
FAST = ("alexnet", "vgg11", "squeezenet1_0", "mobilenet_v3_small", "efficientnet_b0")
# the smallest square input each builder accepts (found by trying 16, 32, 48, 64, 75, ...)
SIZES = {"alexnet": 64, "inception_v3": 75, "maxvit_t": 224, "vit_h_14": 28}
SIZES |= {n: 32 for n in DROPOUT_BUILDERS if n.startswith(("vgg", "squeezenet", "vit_"))}
SIZES["vit_h_14"] = 28  # patch 14
# why: GoogLeNet / Inception's auxiliary heads return a tuple in training; their scipy init is slow
BUILD_KWARGS = {
    n: {"aux_logits": False, "init_weights": False} for n in ("googlenet", "inception_v3")
}


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """Random-init torchvision ``name`` (3 classes) in eval mode and an input ``[2, 3, S, S]``.

    At random init the eval-mode BatchNorm statistics (mean 0, var 1) do not fit the activations,
    which then shrink to ~1e-9 in deep nets (EfficientNet); ViT's head is zero-initialized; other
    nets give logits in the hundreds. Either way every MC member would have the same float32
    probabilities (uniform or one-hot). So the BatchNorm statistics are estimated from 8 random
    inputs (momentum None: their plain average), a zero head is re-drawn, and the 3-way head is
    scaled so that the logits of the example have std 1; none of this changes what is tested.
    """
    size = SIZES.get(name, 16)
    kwargs = dict(BUILD_KWARGS.get(name, {}), num_classes=3)
    if name.startswith("vit_"):
        kwargs["image_size"] = size
    torch.manual_seed(0)
    model = models.get_model(name, weights=None, **kwargs)
    x = torch.randn(2, 3, size, size)
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 3]
    for m in model.modules():
        if isinstance(m, nn.Linear) and not m.weight.any():
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        model.train()(torch.randn(8, 3, size, size))
        spread = model.eval()(x).std()
        if heads and torch.isfinite(spread) and spread > 0:
            heads[-1].weight /= spread
            if heads[-1].bias is not None:
                heads[-1].bias /= spread
    return model.eval(), x


def check_converted(name: str) -> None:
    model, x = build(name)
    own = torch_dropout_modules(model)
    assert own, f"{name} has no dropout module"
    with torch.no_grad():
        before = model(x)
    # the transformers' dropout is p=0 by default: give every site p=0.2 so MC has something to do
    p = None if any(m.p > 0 for _, m in own) else 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "functional dropout" warning for these
        names = dropens.convert(model, p=p)
    assert names == [n for n, _ in own]
    assert not torch_dropout_modules(model)
    for n, module in own:
        layer = model.get_submodule(n)
        assert isinstance(layer, Dropout)
        assert layer.p == (module.p if p is None else p)
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # eval: exactly the same pass
    mc = predict(model, x, "mc", samples=4)
    assert mc.member_probs.shape == (4, 2, 3)
    assert (mc.member_probs[0] - mc.member_probs[1:]).abs().amax() > 1e-6, "MC members agree"


@pytest.mark.parametrize("name", FAST)
def test_convert_torchvision_fast(name):
    check_converted(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in DROPOUT_BUILDERS if n not in FAST])
def test_convert_torchvision_all(name):
    check_converted(name)


@pytest.mark.slow
def test_dropout_builders_are_listed():
    """Every classification builder with a dropout module is in DROPOUT_BUILDERS (~60 s)."""
    found = []
    for name in models.list_models(module=models):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = models.get_model(name, weights=None, **BUILD_KWARGS.get(name, {}))
        if torch_dropout_modules(model):
            found.append(name)
        del model
    assert sorted(found) == sorted(DROPOUT_BUILDERS)


def test_model_without_dropout_mc_error_then_add_dropout():
    torch.manual_seed(0)
    model = models.resnet18(weights=None, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ConfigError) as err:
        predict(model, x, "mc", samples=4)
    assert "\n" not in str(err.value) and "add_dropout" in str(err.value)
    with torch.no_grad():
        before = model(x)
    assert dropens.add_dropout(model, after=["layer4"], p=0.3, structure="channel") == ["layer4"]
    assert isinstance(model.layer4.dropout, Dropout)
    assert model.layer4[0] is model.layer4.module[0]  # indexing reads the wrapped module
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    mc = predict(model, x, "mc", samples=4)
    assert (mc.member_probs[0] - mc.member_probs[1:]).abs().amax() > 1e-6


def test_add_dropout_globs_and_flat_sites():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    got = dropens.add_dropout(model, after=["1", "3"], example=x, p=0.2, structure="channel")
    assert got == ["1", "3"]
    # a flat (N, F) output gets element-wise dropout, as the built-in flat sites do
    assert {m.structure for m in control.dropout_layers(model)} == {"element"}
    model2 = models.vgg11(weights=None)
    names = dropens.add_dropout(model2, after="features.1[24]", p=0.1)  # two of its ReLUs
    assert names == ["features.12", "features.14"]
    assert [m.site for m in control.dropout_layers(model2)[-2:]] == names


@pytest.mark.parametrize(
    ("after", "words"),
    [
        (["layer9"], ("layer9", "matches no module", "layer4")),
        (["layer4", "layer4.0"], ("'layer4'", "'layer4.0'", "inside the other")),
        ([""], ("after=''", "not valid")),
    ],
)
def test_add_dropout_refusals(after, words):
    model = models.resnet18(weights=None)
    with pytest.raises(ConfigError) as err:
        dropens.add_dropout(model, after=after)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_add_dropout_refuses_reused_module():
    """One ReLU called twice: dropout after it would apply twice (torchvision's BasicBlock)."""
    model = models.resnet18(weights=None)
    with pytest.raises(ConfigError) as err:
        dropens.add_dropout(model, after=["layer1.0.relu"])
    msg = str(err.value)
    assert "\n" not in msg and "called 2 times" in msg and "BasicBlock.forward" in msg

    shared = nn.ReLU()
    net = nn.Sequential(nn.Linear(2, 2), shared, nn.Linear(2, 2), shared)
    with pytest.raises(ConfigError, match="registered at"):
        dropens.add_dropout(net, after=["1"])


class _Forwards(nn.Module):
    """Calls the same Linear twice, which the source check cannot see (a loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        for _ in range(2):
            x = self.lin(x)
        return x


def test_add_dropout_example_counts_calls():
    with pytest.raises(ConfigError, match="called 2 times per forward"):
        dropens.add_dropout(_Forwards(), after=["lin"], example=torch.randn(2, 3))


@pytest.mark.parametrize(
    ("module", "structure"),
    [
        (nn.Dropout(0.3), "element"),
        (nn.Dropout1d(0.3), "channel"),
        (nn.Dropout2d(0.3), "channel"),
        (nn.Dropout3d(0.3), "channel"),
    ],
)
def test_structure_and_drop_rate(module, structure):
    """Training-mode statistics equal torch's: drop fraction p per draw, kept units x / keep."""
    model = nn.Sequential(nn.Identity(), module)
    assert dropens.convert(model) == ["1"]
    layer = model[1]
    assert (layer.structure, layer.p, layer.scale) == (structure, 0.3, "inverted")
    shape = {"element": (200, 1000), "channel": (2000, 50, 3, 3)}[structure]
    if isinstance(module, (nn.Dropout1d, nn.Dropout3d)):
        shape = (2000, 50, 3) if isinstance(module, nn.Dropout1d) else (2000, 50, 2, 2, 2)
    torch.manual_seed(1)
    y = model.train()(torch.ones(shape))
    kept = y != 0
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    if structure == "channel":  # one draw per (example, channel), shared over positions
        per_channel = kept.flatten(2)
        assert (per_channel.all(-1) | ~per_channel.any(-1)).all()
        kept = per_channel[..., 0]
    n = kept.numel()
    assert_within(1 - kept.float().mean().item(), 0.3, binomial_se(0.3, n), what="drop rate")


def test_dropblock_converted_to_block():
    """torchvision's DropBlock2d becomes structure=block with its block size; every position drops
    with probability p (dropens' DropBlock, conversion.py docstring). The drop fraction of one
    (example, channel) map lies in [0, 1] with mean p, so its variance is at most p (1 - p): the
    mean over n independent maps has SE <= binomial_se(p, n)."""
    p, b = 0.2, 3
    model = nn.Sequential(nn.Conv2d(1, 1, 1), torchvision.ops.DropBlock2d(p, b))
    assert dropens.convert(model) == ["1"]
    layer = model[1]
    assert (layer.structure, layer.block_size, layer.p) == ("block", b, p)
    x = torch.ones(4000, 5, 12, 12)
    torch.manual_seed(2)
    dropped = (layer.train()(x) == 0).float()
    assert_within(dropped.mean().item(), p, binomial_se(p, 4000 * 5), what="block drop rate")
    assert dropped.amax((-1, -2)).any()  # some blocks fell
    with torch.no_grad():
        torch.testing.assert_close(layer.eval()(x), x, rtol=0, atol=0)


def test_overrides_apply_to_every_site():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Dropout2d(0.1), nn.Flatten(), nn.Dropout(0.4))
    names = dropens.convert(model, p=0.25, dist="gaussian", scale="inverted")
    assert names == ["1", "3"]
    assert [(m.p, m.dist, m.structure) for m in control.dropout_layers(model)] == [
        (0.25, "gaussian", "channel"),
        (0.25, "gaussian", "element"),
    ]


def test_shared_dropout_stays_shared_and_eval_state_kept():
    drop = nn.Dropout(0.2)
    model = nn.Sequential(nn.Linear(2, 2), drop, nn.Linear(2, 2), drop).eval()
    assert dropens.convert(model) == ["1", "3"]
    assert model[1] is model[3] and not model[1].training


@pytest.mark.parametrize("module", [nn.AlphaDropout(0.2), nn.FeatureAlphaDropout(0.2)])
def test_alpha_dropout_refused(module):
    model = nn.Sequential(nn.Linear(2, 2), module)
    with pytest.raises(ConfigError) as err:
        dropens.convert(model)
    msg = str(err.value)
    assert "\n" not in msg and "'1'" in msg and type(module).__name__ in msg and "SELU" in msg
    assert isinstance(model[1], type(module))  # nothing changed
    assert dropens.convert(model, structure="element") == ["1"]  # an override says what to do


class _Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.drop_rate = 0.3

    def forward(self, x):
        return nn.functional.dropout(self.lin(x), self.drop_rate, self.training)


def test_functional_dropout_warns():
    with pytest.warns(UserWarning, match="drop_rate=0.3.*add_dropout"):
        assert dropens.convert(_Functional()) == []


def test_model_itself_is_dropout_refused():
    with pytest.raises(ConfigError, match="cannot convert the model itself"):
        dropens.convert(nn.Dropout(0.1))


def test_subclass_with_own_forward_refused():
    class Mine(nn.Dropout):
        def forward(self, x):
            return x

    with pytest.raises(ConfigError, match="overrides forward"):
        dropens.convert(nn.Sequential(Mine(0.1)))
