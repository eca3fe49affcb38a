"""The procedural ``faces`` data (issue 6, acceptance 3): the cue rates per split equal the
configured rho within binomial error, a linear probe on the teeth region alone predicts the training
label with accuracy rho and the decorrelated test label at chance, and the same seed draws the same
images. Tolerances are 4 binomial standard errors (a false alarm in ~1 of 15,000 runs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from dropens.data import build_datamodule
from dropens.data.base import VAL_STREAM, stratified_split
from dropens.data.faces import crop_around, render, sample_faces, teeth_centres

N_TRAIN, N_TEST = 4000, 2000


def _tol(p: float, n: int) -> float:
    return 4 * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    dm = build_datamodule(
        {
            "name": "faces",
            "n_train": N_TRAIN,
            "n_test": N_TEST,
            "root": str(tmp_path_factory.mktemp("d")),
        }
    )
    dm.setup()
    return dm


def _agreement(params: dict) -> torch.Tensor:
    """1 where the cue agrees with the label (teeth on a smiling face, none on an angry one)."""
    return (params["teeth"] == (params["label"] == 1)).float()


@pytest.mark.parametrize("rho", [0.95, 0.7])
def test_cue_rate_of_a_draw_is_rho_within_binomial_error(rho):
    params = sample_faces(N_TRAIN, rho, seed=3)
    for c in (0, 1):  # the rate holds within each class, not only on average
        rows = params["label"] == c
        n = int(rows.sum())
        assert n == N_TRAIN // 2
        assert abs(float(_agreement(params)[rows].mean()) - rho) < _tol(rho, n)


def test_cue_rates_per_split_of_the_data_module(faces):
    rho = faces.rho
    train = faces.faces("train")
    keep, take = stratified_split(train["label"], faces.val_fraction, faces.split_seed, VAL_STREAM)
    agree = _agreement(train)
    for name, rows in (("train", keep), ("val", take)):
        rate = float(agree[rows].mean())
        assert abs(rate - rho) < _tol(rho, len(rows)), (name, rate)
    assert abs(float(_agreement(faces.faces("iid")).mean()) - rho) < _tol(rho, N_TEST)
    assert abs(float(_agreement(faces.faces("clean")).mean()) - 0.5) < _tol(0.5, N_TEST)
    # the counterfactual sets re-render the clean faces: conflict has the cue wrong on every face
    sets = faces.eval_sets()
    assert list(sets) == ["clean", "iid", "conflict", "teeth_on", "teeth_off"]
    for name in ("conflict", "teeth_on", "teeth_off"):
        assert torch.equal(sets[name][1], sets["clean"][1])


def _teeth_region(params: dict, size: int = 32) -> np.ndarray:
    """The 3x3 pixels around each face's teeth centre (the mouth is flat there: no label cue)."""
    return crop_around(render(params, size), teeth_centres(params, size), half=1).numpy()


def test_linear_probe_on_the_teeth_region_reads_rho_in_training_and_chance_at_test():
    rho = 0.95
    train = sample_faces(N_TRAIN, rho, seed=0, stream=0)
    test = sample_faces(N_TEST, 0.5, seed=0, stream=1)
    probe = LogisticRegression(max_iter=2000).fit(_teeth_region(train), train["label"].numpy())
    train_acc = probe.score(_teeth_region(train), train["label"].numpy())
    test_acc = probe.score(_teeth_region(test), test["label"].numpy())
    # the region holds the cue (teeth) and nothing else about the label: the probe reads the
    # teeth exactly, so it is right where the cue agrees with the label
    cue_agreement = float(_agreement(train).mean())
    assert abs(train_acc - cue_agreement) < _tol(0.05, N_TRAIN)
    assert abs(train_acc - rho) < _tol(rho, N_TRAIN)
    assert abs(test_acc - 0.5) < _tol(0.5, N_TEST)


def test_the_whole_face_carries_the_label_without_the_cue():
    """Control for the probe test: with the cue independent of the label (rho = 0.5), a linear
    model on the whole image still beats chance clearly, so the label is in the face itself."""
    train = sample_faces(N_TRAIN, 0.5, seed=1, stream=0)
    test = sample_faces(N_TEST, 0.5, seed=1, stream=1)
    x_train = render(train).flatten(1).numpy()
    model = LogisticRegression(max_iter=300, C=0.1).fit(x_train, train["label"].numpy())
    acc = model.score(render(test).flatten(1).numpy(), test["label"].numpy())
    assert acc > 0.5 + _tol(0.5, N_TEST)


def test_same_seed_same_images_other_seed_other_images(tmp_path):
    def images(seed: int) -> torch.Tensor:
        dm = build_datamodule(
            {
                "name": "faces",
                "n_train": 64,
                "n_test": 32,
                "generator_seed": seed,
                "root": str(tmp_path),
            }
        )
        dm.setup()
        return torch.cat([dm.x_train, *[x for x, _ in dm.eval_sets().values()]])

    a, b, c = images(0), images(0), images(1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_teeth_change_only_the_teeth_region():
    params = sample_faces(200, 0.95, seed=2)
    on = render(params, teeth=torch.ones(200, dtype=torch.bool))
    off = render(params, teeth=torch.zeros(200, dtype=torch.bool))
    centres = teeth_centres(params, 32)
    diff = (on - off).abs()[:, 0]
    rows = torch.arange(32).view(1, -1, 1).float()
    cols = torch.arange(32).view(1, 1, -1).float()
    dist = torch.maximum(
        (rows - centres[:, 0].view(-1, 1, 1)).abs(), (cols - centres[:, 1].view(-1, 1, 1)).abs()
    )
    assert float(diff[dist > 4].max()) == 0.0  # nothing changes away from the mouth
    assert float(diff[dist <= 1].mean()) > 0.2  # and the teeth are bright where they are
    assert float(on.min()) >= 0.0 and float(on.max()) <= 1.0
