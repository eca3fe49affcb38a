"""Dropout's explicit regularizer (Wei, Kakade & Ma 2020) against independent references: autograd
Hessians and Jacobians, and the exact probability-weighted expectation over every mask of a small
layer (second order: the relative error must shrink in proportion to the perturbation size)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dropens.errors import ConfigError
from dropens.regularizers import explicit_dropout_penalty, site_penalties, site_penalty


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _head(n: int = 6, f: int = 5, c: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, f, generator=g)
    w = torch.randn(c, f, generator=g)
    b = torch.randn(c, generator=g)
    return h, w, b


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_head_penalty_equals_the_autograd_hessian_form(p):
    h, w, b = _head()
    z = h @ w.T + b
    expected = 0.0
    for n in range(len(h)):
        # Hessian of the softmax cross-entropy in the logits (any label: it does not depend on it)
        hess = torch.autograd.functional.hessian(
            lambda zz: F.cross_entropy(zz[None], torch.tensor([0])), z[n]
        )
        for j in range(h.shape[1]):
            expected += h[n, j] ** 2 * (w[:, j] @ hess @ w[:, j])
    expected = p / (2 * (1 - p)) * expected / len(h)
    got = explicit_dropout_penalty(h, w, z, p)
    assert got.dim() == 0
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_site_penalty_at_the_head_equals_the_closed_form():
    h, w, b = _head(n=7, f=6, c=5, seed=1)
    h = h.clone().requires_grad_(True)
    z = h @ w.T + b
    torch.testing.assert_close(
        site_penalty(h, z, 0.2), explicit_dropout_penalty(h, w, z, 0.2), atol=1e-12, rtol=0
    )


def test_site_penalty_inside_equals_the_jacobian_form():
    """An inner site: J_j = dz/dh_j through a ReLU layer, from torch.func.jacrev."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    h = torch.randn(4, 5, requires_grad=True)
    z = net(h)
    p = 0.25
    expected = 0.0
    for n in range(len(h)):
        jac = torch.func.jacrev(net)(h[n].detach())  # [C, F]
        s = F.softmax(z[n].detach(), -1)
        hess = torch.diag(s) - torch.outer(s, s)
        for j in range(h.shape[1]):
            expected += h[n, j].detach() ** 2 * (jac[:, j] @ hess @ jac[:, j])
    expected = p / (2 * (1 - p)) * expected / len(h)
    torch.testing.assert_close(site_penalty(h, z, p), expected, atol=1e-10, rtol=0)


def _exact_gap(forward, h: torch.Tensor, y: torch.Tensor, p: float) -> float:
    """E_mask[CE(forward(A * h / keep))] - CE(forward(h)), over every Bernoulli mask of h's units,
    each example with its own mask (the expectation factorizes over examples)."""
    keep = 1 - p
    f = h.shape[1]
    masks = torch.tensor(list(itertools.product([0.0, 1.0], repeat=f)))  # [2^F, F]
    weights = keep ** masks.sum(1) * p ** (f - masks.sum(1))
    total = 0.0
    with torch.no_grad():
        for n in range(len(h)):
            xs = masks * h[n] / keep
            losses = F.cross_entropy(forward(xs), y[n].expand(len(masks)), reduction="none")
            total += float(
                (weights * losses).sum() - F.cross_entropy(forward(h[n : n + 1]), y[n : n + 1])
            )
    return total / len(h)


@pytest.mark.parametrize("where", ["head", "inner"])
def test_penalty_is_the_second_order_term_of_the_exact_mask_expectation(where):
    """At small activations the exact expectation over all 2^8 masks approaches R, with a relative
    error proportional to the scale (the next term of the expansion is third order). The inner
    site feeds a ReLU layer whose biases keep every unit's sign at these scales: the network is
    then linear in h, so the Gauss-Newton term R is the whole second-order term."""
    torch.manual_seed(3)
    f, c, p = 8, 3, 0.3
    if where == "head":
        net = nn.Linear(f, c)
    else:
        net = nn.Sequential(nn.Linear(f, 6), nn.ReLU(), nn.Linear(6, c))
        with torch.no_grad():  # pre-activations +-1 +- O(scale): no unit changes sign
            net[0].bias.copy_(torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, 1.0]))
    base = torch.randn(5, f)
    y = torch.tensor([0, 1, 2, 1, 0])
    errors = []
    for scale in (4e-2, 1e-2):
        h = (scale * base).requires_grad_(True)
        r = float(site_penalty(h, net(h), p, create_graph=False).detach())
        exact = _exact_gap(net, h.detach(), y, p)
        errors.append(abs(exact - r) / abs(r))
    assert errors[1] < 0.02  # R is the expectation's leading term
    # third-order remainder: the relative error shrinks ~ linearly with the scale (4x smaller here)
    assert 0.1 < errors[1] / errors[0] < 0.5


def test_several_sites_in_one_batched_pass_equal_one_at_a_time():
    torch.manual_seed(4)
    l1, l2 = nn.Linear(5, 6), nn.Linear(6, 3)
    x = torch.randn(4, 5, requires_grad=True)
    h = torch.relu(l1(x))
    z = l2(h)
    both = site_penalties(z, [(x, 0.1), (h, 0.4)])
    torch.testing.assert_close(both[0], site_penalty(x, l2(torch.relu(l1(x))), 0.1))
    torch.testing.assert_close(both[1], site_penalty(h, z, 0.4))


def test_penalty_trains_gradients_flow_to_the_weights():
    h, w, b = _head()
    w = w.clone().requires_grad_(True)
    explicit_dropout_penalty(h, w, h @ w.T + b, 0.5).backward()
    assert w.grad is not None and float(w.grad.abs().sum()) > 0


def test_bad_input_is_a_one_line_error():
    h, w, b = _head()
    with pytest.raises(ConfigError, match=r"p=1\.0 is not valid"):
        explicit_dropout_penalty(h, w, h @ w.T + b, 1.0)
    with pytest.raises(ConfigError, match="shapes do not match"):
        explicit_dropout_penalty(h, w.T, h @ w.T + b, 0.1)
    assert math.isclose(float(explicit_dropout_penalty(h, w, h @ w.T + b, 0.0)), 0.0)
