"""Parameter counts and training FLOPs per example: exact for the reference MLP, proportional to the
members for the ensembles, recorded in ``run.json``, and without side effects on the run."""

from __future__ import annotations

import json

import pytest
import torch

from dropens.config import compose, to_container
from dropens.cost import cost_info, n_params, train_flops_per_example
from dropens.methods import method_class
from dropens.train import fit_and_record, prepare

SHAPE, C = (1, 40), 10
# the reference MLP 40-100-100-10: matmul FLOPs per example of each Linear, 2 * in * out
LAYER_FLOPS = (2 * 40 * 100, 2 * 100 * 100, 2 * 100 * 10)


def _method(name: str, *overrides: str):
    cfg = to_container(
        compose(
            [f"method={name}", "trainer=smoke", "logger=none", "results_root=unused", *overrides]
        )
    )
    cls = method_class(name)
    return cls(cls.build_backbone(cfg, SHAPE, C), cfg)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, *SHAPE, generator=g), torch.randint(0, C, (8,), generator=g)


def test_plain_mlp_counts_follow_from_its_layers(batch):
    method = _method("plain", "model=mlp")
    assert n_params(method.backbone) == (40 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10)
    # forward: every layer; backward: the weight gradient of every layer and the input gradient of
    # all but the first (the data needs none): 3 x forward - the first layer's input gradient
    expected = 3 * sum(LAYER_FLOPS) - LAYER_FLOPS[0]
    assert train_flops_per_example(method, *batch) == expected


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("ensemble", ["method.k=4"]), ("subnets", ["method.k=4", "method.batching=repeat"])],
)
def test_members_trained_on_every_example_cost_k_times_one_network(name, overrides, batch):
    plain = train_flops_per_example(_method("plain", "model=mlp"), *batch)
    method = _method(name, "model=mlp", *overrides)
    assert train_flops_per_example(method, *batch) == 4 * plain
    params = n_params(_method("plain", "model=mlp").backbone)
    assert n_params(method.backbone) == (4 * params if name == "ensemble" else params)


def test_partitioned_subnets_cost_one_network(batch):
    plain = train_flops_per_example(_method("plain", "model=mlp"), *batch)
    method = _method("subnets", "model=mlp", "method.batching=partition")
    assert train_flops_per_example(method, *batch) == plain


def test_counting_leaves_rng_buffers_grads_and_modes_as_they_were(batch):
    method = _method("dropout", "model=mlp", "model.batchnorm=true", "dropout.p=0.3")
    method.eval()
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    buffers = {k: v.clone() for k, v in method.named_buffers()}
    cost_info(method, *batch)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, buffers[k]) for k, v in method.named_buffers())
    assert all(p.grad is None for p in method.parameters())
    assert not any(m.training for m in method.modules())


def test_the_run_record_states_the_cost(tmp_path):
    cfg = to_container(
        compose(
            [
                "method=plain",
                "model=mlp",
                "trainer=smoke",
                "logger=none",
                f"results_root={tmp_path}",
            ]
        )
    )
    record = fit_and_record(prepare(cfg))
    info = json.loads((record.path / "run.json").read_text())
    assert info["n_params"] == n_params(_method("plain", "model=mlp").backbone)
    assert info["train_flops_per_example"] == 3 * sum(LAYER_FLOPS) - LAYER_FLOPS[0]
