"""Tests for :mod:`dropens.control`: switching every dropout layer of a model, and restoring it.

Everything here is exact (equalities of outputs and of saved layer state), no statistics.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dropens import control
from dropens.errors import ConfigError
from dropens.layers import Dropout
from dropens.models.mlp import MLP


def make_model() -> nn.Sequential:
    """A small CNN with every structure, one p = 0 slot and a torch Dropout (not ours)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        Dropout(0.3, structure="channel", seed=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        Dropout(0.2, structure="block", block_size=3, seed=2),
        Dropout(0.2, structure="location", dist="gaussian", seed=3),
        nn.Dropout(0.0),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 32),
        Dropout(0.0, seed=4),
        Dropout(0.5, dist="uniform", scale="none", seed=5),
        nn.Linear(32, 4),
    )


def layer_state(model: nn.Module) -> list[tuple]:
    return [(m.mode, m.members, m.assignment) for m in control.dropout_layers(model)]


def x_batch(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def assert_one_line_about_dropout(error: pytest.ExceptionInfo) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert "dropout" in message.lower()


# ----------------------------------------------------------------------------- finding layers


def test_dropout_layers_lists_ours_in_module_order():
    model = make_model()
    layers = control.dropout_layers(model)
    assert layers == [model[1], model[4], model[5], model[9], model[10]]
    assert control.dropout_layers(nn.Linear(3, 3)) == []


# ----------------------------------------------------------------------------- the three switches


def test_deterministic_gives_the_eval_pass_even_in_train_mode():
    model = make_model().eval()
    x = x_batch()
    expected = model(x)
    model.train()
    with control.deterministic(model) as same:
        assert same is model
        assert all(m.mode == "off" for m in control.dropout_layers(model))
        assert model.training  # model.training is not touched
        assert torch.equal(model(x), expected)
    assert layer_state(model) == [(None, (0,), None)] * 5
    assert not torch.equal(model(x), model(x))  # back to sampling


def test_mc_samples_even_in_eval_mode():
    model = make_model().eval()
    x = x_batch()
    deterministic = model(x)
    with control.mc(model):
        assert not model.training
        a, b = model(x), model(x)
        assert not torch.equal(a, b)
        assert not torch.equal(a, deterministic)
    assert torch.equal(model(x), deterministic)
    # p = 0 slots are left alone: only layers that can sample are switched
    assert [m.mode for m in control.dropout_layers(model)] == [None] * 5


def test_member_fixes_one_subnetwork():
    model = make_model().eval()
    x = x_batch()
    with control.member(model, 1):
        a = model(x)
        assert torch.equal(model(x), a)
        assert not model.training
    with control.member(model, 2):
        assert not torch.equal(model(x), a)
    assert torch.equal(model(x), model(x))  # eval again: deterministic
    with control.member(model, 1):
        assert torch.equal(model(x), a)


# ----------------------------------------------------------------------------- restoring state


def saved_state_model() -> nn.Sequential:
    """A model whose layers carry a non-default state, which every switch must restore."""
    model = make_model()
    assignment = torch.tensor([0, 1, 0])
    for i, m in enumerate(control.dropout_layers(model)):
        m.set_mode(("member", "off", "sample", None, "member")[i])
        m.set_members([3, 4], assignment)
    return model


SWITCHES = {
    "deterministic": control.deterministic,
    "mc": control.mc,
    "member": lambda model: control.member(model, [0, 2]),
}


@pytest.mark.parametrize("name", SWITCHES)
def test_switch_restores_the_previous_state(name):
    model = saved_state_model()
    before = layer_state(model)
    with SWITCHES[name](model):
        assert layer_state(model) != before
    assert layer_state(model) == before


@pytest.mark.parametrize("name", SWITCHES)
def test_switch_restores_the_previous_state_on_exception(name):
    model = saved_state_model()
    before = layer_state(model)
    with pytest.raises(RuntimeError, match="boom"), SWITCHES[name](model):
        assert layer_state(model) != before
        raise RuntimeError("boom")
    assert layer_state(model) == before


def test_nested_switches_restore_each_level():
    model = make_model().eval()
    live = [m for m in control.dropout_layers(model) if m.p > 0]
    x = x_batch()
    with control.member(model, 1):
        member_out = model(x)
        with control.mc(model):
            assert {m.mode for m in live} == {"sample"}
            with control.deterministic(model):
                assert {m.mode for m in live} == {"off"}
                with control.member(model, [2, 3]):
                    assert all(m.members == (2, 3) for m in live)
                assert {m.mode for m in live} == {"off"}
            assert {m.mode for m in live} == {"sample"}
        assert {m.mode for m in live} == {"member"}
        assert all(m.members == (1,) for m in live)
        assert torch.equal(model(x), member_out)
    assert layer_state(model) == [(None, (0,), None)] * 5


# ----------------------------------------------------------------------------- models without dropout


def only_p_zero() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), Dropout(0.0), nn.Dropout(0.5))


@pytest.mark.parametrize("model_fn", (lambda: nn.Linear(4, 4), only_p_zero))
@pytest.mark.parametrize(
    "switch", (control.mc, lambda m: control.member(m, 0), lambda m: control.member(m, [0, 1]))
)
def test_switch_without_dropout_raises_one_line_config_error(switch, model_fn):
    with pytest.raises(ConfigError) as error, switch(model_fn()):
        pytest.fail("entered a switch on a model without dropout")
    assert_one_line_about_dropout(error)


@pytest.mark.parametrize("what", ["MC dropout", "member masks", "exhaustive inference"])
def test_model_whose_dropout_sites_are_absent_says_so_not_set_p(what):
    # model=mlp model.widths=[] keeps the default site `hidden`: there is no hidden layer, so no
    # dropout layer exists; p=0.1 is fine and "set dropout.p > 0" would be wrong advice
    model = MLP((40,), 10, dropout={"p": 0.1}, widths=[])
    assert control.dropout_layers(model) == []
    with pytest.raises(ConfigError) as error:
        control.require_layers(model, what)
    message = str(error.value)
    assert "\n" not in message
    for fragment in (
        f"{what} needs dropout",
        "MLP",
        "no dropout layer at all",
        "['hidden']",
        "model.dropout_sites",
        "dropout.p=0.1 is not the problem",
        "input, head",
    ):
        assert fragment in message, (fragment, message)
    assert "set dropout.p > 0" not in message
    with pytest.raises(ConfigError, match=r"dropout\.p=0\.1 is not the problem"), control.mc(model):
        pytest.fail("entered MC on a model without dropout layers")


def test_model_whose_dropout_layers_are_all_at_p_zero_says_set_p():
    model = MLP((40,), 10, dropout={"p": 0.0}, widths=[8, 8])
    assert [m.p for m in control.dropout_layers(model)] == [0.0, 0.0]
    with pytest.raises(ConfigError) as error:
        control.require_layers(model, "MC dropout")
    message = str(error.value)
    assert "\n" not in message
    for fragment in (
        "MC dropout needs dropout",
        "MLP",
        "hidden.0, hidden.1",
        "p=0",
        "set dropout.p > 0",
    ):
        assert fragment in message, (fragment, message)
    assert "no dropout layer at all" not in message


def test_wrapped_backbone_without_dropout_sites_is_named():
    model = nn.Sequential(MLP((40,), 10, dropout={"p": 0.2}, widths=[]))
    with pytest.raises(ConfigError, match=r"Sequential \(backbone MLP\).*p=0.2 is not the"):
        control.require_layers(model, "MC dropout")


def test_plain_torch_model_is_told_to_use_dropens_dropout():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    with pytest.raises(ConfigError) as error:
        control.require_layers(model, "MC dropout")
    message = str(error.value)
    for fragment in (
        "Sequential",
        "no dropens.layers.Dropout",
        "1 torch dropout module",
        "dropens.convert(model)",
    ):
        assert fragment in message, (fragment, message)


def test_deterministic_without_dropout_is_a_no_op():
    model = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with control.deterministic(model):
        assert torch.equal(model(x), model(x))


# ----------------------------------------------------------------------------- member layouts


def test_stacked_members_equal_members_one_by_one_for_a_layer():
    """``(m b)``: rows [m B, (m + 1) B) go through member k_m; exact for a bare dropout layer."""
    for kw in ({}, {"structure": "channel"}, {"structure": "block", "block_size": 3}):
        layer = Dropout(0.5, seed=9, **kw)
        model = nn.Sequential(layer)
        members, b = [0, 1, 2], 4
        x = torch.randn(len(members) * b, 5, 8, 8)
        with control.member(model, members):
            stacked = model(x)
        for i, k in enumerate(members):
            with control.member(model, k):
                assert torch.equal(stacked[i * b : (i + 1) * b], model(x[i * b : (i + 1) * b])), kw
        assert not torch.equal(stacked[:b], stacked[b : 2 * b])  # members differ (power)


def test_stacked_members_equal_members_one_by_one_for_a_model():
    model = make_model().eval()
    members, b = [0, 1, 2], 5
    x = x_batch(len(members) * b)
    with control.member(model, members):
        stacked = model(x)
    for i, k in enumerate(members):
        with control.member(model, k):
            one = model(x[i * b : (i + 1) * b])
        torch.testing.assert_close(stacked[i * b : (i + 1) * b], one, rtol=1e-5, atol=1e-6)


def test_stacked_batch_must_be_a_multiple_of_the_members():
    model = make_model().eval()
    with (
        pytest.raises(ConfigError, match=r"batch of 7 .* 3 stacked members") as error,
        control.member(model, [0, 1, 2]),
    ):
        model(x_batch(7))
    assert "\n" not in str(error.value)


def test_assignment_equals_per_member_masks_gathered():
    """One member per example: example n goes through member ``members[assignment[n]]``."""
    model = make_model().eval()
    members = [4, 7, 9]  # not 0..M-1: assignment indexes the list, not k
    assignment = torch.tensor([2, 0, 1, 1, 2, 0, 2])
    x = x_batch(len(assignment))
    with control.member(model, members, assignment):
        out = model(x)
    for n, a in enumerate(assignment.tolist()):
        with control.member(model, members[a]):
            one = model(x[n : n + 1])
        torch.testing.assert_close(out[n : n + 1], one, rtol=1e-5, atol=1e-6)
    layer = Dropout(0.5, seed=9)  # bare layer: exact
    xl = torch.randn(len(assignment), 64)
    with control.member(layer, members, assignment):
        gathered = layer(xl)
    for n, a in enumerate(assignment.tolist()):
        with control.member(layer, members[a]):
            assert torch.equal(gathered[n], layer(xl[n : n + 1])[0])


@pytest.mark.parametrize("k", (3, 10, [0, 3], [1, 2, 5], -1))
def test_member_outside_the_family_raises_and_restores(k):
    model = saved_state_model()
    before = layer_state(model)
    control.set_n_members(model, 3)
    with pytest.raises(ConfigError) as error, control.member(model, k):
        pytest.fail("entered member() with k outside [0, 3)")
    message = str(error.value)
    assert "\n" not in message
    bad = k if isinstance(k, int) else max(k)
    assert f"k={bad}" in message and "[0, 3)" in message, message
    assert layer_state(model) == before
    with control.member(model, [0, 1, 2]):  # the whole family is accepted
        pass


def test_negative_member_is_rejected_without_a_family():
    with pytest.raises(ConfigError, match=r"k=-1 .*\[0, inf\)"), control.member(make_model(), -1):
        pass


# ----------------------------------------------------------------------------- eval multiplier


def linear_chain(scale: str, p1: float = 0.3, p2: float = 0.6) -> nn.Sequential:
    """Dropout -> Linear -> Dropout -> Linear, no bias, float64: the logits are linear in each
    layer's multiplier, so forcing multipliers scales them by the product of the factors."""
    torch.manual_seed(0)
    return nn.Sequential(
        Dropout(p1, scale=scale, seed=1),
        nn.Linear(6, 5, bias=False),
        Dropout(p2, scale=scale, seed=2),
        nn.Linear(5, 3, bias=False),
    ).double()


@pytest.mark.parametrize("scale", ["inverted", "none"])
def test_eval_multiplier_matches_deterministic_and_scales_the_mismatched_pass(scale):
    model, x = linear_chain(scale), x_batch().flatten(1)[:, :6].double()
    keep = (1 - 0.3) * (1 - 0.6)
    with control.deterministic(model):
        base = model(x)
        with control.eval_multiplier(model, "one"):
            one = model(x)
        with control.eval_multiplier(model, "keep"):
            kept = model(x)
    if scale == "inverted":  # identity is the usual pass; keep scales a second time
        assert torch.equal(one, base)
        torch.testing.assert_close(kept, keep * base, rtol=1e-12, atol=0)
    else:  # weight scaling is the usual pass; one never scales
        assert torch.equal(kept, base)
        torch.testing.assert_close(one, base / keep, rtol=1e-12, atol=0)


def test_eval_multiplier_leaves_sampled_and_member_passes_and_restores():
    model, x = make_model(), x_batch()
    model.eval()
    layers = control.dropout_layers(model)
    layers[1].set_eval_multiplier("one")  # a value set before is restored, not reset to None
    with control.mc(model):
        torch.manual_seed(3)
        sampled = model(x)
        with control.eval_multiplier(model, "keep"):
            assert all(m.eval_multiplier == "keep" for m in layers)
            torch.manual_seed(3)
            assert torch.equal(model(x), sampled)
    with control.member(model, 2):
        member = model(x)
        with control.eval_multiplier(model, "one"):
            assert torch.equal(model(x), member)
    with pytest.raises(RuntimeError, match="inside"), control.eval_multiplier(model, "keep"):
        raise RuntimeError("inside")
    assert [m.eval_multiplier for m in layers] == [None, "one", None, None, None]


def test_eval_multiplier_rejects_unknown_value_naming_the_choices():
    with pytest.raises(ConfigError, match=r"'half'.*one, keep"):
        control.eval_multiplier(make_model(), "half").__enter__()
    with pytest.raises(ConfigError, match="one, keep"):
        Dropout(0.5).set_eval_multiplier("half")
