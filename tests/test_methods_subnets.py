"""``subnets``: K fixed-mask subnetworks sharing every weight — the losses of both batchings and
objectives against member-by-member references, the record of a real run (every member, both
aggregates, MC, deterministic), masks surviving a checkpoint reload bit for bit, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dropens import control
from dropens.cli import main
from dropens.config import compose, to_container
from dropens.inference import predict
from dropens.methods import Subnets, method_class
from dropens.methods.subnets import partition_assignment
from dropens.results import RunRecord
from dropens.train import fit_and_record, prepare

SMOKE = ["trainer=smoke", "logger=csv", "eval.mc_curve=[1,4]", "eval.mc_samples=4"]
SHAPE, C = (1, 40), 10


def _cfg(*overrides: str) -> dict:
    return to_container(compose(["method=subnets", *SMOKE, "results_root=unused", *overrides]))


def _method(*overrides: str, seed: int = 0) -> Subnets:
    cfg = _cfg("model=mlp", "dropout.p=0.3", *overrides)
    torch.manual_seed(seed)
    return Subnets(Subnets.build_backbone(cfg, SHAPE, C), cfg)


def _member_logits(method: Subnets, x: torch.Tensor) -> torch.Tensor:
    """``[K, B, C]``: each member alone, one pass per member (the reference for stacking)."""
    return torch.stack([_one(method, x, k) for k in range(method.k)])


def _one(method: Subnets, x: torch.Tensor, k: int) -> torch.Tensor:
    with control.member(method.backbone, k):
        return method.backbone(x)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(12, *SHAPE, generator=g), torch.randint(0, C, (12,), generator=g)


# ----------------------------------------------------------------------------- losses


def test_registered_and_members_declared():
    assert method_class("subnets") is Subnets
    method = _method("method.k=5")
    layers = control.dropout_layers(method.backbone)
    assert layers and all(m.n_members == 5 for m in layers)
    assert Subnets.eval_strategies == (
        "deterministic",
        "members",
        "mc",
        "single",
        "ws_off",
        "ws_on",
        "bn_recomputed",
    )


def test_members_differ_and_stack_member_major(batch):
    x, _ = batch
    method = _method("method.k=3")
    ref = _member_logits(method, x)
    assert not torch.allclose(ref[0], ref[1]) and not torch.allclose(ref[1], ref[2])
    probs = predict(method.backbone, x, "members").member_probs  # one stacked (m b) pass
    torch.testing.assert_close(probs, F.softmax(ref, -1), atol=1e-6, rtol=0)
    # the same masks in train mode: member masks are fixed, not sampled
    method.train()
    torch.testing.assert_close(_member_logits(method, x), ref)


@pytest.mark.parametrize("objective", ["member", "ensemble"])
def test_repeat_loss_matches_members_one_by_one(batch, objective):
    x, y = batch
    k = 4
    method = _method(f"method.k={k}", f"method.objective={objective}")
    method.train()
    logp = F.log_softmax(_member_logits(method, x), -1)  # [K, B, C]
    logp_y = logp.gather(-1, y.expand(k, -1).unsqueeze(-1)).squeeze(-1)  # [K, B]
    if objective == "member":
        expected = -logp_y.mean()
    else:  # -log of the mean member probability of the label
        expected = -(torch.logsumexp(logp_y, 0) - math.log(k)).mean()
    torch.testing.assert_close(method.training_loss(x, y), expected, atol=1e-6, rtol=0)


def test_partition_sends_each_example_through_its_member(batch):
    x, y = batch
    k = 5
    method = _method(f"method.k={k}", "method.batching=partition")
    method.train()
    ref = _member_logits(method, x)  # [K, B, C]
    for step in (0, 3):
        assignment = partition_assignment(len(x), k, step)
        assert torch.equal(assignment, (torch.arange(len(x)) + step) % k)
        expected = F.cross_entropy(ref[assignment, torch.arange(len(x))], y)
        with control.member(method.backbone, list(range(k)), assignment=assignment):
            got = F.cross_entropy(method.backbone(x), y)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # training_loss uses the trainer's step (0 outside a trainer)
    expected0 = F.cross_entropy(ref[partition_assignment(len(x), k, 0), torch.arange(len(x))], y)
    torch.testing.assert_close(method.training_loss(x, y), expected0, atol=1e-6, rtol=0)


def test_k1_is_one_thinned_network(batch):
    x, y = batch
    method = _method("method.k=1")
    method.train()
    ref = _one(method, x, 0)
    torch.testing.assert_close(method.training_loss(x, y), F.cross_entropy(ref, y))
    with control.deterministic(method.backbone):
        assert not torch.allclose(method.backbone(x), ref)  # thinned: not the full network


def test_member_masks_come_from_the_dropout_spec():
    """K -> inf recovers dropout: the member masks are draws of the same spec (keep rate, scale)."""
    p, width, k = 0.3, 100, 400
    method = _method(f"method.k={k}", f"dropout.p={p}")
    layer = control.dropout_layers(method.backbone)[0]
    layer.set_members(list(range(k)))
    bank = layer.member_bank((width,), torch.device("cpu"), torch.float64)  # [K, width]
    keep = 1 - p
    assert set(torch.unique(bank).tolist()) == {0.0, 1 / keep}
    rate = (bank > 0).double().mean().item()
    se = math.sqrt(keep * p / bank.numel())
    assert abs(rate - keep) < 5 * se, (rate, keep, se)


# ----------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One smoke run of the acceptance command (K = 8; the MLP for speed, same keys as cnn1d), kept in memory and on disk."""
    root = tmp_path_factory.mktemp("subnets")
    cfg = to_container(
        compose(
            [
                "method=subnets",
                "method.k=8",
                "model=mlp",
                *SMOKE,
                f"results_root={root}",
                "study=sub",
            ]
        )
    )
    prep = prepare(cfg)
    record = fit_and_record(prep)
    return prep, record


def test_record_has_every_member_both_aggregates_mc_and_deterministic(trained):
    _, record = trained
    assert record.done
    metrics = record.metrics()
    labels = [f"member{k}" for k in range(8)]
    labels += ["members", "members_geometric", "deterministic", "mc1", "mc4"]
    for label in labels:
        for metric in ("acc", "nll", "ece", "brier"):
            assert np.isfinite(metrics[f"test/clean/{label}/{metric}"]), (label, metric)
    for metric in ("mi", "disagreement", "member_acc", "member_nll"):
        assert f"test/clean/members/{metric}" in metrics
        assert f"test/clean/members_geometric/{metric}" in metrics
    assert "test/clean/member8/acc" not in metrics
    member_acc = np.mean([metrics[f"test/clean/member{k}/acc"] for k in range(8)])
    assert metrics["test/clean/members/member_acc"] == pytest.approx(member_acc, abs=1e-6)
    preds = record.predictions()
    n = len(preds["labels/clean"])
    assert preds["clean/members"].shape == (8, n, 10)
    assert preds["clean/deterministic"].shape == (1, n, 10)
    assert preds["clean/mc"].shape == (4, n, 10)
    header = (record.path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("val/clean/deterministic/acc", "val/clean/members/acc", "val/clean/members/mi"):
        assert key in header, key


def test_member_masks_survive_checkpoint_reload_bit_for_bit(trained):
    prep, record = trained
    cfg, trained_backbone = prep.config, prep.method.backbone
    x, _ = prep.datamodule.eval_sets()["clean"]
    x = x[:64]
    expected = predict(trained_backbone, x, "members").member_probs
    shape, n_classes = prep.datamodule.input_shape, prep.datamodule.n_classes
    torch.manual_seed(12345)  # another global seed: other layer seeds, other masks, other weights
    fresh = Subnets(Subnets.build_backbone(cfg, shape, n_classes), cfg)
    seeds = [int(m.seed) for m in control.dropout_layers(fresh.backbone)]
    assert seeds != [int(m.seed) for m in control.dropout_layers(trained_backbone)]
    checkpoint = torch.load(record.last_checkpoint(), map_location="cpu", weights_only=False)
    fresh.load_state_dict(checkpoint["state_dict"])
    reloaded = [int(m.seed) for m in control.dropout_layers(fresh.backbone)]
    assert reloaded == [int(m.seed) for m in control.dropout_layers(trained_backbone)]
    got = predict(fresh.backbone, x, "members").member_probs
    assert torch.equal(got, expected)


def test_partition_run_end_to_end(tmp_path):
    code = main(
        [
            "train",
            "method=subnets",
            "method.k=3",
            "method.batching=partition",
            "model=mlp",
            *SMOKE,
            "logger=none",
            f"results_root={tmp_path}",
            "study=part",
        ]
    )
    assert code == 0
    (run,) = (tmp_path / "part").iterdir()
    metrics = RunRecord(run).metrics()
    assert {"test/clean/member2/acc", "test/clean/members_geometric/nll"} <= set(metrics)
    assert OmegaConf.load(run / "config.yaml").method.batching == "partition"


# ----------------------------------------------------------------------------- bad input

BAD = {
    "k_zero": (["method.k=0"], ["method.k=0", ">= 1"]),
    "k_negative": (["method.k=-2"], ["method.k=-2", ">= 1"]),
    "k_not_int": (["method.k=2.5"], ["method.k=2.5", "integer"]),
    "unknown_batching": (
        ["method.batching=shuffle"],
        ["method.batching='shuffle'", "repeat", "partition"],
    ),
    "partition_ensemble": (
        ["method.batching=partition", "method.objective=ensemble"],
        ["method.batching=partition", "method.objective=ensemble", "objective=member"],
    ),
    "unknown_objective": (
        ["method.objective=boost"],
        ["method.objective='boost'", "member", "ensemble"],
    ),
    "p_zero": (["dropout.p=0"], ["dropout.p=0", "method=subnets", "p > 0"]),
    "no_dropout_site": (["model.dropout_sites=[]"], ["method=subnets", "dropout_sites"]),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_one_line_error_and_nothing_written(name, assert_rejected):
    overrides, must_contain = BAD[name]
    assert_rejected(["method=subnets", *overrides], must_contain)
