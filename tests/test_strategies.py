"""The strategy registry (``dropens.inference.STRATEGIES``): one registration per way of evaluating a
model, and the ``single`` strategy (one random subnetwork) added through it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dropens import keys
from dropens.errors import ConfigError
from dropens.evaluation import evaluate, set_seed
from dropens.inference import STRATEGIES, EvalContext, Strategy, predict, register
from dropens.layers import Dropout
from dropens.metrics.summary import PREDICTION_KEYS

EVAL = {"mc_samples": 4, "mc_curve": [1, 2], "n_bins": 5, "memory_budget_mb": 16}


def toy(p: float = 0.5) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), Dropout(p, seed=1), nn.Linear(16, 3)).eval()


def test_every_strategy_is_registered_once_with_its_labels():
    ctx = EvalContext(samples=4, curve=(1, 4), headline=4)
    expected = {
        "deterministic": ["deterministic"],
        "mc": ["mc1", "mc4"],
        "single": ["single"],
        "exhaustive": ["exhaustive_mean", "exhaustive_geometric"],
        "ws_off": ["ws_off"],
        "ws_on": ["ws_on"],
        "bn_recomputed": ["bn_recomputed"],
    }
    for name, labels in expected.items():
        assert STRATEGIES[name].name == name and STRATEGIES[name].labels(ctx) == labels
    assert STRATEGIES["members"].labels(ctx)[:2] == ["members", "members_geometric"]
    with pytest.raises(ConfigError, match=r"strategy='nope' is not valid.*deterministic"):
        predict(toy(), torch.zeros(2, 6), "nope")


def test_single_is_one_fresh_mask_reproducible_from_its_seed_and_leaves_the_global_rng():
    model, x = toy(), torch.randn(64, 6, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    one = predict(model, x, "single", seed=7)
    assert one.member_probs.shape == (1, 64, 3)
    assert torch.equal(torch.get_rng_state(), state)  # drawn in a forked RNG
    assert torch.equal(predict(model, x, "single", seed=7).member_probs, one.member_probs)
    torch.manual_seed(7)  # the same draw as the first sample of an MC run from that seed
    assert torch.equal(predict(model, x, "mc", samples=1).member_probs, one.member_probs)
    det = predict(model, x, "deterministic").member_probs
    assert not torch.allclose(one.member_probs, det)  # a thinned network, not the weight-scaled one
    assert not torch.equal(predict(model, x, "single", seed=8).member_probs, one.member_probs)


def test_single_needs_dropout():
    with pytest.raises(ConfigError, match="a random subnetwork needs dropout"):
        predict(toy(p=0.0), torch.zeros(2, 6), "single")


def test_evaluate_records_single_and_its_temperature_scaled_version():
    model = toy()
    gen = torch.Generator().manual_seed(3)
    sets = {
        "clean": (torch.randn(200, 6, generator=gen), torch.randint(0, 3, (200,), generator=gen)),
        "val": (torch.randn(200, 6, generator=gen), torch.randint(0, 3, (200,), generator=gen)),
    }
    cfg = {**EVAL, "temperature_scaling": True}
    metrics, arrays = evaluate(model, sets, cfg, ("deterministic", "mc", "single"), seed=5)
    for label in ("single", keys.ts_label("single")):
        for metric in PREDICTION_KEYS:
            assert keys.test("clean", label, metric) in metrics
    assert arrays["clean/single"].shape == (1, 200, 3)
    # the clean set's mask comes from the run seed and the set name: the same as predict's
    alone = predict(model, sets["clean"][0], "single", seed=set_seed(5, "clean")).member_probs
    assert torch.equal(arrays["clean/single"], alone)
    # and leaves the MC draws of the run exactly as without it
    torch.manual_seed(0)
    with_single, _ = evaluate(model, sets, EVAL, ("mc", "single"), seed=5)
    torch.manual_seed(0)
    without, _ = evaluate(model, sets, EVAL, ("mc",), seed=5)
    assert {k: v for k, v in with_single.items() if "/single/" not in k} == without


def test_a_new_strategy_is_one_registration():
    """What the README shows: a subclass under @register is evaluated and recorded by name."""

    class Again(Strategy):  # a toy: the deterministic pass under another name
        name = "again_for_test"

        def members(self, model, x, ctx):
            from dropens import control
            from dropens.inference import Members

            return Members(1, lambda j0, j1: control.deterministic(model))

    register(Again)
    try:
        model = toy()
        x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
        metrics, arrays = evaluate(model, {"clean": (x, y)}, EVAL, ("again_for_test",))
        assert keys.test("clean", "again_for_test", "acc") in metrics
        assert torch.equal(
            arrays["clean/again_for_test"], predict(model, x, "deterministic").probs[None]
        )
        with pytest.raises(ValueError, match="registered twice"):
            register(Again)
    finally:
        STRATEGIES.pop("again_for_test")
