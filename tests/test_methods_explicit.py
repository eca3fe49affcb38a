"""``explicit``: dropout's explicit regularizer without masks, trained end to end; and
``early_stopping``: the weights of the best validation NLL are the ones evaluated."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dropens import control, keys
from dropens.config import compose, to_container
from dropens.errors import ConfigError
from dropens.regularizers import explicit_dropout_penalty
from dropens.train import prepare, train

SMOKE = ["trainer=smoke", "logger=csv", "eval.mc_curve=[1,4]", "eval.mc_samples=4"]


def _config(tmp_path, *overrides: str) -> dict:
    return to_container(compose([*SMOKE, f"results_root={tmp_path}", *overrides]))


def test_loss_is_cross_entropy_plus_the_head_penalty_and_never_samples(tmp_path):
    """MLP with dropout only at the head: the loss is CE + explicit_dropout_penalty of the last
    hidden layer and the classifier weight, and two calls on one batch are identical."""
    cfg = _config(
        tmp_path, "model=mlp", "method=explicit", "model.dropout_sites=[head]", "dropout.p=0.3"
    )
    method = prepare(cfg).method
    method.train()
    x, y = torch.randn(16, 1, 40), torch.randint(0, 10, (16,))
    loss = method.training_loss(x, y)
    assert torch.equal(loss, method.training_loss(x, y))  # deterministic: no mask is drawn
    net = method.backbone
    with control.deterministic(net):  # the head site is identity in the deterministic pass
        hidden = net.body(x.flatten(1))
    logits = net.classifier(hidden)
    expected = F.cross_entropy(logits, y) + explicit_dropout_penalty(
        hidden, net.classifier.weight, logits, 0.3
    )
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)


def test_explicit_trains_and_records_the_deterministic_pass(tmp_path):
    record = train(_config(tmp_path, "method=explicit", "study=e"))
    assert record.done
    metrics = record.metrics()
    assert "test/clean/deterministic/acc" in metrics
    labels = {keys.parse(k).label for k in metrics}
    assert labels == {"deterministic"}  # no masks at test time


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dropout.p=0", "dropout.p=0 with method=explicit"),
        ("dropout.structure=channel", "needs dropout.structure=element"),
        ("dropout.scale=none", "needs dropout.scale=inverted"),
    ],
)
def test_explicit_refuses_what_it_cannot_regularize(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        prepare(_config(tmp_path, "method=explicit", override))


def test_early_stopping_evaluates_the_best_validation_checkpoint(tmp_path):
    record = train(
        _config(
            tmp_path,
            "method=plain",
            "study=es",
            "trainer.max_steps=150",
            "trainer.check_val_every_n_epoch=1",
            "+early_stopping=true",
            "optim.lr=0.05",
        )
    )
    info = record.info()
    log = pd.read_csv(record.path / "csv" / "metrics.csv")
    val = log.dropna(subset=["val/clean/deterministic/nll"])
    assert len(val) >= 3
    best = val.loc[val["val/clean/deterministic/nll"].idxmin()]
    assert info["selected_val_nll"] == pytest.approx(best["val/clean/deterministic/nll"], rel=1e-6)
    assert info["selected_step"] == int(best["step"]) + 1 or info["selected_step"] == int(
        best["step"]
    )
    assert (record.path / "checkpoints" / "best.ckpt").exists()


def test_early_stopping_needs_a_validation_within_the_budget(tmp_path):
    with pytest.raises(ConfigError, match="early_stopping=true selects by validation NLL"):
        prepare(_config(tmp_path, "+early_stopping=true", "trainer.check_val_every_n_epoch=1000"))
