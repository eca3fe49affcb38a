"""Backbones built from the real ``configs/model`` YAML files: shapes, parameter counts, dropout
sites, and the one-line configuration errors."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from dropens.errors import ConfigError
from dropens.layers import Dropout
from dropens.models import MODELS, build_model, count_parameters

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
# (config file, input shape, overrides that keep the test fast)
SMALL = {
    "mlp": ((40,), {}),
    "cnn1d": ((40,), {}),
    "cnn2d": ((1, 28, 28), {}),
    "resnet20": ((3, 16, 16), {}),  # 32x32 (CIFAR): test_models_resnets
    "wrn28_10": ((3, 16, 16), {"depth": 10, "widen": 2}),  # WRN-28-10: test_models_resnets
}
# Dropout layers per site of each (small) model: {site: occurrences}.
OCCURRENCES = {
    "mlp": {"input": 1, "hidden": 2, "head": 1},
    "cnn1d": {"input": 1, "conv": 3, "head": 1},
    "cnn2d": {"input": 1, "conv": 4, "hidden": 1},
    "resnet20": {"block": 9, "head": 1},
    "wrn28_10": {"block": 3, "head": 1},
}
FLAT = {"mlp": {"input", "hidden", "head"}, "cnn1d": {"head"}, "cnn2d": {"hidden"}}
FLAT["resnet20"] = FLAT["wrn28_10"] = {"head"}


def spec(p=0.1, dist="bernoulli", structure="element", scale="inverted", block_size=None):
    return {
        "p": p,
        "dist": dist,
        "structure": structure,
        "scale": scale,
        "block_size": block_size,
        "share_channels": False,
    }


def model_cfg(name: str, **overrides):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    return OmegaConf.merge(cfg, {**SMALL[name][1], **overrides})


def build(name: str, dropout=None, **overrides):
    return build_model(model_cfg(name, **overrides), dropout or spec(), SMALL[name][0], 10)


def site_names(model) -> list[str]:
    return sorted(m.site for m in model.modules() if isinstance(m, Dropout))


def one_line_error(fn) -> str:
    with pytest.raises(ConfigError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", list(SMALL))
def test_builds_from_yaml_and_returns_logits(name):
    torch.manual_seed(0)
    shape = SMALL[name][0]
    model = build_model(model_cfg(name), spec(p=0.2), shape, 7)
    x = torch.randn(3, *shape)
    assert model(x).shape == (3, 7)  # train mode: masks sampled
    model.eval()
    assert model(x).shape == (3, 7)
    assert (
        model.dropout_sites == MODELS[OmegaConf.load(CONFIGS / f"{name}.yaml").name].dropout_sites
    )


def test_yaml_defaults():
    sites = {n: list(OmegaConf.load(CONFIGS / f"{n}.yaml").dropout_sites) for n in SMALL}
    assert sites == {
        "mlp": ["hidden"],
        "cnn1d": ["conv"],
        "cnn2d": ["conv", "hidden"],
        "resnet20": ["block"],
        "wrn28_10": ["block"],
    }


@pytest.mark.parametrize("shape", [(40,), (1, 40), (2, 40)])
def test_cnn1d_takes_sequences_with_or_without_channel_axis(shape):
    model = build_model(model_cfg("cnn1d"), spec(), shape, 10)
    assert model(torch.randn(4, *shape)).shape == (4, 10)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_cnn2d_takes_28_32_and_8_pixel_images(shape):
    model = build_model(model_cfg("cnn2d"), spec(), shape, 10)
    assert model(torch.randn(2, *shape)).shape == (2, 10)


# ----------------------------------------------------------------------------- parameter counts


def test_reference_parameter_counts():
    # MNIST-1D ConvBase (Greydanus 2020), length 40: L = 40 -> 19 -> 10 -> 5; 25 * 5 = 125 features
    conv1 = 1 * 25 * 5 + 25
    conv2 = conv3 = 25 * 25 * 3 + 25
    linear = 125 * 10 + 10
    assert count_parameters(build("cnn1d")) == conv1 + conv2 + conv3 + linear == 5210
    # MNIST-1D reference MLP: 40-100-100-10.
    assert count_parameters(build("mlp")) == (40 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10)
    # He et al. (2016), Table 6: ResNet-20 has 0.27M parameters (option A: no shortcut parameters)
    assert count_parameters(build("resnet20")) == 269_722


def specs_for(name):
    specs = [spec(p=0.0), spec(p=0.5), spec(p=0.3, dist="gaussian"), spec(p=0.3, dist="uniform")]
    if name != "mlp":  # mlp has only flat sites: element is its only structure
        specs += [
            spec(p=0.0, structure="channel"),
            spec(p=0.5, structure="channel"),
            spec(p=0.2, dist="gaussian", structure="location"),
            spec(p=0.2, structure="block", block_size=2),
        ]
    return specs


@pytest.mark.parametrize("name", list(SMALL))
def test_parameters_identical_for_every_dropout_spec(name):
    """p = 0 (plain) and every mask spec give the same parameters, and the same init per seed."""
    reference = None
    for dropout in specs_for(name):
        torch.manual_seed(0)
        params = dict(build(name, dropout).named_parameters())
        if reference is None:
            reference = params
        assert params.keys() == reference.keys()
        for key, value in params.items():
            assert torch.equal(value, reference[key]), key


def test_p_zero_still_inserts_the_layers():
    model = build("cnn2d", spec(p=0.0))
    assert site_names(model) == site_names(build("cnn2d", spec(p=0.5)))
    assert len(site_names(model)) == 5


# ----------------------------------------------------------------------------- sites


def all_selections(name):
    sites = list(OCCURRENCES[name])
    return [list(c) for r in range(1, len(sites) + 1) for c in combinations(sites, r)]


@pytest.mark.parametrize(
    ("name", "sites"), [(n, s) for n in SMALL for s in all_selections(n)], ids=str
)
def test_dropout_layers_sit_exactly_at_the_selected_sites(name, sites):
    model = build(name, dropout_sites=sites)
    expected = sorted(f"{s}.{i}" for s in sites for i in range(OCCURRENCES[name][s]))
    assert site_names(model) == expected


def leaf_call_order(model, x) -> list[str]:
    """Class names of the leaf modules (unselected sites left out) in the order of the forward."""
    order: list[str] = []
    leaves = [m for m in model.modules() if not list(m.children()) and type(m) is not nn.Identity]
    handles = [
        m.register_forward_hook(lambda m, a, o: order.append(type(m).__name__)) for m in leaves
    ]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return order


@pytest.mark.parametrize("widths", [[16, 16, 16], [16]])
def test_mlp_head_site_puts_dropout_after_every_batchnorm(widths):
    """``head``: one dropout after the last hidden ReLU, right before the classifier, so no
    BatchNorm follows a dropout ("dropout after BN"); ``hidden`` feeds dropout into the next
    Linear -> BatchNorm ("dropout before BN") when there is a next layer."""
    x = torch.randn(4, 40)
    head = build("mlp", dropout_sites=["head"], batchnorm=True, widths=widths)
    assert site_names(head) == ["head.0"]
    order = leaf_call_order(head, x)
    assert order[-3:] == ["ReLU", "Dropout", "Linear"]
    assert order.count("Dropout") == 1 and order.count("BatchNorm1d") == len(widths)
    hidden = build("mlp", dropout_sites=["hidden"], batchnorm=True, widths=widths)
    order = leaf_call_order(hidden, x)
    first_dropout = order.index("Dropout")
    assert ("BatchNorm1d" in order[first_dropout:]) == (len(widths) > 1)
    # the same parameter names whichever site is selected (the head site comes last in body)
    assert dict(head.named_parameters()).keys() == dict(hidden.named_parameters()).keys()


@pytest.mark.parametrize("name", ["cnn1d", "cnn2d", "resnet20", "wrn28_10"])
@pytest.mark.parametrize("structure", ["channel", "location", "block"])
def test_structure_applies_only_to_spatial_sites(name, structure):
    block_size = 2 if structure == "block" else None
    dropout = spec(p=0.3, structure=structure, block_size=block_size)
    model = build(name, dropout, dropout_sites=list(OCCURRENCES[name]))
    layers = [m for m in model.modules() if isinstance(m, Dropout)]
    for layer in layers:
        flat = layer.site.split(".")[0] in FLAT[name]
        assert layer.structure == ("element" if flat else structure), layer.site
    assert {layer.structure for layer in layers} == {"element", structure}
    model(torch.randn(2, *SMALL[name][0]))  # the flat sites take (N, F) in train mode


# ----------------------------------------------------------------------------- errors


def test_all_flat_sites_with_a_spatial_structure_is_one_line_error():
    message = one_line_error(lambda: build("mlp", spec(structure="channel")))
    assert message == (
        "dropout.structure='channel' needs spatial axes, but model 'mlp' dropout sites "
        "['hidden'] are all flat; valid: element"
    )
    message = one_line_error(
        lambda: build("cnn2d", spec(structure="location"), dropout_sites=["hidden"])
    )
    assert "model 'cnn2d' dropout sites ['hidden'] are all flat" in message


def test_unknown_site_is_one_line_error_naming_the_choices():
    message = one_line_error(lambda: build("mlp", dropout_sites=["hidden", "conv"]))
    assert message == "model.dropout_sites='conv' is not valid; choose one of: input, hidden, head"
    message = one_line_error(lambda: build("resnet20", dropout_sites=["conv"]))
    assert "model.dropout_sites='conv'" in message and "block, head" in message


def test_unknown_model_is_one_line_error_naming_the_registry():
    cfg = {"name": "vgg16", "dropout_sites": []}
    message = one_line_error(lambda: build_model(cfg, spec(), (3, 32, 32), 10))
    assert message.startswith("model.name='vgg16' is not valid; choose one of: ")
    for name in ("mlp", "cnn1d", "cnn2d", "resnet20", "wrn"):
        assert name in message


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("cnn2d", (1, 40)),
        ("cnn2d", (40,)),
        ("cnn2d", (1, 2, 2)),
        ("cnn1d", (1, 28, 28)),
        ("cnn1d", (2,)),
        ("resnet20", (40,)),
        ("resnet20", (1, 40)),
        ("wrn28_10", (3, 2, 32)),
    ],
)
def test_incompatible_input_shape_is_one_line_error(name, shape):
    cfg = model_cfg(name)
    message = one_line_error(lambda: build_model(cfg, spec(), shape, 10))
    assert message.startswith(
        f"model.name={cfg.name!r} does not fit the data's input shape {shape}"
    )


def test_other_config_errors_are_one_line():
    assert "model.widht" in one_line_error(lambda: build("mlp", widht=[10]))
    assert "model.depth=21" in one_line_error(lambda: build("resnet20", depth=21))
    assert "model.depth=27" in one_line_error(lambda: build("wrn28_10", depth=27))
    assert "model.widths[1]=0" in one_line_error(lambda: build("mlp", widths=[10, 0]))
    assert "dropout.dist" in one_line_error(lambda: build("mlp", spec(dist="laplace")))
    assert "dropout field='q'" in one_line_error(lambda: build("mlp", {"q": 0.5}))
    # block larger than the last feature map of cnn1d (length 5): caught at build time.
    message = one_line_error(lambda: build("cnn1d", spec(structure="block", block_size=6)))
    assert "dropout.block_size=6" in message and "conv.2" in message


def test_residual_mlp_is_the_published_mnist1d_reference():
    """``+model.residual=true``: the mnist1d repo's MLP, h2 = h1 + ReLU(W2 h1 + b2)."""
    from dropens.models.mlp import MLP

    torch.manual_seed(0)
    model = MLP((1, 40), 10, widths=(100, 100), residual=True).eval()
    plain = MLP((1, 40), 10, widths=(100, 100))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = torch.randn(5, 1, 40)
    h1 = torch.relu(linears[0](x.flatten(1)))
    h2 = h1 + torch.relu(linears[1](h1))
    torch.testing.assert_close(model(x), linears[2](h2))
