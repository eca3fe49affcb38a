"""The evaluation strategies of the magnitude study: the weight-scaling probe (``ws_off``,
``ws_on``), BatchNorm statistics recomputed with dropout off (``bn_recomputed``), and the
per-layer ``magnitudes`` record.

Identities are checked exactly; the one statistical check (the variance shift of BatchNorm after
dropout) has its tolerance derived in the test.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dropens import control
from dropens.batchnorm import recompute_bn
from dropens.errors import ConfigError
from dropens.evaluation import evaluate, magnitudes
from dropens.layers import Dropout
from dropens.methods.ensemble import StackedEnsemble
from dropens.models.mlp import MLP

EVAL = {"mc_samples": 2, "mc_curve": [], "n_bins": 5, "memory_budget_mb": 16}
PROBES = ("deterministic", "ws_off", "ws_on", "bn_recomputed")
F_IN, C = 8, 4


def linear_toy(scale: str, p: float = 0.4) -> nn.Sequential:
    """Dropout -> Linear without bias: the logits are linear in the dropout multiplier."""
    torch.manual_seed(0)
    return nn.Sequential(Dropout(p, scale=scale, seed=1), nn.Linear(F_IN, C, bias=False))


def eval_set(n: int = 50, seed: int = 1) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {"clean": (torch.randn(n, F_IN, generator=g), torch.randint(0, C, (n,), generator=g))}


def rows(metrics: dict[str, float], label: str) -> dict[str, float]:
    prefix = f"test/clean/{label}/"
    return {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------- weight-scaling probe


@pytest.mark.parametrize("scale", ["inverted", "none"])
def test_ws_probe_equals_deterministic_and_mismatched_pass_scales_logits(scale):
    p = 0.4
    model, sets = linear_toy(scale, p), eval_set()
    metrics, arrays = evaluate(model, sets, EVAL, PROBES)
    matched, mismatched = ("ws_off", "ws_on") if scale == "inverted" else ("ws_on", "ws_off")
    assert torch.equal(arrays[f"clean/{matched}"], arrays["clean/deterministic"])
    assert rows(metrics, matched) == rows(metrics, "deterministic")
    # mismatched: logits = factor * (weight-scaled logits), factor keep (scaled twice) or 1/keep
    factor = (1 - p) if scale == "inverted" else 1 / (1 - p)
    x, _ = sets["clean"]
    with torch.no_grad():
        expected = F.softmax(factor * model.eval()(x), dim=-1)
    assert arrays[f"clean/{mismatched}"].shape == (1, len(x), C)
    torch.testing.assert_close(arrays[f"clean/{mismatched}"][0], expected)
    assert rows(metrics, mismatched).keys() == rows(metrics, "deterministic").keys()
    assert rows(metrics, mismatched)["nll"] != rows(metrics, "deterministic")["nll"]
    # no BatchNorm: no bn_recomputed rows, and no training inputs needed
    assert not rows(metrics, "bn_recomputed") and "clean/bn_recomputed" not in arrays
    assert all(m.eval_multiplier is None for m in control.dropout_layers(model))


def test_probes_skipped_without_dropout():
    model = nn.Sequential(Dropout(0.0), nn.Linear(F_IN, 16), nn.BatchNorm1d(16), nn.Linear(16, C))
    metrics, arrays = evaluate(model.eval(), eval_set(), EVAL, PROBES)  # no train_x: not needed
    assert {k.split("/")[2] for k in metrics} == {"deterministic"}
    assert set(arrays) == {"labels/clean", "clean/deterministic"}


# ----------------------------------------------------------------------------- BatchNorm recomputed


def bn_model_trained_with_dropout(n_train: int = 2048, steps: int = 60, batch: int = 64):
    """An MLP with dropout p = 0.5 on its input, right before Linear -> BatchNorm1d, trained
    briefly on i.i.d. N(0, 1) inputs (so its BN running variance is learned on dropout inputs)."""
    torch.manual_seed(0)
    model = MLP((20,), C, sites=("input",), dropout={"p": 0.5}, widths=(32,), batchnorm=True)
    x = torch.randn(n_train, 20)
    y = torch.randint(0, C, (n_train,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, n_train, (batch,))
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval(), x


def bn_inputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of the model's (first) BatchNorm in the deterministic eval pass over ``x``."""
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    seen = []
    handle = bn.register_forward_pre_hook(lambda m, args: seen.append(args[0].double()))
    try:
        with torch.no_grad(), control.deterministic(model):
            model(x)
    finally:
        handle.remove()
    return seen[0]


def test_recompute_bn_matches_deterministic_input_statistics_and_leaves_model_unchanged():
    model, x = bn_model_trained_with_dropout()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = recompute_bn(model, x, batch_size=100)  # 21 chunks of 97 or 98 rows
    # the original is untouched
    assert not model.training and model.body[2].momentum == 0.1
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.mode is None for m in control.dropout_layers(model))
    # the copy: exact statistics of the BN input of the deterministic pass (float32 rounding)
    bn = fresh.body[2]
    h = bn_inputs(fresh, x)
    assert not fresh.training and int(bn.num_batches_tracked) == 21
    torch.testing.assert_close(bn.running_var.double(), h.var(0), rtol=1e-5, atol=0)
    torch.testing.assert_close(
        bn.running_mean.double(), h.mean(0), rtol=0, atol=1e-5 * float(h.std(0).max())
    )
    # Variance shift (Li et al. 2019): on i.i.d. N(0, 1) inputs, BN input w.x has Var_eval = |w|^2
    # and Var_train = |w|^2 / keep, so recomputed / learned = keep = 0.5 per channel. The learned
    # running_var is an EMA (momentum 0.1) of batch variances of 64 rows: relative SE about
    # sqrt(0.1 / 1.9 * 2 / 63) = 0.04 per channel; the mean over 32 channels is within 0.1 of
    # 0.5 by far more than 3 SE even if channels were fully correlated.
    ratio = (bn.running_var / model.body[2].running_var).mean()
    assert abs(float(ratio) - 0.5) < 0.1


def test_bn_recomputed_strategy_keys_and_needs_train_x():
    model, x = bn_model_trained_with_dropout(n_train=256, steps=5)
    sets = {"clean": (torch.randn(40, 20), torch.randint(0, C, (40,)))}
    metrics, arrays = evaluate(model, sets, EVAL, PROBES, train_x=x, train_batch_size=64)
    assert rows(metrics, "bn_recomputed").keys() == rows(metrics, "deterministic").keys()
    assert arrays["clean/bn_recomputed"].shape == (1, 40, C)
    expected = F.softmax(recompute_bn(model, x, 64)(sets["clean"][0]), dim=-1)
    torch.testing.assert_close(arrays["clean/bn_recomputed"][0], expected.detach())
    with pytest.raises(ConfigError, match=r"bn_recomputed.*train_x"):
        evaluate(model, sets, EVAL, PROBES)


# ----------------------------------------------------------------------------- magnitudes record


def test_magnitudes_record_rows_reproducible_and_model_unchanged():
    torch.manual_seed(0)
    model = MLP((F_IN,), C, sites=("hidden",), dropout={"p": 0.3}, widths=(16, 16), batchnorm=True)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sets = eval_set(n=600)
    rng = torch.get_rng_state()
    record = magnitudes(model, sets, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)  # masks from a forked, seeded RNG
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training
    assert record["eval_set"] == "clean" and record["n_examples"] == 512 and record["seed"] == 3
    assert record["member"] is None
    layers = {(r["layer"], r["where"]) for r in record["layers"]}
    # body: input (Identity), Linear, BN, ReLU, hidden.0, Linear, BN, ReLU, hidden.1, head (Identity)
    names = ("body.2", "body.4", "body.6", "body.8")
    assert layers == {(n, w) for n in names for w in ("input", "output")}
    for row in record["layers"]:
        assert row["kind"] == ("dropout" if row["layer"] in ("body.4", "body.8") else "batchnorm")
        predicted = row["var_ratio_predicted"]
        assert math.isfinite(predicted) == (row["kind"] == "dropout" and row["where"] == "output")
        for stat in ("mean", "var"):
            assert row[f"{stat}_ratio"] == row[f"{stat}_eval"] / row[f"{stat}_train"]
    assert json.loads(json.dumps(record, allow_nan=True)).keys() == record.keys()
    again = magnitudes(model, sets, seed=3)
    assert json.dumps(again) == json.dumps(record)
    assert json.dumps(magnitudes(model, sets, seed=4)) != json.dumps(record)


def test_magnitudes_of_a_stacked_ensemble_record_member_zero():
    torch.manual_seed(0)
    members = [MLP((F_IN,), C, dropout={"p": 0.3}, widths=(8,)) for _ in range(2)]
    record = magnitudes(StackedEnsemble(members).eval(), eval_set(n=30), seed=0)
    assert record["member"] == 0 and record["n_examples"] == 30
    expected = magnitudes(members[0].eval(), eval_set(n=30), seed=0)
    assert json.dumps(record["layers"]) == json.dumps(expected["layers"])


def test_members_curve_and_exhaustive_rows():
    """members@m is the mean of the first m members; exhaustive over all masks of a tiny MLP equals
    the deterministic pass in geometric mean for one dropout layer before the output linear layer."""
    import torch

    from dropens.evaluation import evaluate
    from dropens.models import build_model

    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8), torch.randint(0, 3, (64,))
    net = build_model(
        {"name": "mlp", "widths": [6], "batchnorm": False, "dropout_sites": ["head"]},
        {"p": 0.5},
        (1, 8),
        3,
    ).double()
    cfg = {
        "mc_samples": 2,
        "mc_curve": [1],
        "n_bins": 5,
        "memory_budget_mb": 64,
        "exhaustive": True,
    }
    metrics, _ = evaluate(net, {"clean": (x.double(), y)}, cfg, ("deterministic", "mc"))
    # one dropout layer followed by a linear map: the normalized geometric mean over all masks is the
    # softmax of the mean logits = softmax of the weight-scaled logits (Warde-Farley et al. 2014)
    assert (
        abs(
            metrics["test/clean/exhaustive_geometric/nll"] - metrics["test/clean/deterministic/nll"]
        )
        < 1e-9
    )
    assert (
        metrics["test/clean/exhaustive_mean/nll"] != metrics["test/clean/exhaustive_geometric/nll"]
    )
