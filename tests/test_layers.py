"""Tests for :class:`dropens.layers.Dropout`: moments, references, modes, member masks, errors.

Statistical checks follow the convention of :mod:`stats_helpers` (``Z = 4.5`` standard errors
derived from the sampling distribution, false-failure probability ``P_FALSE`` per check, Bonferroni
:func:`z_max` over maxima); ratio estimators take their SE from per-sample clusters. Sample-mode
draws use the global RNG, seeded with ``torch.manual_seed`` in every statistical test.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from stats_helpers import Z, assert_within, binomial_se, z_max
from torch import nn

import dropens
from dropens import masks
from dropens.errors import ConfigError, InputError
from dropens.layers import Dropout

PS = (0.1, 0.3, 0.5, 0.8)
DISTS = ("bernoulli", "gaussian", "uniform")
SHARED = ("element", "channel", "location")  # structures available for every distribution


def spec(dist: str = "bernoulli", structure: str = "element") -> dict:
    return {"dist": dist, "structure": structure} | (
        {"block_size": 3} if structure == "block" else {}
    )


def fourth_central_moment(dist: str, p: float) -> float:
    """Closed-form E[(A - 1)^4] of unit-mean noise with variance v = p / keep."""
    keep, v = 1 - p, p / (1 - p)
    if dist == "bernoulli":  # A - 1 = -1 w.p. p, p / keep w.p. keep
        return p + keep * (p / keep) ** 4
    return 3 * v**2 if dist == "gaussian" else 9 * v**2 / 5  # uniform: a^4 / 5, a^2 = 3 v


def constant_over_positions(y: torch.Tensor) -> bool:
    flat = y.flatten(2)
    return bool((flat == flat[:, :, :1]).all())


# ----------------------------------------------------------------------------- moments (points 2, 3)


# every p for inverted scaling; "none" only rescales the same noise by keep, so two p suffice
SCALED = [("inverted", p) for p in PS] + [("none", 0.1), ("none", 0.8)]


@pytest.mark.parametrize(("scale", "p"), SCALED)
@pytest.mark.parametrize("structure", SHARED)
@pytest.mark.parametrize("dist", DISTS)
def test_mean_output_equals_input(dist, structure, scale, p):
    """E[y] = x (inverted) or keep * x (none), per unit, over N independent examples.

    Each unit's mean over the batch has SE ``|E y| sqrt(v / N)`` (v = p / keep); the worst of the
    64 units is compared with the Bonferroni quantile.
    """
    g = torch.Generator().manual_seed(0)
    x0 = (0.5 + 1.5 * torch.rand(4, 4, 4, generator=g)) * torch.randn(4, 4, 4, generator=g).sign()
    n = 1024
    layer = Dropout(p, dist, structure, scale).train()
    torch.manual_seed(1)
    y = layer(x0.expand(n, 4, 4, 4).contiguous())
    target = x0 if scale == "inverted" else x0 * (1 - p)
    se = target.abs() * math.sqrt(p / (1 - p) / n)
    worst = ((y.mean(0) - target).abs() / se).max().item()
    assert worst <= z_max(x0.numel()), f"worst unit off by {worst:.1f} SE"


VAR_SHAPES = {  # 2^16 independent draws each
    "element": (16, 16, 16, 16),
    "channel": (2048, 32, 2, 1),
    "location": (512, 2, 8, 16),
}


@pytest.mark.parametrize(("scale", "p"), SCALED)
@pytest.mark.parametrize("structure", SHARED)
@pytest.mark.parametrize("dist", DISTS)
def test_variance_of_output_over_input(dist, structure, scale, p):
    """Var(y / x) = p / keep (inverted), keep^2 p / keep (none), over one unit per draw group.

    Estimated about the known mean (1 or keep) from the ``n`` independent groups, so its SE is
    exactly ``sqrt((m4 - var^2) / n)`` with the closed-form fourth central moment ``m4``.
    """
    shape = VAR_SHAPES[structure]
    g = torch.Generator().manual_seed(2)
    x = 0.5 + 1.5 * torch.rand(shape, generator=g, dtype=torch.float64)
    torch.manual_seed(3)
    r = Dropout(p, dist, structure, scale).train()(x) / x
    r = {"element": r, "channel": r[:, :, 0, 0], "location": r[:, 0]}[structure].flatten()
    c = 1.0 if scale == "inverted" else 1 - p  # r = c * A with A of mean 1, variance v
    v = p / (1 - p)
    se = c**2 * math.sqrt((fourth_central_moment(dist, p) - v**2) / r.numel())
    assert_within(((r - c) ** 2).mean().item(), c**2 * v, se, what="Var(y / x)")


# ----------------------------------------------------------------------------- references (point 7)


def two_sample(f1: float, se1: float, f2: float, se2: float, what: str) -> None:
    se = math.sqrt(se1**2 + se2**2)
    assert abs(f1 - f2) <= Z * se, (
        f"{what}: {f1:.5f} vs {f2:.5f}, |diff| > {Z} pooled SE = {se:.2e}"
    )


def binomial_pooled(d1: torch.Tensor, d2: torch.Tensor, what: str) -> None:
    """Two-sample test of two fractions of independent 0/1 draws (pooled binomial SE)."""
    n1, n2 = d1.numel(), d2.numel()
    f1, f2 = d1.double().mean().item(), d2.double().mean().item()
    pooled = (f1 * n1 + f2 * n2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert abs(f1 - f2) <= Z * se, (
        f"{what}: {f1:.5f} vs {f2:.5f}, |diff| > {Z} pooled SE = {se:.2e}"
    )


def neighbour_ratio(dropped: torch.Tensor, dim: int) -> tuple[float, float]:
    """P(next unit along ``dim`` dropped | unit dropped), and its SE.

    Ratio estimator ``r = sum a_i / sum b_i`` over independent samples i (the (n, c) maps); its SE
    is the delta-method ``sqrt(sum (a_i - r b_i)^2) / sum b_i``.
    """
    length = dropped.shape[dim]
    here = dropped.narrow(dim, 0, length - 1)
    both = (here & dropped.narrow(dim, 1, length - 1)).flatten(2).sum(-1).double().flatten()
    base = here.flatten(2).sum(-1).double().flatten()
    r = (both.sum() / base.sum()).item()
    se = ((both - r * base).pow(2).sum().sqrt() / base.sum()).item()
    return r, se


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("shape", ((256, 512), (16, 8, 32, 32)))  # 2^17 draws
def test_element_matches_torch_dropout(shape, p):
    torch.manual_seed(4)
    ours = Dropout(p).train()(torch.ones(shape))
    theirs = nn.Dropout(p).train()(torch.ones(shape))
    binomial_pooled(ours == 0, theirs == 0, "dropped fraction")
    assert ours[ours != 0].unique().tolist() == pytest.approx(theirs[theirs != 0].unique().tolist())
    if len(shape) == 4:
        # no sharing: a dropped unit's right neighbour is dropped with probability p
        for y in (ours, theirs):
            r, se = neighbour_ratio(y == 0, dim=3)
            assert_within(r, p, se, what="P(right dropped | dropped)")


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize(
    ("reference", "shape"),
    [
        (nn.Dropout1d, (2048, 32, 8)),
        (nn.Dropout2d, (2048, 32, 4, 4)),
        (nn.Dropout3d, (2048, 32, 2, 2, 2)),
    ],
)
def test_channel_matches_torch_dropout_nd(reference, shape, p):
    """Same sharing (constant over positions per (n, c)) and same fraction over the N*C groups."""
    torch.manual_seed(5)
    ours = Dropout(p, structure="channel").train()(torch.ones(shape))
    theirs = reference(p).train()(torch.ones(shape))
    assert constant_over_positions(ours) and constant_over_positions(theirs)
    binomial_pooled(
        ours.flatten(2)[..., 0] == 0, theirs.flatten(2)[..., 0] == 0, "dropped fraction"
    )


DROP_BLOCK_CASES = [  # (p, b, H, W) with torchvision's p' = gamma b^2 (H-b+1)(W-b+1) / (HW) < 1
    (0.1, 3, 16, 16),
    (0.3, 3, 16, 16),
    (0.5, 3, 16, 16),
    (0.1, 5, 16, 16),
    (0.3, 5, 12, 20),
    (0.5, 5, 16, 16),
    (0.3, 7, 16, 16),
    (0.5, 7, 16, 16),
]  # p = 0.8 is out of torchvision's reach: its p' would exceed 1 (it caps gamma at HW / (b^2 ...))


@pytest.mark.parametrize(("p", "b", "h", "w"), DROP_BLOCK_CASES)
def test_block_matches_torchvision_drop_block2d(p, b, h, w):
    """torchvision at the p' that gives its seed rate equal to ours: the same law in the interior.

    Our seeds also cover block starts that overlap the border (so border positions drop p too);
    torchvision seeds only where a whole block fits. At least ``b - 1`` from the border both
    geometries cover a position with ``b^2`` seeds at the same rate, so there the masks have the
    same law. Compared on the 0/1 masks (torchvision rescales by the realised kept fraction):
    dropped fraction (Welch SE from per-map fractions) and P(neighbour dropped | dropped) along H
    and W (ratio estimators), over 1024 independent (n, c) maps each; ours must drop p overall.
    """
    gamma = masks.block_seed_rate((h, w), b, p)
    p_tv = gamma * b**2 * (h - b + 1) * (w - b + 1) / (h * w)
    assert p_tv < 1
    x = torch.ones(128, 8, h, w)
    torch.manual_seed(6)
    ours = Dropout(p, structure="block", block_size=b).train()(x) == 0
    theirs = torchvision.ops.drop_block2d(x, p_tv, b) == 0
    full = ours.double().mean(dim=(2, 3)).flatten()
    assert_within(
        full.mean().item(), p, full.std().item() / math.sqrt(full.numel()), what="ours vs p"
    )
    inner = (slice(None), slice(None), slice(b - 1, h - b + 1), slice(b - 1, w - b + 1))
    ours, theirs = ours[inner], theirs[inner]
    fractions = []
    for d in (ours, theirs):
        per_map = d.double().mean(dim=(2, 3)).flatten()
        fractions += [per_map.mean().item(), per_map.std().item() / math.sqrt(per_map.numel())]
    two_sample(*fractions, what="interior dropped fraction")
    for dim in (2, 3):
        two_sample(
            *neighbour_ratio(ours, dim), *neighbour_ratio(theirs, dim), what=f"neighbour {dim}"
        )


# ----------------------------------------------------------------------------- deterministic pass (point 5)


ALL_SPECS = [spec(d, s) for d in DISTS for s in SHARED] + [
    spec("bernoulli", "block"),
    spec("bernoulli", "block") | {"share_channels": True},
]


@pytest.mark.parametrize("scale", ("inverted", "none"))
@pytest.mark.parametrize("kw", ALL_SPECS)
def test_eval_and_off_are_the_deterministic_pass(kw, scale):
    torch.manual_seed(0)
    x = torch.randn(16, 8, 6, 6)  # >= 128 draw groups: an all-kept sample has probability < 1e-19
    expected = x if scale == "inverted" else x * 0.7
    layer = Dropout(0.3, scale=scale, **kw)
    assert torch.equal(layer.eval()(x), expected)
    layer.train()
    layer.set_mode("off")
    assert torch.equal(layer(x), expected)
    layer.set_mode(None)
    assert not torch.equal(layer(x), expected)  # power: training samples a mask


@pytest.mark.parametrize("scale", ("inverted", "none"))
@pytest.mark.parametrize("kw", ALL_SPECS)
def test_p_zero_returns_the_input_object(kw, scale):
    layer = Dropout(0.0, scale=scale, **kw)
    x = torch.randn(2, 3, 6, 6)
    for training in (True, False):
        for mode in (None, "sample", "member", "off"):
            layer.train(training).set_mode(mode)
            assert layer(x) is x, (training, mode)


def test_mode_none_follows_training():
    layer = Dropout(0.5)
    x = torch.ones(64, 64)
    assert layer.effective_mode() == "sample"
    assert not torch.equal(layer(x), layer(x))
    layer.eval()
    assert layer.effective_mode() == "off"
    assert layer(x) is x  # identity for scale="inverted"


# ----------------------------------------------------------------------------- member masks (point 6)


MEMBER_SPECS = ALL_SPECS


def member_layer(kw: dict, k: int = 0, seed: int = 7, p: float = 0.5, **extra) -> Dropout:
    layer = Dropout(p, seed=seed, **kw, **extra)
    layer.set_mode("member")
    layer.set_members(k)
    return layer


@pytest.mark.parametrize("training", (True, False))
@pytest.mark.parametrize("kw", MEMBER_SPECS)
def test_member_mask_is_fixed_shared_over_the_batch_and_per_member(kw, training):
    x = torch.ones(8, 32, 8, 8)
    layer = member_layer(kw, k=2).train(training)
    torch.manual_seed(0)
    y = layer(x)
    state = torch.get_rng_state()
    torch.manual_seed(1)  # member masks ignore the global RNG ...
    assert torch.equal(layer(x), y)
    torch.set_rng_state(state)
    layer(x)
    assert torch.equal(torch.get_rng_state(), state)  # ... and do not advance it
    assert torch.equal(y, y[:1].expand_as(y))  # the same mask for every example
    layer.set_members(3)
    assert not torch.equal(layer(x), y)  # another member, another mask
    assert not torch.equal(member_layer(kw, k=2, seed=8)(x), y)  # another layer, another mask


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("structure", ("element", "channel", "location"))
@pytest.mark.parametrize("dist", DISTS)
def test_member_masks_are_draws_of_the_spec(dist, structure, p):
    """Across 64 members, the masks have the spec's law: dropped fraction p (Bernoulli), else
    mean 1 and variance p / keep; n = independent draws in the 64-member bank."""
    layer = Dropout(p, dist, structure, seed=11)
    layer.set_members(range(64))
    bank = layer.member_bank((64, 4, 4), torch.device("cpu"), torch.float64).flatten()
    n = bank.numel()
    assert n == 64 * {"element": 1024, "channel": 64, "location": 16}[structure]
    v = p / (1 - p)
    if dist == "bernoulli":
        assert_within((bank == 0).double().mean().item(), p, binomial_se(p, n))
    else:
        assert_within(bank.mean().item(), 1.0, math.sqrt(v / n), what="mean")
        se = math.sqrt((fourth_central_moment(dist, p) - v**2) / n)
        assert_within(((bank - 1) ** 2).mean().item(), v, se, what="variance")


@pytest.mark.parametrize("kw", MEMBER_SPECS)
def test_member_mask_survives_state_dict_round_trip(kw, tmp_path):
    x = torch.ones(2, 32, 8, 8)
    source = member_layer(kw, k=1, seed=123)
    expected = source(x)
    assert "seed" in source.state_dict()
    torch.save(source.state_dict(), tmp_path / "layer.pt")
    fresh = member_layer(kw, k=1, seed=456)
    assert not torch.equal(fresh(x), expected)  # power: another seed gives another mask
    fresh.load_state_dict(torch.load(tmp_path / "layer.pt"))
    assert torch.equal(fresh(x), expected)


_CHILD = """
import sys, torch
from dropens.layers import Dropout
torch.manual_seed(999)  # a different global RNG state than the parent's
outs = []
for kw in {specs!r}:
    layer = Dropout(0.5, seed=2024, **kw)
    layer.set_mode("member")
    layer.set_members(5)
    outs.append(layer(torch.ones(2, 32, 8, 8)))
torch.save(outs, sys.argv[1])
"""


def test_member_mask_is_identical_in_a_separate_process(tmp_path):
    path = tmp_path / "child.pt"
    package_root = str(Path(dropens.__file__).resolve().parents[1])
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
        "PYTHONHASHSEED": "12345",  # a different str-hash salt: the member seed must not use hash()
        "OMP_NUM_THREADS": "1",  # start-up only; the masks do not depend on threads
    }
    subprocess.run(
        [sys.executable, "-c", _CHILD.format(specs=MEMBER_SPECS), str(path)],
        check=True,
        env=env,
        timeout=120,
    )
    theirs = torch.load(path)
    torch.manual_seed(0)
    for kw, other in zip(MEMBER_SPECS, theirs, strict=True):
        assert torch.equal(member_layer(kw, k=5, seed=2024)(torch.ones(2, 32, 8, 8)), other), kw


def test_default_seed_follows_the_global_seed():
    torch.manual_seed(0)
    a = Dropout(0.5)
    torch.manual_seed(0)
    b = Dropout(0.5)
    c = Dropout(0.5)
    assert int(a.seed) == int(b.seed) != int(c.seed)


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float64,
    ],
)
def test_member_mode_scale_none_bernoulli_is_the_raw_mask(dtype):
    x = torch.randn(4, 4096, dtype=dtype)
    y = member_layer(spec(), k=0, p=0.3, scale="none")(x)
    assert bool(((y == x) | (y == 0)).all())


# ----------------------------------------------------------------------------- bad input (point 9)


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"p": -0.1}, ("dropout.p", "-0.1", "[0, 1)")),
        ({"p": 1.0}, ("dropout.p", "1.0", "[0, 1)")),
        ({"p": 1.5}, ("dropout.p", "1.5", "[0, 1)")),
        ({"p": float("nan")}, ("dropout.p", "nan", "[0, 1)")),
        ({"p": "0.5"}, ("dropout.p", "'0.5'", "[0, 1)")),
        ({"dist": "poisson"}, ("dropout.dist", "'poisson'", "bernoulli, gaussian, uniform")),
        (
            {"structure": "pixel"},
            ("dropout.structure", "'pixel'", "element, channel, location, block"),
        ),
        ({"scale": "half"}, ("dropout.scale", "'half'", "inverted, none")),
        ({"structure": "block", "block_size": 0}, ("dropout.block_size", "0", ">= 1")),
        ({"structure": "block", "block_size": -3}, ("dropout.block_size", "-3", ">= 1")),
        ({"structure": "block", "block_size": 2.5}, ("dropout.block_size", "2.5", ">= 1")),
        ({"structure": "block"}, ("dropout.block_size", "None", ">= 1")),
        (
            {"structure": "block", "block_size": 3, "dist": "gaussian"},
            ("dropout.dist", "'gaussian'", "bernoulli"),
        ),
    ],
)
def test_bad_spec_raises_one_line_config_error(kwargs, fragments):
    with pytest.raises(ConfigError) as info:
        Dropout(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize(
    ("seed", "why"),
    [
        ("x", "a str"),
        ("7", "a str"),
        (1.5, "a float"),
        (3.0, "a float"),
        (float("nan"), "a float"),
        (True, "a bool"),
        (False, "a bool"),
        (-1, "out of range"),
        (2**63, "out of range"),
        (2**64, "out of range"),
        (torch.tensor(1.0), "a Tensor"),
        ([1], "a list"),
    ],
)
def test_bad_seed_raises_one_line_error_naming_seed(seed, why):
    with pytest.raises(InputError) as info:
        Dropout(0.3, seed=seed)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ConfigError)
    message = str(info.value)
    assert "\n" not in message
    for fragment in ("seed=", why, "[0, 2**63)", "None"):
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("seed", [0, 5, 2**63 - 1, np.int64(9), torch.tensor(4)])
def test_integer_seeds_in_range_are_accepted(seed):
    layer = Dropout(0.3, seed=seed)
    assert int(layer.seed) == int(seed) and layer.seed.dtype == torch.int64


def test_share_channels_must_be_a_bool():
    with pytest.raises(ConfigError, match=r"dropout.share_channels='yes'.*true, false"):
        Dropout(0.3, structure="block", block_size=2, share_channels="yes")


@pytest.mark.parametrize("training", (True, False))
@pytest.mark.parametrize(
    ("kwargs", "shape", "fragments"),
    [
        (
            {"structure": "channel"},
            (8, 16),
            ("dropout.structure", "'channel'", "(8, 16)", "element"),
        ),
        (
            {"structure": "location"},
            (8, 16),
            ("dropout.structure", "'location'", "(8, 16)", "element"),
        ),
        (
            {"structure": "block", "block_size": 3},
            (8, 16),
            ("dropout.structure", "'block'", "(8, 16)", "element"),
        ),
        (
            {"structure": "block", "block_size": 9},
            (2, 3, 8, 8),
            ("dropout.block_size", "9", "1..8"),
        ),
        (
            {"structure": "block", "block_size": 10},
            (2, 3, 8, 12),
            ("dropout.block_size", "10", "1..8"),
        ),
        ({"structure": "block", "block_size": 5}, (2, 3, 4), ("dropout.block_size", "5", "1..4")),
    ],
)
def test_input_that_does_not_fit_the_structure_raises_at_forward(
    kwargs, shape, fragments, training
):
    layer = Dropout(0.3, site="encoder.drop1", **kwargs).train(training)
    with pytest.raises(ConfigError) as info:
        layer(torch.ones(shape))
    message = str(info.value)
    assert "\n" not in message
    for fragment in (*fragments, "encoder.drop1"):
        assert fragment in message, (fragment, message)


def test_bad_mode_raises_one_line_config_error():
    with pytest.raises(ConfigError, match=r"mode='bogus'.*sample, member, off") as info:
        Dropout(0.3).set_mode("bogus")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- repr, registry, dtypes


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"p": 0.3}, ("p=0.3", "dist=bernoulli", "structure=element", "scale=inverted")),
        (
            {"p": 0.25, "dist": "gaussian", "structure": "channel", "scale": "none"},
            ("p=0.25", "dist=gaussian", "structure=channel", "scale=none"),
        ),
        (
            {"p": 0.1, "structure": "block", "block_size": 5, "share_channels": True},
            ("p=0.1", "structure=block", "block_size=5", "share_channels=True"),
        ),
    ],
)
def test_extra_repr(kwargs, fragments):
    text = repr(Dropout(**kwargs))
    for fragment in fragments:
        assert fragment in text, (fragment, text)


@pytest.fixture
def twopoint():
    """A registered distribution: 1 +- sqrt(p / keep) with probability 1/2 each; removed afterwards."""

    @masks.register_sampler("twopoint")
    def twopoint_noise(shape, p, generator, device, dtype):
        sign = torch.rand(shape, generator=generator, device=device, dtype=dtype) < 0.5
        return 1.0 + math.sqrt(p / (1 - p)) * (2.0 * sign.to(dtype) - 1.0)

    try:
        yield "twopoint"
    finally:
        masks.SAMPLERS.pop("twopoint", None)


def test_register_sampler_adds_a_working_distribution(twopoint):
    p = 0.2
    with pytest.raises(ConfigError, match="bernoulli, gaussian, twopoint, uniform"):
        Dropout(p, dist="nope")
    layer = Dropout(p, dist=twopoint, structure="channel").train()
    torch.manual_seed(7)
    y = layer(torch.ones(2048, 64, 2, 2))
    assert constant_over_positions(y)
    a = y[:, :, 0, 0].flatten().double()  # 2^17 independent draws, each 1 +- half
    half = math.sqrt(p / (1 - p))
    assert sorted(a.unique().tolist()) == pytest.approx([1 - half, 1 + half])
    assert_within(a.mean().item(), 1.0, half / math.sqrt(a.numel()), what="mean")
    member = member_layer({"dist": twopoint}, k=0, p=p)
    assert torch.equal(member(torch.ones(2, 512)), member(torch.ones(2, 512)))


def test_registered_sampler_is_gone_after_removal(twopoint):
    masks.SAMPLERS.pop(twopoint)
    with pytest.raises(ConfigError, match="'twopoint'"):
        Dropout(0.2, dist=twopoint)


@pytest.mark.parametrize("scale", ("inverted", "none"))
@pytest.mark.parametrize("kw", ALL_SPECS)
def test_output_dtype_follows_input(kw, scale):
    layer = Dropout(0.3, scale=scale, seed=3, **kw)
    for mode in ("sample", "member", "off"):
        layer.set_mode(mode)
        for dtype in (torch.float32, torch.float64):
            assert layer(torch.ones(2, 4, 6, 6, dtype=dtype)).dtype == dtype, (mode, dtype)


@pytest.mark.parametrize("dist", DISTS)
def test_sampled_noise_is_drawn_in_float64_for_float64_input(dist):
    """Not a float32 draw cast up: values are float64-exact (1/keep) or not float32-representable."""
    torch.manual_seed(8)
    y = Dropout(0.3, dist).train()(torch.ones(4096, dtype=torch.float64))
    if dist == "bernoulli":
        assert y[y != 0].unique().tolist() == [1 / 0.7]
    else:
        assert (y.float().double() != y).double().mean().item() > 0.99


def test_block_dropped_fraction_is_p_for_bfloat16_input():
    """Regression: 16-bit inputs draw their uniforms in float32 (bfloat16 rand is too coarse)."""
    p = 0.1
    torch.manual_seed(9)
    y = Dropout(p, structure="block", block_size=3).train()(
        torch.ones(128, 8, 16, 16, dtype=torch.bfloat16)
    )
    per_map = (y == 0).double().mean(dim=(2, 3)).flatten()
    se = per_map.std().item() / math.sqrt(per_map.numel())
    assert_within(per_map.mean().item(), p, se, what="bfloat16 block dropped fraction")
