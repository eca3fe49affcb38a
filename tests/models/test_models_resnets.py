"""The CIFAR residual networks as configured: ResNet-20 and WRN-28-10 build and run in eval mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dropens.layers import Dropout
from dropens.models import build_model, count_parameters

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
DROPOUT = {
    "p": 0.3,  # Zagoruyko & Komodakis (2016) use 0.3 between the convolutions
    "dist": "bernoulli",
    "structure": "element",
    "scale": "inverted",
    "block_size": None,
    "share_channels": False,
}


@pytest.mark.parametrize(
    ("config", "params", "blocks"),
    [
        ("resnet20", 269_722, 9),  # He et al. (2016): 0.27M
        ("wrn28_10", 36_479_194, 12),  # Zagoruyko & Komodakis (2016): 36.5M
    ],
)
def test_configured_resnets_build_and_run_in_eval_mode(config, params, blocks):
    torch.manual_seed(0)
    model = build_model(OmegaConf.load(CONFIGS / f"{config}.yaml"), DROPOUT, (3, 32, 32), 10)
    assert count_parameters(model) == params
    sites = sorted(m.site for m in model.modules() if isinstance(m, Dropout))
    assert sites == sorted(f"block.{i}" for i in range(blocks))
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_resnet_depth_is_configurable():
    cfg = OmegaConf.merge(OmegaConf.load(CONFIGS / "resnet20.yaml"), {"depth": 32})
    model = build_model(cfg, DROPOUT, (3, 16, 16), 100)
    assert sum(isinstance(m, Dropout) for m in model.modules()) == 15  # 3 stages x 5 blocks
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 100)
