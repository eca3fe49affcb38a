"""Backbones under ``torch.func``: ``functional_call`` + ``vmap`` over stacked copies (K-member
ensembles trained in one batched call need this)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.func import functional_call, stack_module_state, vmap

from dropens.models import build_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
SHAPES = {"mlp": (40,), "cnn1d": (40,), "cnn2d": (1, 28, 28), "resnet20": (3, 8, 8)}
DROPOUT = {
    "p": 0.5,
    "dist": "bernoulli",
    "structure": "element",
    "scale": "inverted",
    "block_size": None,
    "share_channels": False,
}
N_COPIES, N, C = 3, 5, 10


def copies(name: str, identical: bool = False) -> list[torch.nn.Module]:
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    torch.manual_seed(0)
    first = build_model(cfg, DROPOUT, SHAPES[name], C)
    if identical:
        return [copy.deepcopy(first) for _ in range(N_COPIES)]
    return [first] + [build_model(cfg, DROPOUT, SHAPES[name], C) for _ in range(N_COPIES - 1)]


def batched(models: list[torch.nn.Module], x: torch.Tensor, train: bool) -> torch.Tensor:
    """``[K, N, C]``: the K models on the same batch in one vmapped functional call."""
    for m in models:
        m.train(train)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def call(p, b, x):
        return functional_call(base, (p, b), (x,))

    return vmap(call, in_dims=(0, 0, None), randomness="different")(params, buffers, x)


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "cnn2d"])
def test_vmap_train_mode_samples_a_mask_per_copy(name):
    models = copies(name, identical=True)
    x = torch.randn(N, *SHAPES[name])
    out = batched(models, x, train=True)
    assert out.shape == (N_COPIES, N, C)
    # identical weights: only the masks differ, and randomness="different" draws one per copy
    assert not torch.allclose(out[0], out[1])
    assert not torch.allclose(out[1], out[2])


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "cnn2d", "resnet20"])
def test_vmap_eval_mode_equals_the_copies_one_by_one(name):
    models = copies(name)
    x = torch.randn(N, *SHAPES[name])
    out = batched(models, x, train=False)
    with torch.no_grad():
        expected = torch.stack([m(x) for m in models])
    assert out.shape == (N_COPIES, N, C)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_vmap_train_mode_with_batchnorm_keeps_running_stats_per_copy():
    cfg = OmegaConf.merge(OmegaConf.load(CONFIGS / "cnn2d.yaml"), {"batchnorm": True})
    models = [build_model(cfg, DROPOUT, (1, 8, 8), C) for _ in range(N_COPIES)]
    for m in models:
        m.train()
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def call(p, b, x):
        return functional_call(base, (p, b), (x,))

    x = torch.randn(N, 1, 8, 8)
    out = vmap(call, in_dims=(0, 0, None), randomness="different")(params, buffers, x)
    assert out.shape == (N_COPIES, N, C)
    first_bn = next(k for k in buffers if k.endswith("running_mean"))
    running_mean = buffers[first_bn]
    assert running_mean.shape[0] == N_COPIES and running_mean.abs().sum() > 0
    assert not torch.allclose(running_mean[0], running_mean[1])
