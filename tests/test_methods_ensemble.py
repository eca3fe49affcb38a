"""``ensemble``: K independent backbones trained at once with ``torch.func`` — each member equals the
network trained alone, the ``(m b)`` forward protocol, the record of a real run (every member and
both aggregates), checkpoints, and bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dropens import control
from dropens.config import compose, to_container
from dropens.inference import predict
from dropens.methods import Ensemble, StackedEnsemble, method_class
from dropens.methods.ensemble import ensemble_loss, init_seed
from dropens.models import build_model
from dropens.train import fit_and_record, prepare

SMOKE = ["trainer=smoke", "logger=csv", "eval.mc_curve=[1,4]", "eval.mc_samples=4"]
SHAPE, C = (1, 40), 10


def _cfg(*overrides: str) -> dict:
    return to_container(compose(["method=ensemble", *SMOKE, "results_root=unused", *overrides]))


def _members_of(stacked: StackedEnsemble) -> list[dict[str, torch.Tensor]]:
    """Member k's ``state_dict`` (parameters and buffers), sliced from the stacked tensors."""
    state = stacked.net.state_dict()
    return [{name: t[k] for name, t in state.items()} for k in range(stacked.n_members)]


def _alone(cfg: dict, seed: int) -> torch.nn.Module:
    """The network a single run with global seed ``seed`` builds (no dropout)."""
    torch.manual_seed(seed)
    return build_model(cfg["model"], {**cfg["dropout"], "p": 0.0}, SHAPE, C)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, *SHAPE, generator=g), torch.randint(0, C, (6,), generator=g)


# ----------------------------------------------------------------------------- vectorized = alone


@pytest.mark.parametrize(
    "model", [["model=mlp"], ["model=mlp", "model.batchnorm=true"], ["model=cnn1d"]]
)
def test_each_member_equals_the_network_trained_alone(model):
    """Member i of a vectorized K = 3 ensemble == a single network built with member i's seed and
    trained alone on the same batches with the same optimizer (parameters and BN buffers).

    In float64: the stacked and the single forward sum in different orders, and in float32 Adam
    amplifies that rounding on near-zero gradients (``g / (|g| + eps)``) to ~1e-5 after a step."""
    k, steps, lr = 3, 6, 1e-2
    cfg = _cfg("method.k=3", "seed=7", *model)
    ensemble = Ensemble(Ensemble.build_backbone(cfg, SHAPE, C), cfg).double()
    singles = [_alone(cfg, init_seed(7, i)).double() for i in range(k)]
    opt = torch.optim.AdamW(ensemble.parameters(), lr=lr, weight_decay=0.01)
    opts = [torch.optim.AdamW(s.parameters(), lr=lr, weight_decay=0.01) for s in singles]
    ensemble.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(50, *SHAPE, generator=g, dtype=torch.float64)
        y = torch.randint(0, C, (50,), generator=g)
        opt.zero_grad()
        ensemble.training_loss(x, y).backward()
        opt.step()
        for single, o in zip(singles, opts):
            single.train()
            o.zero_grad()
            F.cross_entropy(single(x), y).backward()
            o.step()
    for i, state in enumerate(_members_of(ensemble.backbone)):
        alone = singles[i].state_dict()
        assert state.keys() == alone.keys()
        for name, value in alone.items():
            torch.testing.assert_close(state[name], value, atol=1e-9, rtol=0, msg=name)


def test_members_start_from_their_own_seeds():
    cfg = _cfg("method.k=3", "model=mlp", "seed=2")
    stacked = Ensemble.build_backbone(cfg, SHAPE, C)
    alone = _alone(cfg, init_seed(2, 1))
    state = _members_of(stacked)
    for name, value in alone.state_dict().items():
        assert torch.equal(state[1][name], value), name
    assert not torch.equal(state[0]["classifier.weight"], state[1]["classifier.weight"])
    assert init_seed(2, 1) == 2001


def test_loss_is_the_sum_of_member_losses(batch):
    x, y = batch
    logits = torch.randn(3, len(x), C)
    expected = sum(F.cross_entropy(logits[k], y) for k in range(3))
    torch.testing.assert_close(ensemble_loss(logits, y), expected)


# ----------------------------------------------------------------------------- layout


def test_parameters_are_stacked_and_visible_to_the_optimizer():
    cfg = _cfg("method.k=4", "model=mlp")
    method = Ensemble(Ensemble.build_backbone(cfg, SHAPE, C), cfg)
    names = dict(method.named_parameters())
    assert names["backbone.net.classifier.weight"].shape == (4, C, 100)
    assert all(p.shape[0] == 4 and p.requires_grad for p in names.values())
    assert method.backbone.n_members == 4 and method.backbone.stacked_members is True
    assert method_class("ensemble") is Ensemble
    assert Ensemble.eval_strategies == ("members",)


def test_stacked_forward_protocol_rows_come_from_member_k(batch):
    x, _ = batch
    cfg = _cfg("method.k=3", "model=mlp", "model.batchnorm=true")
    stacked = Ensemble.build_backbone(cfg, SHAPE, C).eval()
    with torch.no_grad():
        out = stacked(x.repeat(3, 1, 1))  # (m b): member-major
        assert out.shape == (3 * len(x), C)
        for k in range(3):
            alone = stacked.member(k).eval()(x)
            torch.testing.assert_close(out[k * len(x) : (k + 1) * len(x)], alone)
        torch.testing.assert_close(out.reshape(3, len(x), C), stacked.forward_members(x))
    probs = predict(stacked, x, "members").member_probs
    torch.testing.assert_close(probs, F.softmax(out.reshape(3, len(x), C), -1))
    with pytest.raises(ValueError, match="multiple of the 3 ensemble members"):
        stacked(x[:4])


def test_member_dropout_draws_masks_per_member():
    cfg = _cfg("method.k=2", "model=mlp", "method.member_dropout=true", "dropout.p=0.5")
    stacked = Ensemble.build_backbone(cfg, SHAPE, C)
    assert all(m.p == 0.5 for m in control.dropout_layers(stacked))
    # two members with the same weights: in train mode they differ only by their masks
    state = stacked.net.state_dict()
    stacked.net.load_state_dict({n: t[:1].expand_as(t).clone() for n, t in state.items()})
    x = torch.randn(8, *SHAPE)
    with torch.no_grad():
        train_out = stacked.train().forward_members(x)
        eval_out = stacked.eval().forward_members(x)
    assert not torch.allclose(train_out[0], train_out[1])
    torch.testing.assert_close(eval_out[0], eval_out[1])
    off = Ensemble.build_backbone(_cfg("method.k=2", "model=mlp"), SHAPE, C)
    assert all(m.p == 0.0 for m in control.dropout_layers(off))


# ----------------------------------------------------------------------------- a real run


def test_record_has_every_member_and_both_aggregates(tmp_path):
    """The acceptance command (``method.k=4``; the MLP for speed), then a checkpoint reload."""
    cfg = to_container(
        compose(["method=ensemble", "method.k=4", "model=mlp", *SMOKE, f"results_root={tmp_path}"])
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
        assert f"test/clean/members_geometric/{metric}" in metrics
    # an ensemble has no single network: no deterministic pass, no MC
    assert not any(re.search(r"/(deterministic|mc\d+)/", key) for key in metrics)
    preds = record.predictions()
    n = len(preds["labels/clean"])
    assert preds["clean/members"].shape == (4, n, 10)
    # members curve: members@m is the average of the first m members (m = 1, 2 < K = 4)
    assert metrics["test/clean/members@1/acc"] == metrics["test/clean/member0/acc"]
    probs = torch.from_numpy(preds["clean/members"][:2].astype(np.float32)).mean(0)
    acc = (probs.argmax(-1).numpy() == preds["labels/clean"]).mean()
    assert abs(metrics["test/clean/members@2/acc"] - acc) <= 2 / n  # float16-stored ties
    assert "test/clean/members@4/acc" not in metrics  # m = K is the `members` row
    header = (record.path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("val/clean/members/acc", "val/clean/members/disagreement", "train/loss_step"):
        assert key in header, key

    # the checkpoint holds the stacked parameters and buffers: a reload predicts the same
    x = prep.datamodule.eval_sets()["clean"][0][:64]
    expected = predict(prep.method.backbone, x, "members").member_probs
    fresh = Ensemble(Ensemble.build_backbone({**cfg, "seed": 5}, SHAPE, C), cfg)
    assert not torch.equal(predict(fresh.backbone, x, "members").member_probs, expected)
    checkpoint = torch.load(record.last_checkpoint(), map_location="cpu", weights_only=False)
    fresh.load_state_dict(checkpoint["state_dict"])
    assert torch.equal(predict(fresh.backbone, x, "members").member_probs, expected)


# ----------------------------------------------------------------------------- bad input


def test_gradient_clipping_warns_that_it_couples_members():
    with pytest.warns(UserWarning, match="no longer trained independently"):
        Ensemble.validate(_cfg("trainer.gradient_clip_val=1.0"))


BAD = {
    "k_zero": (["method.k=0"], ["method.k=0", ">= 1"]),
    "k_not_int": (["method.k=two"], ["method.k='two'", "integer"]),
    "member_dropout_not_bool": (
        ["method.member_dropout=maybe"],
        ["method.member_dropout='maybe'", "true, false"],
    ),
    "member_dropout_p_zero": (
        ["method.member_dropout=true", "dropout.p=0"],
        ["method.member_dropout=true", "dropout.p=0", "member_dropout=false"],
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_one_line_error_and_nothing_written(name, assert_rejected):
    overrides, must_contain = BAD[name]
    assert_rejected(["method=ensemble", *overrides], must_contain)
