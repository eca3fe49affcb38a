"""dropens.pooling: the 2x2 max-pool gives exactly ``F.max_pool2d(x, 2)``; ``convert`` swaps a
model's plain 2x2 pools for it and changes no value."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dropens import convert
from dropens.inference import predict
from dropens.models import build_model
from dropens.pooling import MaxPool2x2, max_pool2x2


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


def _pool_model(shared: nn.MaxPool2d) -> nn.Sequential:
    """Pools that ``convert`` swaps (plain 2x2, shared at two places) and ones it must not."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Dropout2d(0.2),
        shared,  # 16 -> 8
        nn.MaxPool2d(2, stride=1),  # 8 -> 7
        nn.MaxPool2d((2, 2), ceil_mode=True),  # 7 -> 4
        nn.MaxPool2d(3, stride=2, padding=1),  # 4 -> 2
        shared,  # 2 -> 1
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(4, 3),
    )


def test_convert_swaps_exactly_the_plain_2x2_pools_and_keeps_every_value():
    torch.manual_seed(0)
    ours = _pool_model(nn.MaxPool2d(kernel_size=2, stride=2))
    native = copy.deepcopy(ours)
    assert convert(ours) == ["2", "9"] and convert(native, fast_pool=False) == ["2", "9"]
    swapped = [i for i, m in enumerate(ours) if isinstance(m, MaxPool2x2)]
    assert swapped == [3, 7] and ours[3] is ours[7]  # a shared pool stays one module
    assert not any(isinstance(m, MaxPool2x2) for m in native)
    assert [type(ours[i]) for i in (4, 5, 6)] == [nn.MaxPool2d] * 3
    x = torch.relu(torch.randn(6, 1, 16, 16)).round(decimals=1)  # ties after the ReLU
    for model in (ours, native):
        model.eval()
    with torch.no_grad():
        assert torch.equal(ours(x), native(x))  # deterministic pass
        torch.manual_seed(3)
        a = predict(ours, x, "mc", samples=8).member_probs
        torch.manual_seed(3)
        b = predict(native, x, "mc", samples=8).member_probs
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])  # members differ
    ours.train(), native.train()
    torch.manual_seed(1)
    ours(x).square().sum().backward()
    torch.manual_seed(1)
    native(x).square().sum().backward()
    assert torch.equal(ours[0].weight.grad, native[0].weight.grad)
    assert [n for n, m in ours.named_modules() if isinstance(m, nn.MaxPool2d)] == [
        n for n, m in native.named_modules() if isinstance(m, nn.MaxPool2d)
    ]  # still nn.MaxPool2d modules, at the same names


def test_only_plain_2x2_pools_qualify():
    yes = [nn.MaxPool2d(2), nn.MaxPool2d((2, 2), stride=(2, 2)), nn.MaxPool2d(2, stride=2)]
    no = [
        nn.MaxPool2d(2, stride=1),
        nn.MaxPool2d(3),
        nn.MaxPool2d(2, padding=1),
        nn.MaxPool2d(2, dilation=2),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.MaxPool2d(2, return_indices=True),
        nn.AvgPool2d(2),
        MaxPool2x2(),  # already swapped
    ]
    assert all(MaxPool2x2.replaces(m) for m in yes)
    assert not any(MaxPool2x2.replaces(m) for m in no)
