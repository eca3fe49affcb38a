"""Tests for :mod:`dropens.masks`: distributions x structures x scaling as pure functions.

Statistical checks follow the convention of :mod:`stats_helpers` (``Z = 4.5`` standard errors
derived from the sampling distribution, false-failure probability ``P_FALSE`` per check, Bonferroni
:func:`z_max` over maxima); the seeds are fixed, so each run is reproducible.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from scipy import optimize, stats
from stats_helpers import P_FALSE, Z, assert_within, binomial_se, z_max

from dropens import masks

PS = (0.1, 0.3, 0.5, 0.8)
DISTS = ("bernoulli", "gaussian", "uniform")
SPATIAL = {1: (16,), 2: (4, 4), 3: (4, 2, 2)}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- shared-structure checks


def constant_over_positions(y: torch.Tensor) -> bool:
    """``y`` ``(N, C, *spatial)`` takes one value per (n, c)."""
    flat = y.flatten(2)
    return bool((flat == flat[:, :, :1]).all())


def constant_over_channels(y: torch.Tensor) -> bool:
    """``y`` ``(N, C, *spatial)`` takes one value per (n, position)."""
    return bool((y == y[:, :1]).all())


_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def is_union_of_cubes(dropped: torch.Tensor, b: int, clipped: bool = False) -> bool:
    """``dropped`` (bool ``(N, C, *spatial)``) is a union of full ``b``-cubes inside the map
    (``clipped=True``: of ``b``-cubes that may stick out of the map, clipped at its border).

    Morphological opening: erosion = windows lying entirely in the set (avg-pool == 1), dilation =
    the union of those windows (zero-pad ``b - 1`` then max-pool); a set equals its opening iff it
    is a union of ``b``-cubes. For clipped cubes the map is first surrounded by a band of width
    ``b - 1`` counted as dropped, and the opening is compared on the map only.
    """
    d = dropped.to(torch.float64)
    nd = d.dim() - 2
    pad = b - 1 if clipped else 0
    if pad:
        d = F.pad(d, [pad] * (2 * nd), value=1.0)
    full = (_AVG_POOL[nd](d, b, stride=1) > 1 - 0.5 / b**nd).to(d.dtype)
    opened = _MAX_POOL[nd](F.pad(full, [b - 1] * (2 * nd)), b, stride=1)
    if pad:
        for dim in range(2, 2 + nd):
            opened = opened.narrow(dim, pad, dropped.shape[dim])
    return torch.equal(opened.bool(), dropped)


def test_shared_structure_checks_on_hand_made_masks():
    """The checkers themselves: hand-drawn sets that are / are not unions of cubes."""
    two_squares = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    two_squares[0, 0, 0:2, 0:2] = True
    two_squares[0, 0, 1:3, 1:3] = True  # overlapping 2x2 squares
    assert is_union_of_cubes(two_squares, 2)
    assert not is_union_of_cubes(two_squares, 3)
    l_shape = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    l_shape[0, 0, 0, 0] = l_shape[0, 0, 1, 0] = l_shape[0, 0, 1, 1] = True
    assert not is_union_of_cubes(l_shape, 2)
    assert is_union_of_cubes(l_shape, 1)
    segment = torch.tensor([[[0, 1, 1, 1, 0, 1, 1, 0]]], dtype=torch.bool)
    assert is_union_of_cubes(segment, 2)
    assert not is_union_of_cubes(segment, 3)
    corner = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    corner[0, 0, 0, 0] = True  # a 2x2 block starting at (-1, -1), clipped to the map
    assert is_union_of_cubes(corner, 2, clipped=True)
    assert not is_union_of_cubes(corner, 2)
    centre = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    centre[0, 0, 1, 1] = True  # a lone interior cell is no clipped 2x2 block
    assert not is_union_of_cubes(centre, 2, clipped=True)
    y = torch.arange(12.0).reshape(1, 3, 4)
    assert not constant_over_positions(y)
    assert not constant_over_channels(y)
    assert constant_over_positions(torch.ones(2, 3, 4) * torch.arange(3.0)[:, None])
    assert constant_over_channels(torch.ones(2, 3, 4) * torch.arange(4.0))


# ----------------------------------------------------------------------------- block seed rate


def brute_force_counts(spatial: tuple[int, ...], b: int, extended: bool = False) -> np.ndarray:
    """How many seeds cover each position, by enumerating every seed's cube: seeds where a whole
    cube fits (torchvision), or (``extended``) every cube start overlapping the map, clipped."""
    counts = np.zeros(spatial)
    lo = -(b - 1) if extended else 0
    for start in itertools.product(*(range(lo, length - b + 1 - lo) for length in spatial)):
        counts[tuple(slice(max(s, 0), s + b) for s in start)] += 1
    return counts


def expected_dropped(gamma: float, counts: np.ndarray) -> float:
    return float(np.mean(1.0 - (1.0 - gamma) ** counts))


def torchvision_gamma(p: float, h: int, w: int, b: int) -> float:
    """The seed rate of ``torchvision.ops.drop_block2d`` (Ghiasi et al. 2018, eq. 1)."""
    return p * h * w / (b**2 * (h - b + 1) * (w - b + 1))


@pytest.mark.parametrize("p", PS)
def test_block_seed_rate_hand_computed(p):
    # b = 1: one seed per position -> gamma = p; otherwise each position has b^d covering seeds
    assert masks.block_seed_rate((9, 7), 1, p) == pytest.approx(p, abs=1e-12)
    assert masks.block_seed_rate((5, 5), 5, p) == pytest.approx(1 - (1 - p) ** (1 / 25), abs=1e-12)
    assert masks.block_seed_rate((3,), 2, p) == pytest.approx(1 - math.sqrt(1 - p), abs=1e-12)
    assert masks.block_seed_rate((3, 3), 2, 0.0) == 0.0


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize(
    ("spatial", "b"), [((7,), 3), ((16, 16), 3), ((16, 16), 4), ((12, 20), 5), ((5, 6, 7), 3)]
)
def test_block_seed_rate_matches_brute_force_root(spatial, b, p):
    """Independent reference: coverage by enumeration on the extended grid (every position is
    covered b^d times), root by scipy's brentq; every position, not just the mean, drops p."""
    counts = brute_force_counts(spatial, b, extended=True)
    assert (counts == b ** len(spatial)).all()
    ref = optimize.brentq(lambda g: expected_dropped(g, counts) - p, 0.0, 1.0, xtol=1e-15)
    gamma = masks.block_seed_rate(spatial, b, p)
    assert gamma == pytest.approx(ref, rel=1e-9)
    assert np.allclose(1.0 - (1.0 - gamma) ** counts, p, atol=1e-12)


@pytest.mark.parametrize(
    ("shape", "b", "p"),
    [((20000, 1, 10), 4, 0.3), ((4000, 1, 8, 8), 3, 0.5), ((4000, 1, 8, 8), 2, 0.1)],
)
def test_block_drop_probability_is_p_at_every_position(shape, b, p):
    """P(position j dropped) = p at every j, border included (the noise has mean 1 per unit)."""
    noise = masks.sample_noise(shape, p, structure="block", block_size=b, generator=gen(1))
    rate = (noise == 0).double().mean(dim=(0, 1))
    se = binomial_se(p, shape[0])
    dev = ((rate - p).abs() / se).max().item()
    assert dev <= z_max(rate.numel()), f"worst position off by {dev:.1f} SE"


@pytest.mark.parametrize("p", (0.3, 0.5))  # deficit 0.04-0.13, >= 10 SE (at p = 0.1 only 0.005)
@pytest.mark.parametrize("b", (3, 5))
def test_torchvision_drop_block_drops_less_than_p(b, p):
    """Demonstration: torchvision with the same p drops its closed-form fraction, which is < p."""
    h = w = 16
    counts = brute_force_counts((h, w), b)
    expected_tv = expected_dropped(torchvision_gamma(p, h, w, b), counts)
    torch.manual_seed(2)
    out = torchvision.ops.drop_block2d(torch.ones(512, 4, h, w), p, b)
    per_sample = (out == 0).double().mean(dim=(2, 3)).flatten()
    se = per_sample.std().item() / math.sqrt(per_sample.numel())
    assert_within(per_sample.mean().item(), expected_tv, se, what="torchvision fraction")
    assert per_sample.mean().item() < p - Z * se
    assert expected_tv < p


# ----------------------------------------------------------------------------- dropped fraction


def group_count(shape: tuple[int, ...], structure: str) -> int:
    """Independent draws in a mask for ``shape``: elements, (n, c) pairs or (n, position) pairs."""
    n, c, *spatial = shape
    groups = {"element": math.prod(shape), "channel": n * c, "location": n * math.prod(spatial)}
    return groups[structure]


FRACTION_SHAPES = {
    # 2^18 elements each; 2^18 (element) or 2^16 (channel, location) independent draws
    "element": {1: (64, 4, 1024), 2: (64, 4, 32, 32), 3: (64, 4, 16, 8, 8)},
    "channel": {1: (4096, 16, 4), 2: (4096, 16, 2, 2), 3: (4096, 16, 2, 1, 2)},
    "location": {1: (256, 4, 256), 2: (256, 4, 16, 16), 3: (256, 4, 4, 8, 8)},
}


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("ndim", (1, 2, 3))
@pytest.mark.parametrize("structure", ("element", "channel", "location"))
def test_dropped_fraction_is_p(structure, ndim, p):
    """Bernoulli: fraction of zeros in the output is p, SE over the independent draws (groups)."""
    shape = FRACTION_SHAPES[structure][ndim]
    y = masks.dropout(torch.ones(shape), p, structure=structure, generator=gen(10 + ndim))
    n = group_count(shape, structure)
    se = binomial_se(p, n)
    assert_within((y == 0).double().mean().item(), p, se, what=f"{structure} dropped fraction")


BLOCK_CASES = [
    # (shape, block_size, share_channels): 2^17 units per draw; samples = (n, c) or n
    ((256, 8, 64), 5, False),
    ((64, 8, 16, 16), 3, False),
    ((64, 8, 16, 16), 4, False),
    ((64, 8, 16, 16), 7, False),
    ((64, 8, 12, 20), 5, False),
    ((64, 4, 8, 8, 8), 3, False),
    ((512, 16, 16, 16), 3, True),
    ((256, 16, 8, 8, 8), 2, True),
]


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize(("shape", "b", "share"), BLOCK_CASES)
def test_block_dropped_fraction_is_p(shape, b, share, p):
    """DropBlock with the exact seed rate drops p in expectation (SE from per-sample fractions)."""
    noise = masks.sample_noise(
        shape, p, structure="block", block_size=b, share_channels=share, generator=gen(20)
    )
    assert noise.shape == (shape[0], 1 if share else shape[1], *shape[2:])
    per_sample = (noise == 0).double().flatten(2).mean(-1).flatten()
    se = per_sample.std().item() / math.sqrt(per_sample.numel())
    assert_within(per_sample.mean().item(), p, se, what="block dropped fraction")


@pytest.mark.parametrize("p", (0.3, 0.8))
def test_block_as_large_as_the_map_still_drops_p(p):
    """b = H = W: blocks are clipped at the border; each position still drops with probability p."""
    noise = masks.sample_noise(
        (8192, 2, 5, 5), p, structure="block", block_size=5, generator=gen(3)
    )
    per_sample = (noise == 0).double().flatten(2).mean(-1).flatten()
    se = per_sample.std().item() / math.sqrt(per_sample.numel())
    assert_within(per_sample.mean().item(), p, se, what="dropped fraction with b = L")


# ----------------------------------------------------------------------------- distributions


def fourth_central_moment(dist: str, p: float) -> float:
    """Closed-form E[(A - 1)^4] of unit-mean noise with variance v = p / keep."""
    keep = 1 - p
    v = p / keep
    if dist == "bernoulli":  # A - 1 = -1 w.p. p, p / keep w.p. keep
        return p + keep * (p / keep) ** 4
    if dist == "gaussian":
        return 3 * v**2
    return 9 * v**2 / 5  # uniform of half-width a: a^4 / 5 with a^2 = 3 v


N_DRAWS = 2**19


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("dist", DISTS)
def test_noise_mean_and_variance(dist, p):
    """Unit mean (SE sqrt(v / n)) and variance p / keep (SE sqrt((m4 - v^2) / n)).

    The variance is estimated about the known mean 1, ``mean((A - 1)^2)``, an i.i.d. mean whose SE
    is exactly ``sqrt((m4 - v^2) / n)`` (0 for Bernoulli at p = 1/2, where (A - 1)^2 = 1 always).
    """
    noise = masks.sample_noise((N_DRAWS,), p, dist=dist, generator=gen(4), dtype=torch.float64)
    v = p / (1 - p)
    assert_within(noise.mean().item(), 1.0, math.sqrt(v / N_DRAWS), what="mean")
    se_var = math.sqrt((fourth_central_moment(dist, p) - v**2) / N_DRAWS)
    assert_within(((noise - 1) ** 2).mean().item(), v, se_var, what="variance")


@pytest.mark.parametrize("p", PS)
def test_bernoulli_values(p):
    noise = masks.sample_noise((4096,), p, generator=gen(5))
    keep = torch.tensor(1 - p, dtype=torch.float32)
    assert set(noise.unique().tolist()) == {0.0, (1 / keep).item()}


@pytest.mark.parametrize("p", (0.05, *PS))
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float32, torch.float64))
def test_bernoulli_in_place_draw_is_the_reference_expression(p, dtype):
    """The sampler works in place on its uniform draw; its values (and so every stored run that
    used the out-of-place form ``(u < keep).to(dtype) / keep``) are bit for bit the same."""
    shape = (64, 3, 5, 7)
    u = torch.rand(shape, generator=gen(11), dtype=masks._draw_dtype(dtype))
    reference = (u < 1.0 - p).to(dtype) / (1.0 - p)
    noise = masks.sample_noise(shape, p, generator=gen(11), dtype=dtype)
    assert noise.dtype == dtype
    assert torch.equal(noise, reference)


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("dist", ("gaussian", "uniform"))
def test_continuous_noise_law_kolmogorov_smirnov(dist, p):
    """KS test against scipy's law; rejects at level P_FALSE (the false-failure probability)."""
    v = p / (1 - p)
    noise = masks.sample_noise(
        (2**17,), p, dist=dist, generator=gen(6), dtype=torch.float64
    ).numpy()
    if dist == "gaussian":
        law = stats.norm(loc=1.0, scale=math.sqrt(v))
    else:
        a = math.sqrt(3 * v)
        law = stats.uniform(loc=1.0 - a, scale=2 * a)
        assert noise.min() >= 1 - a and noise.max() <= 1 + a
    assert stats.kstest(noise, law.cdf).pvalue > P_FALSE


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("ndim", (1, 2, 3))
@pytest.mark.parametrize("dist", DISTS)
def test_channel_structure_is_constant_over_positions(dist, ndim):
    y = masks.dropout(torch.ones(64, 8, *SPATIAL[ndim]), 0.5, dist, "channel", generator=gen(7))
    assert constant_over_positions(y)
    assert not constant_over_channels(y)  # power: the other sharing does not hold by accident
    element = masks.dropout(
        torch.ones(64, 8, *SPATIAL[ndim]), 0.5, dist, "element", generator=gen(7)
    )
    assert not constant_over_positions(element)


@pytest.mark.parametrize("ndim", (1, 2, 3))
@pytest.mark.parametrize("dist", DISTS)
def test_location_structure_is_constant_over_channels(dist, ndim):
    y = masks.dropout(torch.ones(64, 8, *SPATIAL[ndim]), 0.5, dist, "location", generator=gen(8))
    assert constant_over_channels(y)
    assert not constant_over_positions(y)
    element = masks.dropout(
        torch.ones(64, 8, *SPATIAL[ndim]), 0.5, dist, "element", generator=gen(8)
    )
    assert not constant_over_channels(element)


@pytest.mark.parametrize("share", (False, True))
@pytest.mark.parametrize(
    ("spatial", "b"), [((32,), 4), ((16, 16), 3), ((16, 16), 4), ((12, 20), 5), ((8, 8, 8), 3)]
)
@pytest.mark.parametrize("p", (0.1, 0.5))
def test_block_dropped_set_is_union_of_cubes(spatial, b, share, p):
    y = masks.dropout(
        torch.ones(16, 4, *spatial),
        p,
        structure="block",
        block_size=b,
        share_channels=share,
        generator=gen(9),
    )
    dropped = y == 0
    assert is_union_of_cubes(dropped, b, clipped=True)
    assert not is_union_of_cubes(
        dropped, b + 1, clipped=True
    )  # power: blocks are exactly b wide, not wider
    assert constant_over_channels(y) == share
    assert y.unique().tolist() == [0.0, pytest.approx(1 / (1 - p))]
    element = masks.dropout(torch.ones(16, 4, *spatial), 0.5, generator=gen(9)) == 0
    assert not is_union_of_cubes(
        element, b, clipped=True
    )  # power: the checker rejects unstructured masks


@pytest.mark.parametrize(
    ("structure", "shape", "expected"),
    [
        ("element", (2, 3, 4, 5), (2, 3, 4, 5)),
        ("element", (2, 7), (2, 7)),
        ("channel", (2, 3, 4, 5), (2, 3, 1, 1)),
        ("channel", (2, 3, 4, 5, 6), (2, 3, 1, 1, 1)),
        ("location", (2, 3, 4, 5), (2, 1, 4, 5)),
        ("location", (2, 3, 4), (2, 1, 4)),
    ],
)
def test_noise_shape(structure, shape, expected):
    assert masks.noise_shape(shape, structure) == expected
    assert masks.sample_noise(shape, 0.5, structure=structure, generator=gen()).shape == expected


# ----------------------------------------------------------------------------- purity, scaling


@pytest.mark.parametrize(
    "spec",
    [
        {"dist": "bernoulli"},
        {"dist": "gaussian", "structure": "channel"},
        {"dist": "uniform", "structure": "location"},
        {"structure": "block", "block_size": 3},
        {"structure": "block", "block_size": 2, "share_channels": True},
    ],
)
def test_noise_is_a_pure_function_of_the_generator(spec):
    shape = (4, 3, 8, 8)
    state = torch.get_rng_state()
    a = masks.sample_noise(shape, 0.3, generator=gen(11), **spec)
    b = masks.sample_noise(shape, 0.3, generator=gen(11), **spec)
    c = masks.sample_noise(shape, 0.3, generator=gen(12), **spec)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not touched


def test_member_noise_is_a_pure_function_of_seed_member_and_shape():
    kw = {"unit_shape": (4, 8, 8), "p": 0.3, "structure": "channel"}
    a = masks.member_noise(5, 0, **kw)
    assert a.shape == (1, 4, 1, 1) and a.dtype == torch.float64  # exact 1/keep in any dtype
    assert torch.equal(a, masks.member_noise(5, 0, **kw))
    seeds = {masks.mask_seed(s, k, u) for s in (5, 6) for k in (0, 1, 2) for u in ((4, 8), (8, 4))}
    assert len(seeds) == 12
    assert all(0 <= s < 2**63 for s in seeds)
    big = {"unit_shape": (4096,), "p": 0.5}
    assert not torch.equal(masks.member_noise(5, 0, **big), masks.member_noise(5, 1, **big))
    assert not torch.equal(masks.member_noise(5, 0, **big), masks.member_noise(6, 0, **big))


@pytest.mark.parametrize("p", PS)
def test_scale_none_bernoulli_is_the_raw_mask(p):
    """``scale="none"`` multiplies by keep: Bernoulli output is exactly x or 0."""
    x = torch.randn(4096, generator=gen(13))
    y = masks.dropout(x, p, scale="none", generator=gen(14))
    assert bool(((y == x) | (y == 0)).all())
    assert bool((y == 0).any()) and bool((y == x).any())


@pytest.mark.parametrize("scale", masks.SCALES)
@pytest.mark.parametrize("p", PS)
def test_functional_deterministic_pass(p, scale):
    x = torch.randn(8, 3, 4, 4, generator=gen(15))
    y = masks.dropout(x, p, scale=scale, training=False)
    assert torch.equal(y, x if scale == "inverted" else x * (1 - p))
    assert masks.dropout(x, 0.0, scale=scale) is x
    assert masks.dropout(x, 0.0, scale=scale, training=False) is x


@pytest.mark.parametrize("dims,block", [(1, 5), (2, 3), (2, 4), (2, 7), (3, 3)])
def test_block_max_equals_one_square_max_pool(dims, block):
    """The separable per-axis max (used for large blocks) gives exactly the b^d-window max."""
    from dropens.masks import _MAX_POOL, block_max

    g = torch.Generator().manual_seed(dims * 10 + block)
    seeds = (torch.rand(2, 3, *([9 + block - 1] * dims), generator=g) < 0.1).float()
    expected = _MAX_POOL[dims](seeds, kernel_size=block, stride=1)
    assert torch.equal(block_max(seeds, block), expected)


@pytest.mark.parametrize("share", (False, True))
def test_block_in_place_seed_draw_is_the_reference_expression(share):
    """The DropBlock seeds are drawn in place; the keep-mask equals the out-of-place form."""
    shape, b, p = (16, 3, 9, 9), 3, 0.3
    gamma = masks.block_seed_rate((9, 9), b, p)
    u = torch.rand((16, 1 if share else 3, 11, 11), generator=gen(12))
    reference = 1.0 - masks.block_max((u < gamma).to(torch.float32), b)
    keep_mask = masks.block_keep_mask(
        shape, p, b, share, gen(12), torch.device("cpu"), torch.float32
    )
    assert torch.equal(keep_mask, reference)
