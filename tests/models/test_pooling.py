"""dropens.models.pooling: the 2x2 max-pool gives exactly ``F.max_pool2d(x, 2)``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dropens.models import build_model
from dropens.models.pooling import MaxPool2x2, max_pool2x2


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 3, 7, 9), (5, 1, 2, 3), (4, 6, 6)])
def test_values_equal_native_max_pool(shape):
    """Bit for bit, odd sizes floored, with many ties (ReLU zeros, values rounded to 0.1)."""
    x = torch.relu(torch.randn(shape, generator=torch.Generator().manual_seed(0))).round(decimals=1)
    with torch.no_grad():
        assert torch.equal(max_pool2x2(x), F.max_pool2d(x, 2))
    assert torch.equal(max_pool2x2(-x), F.max_pool2d(-x, 2))


def test_nan_propagates_as_in_native():
    x = torch.randn(1, 2, 4, 4)
    x[0, 1, 2, 3] = float("nan")
    ours, native = max_pool2x2(x), F.max_pool2d(x, 2)
    assert torch.equal(ours.isnan(), native.isnan()) and ours.isnan().sum() == 1
    assert torch.equal(ours.nan_to_num(), native.nan_to_num())


def test_training_uses_the_native_kernel_and_its_gradient():
    x = torch.relu(torch.randn(2, 3, 6, 6)).round(decimals=1)
    ours, native = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    grad = torch.randn(2, 3, 3, 3)
    max_pool2x2(ours).backward(grad)
    F.max_pool2d(native, 2).backward(grad)
    assert torch.equal(ours.grad, native.grad)


def test_cnn2d_pools_with_it_and_matches_native_pools():
    spec = {"p": 0.1, "dist": "bernoulli", "structure": "element", "scale": "inverted"}
    arch = {"name": "cnn2d", "channels": [4, 8], "hidden": 16, "dropout_sites": ["conv"]}
    model = build_model(arch, spec, (1, 28, 28), 10).eval()
    pools = [m for m in model.modules() if isinstance(m, MaxPool2x2)]
    assert len(pools) == 2
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        ours = model(x)
        for p in pools:
            p.forward = lambda t: F.max_pool2d(t, 2)
        assert torch.equal(ours, model(x))


def test_vmapped_training_uses_the_native_gradient():
    """Vectorized ensembles train through ``torch.vmap`` with autograd (``methods.ensemble``), where
    a batched tensor's ``requires_grad`` reads False: the gradient must still be the native one."""
    x = torch.relu(torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1)))
    x[0, 0, :2, :2] = 0.5  # a window of four equal positive values: a tie at the maximum
    grad = torch.randn(2, 3, 3, 3)
    grads = []
    for pool in (max_pool2x2, lambda t: F.max_pool2d(t, 2)):
        leaf = x.clone().requires_grad_(True)
        (torch.vmap(pool)(leaf) * grad).sum().backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])
