"""``dropens.evaluate_model`` (dropens/external.py) on the weights of a stored run reproduces that
run's ``metrics.json``; ``predict`` accepts a DataLoader."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import dropens
from dropens.config import compose, to_container
from dropens.errors import ConfigError
from dropens.inference import predict
from dropens.rng import set_rng_state
from dropens.train import prepare, select_eval_sets, train

SMOKE = ["trainer=smoke", "logger=csv", "eval.mc_curve=[1,4]", "eval.mc_samples=4"]


@pytest.mark.parametrize("method", ["dropout", "subnets"])
def test_evaluate_model_reproduces_a_stored_run(tmp_path, method):
    """Acceptance 4. Same weights (the run's last checkpoint, which is also the evaluated state:
    no early stopping), same eval set (the data module of the same config), same seed and the
    same global RNG stream (the checkpoint's ``dropens_rng_state``: MC masks are drawn from it,
    as in the run). Exact equality is expected; the tolerance 1e-12 only absorbs a float64 sum
    taken in another order, which would not happen here."""
    config = to_container(
        compose([*SMOKE, f"results_root={tmp_path}", "study=t", f"method={method}"])
    )
    record = train(config)
    stored = {k: v for k, v in record.metrics().items() if k.startswith("test/")}
    checkpoint = torch.load(
        record.path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    prep = prepare(config)  # builds data and the method; trains nothing
    prep.method.load_state_dict(checkpoint["state_dict"])
    eval_sets = select_eval_sets(prep.datamodule, config["eval"]["sets"], config["data"]["name"])
    set_rng_state(checkpoint["dropens_rng_state"])
    got = dropens.evaluate_model(
        prep.method.backbone,
        eval_sets,
        strategies=prep.method.eval_strategies,
        mc_samples=config["eval"]["mc_samples"],
        mc_curve=config["eval"]["mc_curve"],
        n_bins=config["eval"]["n_bins"],
        train_x=prep.datamodule.x_train,
        seed=int(config["seed"]),
    )
    assert sorted(got) == sorted(stored)
    for key, value in stored.items():
        assert math.isclose(got[key], value, rel_tol=1e-12, abs_tol=1e-12) or (
            math.isnan(value) and math.isnan(got[key])
        ), (key, got[key], value)


def test_evaluate_model_on_tensors_and_loader_agree():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Dropout(0.3))
    model.append(torch.nn.Linear(8, 3))
    dropens.convert(model)
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    torch.manual_seed(1)
    a = dropens.evaluate_model(model, (x, y), mc_samples=4, n_bins=5)
    torch.manual_seed(1)
    b = dropens.evaluate_model(model, loader, mc_samples=4, n_bins=5)
    assert a == b
    assert {"test/clean/deterministic/acc", "test/clean/mc4/ece"} <= set(a)
    torch.manual_seed(2)
    p1 = predict(model, x, "mc", samples=4)
    torch.manual_seed(2)
    p2 = predict(model, loader, "mc", samples=4)
    torch.testing.assert_close(p1.member_probs, p2.member_probs, rtol=0, atol=0)


def test_evaluate_model_refuses_unlabelled_data():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ConfigError, match="has no labels"):
        dropens.evaluate_model(model, torch.randn(4, 3))
