"""Tests for :mod:`dropens.inference`: strategies, exhaustive masks, aggregates, batching, errors.

- Exact identity (Baldi & Sadowski 2013; Warde-Farley et al. 2014): with dropout only on the inputs
  of the final softmax layer, the probability-weighted normalized geometric mean over *every* mask
  is the deterministic (weight-scaled) pass. Float64 networks; the only error left is the float32
  storage of the member probabilities (~1e-7), hence the 1e-6 tolerance.
- MC dropout against the exhaustive mean: per (example, class), the MC mean has the standard error
  ``std / sqrt(T)`` of its ``T`` i.i.d. masks; the worst of the ``N C`` standardized deviations is
  compared with the Bonferroni quantile :func:`z_max` (the convention of :mod:`stats_helpers`).
- Batching and chunking are compared with looped passes on networks with small-integer weights
  and inputs and ``p = 1/2`` (``1/keep = 2``): every logit is then exact in float64, so results are
  bit-identical whatever the BLAS kernel and batch size (generic float networks differ by an ulp
  between a 1-row and an N-row matmul, which is rounding, not a batching bug).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from stats_helpers import z_max
from torch import nn

from dropens import control
from dropens.errors import ConfigError
from dropens.inference import (
    DEFAULT_MAX_MEMBERS,
    Predictions,
    chunk_sizes,
    cpu_max_rows,
    mask_family,
    predict,
    row_bytes,
)
from dropens.layers import Dropout
from dropens.metrics.summary import aggregate

TINY_BUDGET = 1e-9  # MB: one stacked row per forward


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def head_dropout_mlp(p: float, scale: str, seed: int = 0) -> nn.Sequential:
    """Dropout only on the inputs of the final (softmax) layer: logits affine in the mask."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), Dropout(p, scale=scale, seed=1), nn.Linear(8, 4)
    ).double()


def head_dropout_cnn(p: float, structure: str, seed: int = 0) -> nn.Sequential:
    """Same, with a spatial dropout on a ``(2, 3)`` feature map: element 6, channel 2, location 3 units."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(2, 2, 3, padding=1),
        nn.ReLU(),
        Dropout(p, structure=structure, seed=1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).double()


def inputs(n: int, shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.randn(
        n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


# ----------------------------------------------------------------------------- exact identity


@pytest.mark.parametrize("scale", ("inverted", "none"))
@pytest.mark.parametrize("p", (0.2, 0.5))
def test_exhaustive_geometric_equals_the_deterministic_pass(p, scale):
    model = head_dropout_mlp(p, scale)
    x = inputs(32, (6,))
    det = predict(model, x, "deterministic")
    ex = predict(model, x, "exhaustive", aggregate="geometric")
    assert ex.n_members == 2**8 and ex.weights is not None
    torch.testing.assert_close(ex.probs.double(), det.probs.double(), rtol=0, atol=1e-6)
    # power: the arithmetic mean of the same members is not the deterministic pass
    arithmetic = aggregate(ex.member_probs, "mean", ex.weights)
    assert (arithmetic - det.probs).abs().max() > 1e-3
    # power: equal weights are not the mask distribution unless p = 1/2
    unweighted = aggregate(ex.member_probs, "geometric")
    assert ((unweighted - det.probs).abs().max() > 1e-3) == (p != 0.5)


@pytest.mark.parametrize("structure", ("element", "channel", "location"))
def test_exhaustive_identity_holds_for_every_structure(structure):
    model = head_dropout_cnn(0.3, structure)
    x = inputs(16, (2, 3))
    ex = predict(model, x, "exhaustive", aggregate="geometric")
    assert ex.n_members == 2 ** {"element": 6, "channel": 2, "location": 3}[structure]
    det = predict(model, x, "deterministic")
    torch.testing.assert_close(ex.probs.double(), det.probs.double(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("p", (0.2, 0.5))
def test_identity_fails_for_dropout_below_a_nonlinearity(p):
    """Power check: a mask that passes through a ReLU makes the logits non-affine in the mask.

    (A dropout right *after* a ReLU still gives affine logits, since ``relu(a h) = a relu(h)`` for
    ``a >= 0``; the mask must act before the nonlinearity.)
    """
    torch.manual_seed(0)
    model = nn.Sequential(Dropout(p, seed=1), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    x = inputs(32, (6,))
    det = predict(model, x, "deterministic")
    ex = predict(model, x, "exhaustive", aggregate="geometric")
    assert (ex.probs - det.probs).abs().max() > 1e-3


# ----------------------------------------------------------------------------- MC vs exhaustive


def two_layer_net() -> nn.Sequential:
    """Two dropout layers below nonlinearities, different p: 6 + 5 = 11 units, 2048 masks."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Linear(4, 6),
        nn.ReLU(),
        Dropout(0.3, seed=1),
        nn.Linear(6, 5),
        nn.ReLU(),
        Dropout(0.15, seed=2),
        nn.Linear(5, 3),
    ).double()


def test_mc_mean_converges_to_the_exhaustive_mean():
    model = two_layer_net()
    x = inputs(16, (4,), seed=4)
    exact = predict(model, x, "exhaustive")
    assert exact.n_members == 2**11
    torch.manual_seed(5)
    t = 4096
    mc = predict(model, x, "mc", samples=t).member_probs.double()  # [T, N, C]
    se = mc.std(dim=0) / math.sqrt(t)
    assert bool((se > 0).all())
    k = se.numel()
    worst = ((mc.mean(dim=0) - exact.probs.double()).abs() / se).max().item()
    assert worst <= z_max(k), f"worst (example, class) off by {worst:.2f} SE > {z_max(k):.2f}"
    # power: the same test rejects the wrong weighting and the deterministic pass
    unweighted = aggregate(exact.member_probs, "mean").double()
    assert ((mc.mean(dim=0) - unweighted).abs() / se).max().item() > z_max(k)
    det = predict(model, x, "deterministic").probs.double()
    assert ((mc.mean(dim=0) - det).abs() / se).max().item() > z_max(k)


# ----------------------------------------------------------------------------- the mask family


def test_exhaustive_weights_are_the_mask_probabilities_and_masks_are_distinct():
    model = two_layer_net()
    family = mask_family(model, inputs(3, (4,)))
    layers = control.dropout_layers(model)
    assert family.layers == tuple(layers) and family.sizes == (6, 5) and len(family) == 2**11
    weights = family.weights()
    assert abs(weights.sum().item() - 1.0) <= 1e-12
    banks = family.banks()
    flat = torch.cat([banks[m].flatten(1) for m in layers], dim=1)  # [2^11, 11]
    assert len(torch.unique(flat, dim=0)) == len(family)
    for m, size in zip(layers, family.sizes):  # unit-mean noise: 0 or 1/keep
        values = banks[m].unique().tolist()
        assert values == pytest.approx([0.0, 1.0 / m.keep]) and banks[m].shape[1:] == (size,)
    # independent reference: the product over units of keep (kept) or p (dropped)
    keep = torch.tensor(
        [m.keep for m, s in zip(layers, family.sizes) for _ in range(s)], dtype=torch.float64
    )
    reference = torch.where(flat > 0, keep, 1 - keep).prod(dim=1)
    torch.testing.assert_close(weights, reference, rtol=1e-12, atol=0)
    # the number of units kept in the first layer is Binomial(6, keep)
    kept_first = (flat[:, :6] > 0).sum(dim=1)
    pmf = [weights[kept_first == i].sum().item() for i in range(7)]
    np.testing.assert_allclose(pmf, stats.binom.pmf(range(7), 6, 0.7), rtol=1e-12)


@pytest.mark.parametrize(("structure", "units"), [("element", 12), ("channel", 3), ("location", 4)])
def test_mask_family_counts_the_draw_groups_of_each_structure(structure, units):
    model = nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1), Dropout(0.3, structure=structure), nn.Flatten()
    )
    family = mask_family(model, torch.randn(5, 2, 4))
    assert family.n_units == units
    shape = {"element": (3, 4), "channel": (3, 1), "location": (1, 4)}[structure]
    assert family.shapes == (shape,)
    assert family.banks(0, 7)[model[1]].shape == (7, *shape)


class WithSpare(nn.Module):
    """A p = 0 layer, a live layer, and a registered layer the forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), Dropout(0.0), Dropout(0.5), nn.Linear(4, 2))
        self.spare = Dropout(0.4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_mask_family_skips_p_zero_and_unused_layers():
    model = WithSpare()
    family = mask_family(model, torch.randn(2, 3))
    assert family.layers == (model.body[2],) and family.n_units == 4
    assert predict(model, torch.randn(2, 3), "exhaustive").n_members == 2**4


# ----------------------------------------------------------------------------- batching


def exact_mlp(seed: int = 0) -> nn.Sequential:
    """Small-integer weights and p = 1/2: every logit is exact in float64 (see module docstring)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(5, 6), nn.ReLU(), Dropout(0.5, seed=1), nn.Linear(6, 4), Dropout(0.5, seed=2)
    ).double()
    for layer in (model[0], model[3]):
        for t in (layer.weight, layer.bias):
            t.data.copy_(torch.randint(-3, 4, t.shape, generator=g).double())
    return model


def exact_inputs(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, (n, 5), generator=g).double()


def looped_probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The same conversion as :func:`predict`, one single pass."""
    return F.log_softmax(model(x), dim=-1).float().exp()


class StackedNets(nn.Module):
    """A stand-in ensemble of K nets following the stacked protocol of ``members``."""

    stacked_members = True

    def __init__(self, k: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.n_members = k
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4)) for _ in range(k)
        )
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert len(x) % self.n_members == 0, "input must stack all K members"
        chunks = x.chunk(self.n_members)  # member-major (m b)
        return torch.cat([net(c) for net, c in zip(self.nets, chunks)])


@torch.no_grad()
def test_members_of_a_subnets_model_equal_members_one_by_one():
    model = exact_mlp()
    control.set_n_members(model, 5)
    x = exact_inputs(9)
    pred = predict(model, x, "members", samples=123)  # samples is ignored
    assert pred.member_probs.shape == (5, 9, 4) and pred.member_probs.dtype == torch.float32
    model.eval()
    for k in range(5):
        with control.member(model, k):
            assert torch.equal(pred.member_probs[k], looped_probs(model, x)), k
    assert not torch.equal(pred.member_probs[0], pred.member_probs[1])  # power: members differ


@torch.no_grad()
def test_members_of_a_stacked_ensemble_equal_its_nets_one_by_one():
    model = StackedNets(3)
    x = torch.randn(11, 5, dtype=torch.float64)
    pred = predict(model, x, "members")
    assert pred.member_probs.shape == (3, 11, 4)
    for k, net in enumerate(model.nets):
        expected = F.log_softmax(net(x), dim=-1).float().exp()
        torch.testing.assert_close(pred.member_probs[k], expected, rtol=1e-6, atol=1e-7)
    assert (pred.member_probs[0] - pred.member_probs[1]).abs().max() > 1e-2  # nets differ


@torch.no_grad()
def test_exhaustive_members_equal_masks_applied_by_hand():
    """Member j of ``exhaustive`` is the network with the 0/1 mask of bit pattern j, by hand."""
    model = exact_mlp()
    x = exact_inputs(4)
    pred = predict(model, x, "exhaustive")
    family = mask_family(model, x)
    kept = family.kept().double()  # [2^10, 10]: units of layer 2 then layer 4
    a1, a2 = kept[:, :6, None], kept[:, 6:, None]  # [M, units, 1], broadcast over examples
    h = torch.relu(model[0](x)).T  # [6, N]
    logits = torch.einsum("cu,mun->mnc", model[3].weight, 2 * a1 * h) + model[3].bias
    logits = 2 * a2.transpose(1, 2) * logits  # second layer masks the logits themselves
    expected = F.log_softmax(logits, dim=-1).float().exp()
    assert torch.equal(pred.member_probs, expected)


STRATEGY_CASES = {
    "deterministic": (exact_mlp, {}),
    "members/subnets": (exact_mlp, {"n_members": 4}),
    "members/ensemble": (lambda: StackedNets(3), {}),
    "exhaustive": (exact_mlp, {}),
}


CHUNKINGS = {
    "one row per forward": {"memory_budget_mb": TINY_BUDGET},
    "small budget": {"memory_budget_mb": 0.01},
    "max_rows=5": {"max_rows": 5},
}


@torch.no_grad()
@pytest.mark.parametrize("case", STRATEGY_CASES)
@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_chunked_equals_unchunked(case, chunking):
    build, options = STRATEGY_CASES[case]
    model = build()
    if "n_members" in options:
        control.set_n_members(model, options["n_members"])
    if isinstance(model, StackedNets):  # small integers for the ensemble too: exact arithmetic
        g = torch.Generator().manual_seed(2)
        for t in model.parameters():
            t.data.copy_(torch.randint(-3, 4, t.shape, generator=g).double())
    x = exact_inputs(7)
    strategy = case.split("/")[0]
    whole = predict(model, x, strategy, memory_budget_mb=1e6, max_rows=10**9)
    chunked = predict(model, x, strategy, **CHUNKINGS[chunking])
    assert torch.equal(whole.member_probs, chunked.member_probs)
    if whole.weights is not None:
        assert torch.equal(whole.weights, chunked.weights)


def test_chunk_sizes_split_examples_first_then_members():
    row = 1024  # bytes per stacked row; a 1 MB budget holds 1024 rows
    assert chunk_sizes(32, 1000, row, 1) == (32, 32)
    assert chunk_sizes(32, 10, row, 1) == (32, 10)
    assert chunk_sizes(65536, 100, row, 1) == (1024, 1)  # members split too
    assert chunk_sizes(4096, 100, row, TINY_BUDGET) == (1, 1)
    assert chunk_sizes(8, 1000, row, TINY_BUDGET, fixed_members=True) == (8, 1)
    assert chunk_sizes(32, 1000, row, 1, max_rows=100) == (32, 3)  # the tighter of the two
    assert cpu_max_rows(1024, threads=2) == 16 * 2**20 // 1024
    assert cpu_max_rows(2**20, threads=1) == 256  # at least CPU_MIN_ROWS per thread
    assert cpu_max_rows(2**20, threads=2) == 512
    for m, n, budget in itertools.product((1, 7, 5000), (1, 30, 999), (TINY_BUDGET, 0.1, 3)):
        mc, bc = chunk_sizes(m, n, row, budget)
        assert 1 <= mc <= m and 1 <= bc <= n
        assert mc * bc <= max(1, int(budget * 2**20) // row)


def wide_mlp() -> nn.Sequential:
    """Rows of ~0.5 MB (the cache-sized working set alone would give ~16 rows per forward);
    small-integer float64 weights and inputs, so any chunking computes the same exact logits."""
    model = nn.Sequential(nn.Linear(6, 10000), nn.ReLU(), Dropout(0.5), nn.Linear(10000, 3))
    g = torch.Generator().manual_seed(3)
    for t in model.parameters():
        t.data = torch.randint(-3, 4, t.shape, generator=g).double()
    return model.eval()


@torch.no_grad()
def test_small_input_is_one_forward_and_equals_the_chunked():
    """Below ``CPU_MIN_ROWS`` rows per thread (and within the memory budget) the whole ``M x N``
    input is one forward: MC gives the very masks of an unlimited chunk; deterministic members
    equal any chunking bit for bit."""
    model = wide_mlp()
    x = torch.randint(-2, 3, (12, 6), generator=torch.Generator().manual_seed(0)).double()
    row = row_bytes(model, x[:1])
    assert cpu_max_rows(row, threads=1) == 256 and cpu_max_rows(row, threads=2) == 512
    assert chunk_sizes(32, 12, row, 256, max_rows=cpu_max_rows(row, threads=2)) == (32, 12)
    assert chunk_sizes(32, 12, row, 256, max_rows=cpu_max_rows(row, threads=1)) == (32, 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        default = predict(model, x, "mc", samples=32)  # 384 rows: one forward with 2 threads
        torch.manual_seed(0)
        whole = predict(model, x, "mc", samples=32, memory_budget_mb=1e6, max_rows=10**9)
        assert torch.equal(default.member_probs, whole.member_probs)
        control.set_n_members(model, 32)
        one = predict(model, x, "members")
        for max_rows in (5, 100):
            assert torch.equal(
                predict(model, x, "members", max_rows=max_rows).member_probs, one.member_probs
            )
    finally:
        torch.set_num_threads(threads)


def test_predict_restores_the_model_state():
    model = exact_mlp().train()
    control.set_n_members(model, 4)
    layers = control.dropout_layers(model)
    layers[0].set_mode("sample")
    before = [(m.mode, m.members, m.assignment, m.bank) for m in layers]
    for strategy in ("deterministic", "mc", "members", "exhaustive"):
        predict(model, exact_inputs(3), strategy, samples=3)
        assert model.training
        assert [(m.mode, m.members, m.assignment, m.bank) for m in layers] == before, strategy


# ----------------------------------------------------------------------------- explicit banks


@torch.no_grad()
def test_explicit_masks_override_member_masks_and_are_restored():
    layer = Dropout(0.5, seed=3)
    model = nn.Sequential(layer)
    x = torch.ones(2, 4)
    bank = torch.tensor([[2.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    with control.member(model, 1):
        seeded = model(x)
    with control.explicit_masks(model, {layer: bank}), control.member(model, [1, 0]):
        out = model(x.repeat(2, 1))
        assert torch.equal(out, bank[[1, 1, 0, 0]])
        with pytest.raises(ConfigError) as error, control.member(model, 2):
            pass
        assert_one_line(error, "k=2", "[0, 2)", "explicit mask bank")
    assert layer.bank is None
    with control.member(model, 1):
        assert torch.equal(model(x), seeded)
    with (
        pytest.raises(ConfigError) as error,
        control.explicit_masks(model, {layer: torch.ones(3, 5)}),
        control.member(model, 0),
    ):
        model(x)
    assert_one_line(error, "(5,)", "(4,)")
    assert layer.bank is None
    with pytest.raises(ConfigError) as error, control.explicit_masks(model, {Dropout(0.5): bank}):
        pass
    assert_one_line(error, "not a dropout layer of Sequential")


# ----------------------------------------------------------------------------- aggregates


def test_weighted_aggregates_match_numpy():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(5, 7, 3, generator=g, dtype=torch.float64), dim=-1)
    w = torch.rand(5, generator=g, dtype=torch.float64)
    w /= w.sum()
    pn, wn = probs.numpy(), w.numpy()
    np.testing.assert_allclose(aggregate(probs, "mean", w).numpy(), np.einsum("m,mnc->nc", wn, pn))
    logs = np.einsum("m,mnc->nc", wn, np.log(pn))
    geometric = np.exp(logs) / np.exp(logs).sum(-1, keepdims=True)
    np.testing.assert_allclose(aggregate(probs, "geometric", w).numpy(), geometric)
    uniform = torch.full((5,), 0.2, dtype=torch.float64)
    for how in ("mean", "geometric"):
        torch.testing.assert_close(aggregate(probs, how, uniform), aggregate(probs, how))


def test_geometric_from_logprobs_survives_float32_underflow():
    """Why :func:`predict` keeps log-probabilities for ``geometric``: a confident member's tiny
    probabilities underflow float32 to 0 and clamp at log(tiny) = -87, which biases the log-mean
    when confident members disagree (true log-means -100 vs -60; clamped: -43.7 vs -43.7)."""
    logp = torch.tensor([[[-200.0, 0.0]], [[0.0, -120.0]]], dtype=torch.float64)  # 2 members
    logp = logp - torch.logsumexp(logp, dim=-1, keepdim=True)
    reference = torch.softmax(logp.mean(dim=0), dim=-1)  # float64, no clamp
    pred = Predictions(logp.exp().float(), "geometric", member_logprobs=logp.float())
    torch.testing.assert_close(pred.probs.double(), reference, rtol=0, atol=1e-6)
    from_probs = Predictions(logp.exp().float(), "geometric").probs.double()
    assert (from_probs - reference).abs().max() > 0.1  # power: stored probabilities are biased


def test_predict_keeps_logprobs_for_geometric_only():
    model = exact_mlp()
    x = exact_inputs(3)
    assert predict(model, x, "mc", samples=2).member_logprobs is None
    pred = predict(model, x, "mc", samples=2, aggregate="geometric")
    torch.testing.assert_close(pred.member_logprobs.exp(), pred.member_probs)


# ----------------------------------------------------------------------------- errors


def test_exhaustive_above_the_limit_is_refused():
    model = nn.Sequential(nn.Linear(3, 20), nn.ReLU(), Dropout(0.5), nn.Linear(20, 2))
    with pytest.raises(ConfigError) as error:
        predict(model, torch.randn(4, 3), "exhaustive")
    assert_one_line(error, f"max_members={DEFAULT_MAX_MEMBERS}", "n=20", "2^20")
    with pytest.raises(ConfigError) as error:
        predict(head_dropout_mlp(0.5, "inverted"), inputs(2, (6,)), "exhaustive", max_members=255)
    assert_one_line(error, "max_members=255", "n=8")
    predict(head_dropout_mlp(0.5, "inverted"), inputs(2, (6,)), "exhaustive", max_members=256)


@pytest.mark.parametrize(
    ("layer", "fragments"),
    [
        (Dropout(0.3, structure="block", block_size=2), ("structure='block'", "mc")),
        (Dropout(0.3, dist="gaussian", structure="channel"), ("dist='gaussian'", "Bernoulli")),
    ],
)
def test_exhaustive_refuses_what_it_cannot_enumerate(layer, fragments):
    model = nn.Sequential(nn.Conv1d(1, 2, 3), layer, nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ConfigError) as error:
        predict(model, torch.randn(3, 1, 4), "exhaustive")
    assert_one_line(error, *fragments)


def plain_model() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 4), Dropout(0.3))


@pytest.mark.parametrize(
    ("build", "strategy", "kwargs", "fragments"),
    [
        (plain_model, "bogus", {}, ("strategy='bogus'", "deterministic, exhaustive, mc, members")),
        (plain_model, "mc", {"aggregate": "median"}, ("aggregate='median'", "mean, geometric")),
        (plain_model, "mc", {"samples": 0}, ("mc_samples=0", ">= 1")),
        (plain_model, "mc", {}, ("mc_samples=None",)),
        (plain_model, "members", {}, ("strategy='members'", "n_members", "stacked_members")),
        (lambda: nn.Linear(5, 4), "members", {}, ("strategy='members'",)),
        (lambda: nn.Linear(5, 4), "exhaustive", {}, ("exhaustive", "dropout")),
        (lambda: nn.Linear(5, 4), "mc", {"samples": 2}, ("MC dropout", "dropout.p")),
        (lambda: StackedNets(2), "deterministic", {}, ("stacked ensemble", "members")),
        (lambda: StackedNets(2), "exhaustive", {}, ("stacked ensemble", "members")),
    ],
)
def test_bad_requests_raise_one_line_config_errors(build, strategy, kwargs, fragments):
    model = build().double()
    with pytest.raises(ConfigError) as error:
        predict(model, torch.randn(3, 5, dtype=torch.float64), strategy, **kwargs)
    assert_one_line(error, *fragments)


@pytest.mark.parametrize(
    ("weights", "fragment"),
    [
        (torch.full((4,), 0.2), "sum to 1"),
        (torch.tensor([1.5, -0.5, 0.0, 0.0]), "non-negative"),
        (torch.full((2, 2), 0.25), "[M] with M=4"),
        (torch.tensor([1, 0, 0, 0]), "float tensor"),
    ],
)
def test_bad_weights_raise_one_line_config_errors(weights, fragment):
    probs = torch.full((4, 2, 3), 1 / 3)
    with pytest.raises(ConfigError) as error:
        aggregate(probs, "mean", weights)
    assert_one_line(error, fragment)


# ----------------------------------------------------------------------------- shared prefix


class RowCounter(nn.Module):
    """Identity that counts the rows it sees (the prefix's cost)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return x


def prefix_cnn() -> nn.Sequential:
    """A conv prefix (counted) before the first dropout layer; a second dropout in the head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        RowCounter(),
        nn.ReLU(),
        Dropout(0.3, structure="channel", seed=1),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 8),
        nn.ReLU(),
        Dropout(0.5, seed=2),
        nn.Linear(8, 3),
    ).eval()


@torch.no_grad()
@pytest.mark.parametrize("strategy", ("mc", "members", "exhaustive"))
def test_shared_prefix_runs_once_per_example_and_equals_the_unshared_run(strategy):
    """Members stacked at the first dropout layer: the prefix sees N rows, not M x N, and every
    member's probabilities (and the RNG stream after the call) are those of the unshared run."""
    model = prefix_cnn()
    if strategy == "members":
        control.set_n_members(model, 4)
    if strategy == "exhaustive":  # a small mask family: 4 channels x 8 hidden units = 2^12 masks
        model[8].p = 0.0
    x = torch.randn(9, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    results, states, rows = {}, {}, {}
    for share in (True, False):
        model[1].rows = 0
        torch.manual_seed(5)
        results[share] = predict(model, x, strategy, samples=6, max_rows=20, share_prefix=share)
        states[share] = torch.random.get_rng_state()
        rows[share] = model[1].rows
    probes = rows[False] - results[False].n_members * len(x)  # one-example probes (row_bytes, ...)
    check = 2 * 2 + 2  # shared_prefix's check: 2 examples x 2 members stacked, then shared
    assert rows[True] == len(x) + probes + check, (rows, probes)
    assert torch.equal(results[True].member_probs, results[False].member_probs)
    assert torch.equal(states[True], states[False])


class KeepsBatchSize(nn.Module):
    """Reads the batch size before the dropout layer and reshapes with it after: not row-wise."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.drop, self.b = nn.Linear(5, 6), Dropout(0.5), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return self.b(self.drop(torch.relu(self.a(x))).view(n, -1))


class AddsBatchSize(nn.Module):
    """The batch size enters the values of the prefix: sharing would change the numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.drop, self.b = nn.Linear(5, 6), Dropout(0.5), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.drop(torch.relu(self.a(x) + x.shape[0])))


class ReusedDropout(nn.Module):
    """One dropout module called twice per forward: no single split point."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.drop, self.b = nn.Linear(5, 6), Dropout(0.5), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.drop(torch.relu(self.drop(self.a(x)))))


@torch.no_grad()
@pytest.mark.parametrize("build", (KeepsBatchSize, AddsBatchSize, ReusedDropout))
def test_prefix_that_is_not_shareable_runs_unshared(build):
    from dropens.batching import Members, shared_prefix

    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(7, 5)
    assert shared_prefix(model, x, Members(8, lambda j0, j1: control.mc(model))) is None
    torch.manual_seed(1)
    shared = predict(model, x, "mc", samples=8)
    torch.manual_seed(1)
    assert torch.equal(
        shared.member_probs, predict(model, x, "mc", 8, share_prefix=False).member_probs
    )


def test_cnn2d_mc_is_bit_identical_with_the_shared_prefix():
    """The backbone the studies use: sharing conv1 changes no bit of the MC members."""
    from dropens.models import build_model

    spec = {"p": 0.1, "dist": "bernoulli", "structure": "element", "scale": "inverted"}
    arch = {"name": "cnn2d", "channels": [8, 16], "hidden": 32, "dropout_sites": ["conv", "hidden"]}
    torch.manual_seed(0)
    model = build_model(arch, spec, (1, 28, 28), 10).eval()
    x = torch.randn(20, 1, 28, 28)
    out = {}
    for share in (True, False):
        torch.manual_seed(2)
        out[share] = predict(model, x, "mc", samples=8, share_prefix=share).member_probs
    assert torch.equal(out[True], out[False])
