"""``mimo``: M subnetworks in one multi-input multi-output backbone (Havasi et al. 2021) -- the
widened first layer and heads on every built-in backbone, M = 1 is the plain backbone, the ``(m b)``
protocol, members independent of the batch in eval, the training batch (labels follow their
inputs, batch repetition, input repetition, permutations from the global RNG), the loss, the record
of a real run, and bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dropens import control
from dropens.config import compose, to_container
from dropens.inference import predict
from dropens.layout import stack
from dropens.methods import Mimo, MimoNet, method_class
from dropens.methods.mimo import mimo_batch, mimo_indices, mimo_loss, shuffled_rows
from dropens.models import build_model
from dropens.rng import rng_state, set_rng_state
from dropens.train import fit_and_record, prepare

SMOKE = ["trainer=smoke", "logger=csv", "eval.mc_curve=[1,4]", "eval.mc_samples=4"]
SHAPE, C = (1, 40), 10

# (model overrides, per-example input shape): every built-in backbone, small where it can be
MODELS = {
    "mlp": (["model=mlp"], (1, 40)),
    "mlp_flat": (["model=mlp", "model.batchnorm=true"], (40,)),
    "cnn1d": (["model=cnn1d"], (1, 40)),
    "cnn1d_flat": (["model=cnn1d"], (40,)),
    "cnn2d": (["model=cnn2d", "model.batchnorm=true"], (1, 8, 8)),
    "resnet20": (["model=resnet20"], (3, 8, 8)),
    "wrn": (["model=wrn28_10", "model.depth=10", "model.widen=1"], (3, 8, 8)),
}


def _cfg(*overrides: str) -> dict:
    return to_container(compose(["method=mimo", *SMOKE, "results_root=unused", *overrides]))


def _method(*overrides: str, shape=SHAPE, seed: int = 0) -> Mimo:
    cfg = _cfg(*overrides)
    torch.manual_seed(seed)
    return Mimo(Mimo.build_backbone(cfg, shape, C), cfg)


def _weighted(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


# ----------------------------------------------------------------------------- the widened backbone


def test_registered():
    assert method_class("mimo") is Mimo
    assert Mimo.eval_strategies == ("members",) and Mimo.selection_label == "members"
    method = _method("method.k=4", "model=mlp")
    assert isinstance(method.backbone, MimoNet)
    assert method.backbone.n_members == 4 and method.backbone.stacked_members is True


@pytest.mark.parametrize("name", sorted(MODELS))
def test_only_first_layer_and_classifier_are_widened(name):
    """The first layer takes k inputs, the classifier has k heads; every other parameter has the
    plain backbone's shape (the paper's Fig. 1: the hidden layers remain unchanged)."""
    overrides, shape = MODELS[name]
    k = 3
    cfg = _cfg(f"method.k={k}", *overrides)
    mimo = Mimo.build_backbone(cfg, shape, C)
    plain = build_model(cfg["model"], {**cfg["dropout"], "p": 0.0}, shape, C)
    first, last = _weighted(mimo.net)[0], _weighted(mimo.net)[-1]
    plain_first, plain_last = _weighted(plain)[0], _weighted(plain)[-1]
    assert first.weight.shape[1] == k * plain_first.weight.shape[1]
    assert last.weight.shape[0] == k * C == k * plain_last.weight.shape[0]
    widened = {id(t) for m in (first, last) for t in m.parameters()}
    others = [(n, t) for n, t in mimo.net.named_parameters() if id(t) not in widened]
    plain_params = dict(plain.named_parameters())
    for n, t in others:
        assert t.shape == plain_params[n].shape, n
    x = torch.randn(k * 2, *shape)
    for train in (True, False):
        mimo.train(train)
        assert mimo(x).shape == (k * 2, C)


def test_dropout_layers_are_off_unless_member_dropout():
    method = _method("model=cnn2d", "dropout.p=0.5", shape=(1, 8, 8))
    layers = control.dropout_layers(method.backbone)
    assert layers and all(m.p == 0.0 for m in layers)
    on = _method("model=cnn2d", "dropout.p=0.5", "method.member_dropout=true", shape=(1, 8, 8))
    layers = control.dropout_layers(on.backbone)
    assert layers and all(m.p == 0.5 for m in layers)
    x = stack(torch.randn(2, 1, 8, 8), on.backbone.n_members)
    on.eval()
    with torch.no_grad():  # off at test time: deterministic members
        torch.testing.assert_close(on.backbone(x), on.backbone(x), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["mlp", "cnn1d_flat", "cnn2d"])
def test_one_member_is_the_plain_backbone(name):
    """k = 1: same seed -> identical parameters and identical outputs; the training loss (any rho,
    batch_repetition = 1) is the plain cross-entropy -- in float32 up to the order of the mean's
    sum over a permuted batch (a few ulp of a loss ~2.3)."""
    overrides, shape = MODELS[name]
    cfg = _cfg("method.k=1", "method.batch_repetition=1", "method.input_repetition=0.6", *overrides)
    torch.manual_seed(5)
    plain = build_model(cfg["model"], {**cfg["dropout"], "p": 0.0}, shape, C)
    torch.manual_seed(5)
    method = Mimo(Mimo.build_backbone(cfg, shape, C), cfg)
    state, plain_state = method.backbone.net.state_dict(), plain.state_dict()
    assert state.keys() == plain_state.keys()
    for n, t in plain_state.items():
        assert torch.equal(state[n], t), n
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, *shape, generator=g), torch.randint(0, C, (12,), generator=g)
    method.train(), plain.train()
    assert torch.equal(method.backbone(x), plain(x))
    torch.testing.assert_close(method.training_loss(x, y), F.cross_entropy(plain(x), y))
    method.eval(), plain.eval()
    assert torch.equal(method.backbone(x), plain(x))


# ----------------------------------------------------------------------------- the (m b) protocol


@pytest.mark.parametrize("name", ["mlp", "cnn2d"])
def test_member_rows_are_head_k_on_input_slot_k(name):
    """Rows of member m (input slot m) come from head m of the network fed the k inputs
    concatenated along channels (features for the MLP), member-major -- built here by hand."""
    overrides, shape = MODELS[name]
    k, b = 3, 4
    mimo = _method(f"method.k={k}", *overrides, shape=shape).backbone.eval()
    xs = [torch.randn(b, *shape) for _ in range(k)]
    with torch.no_grad():
        out = mimo(torch.cat(xs))  # (m b)
        by_hand = mimo.net(torch.cat(xs, dim=1)).reshape(b, k, C)  # heads: logits m*C..(m+1)*C-1
    for m in range(k):
        assert torch.equal(out[m * b : (m + 1) * b], by_hand[:, m])
        assert torch.equal(mimo.member(m)(xs[0]), mimo(torch.cat([xs[0]] * k))[m * b : (m + 1) * b])
    # the members strategy is the paper's inference: x in every slot, one softmax per head
    probs = predict(mimo, xs[0], "members").member_probs
    with torch.no_grad():
        tiled = mimo.net(torch.cat([xs[0]] * k, dim=1)).reshape(b, k, C).transpose(0, 1)
    torch.testing.assert_close(probs, F.softmax(tiled, -1), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="multiple of the 3 MIMO members"):
        mimo(xs[0])


@pytest.mark.parametrize("name", ["mlp", "cnn2d"])
def test_members_independent_of_batch_composition(name):
    """In eval (BatchNorm on running statistics) an example's member predictions do not change when
    the other examples of the batch do (float32, same shapes: a few ulp at most)."""
    overrides, shape = MODELS[name]
    method = _method("method.k=3", *overrides, shape=shape)
    method.train()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, *shape, generator=g), torch.randint(0, C, (16,), generator=g)
    method.training_loss(x, y)  # BatchNorm running statistics away from their initial values
    other = x.clone()
    other[1:] = torch.randn(15, *shape, generator=g)
    a = predict(method.backbone, x, "members").member_probs[:, 0]
    b = predict(method.backbone, other, "members").member_probs[:, 0]
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert not torch.allclose(a[0], a[1])  # the heads differ


# ----------------------------------------------------------------------------- the training batch


def test_labels_follow_their_inputs_and_batch_repetition():
    """Every training row's label is the label of its example; every member sees every example of
    the batch exactly batch_repetition times; the rows are k * R * B, member-major."""
    b, k, reps = 50, 3, 4
    x = torch.arange(b, dtype=torch.float32)[:, None].expand(b, 40).clone()  # row i holds i
    y = torch.randint(0, C, (b,))
    xs, ys = mimo_batch(x, y, k, 0.3, reps)
    assert xs.shape == (k * reps * b, 40) and ys.shape == (k * reps * b,)
    example = xs[:, 0].long()
    assert torch.equal(ys, y[example])
    tiled = torch.arange(b).repeat(reps)
    for m in range(k):
        rows = example[m * reps * b : (m + 1) * reps * b]
        assert torch.equal(rows.sort().values, tiled.sort().values)


@pytest.mark.parametrize("rho", [0.0, 0.6, 1.0])
def test_input_repetition_shares_rows_at_rate_rho(rho):
    """A share rho of the rows gives every member the same example (the authors' deterministic
    share: the last n - floor(n (1 - rho)) rows); the other rows are independent permutations, so
    members agree there only by chance: two members, each a uniform permutation of s distinct
    examples, agree at a row with probability 1/s -- ~1 agreement in s rows (Poisson(1); P(> 10)
    < 1e-7). So the share of rows where all members agree is rho within 1/n (rounding) + 10/n."""
    b, k = 3000, 3
    torch.manual_seed(0)
    idx = mimo_indices(b, k, rho, 1)
    n, s = b, shuffled_rows(b, rho)
    assert s == round(n * (1 - rho))
    same = (idx == idx[0]).all(dim=0)
    assert same[s:].all()
    rate = same.double().mean().item()
    assert abs(rate - rho) <= 1 / n + 10 / n, (rate, rho)
    if s:
        assert (idx[0, :s] == idx[1, :s]).sum().item() <= 10


def test_shuffled_rows_rounds_like_the_reference():
    # the authors' int(n * (1 - rho)); 1 - 0.9 = 0.0999... must not lose a row
    assert [shuffled_rows(10, r) for r in (0.0, 0.6, 0.9, 0.95, 1.0)] == [10, 4, 1, 0, 0]


def test_permutations_continue_from_the_global_rng():
    """Drawn from the global torch RNG: restoring its state (what a resumed run does) gives the same
    next permutations; consecutive steps differ."""
    torch.manual_seed(1)
    first = mimo_indices(64, 3, 0.2, 2)
    state = rng_state()
    second = mimo_indices(64, 3, 0.2, 2)
    assert not torch.equal(first, second)
    set_rng_state(state)
    assert torch.equal(mimo_indices(64, 3, 0.2, 2), second)


def test_loss_is_the_sum_over_heads_of_their_mean_cross_entropy():
    k, n = 3, 7
    logits, y = torch.randn(k * n, C), torch.randint(0, C, (k * n,))
    heads = sum(
        F.cross_entropy(logits[m * n : (m + 1) * n], y[m * n : (m + 1) * n]) for m in range(k)
    )
    torch.testing.assert_close(mimo_loss(logits, y, k), heads)
    method = _method("method.k=3", "method.input_repetition=0.5", "method.batch_repetition=2")
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(10, *SHAPE, generator=g), torch.randint(0, C, (10,), generator=g)
    torch.manual_seed(9)
    got = method.training_loss(x, y)
    torch.manual_seed(9)
    xs, ys = mimo_batch(x, y, 3, 0.5, 2)
    out = method.backbone(xs)
    expected = sum(
        F.cross_entropy(out[m * 20 : (m + 1) * 20], ys[m * 20 : (m + 1) * 20]) for m in range(3)
    )
    torch.testing.assert_close(got, expected)


# ----------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimo")
    cfg = to_container(
        compose(["method=mimo", "method.k=3", "model=mlp", *SMOKE, f"results_root={root}"])
    )
    prep = prepare(cfg)
    return prep, fit_and_record(prep)


def test_record_has_every_member_and_both_aggregates(trained):
    _, record = trained
    assert record.done
    metrics = record.metrics()
    for label in ["member0", "member1", "member2", "members", "members_geometric"]:
        for metric in ("acc", "nll", "ece", "brier"):
            assert np.isfinite(metrics[f"test/clean/{label}/{metric}"]), (label, metric)
    for metric in ("mi", "disagreement", "ensemble_gain", "member_acc", "member_nll"):
        assert f"test/clean/members/{metric}" in metrics
    assert "test/clean/member3/acc" not in metrics
    # one network's passes do not apply: no deterministic pass, no MC
    assert not any(re.search(r"/(deterministic|mc\d+)/", key) for key in metrics)
    preds = record.predictions()
    assert preds["clean/members"].shape == (3, len(preds["labels/clean"]), C)
    header = (record.path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("val/clean/members/acc", "val/clean/members/disagreement", "train/loss_step"):
        assert key in header, key
    assert record.read_json("magnitudes.json")["member"] == 0


def test_checkpoint_reload_predicts_the_same(trained):
    prep, record = trained
    x = prep.datamodule.eval_sets()["clean"][0][:64]
    expected = predict(prep.method.backbone, x, "members").member_probs
    torch.manual_seed(123)
    fresh = Mimo(Mimo.build_backbone(prep.config, SHAPE, C), prep.config)
    assert not torch.equal(predict(fresh.backbone, x, "members").member_probs, expected)
    checkpoint = torch.load(record.last_checkpoint(), map_location="cpu", weights_only=False)
    fresh.load_state_dict(checkpoint["state_dict"])
    assert torch.equal(predict(fresh.backbone, x, "members").member_probs, expected)


@pytest.mark.parametrize(
    "overrides", [["model=cnn1d"], ["model=cnn2d", "data=digits", "model.batchnorm=true"]]
)
def test_smoke_run_on_conv_backbones(tmp_path, overrides):
    cfg = to_container(
        compose(["method=mimo", "method.k=2", *overrides, *SMOKE, f"results_root={tmp_path}"])
    )
    record = fit_and_record(prepare(cfg))
    assert record.done
    metrics = record.metrics()
    assert {"test/clean/member1/acc", "test/clean/members/nll"} <= set(metrics)


# ----------------------------------------------------------------------------- bad input

BAD = {
    "k_zero": (["method.k=0"], ["method.k=0", ">= 1"]),
    "k_not_int": (["method.k=two"], ["method.k='two'", "integer"]),
    "rho_above_one": (["method.input_repetition=1.5"], ["method.input_repetition=1.5", "[0, 1]"]),
    "rho_negative": (["method.input_repetition=-0.1"], ["method.input_repetition=-0.1", "[0, 1]"]),
    "rho_text": (["method.input_repetition=half"], ["method.input_repetition='half'", "[0, 1]"]),
    "rho_bool": (["method.input_repetition=true"], ["method.input_repetition=True", "[0, 1]"]),
    "reps_zero": (["method.batch_repetition=0"], ["method.batch_repetition=0", ">= 1"]),
    "reps_float": (["method.batch_repetition=2.5"], ["method.batch_repetition=2.5", "integer"]),
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
        ["method=mimo", "model.name='custom'", "mlp, cnn1d, cnn2d, resnet20, wrn"],
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_one_line_error_and_nothing_written(name, assert_rejected):
    overrides, must_contain = BAD[name]
    assert_rejected(["method=mimo", *overrides], must_contain)
